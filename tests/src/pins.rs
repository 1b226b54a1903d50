//! Pinned state of the xdp-lb processes a test starts. Each namespace gets its own pin
//! directory, so parallel tests (and a real daemon on /sys/fs/bpf/xdp-lb) never share
//! pins, and a restarted process in the same namespace adopts its predecessor's state.
//! The directories live on a bpf file system the test bed mounts once in the root
//! mount namespace: `ip netns exec` gives each process a private /sys, so pins under
//! its /sys/fs/bpf would vanish with the process. A namespace's pins are removed
//! when its guard drops (which detaches the pinned programs with them).
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use crate::error::{BedError, IoContext, Result};

/// Mount point of the test bed's bpf file system.
pub const BPFFS: &str = "/run/xdp-lb-tests/bpffs";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory of the xdp-lb processes in namespace `ns`.
pub fn dir_for(ns: &str) -> PathBuf {
    Path::new(BPFFS).join(ns)
}

/// Mounts the test bed's bpffs if it is not mounted yet (once per process; a lock
/// file keeps two test binaries from stacking two mounts).
pub fn ensure_bpffs() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| mount_once().map_err(|e| e.to_string()))
        .clone()
        .map_err(|what| BedError::Io {
            what,
            source: std::io::ErrorKind::Other.into(),
        })
}

fn mount_once() -> Result<()> {
    let root = Path::new(BPFFS);
    std::fs::create_dir_all(root).ctx(|| format!("creating {BPFFS}"))?;
    let lock_path = root
        .parent()
        .expect("BPFFS has a parent")
        .join(".mount.lock");
    let lock =
        std::fs::File::create(&lock_path).ctx(|| format!("creating {}", lock_path.display()))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if fs_magic(root) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let target = CString::new(root.as_os_str().as_bytes()).expect("no NUL in a constant");
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BedError::Io {
            what: format!("mounting a bpf file system on {BPFFS}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's integer type differs between libc targets"
    )]
    (rc == 0).then_some(st.f_type as i64)
}

/// Removes the pins of namespace `ns` (a pinned link goes with its last reference,
/// which detaches its program).
pub fn remove(ns: &str) {
    let dir = dir_for(ns);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("warning: removing pins {}: {e}", dir.display()),
    }
}

/// Whether `ns` has anything pinned (a link or maps).
pub fn exists(ns: &str) -> bool {
    dir_for(ns).exists()
}

/// Verdict counter `reason` (an index of `xdp_lb_common::reason`) of the balancer
/// whose maps are pinned for namespace `ns`, summed over CPUs (read with bpftool).
pub fn reason_count(ns: &str, reason: u32) -> u64 {
    let map = dir_for(ns).join(format!("v{}/GLOBAL_STATS", xdp_lb_common::LAYOUT_VERSION));
    let key: Vec<String> = reason.to_ne_bytes().iter().map(|b| b.to_string()).collect();
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(&map)
        .arg("key")
        .args(&key)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool map lookup {}: {}",
        map.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v["values"]
        .as_array()
        .expect("per-CPU values")
        .iter()
        .map(|c| u64::from_ne_bytes(value_bytes(c)[..8].try_into().expect("a u64 value")))
        .sum()
}

/// The bytes of an entry's `value` as `bpftool -j map lookup` prints them ("0x2a").
pub fn value_bytes(entry: &serde_json::Value) -> Vec<u8> {
    entry["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| {
            u8::from_str_radix(b.as_str().expect("hex byte").trim_start_matches("0x"), 16)
                .expect("hex byte")
        })
        .collect()
}
