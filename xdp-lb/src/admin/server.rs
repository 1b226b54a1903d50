//! The daemon side of the admin API: a root-only Unix socket (and optionally a
//! loopback TCP listener guarded by a token). Each request becomes a command for the
//! controller, sent over a channel; this module never touches the state itself.
use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot},
};

use super::proto::{
    ApiError, Command, ErrorKind, Outcome, Reply, Request, Response, MAX_REQUEST, VERSION,
};

/// A command on its way to the controller, with where to send the answer.
pub struct Envelope {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Reply, ApiError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another xdp-lb daemon is serving {0}; stop it first, or give this one another --admin-socket")]
    InUse(String),
    #[error("cannot create the admin socket {path}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--admin-listen {0} is not a loopback address: the TCP admin listener only binds to 127.0.0.0/8 or ::1 (use an SSH tunnel to reach it from elsewhere)")]
    NotLoopback(SocketAddr),
    #[error("--admin-listen needs --admin-token-file: a TCP listener without a token would let any local user change the balancer")]
    NoToken,
    #[error("cannot read the admin token file {path}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin token file {0} is empty")]
    EmptyToken(String),
}

pub struct AdminServer {
    unix: UnixListener,
    /// Removes the socket file when the server goes, whether it ran or the start
    /// failed after binding.
    path: RemoveOnDrop,
    tcp: Option<(TcpListener, String)>,
}

impl AdminServer {
    /// Binds the socket (mode 0600) and the optional TCP listener. Done before the
    /// kernel is touched, so a second daemon fails cleanly.
    pub async fn bind(
        path: &Path,
        tcp: Option<SocketAddr>,
        token_file: Option<&Path>,
    ) -> Result<Self, ServerError> {
        let tcp = match (tcp, token_file) {
            (None, _) => None,
            (Some(addr), _) if !addr.ip().is_loopback() => {
                return Err(ServerError::NotLoopback(addr))
            }
            (Some(_), None) => return Err(ServerError::NoToken),
            (Some(addr), Some(file)) => {
                let token = std::fs::read_to_string(file).map_err(|source| ServerError::Token {
                    path: file.display().to_string(),
                    source,
                })?;
                let token = token.trim().to_string();
                if token.is_empty() {
                    return Err(ServerError::EmptyToken(file.display().to_string()));
                }
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        path: addr.to_string(),
                        source,
                    })?;
                Some((l, token))
            }
        };
        let bind_err = |source| ServerError::Bind {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        if path.exists() {
            // A socket nobody answers on is left over from a daemon that died.
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ServerError::InUse(path.display().to_string()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        let unix = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        Ok(AdminServer {
            unix,
            path: RemoveOnDrop(path.to_path_buf()),
            tcp,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path.0
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Accepts connections until the task is aborted; each is served on its own task.
    pub async fn run(self, tx: mpsc::Sender<Envelope>) {
        let AdminServer { unix, path, tcp } = self;
        let _cleanup = path;
        let (tcp, token) = match tcp {
            Some((l, t)) => (Some(l), Some(t)),
            None => (None, None),
        };
        loop {
            tokio::select! {
                conn = unix.accept() => match conn {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, tx.clone(), None));
                    }
                    Err(e) => log::warn!("admin socket: accept failed: {e}"),
                },
                conn = async {
                    match &tcp {
                        Some(l) => l.accept().await,
                        None => std::future::pending().await,
                    }
                } => match conn {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, tx.clone(), token.clone()));
                    }
                    Err(e) => log::warn!("admin listener: accept failed: {e}"),
                },
            }
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One connection: requests and answers, a line each, until the client hangs up.
async fn serve<S>(stream: S, tx: mpsc::Sender<Envelope>, token: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        // `take` bounds what one request may make us buffer.
        let mut limited = (&mut lines).take(MAX_REQUEST as u64 + 1);
        match limited.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let outcome = if line.len() > MAX_REQUEST {
            Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("request longer than {MAX_REQUEST} bytes"),
            ))
        } else {
            answer(&line, &tx, token.as_deref()).await
        };
        let response = Response {
            v: VERSION,
            result: match outcome {
                Ok(data) => Outcome::Ok { data },
                Err(error) => Outcome::Error { error },
            },
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        if w.write_all(&out).await.is_err() || line.len() > MAX_REQUEST {
            return;
        }
    }
}

async fn answer(
    line: &str,
    tx: &mpsc::Sender<Envelope>,
    token: Option<&str>,
) -> Result<Reply, ApiError> {
    let req: Request = serde_json::from_str(line.trim_end())
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("not a valid request: {e}")))?;
    if req.v != VERSION {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "this daemon speaks admin API version {VERSION}, the request is version {}; use a matching xdp-lb",
                req.v
            ),
        ));
    }
    if let Some(want) = token {
        if req.token.as_deref() != Some(want) {
            return Err(ApiError::new(
                ErrorKind::Unauthorized,
                "missing or wrong token (give --admin-token-file)",
            ));
        }
    }
    let (reply, rx) = oneshot::channel();
    tx.send(Envelope {
        command: req.command,
        reply,
    })
    .await
    .map_err(|_| ApiError::new(ErrorKind::Unavailable, "the daemon is stopping"))?;
    rx.await
        .map_err(|_| ApiError::new(ErrorKind::Unavailable, "the daemon is stopping"))?
}
