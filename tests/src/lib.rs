//! Test bed for xdp-lb: network namespaces created and removed by RAII guards,
//! topologies with no link into the root namespace, backends and clients that run in
//! those namespaces, and helpers to start the real `xdp-lb` binary inside them.
pub mod admin;
pub mod bench;
pub mod binary;
pub mod cache_support;
pub mod client;
pub mod cmd;
pub mod demo;
pub mod error;
pub mod lb;
pub mod lbconfig;
pub mod netns;
pub mod pins;
pub mod pkt;
pub mod promtool;
pub mod raw;
pub mod root;
pub mod scenario;
pub mod servers;
pub mod topology;

pub use error::{BedError, Result};
pub use lbconfig::Forwarding;
pub use root::{is_root, require_root};
pub use topology::{Topology, TopologyBuilder};
