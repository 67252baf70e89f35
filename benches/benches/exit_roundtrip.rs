//! Placeholder: filled in by the crate that owns this benchmark.
fn main() {}
