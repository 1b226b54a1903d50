//! Running helper commands (`ip`, `ethtool`, `sysctl`, ...) and turning failures into errors
//! that carry the command line and its stderr.
use std::process::{Command, Output};

use crate::error::{BedError, IoContext, Result};

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .ctx(|| format!("starting `{}`", describe(cmd)))?;
    if !out.status.success() {
        return Err(BedError::Command {
            cmd: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs a program given as words.
pub fn run_args(args: &[&str]) -> Result<Output> {
    let (prog, rest) = args.split_first().expect("a command has a program name");
    run(Command::new(prog).args(rest))
}
