//! Rebuild the program when bpf-linker changes (a new LLVM can change codegen).
fn main() {
    if let Ok(p) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
