//! Builds the XDP program (xdp-lb-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and leaves the object in OUT_DIR, where src/dataplane embeds it.
//!
//! With AYA_BUILD_SKIP=1 (used for `cargo clippy` of the workspace on machines
//! without bpf-linker) an empty stub is written instead; loading it fails at run time
//! with a message that says to rebuild without the variable.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR set by cargo"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join("xdp-lb-ebpf"), [])?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest_dir.parent().unwrap().join("xdp-lb-ebpf");
    let variant = env::var_os("CARGO_FEATURE_UPGRADE_TEST_VARIANT").is_some();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "xdp-lb-ebpf",
            root_dir: ebpf_dir.to_str().unwrap(),
            features: if variant { &["upgrade-variant"] } else { &[] },
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
