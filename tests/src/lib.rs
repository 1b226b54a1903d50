//! Test bed for xdp-lb: network namespaces created and removed by RAII guards,
//! topologies with no link into the root namespace, backends and clients that run in
//! those namespaces, and helpers to start the real `xdp-lb` binary inside them.
pub mod bench;
pub mod cache_support;
