//! The root check every namespace test starts with.

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics unless running as root: namespaces and XDP cannot be faked.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, XDP): run `sudo cargo xtask test`"
    );
}
