//! `xdp-lb check` end to end: the built binary on good and bad configurations,
//! asserting exit status and what the operator sees.
use std::{path::PathBuf, process::Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_xdp-lb"))
        .arg("check")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run xdp-lb check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn good_file_prints_summary_and_exits_zero() {
    let good = fixture("good.toml");
    let out = check(&["--config", good.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains("configuration OK"), "{stdout}");
    let web = stdout.lines().find(|l| l.contains("web")).unwrap_or("");
    assert!(web.contains("198.18.100.1:80/tcp"), "{stdout}");
    let heavy = stdout
        .lines()
        .find(|l| l.contains("198.18.1.2:8080"))
        .unwrap_or("");
    assert!(heavy.contains("75.0%"), "{stdout}");
    assert!(stdout.contains("[2001:db8::10]:53/udp"), "{stdout}");
}

#[test]
fn bad_file_names_the_problem_and_exits_nonzero() {
    let bad = fixture("bad.toml");
    let out = check(&["--config", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(
        stderr.contains("service \"web\": backend 198.18.1.2:8080 listed twice"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no summary for a bad config");
}

#[test]
fn flags_only_and_flag_errors() {
    let out = check(&[
        "--iface",
        "lo",
        "--vip",
        "198.18.100.1:80",
        "--backend",
        "198.18.1.2:8080@2",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("198.18.100.1:80/tcp"));

    let out = check(&[
        "--iface",
        "lo",
        "--vip",
        "198.18.100.1:80",
        "--backend",
        "198.18.1.2:8080@0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("weight 0 out of range"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn missing_file_is_reported_with_its_path() {
    let out = check(&["--config", "/nonexistent/xdp-lb.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/xdp-lb.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_interface_that_does_not_exist_is_an_error() {
    let out = check(&[
        "--iface",
        "nosuchif0",
        "--vip",
        "198.18.100.1:80",
        "--backend",
        "198.18.1.2:8080",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("interface \"nosuchif0\" does not exist"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}
