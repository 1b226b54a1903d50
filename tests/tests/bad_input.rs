//! Bad input, from the file and from flags: the real binary refuses each case with
//! its own message, exits non-zero and changes nothing (no XDP program on the
//! interfaces, no pins, no admin socket, the file as it was). Each case runs through
//! both `run` and `check`, inside a namespace this test creates, whose veth holds an
//! address of "the balancer".
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use xdp_lb_tests::{binary::xdp_lb_bin, netns::NetNs, pins, require_root};

/// The balancer's own address, on `lb0`.
const LB_ADDR: &str = "198.18.0.1";
/// Longest a refusal may take; a run that does not exit by then was accepted.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// A valid file; each file case edits it.
const GOOD: &str = r#"interfaces = ["lb0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80

[[service.backend]]
addr = "198.18.1.2"
port = 8080

[[service.backend]]
addr = "198.18.1.3"
port = 8080
"#;

/// The flags of a valid one-service command line; flag cases edit them.
const GOOD_FLAGS: &[&str] = &[
    "--iface",
    "lb0",
    "--vip",
    "198.18.100.1:80",
    "--backend",
    "198.18.1.2:8080",
];

struct Case {
    what: &'static str,
    /// The file's text, when the case has a file.
    file: Option<String>,
    args: Vec<String>,
    /// Every fragment must be in the output.
    want: &'static [&'static str],
}

