//! xdp-lb control plane: configuration, Maglev tables, the aya-backed data plane
//! adapter, and the `run` command that ties them together.
pub mod cache;
pub mod cli;
pub mod config;
pub mod maglev;
