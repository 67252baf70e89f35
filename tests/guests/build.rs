//! Link arguments for the bare-metal guest images (the `image` feature's binaries).
//!
//! The library (host unit tests, doctests) links normally; only the binaries get the linker script,
//! and only they need the static relocation model that `.cargo/config.toml` sets.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = dir.join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");

    if env::var_os("CARGO_FEATURE_IMAGE").is_none() {
        return;
    }
    // Without the static relocation model the image would be position independent with a GOT at an
    // address nobody relocates: refuse early with the fix instead of producing a guest that faults.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !flags
        .split('\x1f')
        .any(|f| f.ends_with("relocation-model=static"))
    {
        panic!(
            "the `image` feature needs `-C relocation-model=static` (tests/guests/.cargo/config.toml): \
             build with tests/guests/build.sh, or run cargo from tests/guests/ with RUSTFLAGS unset"
        );
    }
    for arg in [
        "-nostartfiles".to_string(),
        "-nostdlib".to_string(),
        "-static".to_string(),
        "-no-pie".to_string(),
        format!("-Wl,-T,{}", script.display()),
        "-Wl,--build-id=none".to_string(),
        // linux-loader refuses PT_LOAD segments whose p_align is not a multiple of 2 MiB.
        "-Wl,-z,max-page-size=0x200000".to_string(),
        "-Wl,-z,norelro".to_string(),
        "-Wl,--gc-sections".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
