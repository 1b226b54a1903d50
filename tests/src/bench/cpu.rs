//! CPU placement and accounting for the benches that run servers and load generators side by
//! side: pinning threads and processes to cores, and reading what each task and core used
//! from `/proc`.

/// Restricts one task (a thread id, or 0 for the calling thread) to one core. Children and
/// threads created afterwards inherit it.
pub fn pin_task(tid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: writes within the set: cpu is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid set of the size given.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Moves one task (a thread id, or 0 for the calling thread) to `SCHED_FIFO` at priority 1,
/// or back to the normal policy: a real-time task that wakes up takes its core from any
/// normal one at once, so other work on the machine does not lengthen its wake-ups.
pub fn set_realtime(tid: libc::pid_t, on: bool) -> std::io::Result<()> {
    let (policy, priority) = if on {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a valid sched_param for the policy given.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The thread ids in `/proc/.../task` directories.
fn tids(tasks: &[std::path::PathBuf]) -> impl Iterator<Item = libc::pid_t> + '_ {
    tasks
        .iter()
        .filter_map(|t| t.file_name()?.to_str()?.parse().ok())
}

/// Pins every thread another process has now (Redis's background threads, nginx's one).
pub fn pin_process(pid: u32, cpu: usize) -> std::io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        pin_task(tid, cpu)?;
    }
    Ok(())
}

/// CPU seconds (user + system) in a `/proc/.../stat` file, 0 when unreadable.
fn stat_cpu_seconds(path: &std::path::Path) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (num(14) + num(15)) as f64 / ticks
}

/// Seconds a task spent runnable but waiting for a CPU (the second field of
/// `/proc/.../schedstat`), 0 when unreadable.
fn schedstat_wait_seconds(path: &std::path::Path) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Where a side's CPU time is read: this process's threads of one name (tokio's
/// blocking-pool threads carry the name too), or another process.
pub enum Side {
    Threads(&'static str),
    Process(u32),
}

impl Side {
    /// The `/proc` task directories of this side's threads.
    pub fn tasks(&self) -> Vec<std::path::PathBuf> {
        let (dir, name) = match self {
            Side::Process(pid) => (format!("/proc/{pid}/task"), None),
            Side::Threads(name) => ("/proc/self/task".to_string(), Some(*name)),
        };
        let Ok(tasks) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .map(|t| t.path())
            .filter(|t| {
                name.is_none_or(|n| {
                    std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == n)
                })
            })
            .collect()
    }

    /// Switches all of this side's threads to `SCHED_FIFO` or back (see [`set_realtime`]).
    pub fn set_realtime(&self, on: bool) -> std::io::Result<()> {
        tids(&self.tasks()).try_for_each(|tid| set_realtime(tid, on))
    }

    /// Seconds this side's threads waited on a run queue: the time the server wanted a CPU
    /// and the machine gave it to something else.
    pub fn wait_seconds(&self) -> f64 {
        self.tasks()
            .iter()
            .map(|t| schedstat_wait_seconds(&t.join("schedstat")))
            .sum()
    }

    pub fn cpu_seconds(&self) -> f64 {
        match self {
            Side::Process(pid) => {
                stat_cpu_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")))
            }
            Side::Threads(name) => {
                let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
                    return 0.0;
                };
                tasks
                    .flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == *name)
                    })
                    .map(|t| stat_cpu_seconds(&t.path().join("stat")))
                    .sum()
            }
        }
    }
}

/// CPU seconds used by this process's reaped children (wrk, once waited for).
pub fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// CPU seconds each core spent busy (everything but idle and iowait), by core number.
pub fn busy_seconds_per_core() -> Vec<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|line| {
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            (f.iter().sum::<u64>().saturating_sub(idle)) as f64 / ticks
        })
        .collect()
}
