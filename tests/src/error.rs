//! The test bed's error type: what failed, with the command output that explains it.
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum BedError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error(
        "xdp-lb binary not found at {0}: build it (`cargo build -p xdp-lb`) or set XDP_LB_BIN"
    )]
    BinaryMissing(String),
    #[error("{what} did not happen within {secs} s; output so far:\n{output}")]
    Timeout {
        what: String,
        secs: u64,
        output: String,
    },
    #[error("{what}; output so far:\n{output}")]
    Process { what: String, output: String },
    #[error("{0}")]
    Protocol(String),
}

pub type Result<T, E = BedError> = std::result::Result<T, E>;

/// Adds a description to an `io::Error`.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BedError::Io {
            what: what(),
            source,
        })
    }
}