fn file(what: &'static str, text: String, want: &'static [&'static str]) -> Case {
    Case {
        what,
        file: Some(text),
        args: Vec::new(),
        want,
    }
}

/// GOOD_FLAGS with `flag`'s value replaced (or the pair appended).
fn flags(what: &'static str, edits: &[(&str, &str)], want: &'static [&'static str]) -> Case {
    let mut args: Vec<String> = GOOD_FLAGS.iter().map(ToString::to_string).collect();
    for (flag, value) in edits {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }
    Case {
        what,
        file: None,
        args,
        want,
    }
}

fn cases() -> Vec<Case> {
    let g = |from: &str, to: &str| {
        assert!(GOOD.contains(from), "{from:?} not in the base file");
        GOOD.replacen(from, to, 1)
    };
    vec![
        file(
            "bad backend address",
            g("198.18.1.3", "198.18.1.300"),
            &["malformed address \"198.18.1.300\""],
        ),
        file(
            "unknown interface",
            g("[\"lb0\"]", "[\"nosuch0\"]"),
            &["interface \"nosuch0\" does not exist"],
        ),
        file(
            "duplicate backend",
            g("198.18.1.3", "198.18.1.2"),
            &["backend 198.18.1.2:8080 listed twice"],
        ),
        file(
            "weight 0",
            g("port = 8080\n", "port = 8080\nweight = 0\n"),
            &["weight 0 out of range 1..=65535", "state = \"draining\""],
        ),
        file(
            "weight out of range",
            g("port = 8080\n", "port = 8080\nweight = 70000\n"),
            &["weight 70000 out of range 1..=65535"],
        ),
        file(
            "unknown key",
            g("port = 8080\n", "port = 8080\nwieght = 2\n"),
            &["unknown field `wieght`", "check the spelling"],
        ),
        file(
            "unknown algorithm",
            g("port = 80\n", "port = 80\nalgorithm = \"fastest\"\n"),
            &["unknown algorithm \"fastest\""],
        ),
        file(
            "VIP as backend",
            g("198.18.1.3", "198.18.100.1"),
            &["backend 198.18.100.1:8080 has the VIP's own address"],
        ),
        file(
            "balancer address as backend",
            g("198.18.1.3", LB_ADDR),
            &["backend 198.18.0.1:8080 is an address of this balancer (on lb0)"],
        ),
        file(
            "TOML syntax error",
            g("port = 80\n", "port = 80\nproto = \"udp\n"),
            &["invalid TOML"],
        ),
        file(
            "several mistakes, all reported",
            g("198.18.1.3", "198.18.1.300")
                .replacen("port = 8080\n", "port = 8080\nweight = 0\n", 1)
                .replace("interfaces = [\"lb0\"]", "interfaces = [\"lb0\", \"lb0\"]\nmax_services = 0"),
            &[
                "4 mistakes; fix each of them:",
                "interfaces: interface \"lb0\" listed twice",
                "max_services: max_services = 0 is invalid",
                "service[0].backend[0]: service \"web\": backend 198.18.1.2:8080 weight 0",
                "service[0].backend[1]: service \"web\": backend: malformed address \"198.18.1.300\"",
            ],
        ),
        flags(
            "--backend: bad address",
            &[("--backend", "198.18.1:8080")],
            &["malformed address \"198.18.1\""],
        ),
        flags(
            "--backend: weight 0",
            &[("--backend", "198.18.1.2:8080@0")],
            &["weight 0 out of range"],
        ),
        flags(
            "--backend: a balancer address",
            &[("--backend", "198.18.0.1:8080")],
            &["is an address of this balancer (on lb0)"],
        ),
        flags(
            "--iface: unknown interface",
            &[("--iface", "nosuch0")],
            &["interface \"nosuch0\" does not exist"],
        ),
        flags(
            "--vip without a port",
            &[("--vip", "198.18.100.1")],
            &["missing port"],
        ),
        flags(
            "--algorithm: unknown",
            &[("--algorithm", "fastest")],
            &["invalid value 'fastest' for '--algorithm"],
        ),
        flags(
            "--xdp-mode: unknown",
            &[("--xdp-mode", "turbo")],
            &["invalid value 'turbo' for '--xdp-mode", "auto"],
        ),
        flags(
            "--flow-table-size: not a number",
            &[("--flow-table-size", "lots")],
            &["invalid value 'lots' for '--flow-table-size"],
        ),
        flags(
            "--table-size: not prime",
            &[("--table-size", "1000")],
            &["table_size 1000 is not prime", "1009"],
        ),
        flags(
            "--metrics-listen: malformed",
            &[("--metrics-listen", "everywhere")],
            &["expected ADDR:PORT"],
        ),
    ]
}

/// What one invocation left behind.
struct Outcome {
    code: Option<i32>,
    output: String,
}

/// `xdp-lb VERB ARGS` in `ns`, with its pins and admin socket where this test looks;
/// killed (and reported as accepted) if it does not exit in time.
fn invoke(ns: &NetNs, bin: &Path, verb: &str, args: &[String], admin: &Path) -> Outcome {
    let mut child = ns
        .command(bin)
        .arg(verb)
        .args(args)
        .env("XDP_LB_PIN_DIR", pins::dir_for(ns.name()))
        .env("XDP_LB_ADMIN_SOCKET", admin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xdp-lb");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while child.try_wait().expect("waiting for xdp-lb").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child
        .wait_with_output()
        .expect("collecting xdp-lb's output");
    Outcome {
        code: out.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Whether an XDP program is attached to `iface` in `ns`.
fn xdp_attached(ns: &NetNs, iface: &str) -> bool {
    let out = ns
        .ip(&["-d", "link", "show", "dev", iface])
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("prog/xdp") || text.split_whitespace().any(|w| w.starts_with("xdp"))
}

fn topology() -> NetNs {
    let ns = NetNs::create("bad").expect("creating the namespace");
    ns.ip(&[
        "link", "add", "lb0", "type", "veth", "peer", "name", "peer0",
    ])
    .expect("adding the veth pair");
    ns.ip(&["addr", "add", &format!("{LB_ADDR}/24"), "dev", "lb0"])
        .expect("adding the balancer's address");
    for dev in ["lb0", "peer0"] {
        ns.ip(&["link", "set", dev, "up"]).expect("link up");
    }
    ns
}

#[test]
fn bad_input_is_refused_with_its_message_and_changes_nothing() {
    require_root();
    let bin = xdp_lb_bin().expect("the xdp-lb binary");
    let ns = topology();
    pins::ensure_bpffs().expect("mounting the test bpffs");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let admin = dir.path().join("admin.sock");
    let config: PathBuf = dir.path().join("xdp-lb.toml");

    // The base inputs pass `check`: every refusal below is the edit's doing.
    std::fs::write(&config, GOOD).unwrap();
    for args in [
        vec!["--config".to_string(), config.display().to_string()],
        GOOD_FLAGS.iter().map(ToString::to_string).collect(),
    ] {
        let ok = invoke(&ns, &bin, "check", &args, &admin);
        assert_eq!(ok.code, Some(0), "base input refused:\n{}", ok.output);
        assert!(
            ok.output.contains("none of the 2 backend(s) is one of its")
                || ok.output.contains("none of the 1 backend(s) is one of its"),
            "check does not say it verified the backends against local addresses:\n{}",
            ok.output
        );
    }

    let mut failures = Vec::new();
    for case in cases() {
        let mut args = case.args.clone();
        if let Some(text) = &case.file {
            std::fs::write(&config, text).unwrap();
            args.extend(["--config".to_string(), config.display().to_string()]);
        }
        for verb in ["check", "run"] {
            let out = invoke(&ns, &bin, verb, &args, &admin);
            let mut wrong = Vec::new();
            if matches!(out.code, Some(0) | None) {
                wrong.push(format!("exit {:?}, want non-zero", out.code));
            }
            for w in case.want {
                if !out.output.contains(w) {
                    wrong.push(format!("no {w:?} in the output"));
                }
            }
            if xdp_attached(&ns, "lb0") || xdp_attached(&ns, "peer0") {
                wrong.push("an XDP program is attached".into());
            }
            if pins::exists(ns.name()) {
                wrong.push("pins were created".into());
                pins::remove(ns.name());
            }
            if admin.exists() {
                wrong.push("the admin socket exists".into());
                let _ = std::fs::remove_file(&admin);
            }
            if let Some(text) = &case.file {
                if std::fs::read_to_string(&config).ok().as_ref() != Some(text) {
                    wrong.push("the file was changed".into());
                }
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{verb} / {}: {}\n--- output:\n{}",
                    case.what,
                    wrong.join("; "),
                    out.output
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the bad inputs were not refused as expected:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
