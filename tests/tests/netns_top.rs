//! `xdp-lb top` as an operator runs it: in a real pseudo-terminal (a private tmux server),
//! in another process than the daemon, talking over the admin socket. The drawn screen is
//! read back with `capture-pane`: the service and backend rows are there, the backend
//! that carries the test's traffic shows packets/s while the others show none, every rate
//! falls back to 0 when the traffic stops, and `q` quits with exit status 0.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use xdp_lb_tests::{
    binary,
    client::LineClient,
    lb::XdpLbProcess,
    lbconfig::{self, ConfigFile},
    require_root, scenario,
    topology::{IFACE, TCP_PORT},
    Forwarding, Topology,
};

/// A private tmux server (its socket in a directory of its own) running one session;
/// on drop the server is killed and the directory removed, so a failing test leaves no
/// terminal behind (tmux itself leaves its socket file when the last session ends).
struct Tmux {
    dir: PathBuf,
    socket: PathBuf,
}

impl Tmux {
    /// Starts `command` (built from this tmux's directory) in a detached session with a
    /// fixed 140x40 screen.
    fn start(command: impl FnOnce(&Path) -> String) -> Self {
        let dir = std::env::temp_dir().join(format!("xdp-lb-top-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let t = Tmux {
            socket: dir.join("tmux.sock"),
            dir,
        };
        let command = command(&t.dir);
        t.run(&[
            "new-session",
            "-d",
            "-x",
            "140",
            "-y",
            "40",
            "-s",
            "top",
            &command,
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (Debian package tmux, installed by cargo xtask setup)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen as text, one line per row.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cells of the table row whose first cell is `first` (borders dropped).
fn row(screen: &str, first: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|l| {
        let cells: Vec<String> = l
            .trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .map(str::to_string)
            .collect();
        (cells.first().map(String::as_str) == Some(first)).then_some(cells)
    })
}

/// Columns of a backend row: address, state, health, weight, pkt/s, bits/s, flows, share.
const PKTS: usize = 4;
const BITS: usize = 5;

/// Waits (bounded; nothing is timed) until `f` holds for the screen, and returns it.
fn wait_screen(t: &Tmux, lb: &XdpLbProcess, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = t.screen();
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never showed on the screen:\n{s}\ndaemon:\n{}",
            lb.output()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn backend_addr(topo: &Topology, i: usize) -> String {
    SocketAddr::new(topo.backend(i).v4().into(), TCP_PORT).to_string()
}

fn exit_status(file: &Path) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()
        .filter(|s| s.ends_with('\n'))
}

#[test]
fn top_in_a_terminal_follows_the_traffic_and_quits_on_q() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let mut svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[]);
    svc.backends = (1..=3)
        .map(|i| scenario::backend_spec(&topo, i, false, TCP_PORT, 1))
        .collect();
    let text = lbconfig::render(&[IFACE], &[svc]).replacen(
        "[[service]]\n",
        "[[service]]\nname = \"web\"\n",
        1,
    ) + "\n[monitor]\ninterval = \"200ms\"\nmetrics_listen = \"off\"\n";
    let file = ConfigFile::new(&text).expect("config file");
    let lb = topo
        .start_lb(&[
            "run".into(),
            "--config".into(),
            file.path().display().to_string(),
        ])
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"));

    let bin = binary::xdp_lb_bin().unwrap_or_else(|e| panic!("{e}"));
    // The shell records top's exit status once it returns; tmux then closes the session.
    let tmux = Tmux::start(|dir| {
        format!(
            "{} top --refresh 200ms --admin-socket {}; echo $? > {}",
            bin.display(),
            lb.admin_socket().display(),
            dir.join("status").display()
        )
    });
    let status_file = tmux.dir.join("status");
    let addrs: Vec<String> = (1..=3).map(|i| backend_addr(&topo, i)).collect();
    let screen = wait_screen(&tmux, &lb, "the service and backend rows", |s| {
        row(s, "web").is_some() && addrs.iter().all(|a| row(s, a).is_some())
    });
    for a in &addrs {
        let r = row(&screen, a).unwrap();
        assert_eq!(r.len(), 8, "backend row {r:?}\n{screen}");
        assert_eq!(r[1], "active", "{screen}");
    }

    // One long-lived connection, pinging until told to stop (bounded in count too).
    let vip = topo.vip(false, TCP_PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let (name_tx, name_rx) = std::sync::mpsc::channel();
    let traffic = {
        let stop = Arc::clone(&stop);
        topo.client.spawn(move || -> Result<usize, String> {
            let mut c = LineClient::connect(vip).map_err(|e| e.to_string())?;
            let _ = name_tx.send(c.greeting().to_string());
            let mut pings = 0;
            while !stop.load(Ordering::Relaxed) && pings < 200_000 {
                c.ping().map_err(|e| e.to_string())?;
                pings += 1;
            }
            Ok(pings)
        })
    };
    let busy_name = name_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no connection through the VIP\n{}", lb.output()));
    let busy: usize = busy_name
        .strip_prefix("backend-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("greeting {busy_name:?}"));
    let busy_addr = backend_addr(&topo, busy);
    let moving = wait_screen(&tmux, &lb, "packets/s on the busy backend", |s| {
        row(s, &busy_addr).is_some_and(|r| r[PKTS] != "0" && r[BITS] != "0b/s")
    });
    stop.store(true, Ordering::Relaxed);
    let pings = traffic
        .join()
        .expect("traffic thread")
        .expect("in the client namespace")
        .unwrap_or_else(|e| panic!("traffic: {e}"));
    assert!(pings > 0);
    // The traffic is all on one connection, so the other backends carry nothing.
    for (i, a) in addrs.iter().enumerate() {
        if i + 1 != busy {
            let r = row(&moving, a).unwrap();
            assert_eq!(r[PKTS], "0", "{a} carries none of the traffic:\n{moving}");
        }
    }
    let service = row(&moving, "web").unwrap();
    // The service row: name, "N/M usable", pkt/s, bits/s, flows.
    assert_ne!(service[3], "0", "the service row counts it too:\n{moving}");

    wait_screen(&tmux, &lb, "every rate back to 0 after the traffic", |s| {
        addrs
            .iter()
            .all(|a| row(s, a).is_some_and(|r| r[PKTS] == "0"))
    });

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = exit_status(&status_file) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "top did not quit on q:\n{}",
            tmux.screen()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.trim(), "0", "top's exit status");
}
