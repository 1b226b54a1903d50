//! Machine and process resources through `sysinfo`: CPU (total and per core), load average,
//! memory and swap, per-device disk and per-interface network counters, this process's CPU
//! and memory, and the processes using the most CPU and memory.
//!
//! Disk and network figures are handed over as cumulative counters (sysinfo's `total_*`
//! values) so the monitor computes their rates over the measured time between samples like
//! every other counter. Disk I/O comes from sysinfo's `Disks`, which reads `/proc/diskstats`
//! for the device behind each mounted file system; a device mounted several times (bind
//! mounts) is counted once, and devices with no mounted file system are not seen.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sysinfo::{
    CpuRefreshKind, Disks, MemoryRefreshKind, Networks, Pid, ProcessRefreshKind, ProcessesToUpdate,
    RefreshKind, System,
};

/// Processes listed by CPU and by memory.
pub const TOP_PROCESSES: usize = 5;

/// Samples between two scans of every process for the top lists. Reading `/proc` for all
/// processes is most of a sample's cost (about 8 ms for 110 processes on these machines,
/// against under 1 ms for the rest), so it is not done every second.
pub const DEFAULT_TOP_EVERY: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("cannot read system information")]
    System(#[source] sysinfo::Error),
    #[error("cannot list disks")]
    Disks(#[source] sysinfo::Error),
    #[error("cannot list network interfaces")]
    Networks(#[source] sysinfo::Error),
    #[error("cannot find this process's id")]
    OwnPid(#[source] sysinfo::Error),
}

/// One reading of the machine: gauges as they are now, counters cumulative.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSample {
    /// Busy share of all CPUs, 0..=100, over the time since the previous sample.
    pub cpu_percent: f64,
    pub per_core_percent: Vec<f64>,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_total_bytes: u64,
    /// Total minus available: what the kernel could not hand out without reclaiming.
    pub memory_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub disks: Vec<DiskCounters>,
    pub interfaces: Vec<InterfaceCounters>,
    pub process: ProcessUsage,
    pub top_cpu: Vec<ProcessUsage>,
    pub top_memory: Vec<ProcessUsage>,
}

impl ResourceSample {
    pub fn memory_percent(&self) -> f64 {
        percent(self.memory_used_bytes, self.memory_total_bytes)
    }

    pub fn swap_percent(&self) -> f64 {
        percent(self.swap_used_bytes, self.swap_total_bytes)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCounters {
    /// Device name as mounted, e.g. `/dev/vda`.
    pub device: String,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Negotiated link speed in bits/s, where the driver reports one.
    pub link_bits_per_s: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    pub pid: u32,
    pub name: String,
    /// Share of one CPU, so a process busy on two cores shows 200.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub cpu_seconds_total: f64,
}

/// Keeps sysinfo's state between samples: CPU usage is a difference between two
/// refreshes, so one sampler must live as long as the sampling loop.
pub struct ResourceSampler {
    system: System,
    disks: Disks,
    networks: Networks,
    own_pid: Pid,
    top_every: u32,
    samples: u64,
    top_cpu: Vec<ProcessUsage>,
    top_memory: Vec<ProcessUsage>,
}

impl ResourceSampler {
    /// Takes a first reading, so the first [`ResourceSampler::sample`] already has a
    /// baseline for CPU usage (sysinfo needs at least `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`
    /// between the two for a precise figure).
    pub fn new() -> Result<Self, ResourceError> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything())
                .with_processes(Self::process_kind()),
        )
        .map_err(ResourceError::System)?;
        let disks = Disks::new_with_refreshed_list().map_err(ResourceError::Disks)?;
        let networks = Networks::new_with_refreshed_list().map_err(ResourceError::Networks)?;
        let own_pid = sysinfo::get_current_pid().map_err(ResourceError::OwnPid)?;
        Ok(Self {
            system,
            disks,
            networks,
            own_pid,
            top_every: DEFAULT_TOP_EVERY,
            samples: 0,
            top_cpu: Vec::new(),
            top_memory: Vec::new(),
        })
    }

    /// Scans every process for the top lists once per `n` samples (the first sample always
    /// scans); 0 never scans, leaving the lists empty. Each process's CPU share is then
    /// averaged over the time between two scans.
    pub fn with_top_every(mut self, n: u32) -> Self {
        self.top_every = n;
        self
    }

    fn process_kind() -> ProcessRefreshKind {
        // Tasks (threads) are not needed and are the expensive part of a refresh.
        ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .without_tasks()
    }

    pub fn sample(&mut self) -> ResourceSample {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::everything());
        let scan = self.top_every > 0 && self.samples.is_multiple_of(u64::from(self.top_every));
        self.samples += 1;
        let which = if scan {
            ProcessesToUpdate::All
        } else {
            ProcessesToUpdate::Some(std::slice::from_ref(&self.own_pid))
        };
        self.system
            .refresh_processes_specifics(which, true, Self::process_kind());
        // `true`: interfaces and disks that disappeared are dropped; new ones are listed.
        self.disks.refresh(true);
        self.networks.refresh(true);

        let load = System::load_average().unwrap_or(sysinfo::LoadAvg {
            one: 0.0,
            five: 0.0,
            fifteen: 0.0,
        });
        let total = self.system.total_memory();
        let used = total.saturating_sub(self.system.available_memory());
        let swap_total = self.system.total_swap();

        // One entry per device: bind mounts list the same device many times.
        let mut disks: BTreeMap<String, DiskCounters> = BTreeMap::new();
        for d in &self.disks {
            let device = d.name().to_string_lossy().into_owned();
            let u = d.usage();
            disks.entry(device.clone()).or_insert(DiskCounters {
                device,
                read_bytes: u.total_read_bytes,
                written_bytes: u.total_written_bytes,
            });
        }
        let mut interfaces: Vec<InterfaceCounters> = self
            .networks
            .iter()
            .map(|(name, n)| InterfaceCounters {
                name: name.to_string_lossy().into_owned(),
                rx_bytes: n.total_received(),
                tx_bytes: n.total_transmitted(),
                rx_packets: n.total_packets_received(),
                tx_packets: n.total_packets_transmitted(),
                link_bits_per_s: n.receive_link_speed(),
            })
            .collect();
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));

        let usage = |pid: &Pid, p: &sysinfo::Process| ProcessUsage {
            pid: pid.as_u32(),
            name: p.name().to_string_lossy().into_owned(),
            cpu_percent: f64::from(p.cpu_usage()),
            memory_bytes: p.memory(),
            cpu_seconds_total: p.accumulated_cpu_time() as f64 / 1000.0,
        };
        let process = self
            .system
            .process(self.own_pid)
            .map(|p| usage(&self.own_pid, p))
            .unwrap_or_default();
        if scan {
            let mut all: Vec<ProcessUsage> = self
                .system
                .processes()
                .iter()
                .map(|(pid, p)| usage(pid, p))
                .collect();
            all.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
            self.top_cpu = all.iter().take(TOP_PROCESSES).cloned().collect();
            all.sort_by_key(|p| std::cmp::Reverse(p.memory_bytes));
            all.truncate(TOP_PROCESSES);
            self.top_memory = all;
        }

        ResourceSample {
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            per_core_percent: self
                .system
                .cpus()
                .iter()
                .map(|c| f64::from(c.usage()))
                .collect(),
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            memory_total_bytes: total,
            memory_used_bytes: used,
            swap_total_bytes: swap_total,
            swap_used_bytes: swap_total.saturating_sub(self.system.free_swap()),
            disks: disks.into_values().collect(),
            interfaces,
            process,
            top_cpu: self.top_cpu.clone(),
            top_memory: self.top_memory.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_sample_is_plausible() {
        let mut sampler = ResourceSampler::new().unwrap();
        // Work for the process to account, so its CPU time is above zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = sampler.sample();
        assert!(s.memory_total_bytes > 0);
        assert!(s.memory_used_bytes > 0 && s.memory_used_bytes <= s.memory_total_bytes);
        assert!(!s.per_core_percent.is_empty(), "at least one CPU");
        assert!((0.0..=100.0).contains(&s.cpu_percent), "{}", s.cpu_percent);
        assert!(s.per_core_percent.iter().all(|c| (0.0..=100.0).contains(c)));
        assert!(s.load1 >= 0.0);
        assert!(
            s.interfaces.iter().any(|i| i.name == "lo"),
            "{:?}",
            s.interfaces
        );
        assert_eq!(s.process.pid, std::process::id());
        assert!(s.process.memory_bytes > 0);
        assert!(s.process.cpu_seconds_total > 0.0);
        assert_eq!(s.top_memory.len(), TOP_PROCESSES.min(s.top_memory.len()));
        assert!(!s.top_memory.is_empty());
        assert!(s
            .top_memory
            .windows(2)
            .all(|w| w[0].memory_bytes >= w[1].memory_bytes));
    }

    #[test]
    fn top_lists_come_from_periodic_scans_only() {
        let mut sampler = ResourceSampler::new().unwrap().with_top_every(3);
        let first = sampler.sample();
        assert!(!first.top_cpu.is_empty(), "the first sample scans");
        // Between scans the lists are the last scan's; this process is still read.
        let second = sampler.sample();
        assert_eq!(second.top_memory, first.top_memory);
        assert_eq!(second.process.pid, std::process::id());
        let mut never = ResourceSampler::new().unwrap().with_top_every(0);
        let s = never.sample();
        assert!(s.top_cpu.is_empty() && s.top_memory.is_empty());
        assert!(s.process.memory_bytes > 0);
    }
}
