//! Prometheus' own checker for an exposition the tests scraped: a parser that is not
//! the one that wrote it.
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

/// Panics with promtool's findings unless `promtool check metrics` accepts `text`. The
/// exposition must end with a line feed; test clients trim it, so it is added back.
pub fn check_metrics(text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by cargo xtask setup)");
    let mut input = text.to_string();
    if !input.ends_with('\n') {
        input.push('\n');
    }
    check
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
