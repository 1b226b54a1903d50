//! Builds the XDP program (xdp-lb-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and leaves the object in OUT_DIR, where src/dataplane embeds it.
//!
//! This does what aya-build 0.2 does (nested `cargo build` of the eBPF crate with
//! `-Z build-std=core`, the bpf_target_arch cfg, BTF through bpf-linker, its own
//! target directory), but keeps the nested build's output to itself: aya-build replays
//! every line of it as `cargo:warning`, so every eBPF build printed dozens of
//! `warning: xdp-lb@0.1.0: Compiling ...` lines, and cargo replays them on every
//! later build. Here a build prints one line to the terminal, and only when the
//! object really changed; on failure the nested compiler's output is shown in full
//! (cargo prints a failed build script's stderr).
//!
//! With AYA_BUILD_SKIP=1 (used for `cargo clippy` of the workspace on machines
//! without bpf-linker) an empty stub is written instead; loading it fails at run time
//! with a message that says to rebuild without the variable.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Instant, SystemTime},
};

use anyhow::{bail, Context as _};

const PACKAGE: &str = "xdp-lb-ebpf";
const TARGET: &str = "bpfel-unknown-none";
const TOOLCHAIN: &str = "nightly";

fn main() -> ExitCode {
    // Printed by hand: returning the error would add anyhow's backtrace to the
    // compiler's output whenever RUST_BACKTRACE is set.
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set by cargo")?);
    let object = out_dir.join(PACKAGE);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        std::fs::write(&object, [])
            .with_context(|| format!("writing the stub {}", object.display()))?;
        return Ok(());
    }

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .context("xdp-lb is not inside the workspace")?;
    // The build-dependency on xdp-lb-ebpf covers its library and dependencies, not
    // its binary (the program): watch both crates' sources directly.
    for dir in [PACKAGE, "xdp-lb-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    let target_dir = out_dir.join("ebpf-target");
    let built = target_dir.join(TARGET).join("release").join(PACKAGE);
    let before = modified(&built);
    let started = Instant::now();
    let output = nested_build(workspace, &target_dir)
        .output()
        .with_context(|| format!("starting `cargo +{TOOLCHAIN}` (is rustup installed?)"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{stderr}");
        bail!(
            "building the XDP program ({PACKAGE}) failed ({}): the compiler's output is above. \
             `cargo xtask setup` installs what the build needs (nightly rust-src, bpf-linker).",
            output.status
        );
    }
    std::fs::copy(&built, &object).with_context(|| {
        format!(
            "copying the built program {} to {}",
            built.display(),
            object.display()
        )
    })?;
    if modified(&built) != before {
        // Warnings stay hidden like the rest; say where to see them.
        let note = if stderr.lines().any(|l| l.starts_with("warning:")) {
            format!(
                " with compiler warnings (`cargo +{TOOLCHAIN} build -p {PACKAGE} --target {TARGET} \
                 -Z build-std=core --release` shows them)"
            )
        } else {
            String::new()
        };
        progress(&format!(
            "{:>12} {PACKAGE} (the XDP program, {TARGET}) in {:.1}s{note}",
            "Built",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// The one line of progress, written to the terminal. Not `cargo:warning`: cargo
/// replays a build script's warnings on every later build in which the script is
/// fresh, so a build that did nothing would print it again. Without a terminal (CI,
/// tests) there is nobody to show progress to, and nothing is written. The line first
/// clears cargo's progress bar, which cargo then redraws below it.
fn progress(line: &str) {
    use std::io::Write as _;
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        let _ = write!(tty, "\r\x1b[2K{line}\n");
    }
}

/// `cargo build` of the program with the nightly toolchain, as aya-build runs it.
fn nested_build(workspace: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo", "build", "--package", PACKAGE])
        .args(["--bins", "--release", "--target", TARGET])
        .args(["-Z", "build-std=core"]);
    // The upgrade test's second binary: same behaviour, different instructions.
    if env::var_os("CARGO_FEATURE_UPGRADE_TEST_VARIANT").is_some() {
        cmd.args(["--features", "upgrade-variant"]);
    }
    cmd.arg("--target-dir")
        // Its own target directory: the outer cargo holds the lock on ours.
        .arg(target_dir)
        .current_dir(workspace);
    // bpf_target_arch selects the architecture-specific helpers in aya-ebpf; BTF
    // (from debug info, through bpf-linker) is what lets the loader relocate maps.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer build's compiler and wrappers are the stable host toolchain's.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    cmd
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
