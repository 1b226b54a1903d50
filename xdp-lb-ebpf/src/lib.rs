//! Host-side placeholder: the XDP program is the `xdp-lb-ebpf` binary target, built
//! for bpfel-unknown-none by xdp-lb's build script.
#![no_std]
