//! xdp-lb control plane: configuration, Maglev tables, the planner that turns
//! configurations into map writes, the aya-backed data plane adapter, and the `run`
//! command that ties them together; and the HTTP cache tier (`cache`).
pub mod cache;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod maglev;
pub mod neigh;
pub mod plan;
pub mod run;
pub mod summary;
