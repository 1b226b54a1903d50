//! xdp-lb control plane. Layers, each importing only those below it:
//! `cli` (clap, anyhow) -> `daemon` (the controller task, signals) -> `admin`
//! (the JSON API) -> `plan`/`maglev`/`summary` (pure balancing logic) -> `config`
//! (the file's model) -> `dataplane` (the only aya user). `cache` is the HTTP cache
//! tier, a library of its own.
pub mod admin;
pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod monitor;
pub mod neigh;
pub mod plan;
pub mod sched;
pub mod summary;
pub mod tui;
