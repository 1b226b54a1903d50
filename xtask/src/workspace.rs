//! Where the workspace and its target directory are, and how to build the `xdp-lb` binary.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

pub struct Workspace {
    root: PathBuf,
    target: PathBuf,
}

impl Workspace {
    pub fn locate() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let target = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    root.join(dir)
                }
            }
            None => root.join("target"),
        };
        Ok(Self { root, target })
    }

    /// The cargo that runs xtask, started at the workspace root.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(&self.root);
        cmd
    }

    /// Builds the upgrade test's second `xdp-lb` (feature `upgrade-test-variant`: an
    /// XDP program with a different tag) and copies it next to the first, then
    /// builds the normal one again. Cargo keeps both builds apart (a feature set is
    /// its own unit), so after the first time both steps only relink or copy.
    pub fn build_upgrade_variant(&self) -> anyhow::Result<PathBuf> {
        println!("xtask: cargo build -p xdp-lb --features upgrade-test-variant");
        let status = self
            .cargo()
            .args([
                "build",
                "-p",
                "xdp-lb",
                "--features",
                "upgrade-test-variant",
            ])
            .status()
            .context("starting cargo build")?;
        if !status.success() {
            bail!("building the upgrade variant of xdp-lb failed ({status})");
        }
        let dir = self.target.join("debug");
        let variant = dir.join("xdp-lb-upgrade-variant");
        std::fs::copy(dir.join("xdp-lb"), &variant)
            .with_context(|| format!("copying the variant to {}", variant.display()))?;
        self.build_xdp_lb(false)?;
        Ok(variant)
    }

    /// Builds `xdp-lb` (with its embedded XDP program) and returns the binary's path.
    pub fn build_xdp_lb(&self, release: bool) -> anyhow::Result<PathBuf> {
        let mut cmd = self.cargo();
        cmd.args(["build", "-p", "xdp-lb"]);
        if release {
            cmd.arg("--release");
        }
        println!(
            "xtask: cargo build -p xdp-lb{}",
            if release { " --release" } else { "" }
        );
        let status = cmd.status().context("starting cargo build")?;
        if !status.success() {
            bail!("building xdp-lb failed ({status})");
        }
        let bin = self
            .target
            .join(if release { "release" } else { "debug" })
            .join("xdp-lb");
        if !bin.is_file() {
            bail!("built xdp-lb but {} is missing", bin.display());
        }
        Ok(bin)
    }
}
