//! Finding the `xdp-lb` binary under test.
use std::{env, path::PathBuf};

use crate::error::{BedError, Result};

/// `XDP_LB_BIN` when set (xtask sets it), otherwise the `xdp-lb` next to the running
/// executable's profile directory (target/<profile>/deps/<test> -> target/<profile>/xdp-lb).
pub fn xdp_lb_bin() -> Result<PathBuf> {
    if let Some(p) = env::var_os("XDP_LB_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(BedError::BinaryMissing(p.display().to_string()))
        };
    }
    let exe = env::current_exe().map_err(|source| BedError::Io {
        what: "finding the current executable".into(),
        source,
    })?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("xdp-lb");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(BedError::BinaryMissing(candidate.display().to_string()))
    }
}

/// The upgrade test's second `xdp-lb` build, whose XDP program has other
/// instructions (another tag): `XDP_LB_UPGRADE_BIN`, set by `cargo xtask test`.
pub fn upgrade_bin() -> Result<PathBuf> {
    match env::var_os("XDP_LB_UPGRADE_BIN") {
        Some(p) if PathBuf::from(&p).is_file() => Ok(PathBuf::from(p)),
        Some(p) => Err(BedError::BinaryMissing(
            PathBuf::from(p).display().to_string(),
        )),
        None => Err(BedError::BinaryMissing(
            "XDP_LB_UPGRADE_BIN (run the tests through `cargo xtask test`, which builds it)".into(),
        )),
    }
}
