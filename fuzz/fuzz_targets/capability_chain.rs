#![no_main]
//! Placeholder: filled in by the crate that owns this target.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|_data: &[u8]| {});
