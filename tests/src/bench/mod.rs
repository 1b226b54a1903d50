//! Benchmarks run by `cargo xtask bench`.
pub mod cache;
