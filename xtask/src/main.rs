//! `cargo xtask setup|run|test|bench`.
fn main() -> anyhow::Result<()> {
    Ok(())
}
