//! The admin API: a versioned JSON protocol (`proto`), the daemon's listener
//! (`server`) and the client the CLI verbs use (`client`).
pub mod client;
pub mod proto;
pub mod server;

/// Where the daemon listens and the CLI connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xdp-lb/admin.sock";
