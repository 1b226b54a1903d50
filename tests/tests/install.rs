//! `cargo xtask install` / `uninstall` into a temporary tree: files land where the
//! README says, the unit passes `systemd-analyze verify`, the example configuration
//! passes `xdp-lb check`, an existing configuration is never overwritten, and
//! uninstall removes exactly what install put.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

fn xtask(args: &[&str]) -> std::process::Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    Command::new(cargo)
        .current_dir(root)
        .args(["run", "-q", "-p", "xtask", "--"])
        .args(args)
        .output()
        .expect("running cargo xtask")
}

fn files(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p);
            }
        }
    }
    out
}

#[test]
fn install_and_uninstall_into_a_temporary_tree() {
    let bin = xdp_lb_tests::binary::xdp_lb_bin().unwrap_or_else(|e| panic!("{e}"));
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("usr/local");
    let units = t.path().join("etc/systemd/system");
    let conf = t.path().join("etc/xdp-lb");
    // Something of the operator's that must survive both steps.
    std::fs::create_dir_all(&units).unwrap();
    std::fs::write(units.join("other.service"), "[Unit]\n").unwrap();
    let before = files(t.path());
    let layout = [
        "--prefix",
        prefix.to_str().unwrap(),
        "--unit-dir",
        units.to_str().unwrap(),
        "--config-dir",
        conf.to_str().unwrap(),
    ];
    let mut args = vec!["install", "--binary", bin.to_str().unwrap()];
    args.extend(layout);
    let out = xtask(&args);
    assert!(
        out.status.success(),
        "install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = units.join("xdp-lb.service");
    let config = conf.join("xdp-lb.toml");
    let installed = prefix.join("bin/xdp-lb");
    for p in [&unit, &config, &installed] {
        assert!(p.is_file(), "{} not installed", p.display());
    }
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains(&format!(
            "ExecStart={} run --config {}",
            installed.display(),
            config.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{text}"
    );
    assert!(text.contains("Restart=on-failure"), "{text}");

    let verify = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd, installed by cargo xtask setup)");
    let msgs = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {msgs}");
    assert!(
        !msgs.contains("xdp-lb.service"),
        "systemd-analyze verify complained: {msgs}"
    );

    // The example is valid (its interface is the operator's to name).
    let check = Command::new(&installed)
        .args(["check", "--iface", "lo", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "example config: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    // A second install keeps the operator's configuration.
    std::fs::write(&config, "# mine\n").unwrap();
    let out = xtask(&args);
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
    // Uninstall removes what install put, keeps the changed configuration.
    let mut un = vec!["uninstall"];
    un.extend(layout);
    let out = xtask(&un);
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = before.clone();
    expected.insert(config.clone());
    assert_eq!(files(t.path()), expected);
    // With the example untouched, uninstall leaves the tree exactly as it found it.
    std::fs::remove_file(&config).unwrap();
    assert!(xtask(&args).status.success());
    assert!(xtask(&un).status.success());
    assert_eq!(files(t.path()), before);
    // Nothing to uninstall: a clear error.
    let out = xtask(&un);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing installed with this --prefix"));
}
