//! The client side of the admin API, used by the CLI verbs: blocking, one request
//! and one answer per call.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::proto::{ApiError, Command, Outcome, Reply, Request, Response, VERSION};

/// How long a call may take before the CLI gives up (a status walk of a huge flow
/// table is the slowest answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no xdp-lb daemon at {0}: start `xdp-lb run`, or give --admin-socket")]
    NoDaemon(String),
    #[error("permission denied on {0}: the admin socket is root-only (mode 0600); run this as root (e.g. with sudo)")]
    Permission(String),
    #[error("talking to the daemon at {path} failed")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon at {0} hung up without answering")]
    NoAnswer(String),
    #[error("the daemon's answer is not valid JSON")]
    BadAnswer(#[source] serde_json::Error),
    /// The daemon refused the request; its message says why.
    #[error(transparent)]
    Refused(ApiError),
}

/// Where to reach the daemon.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: SocketAddr, token: String },
}

impl Endpoint {
    fn label(&self) -> String {
        match self {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { addr, .. } => addr.to_string(),
        }
    }
}

/// Sends `command` and returns the daemon's answer; a refusal is `Refused`.
pub fn call(endpoint: &Endpoint, command: Command) -> Result<Reply, ClientError> {
    let label = endpoint.label();
    let io = |source| ClientError::Io {
        path: label.clone(),
        source,
    };
    let (token, mut stream): (Option<String>, Box<dyn ReadWrite>) = match endpoint {
        Endpoint::Unix(path) => (None, Box::new(connect_unix(path)?)),
        Endpoint::Tcp { addr, token } => {
            let s = TcpStream::connect_timeout(addr, CALL_TIMEOUT).map_err(|e| {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    ClientError::NoDaemon(label.clone())
                } else {
                    io(e)
                }
            })?;
            s.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
            (Some(token.clone()), Box::new(s))
        }
    };
    let req = Request {
        v: VERSION,
        token,
        command,
    };
    let mut line = serde_json::to_vec(&req).map_err(ClientError::BadAnswer)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        return Err(ClientError::NoAnswer(label));
    }
    let resp: Response = serde_json::from_str(&answer).map_err(ClientError::BadAnswer)?;
    match resp.result {
        Outcome::Ok { data } => Ok(data),
        Outcome::Error { error } => Err(ClientError::Refused(error)),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn connect_unix(path: &Path) -> Result<UnixStream, ClientError> {
    let label = path.display().to_string();
    let s = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoDaemon(label.clone())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Permission(label.clone()),
        _ => ClientError::Io {
            path: label.clone(),
            source: e,
        },
    })?;
    s.set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|source| ClientError::Io {
            path: label,
            source,
        })?;
    Ok(s)
}
