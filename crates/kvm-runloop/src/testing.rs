//! A helper for tests that need `/dev/kvm`, shared by every crate of the workspace.
//!
//! ```
//! fn a_test_that_needs_kvm() {
//!     let Some(_kvm) = kvm_runloop::testing::kvm_or_skip() else { return };
//!     // ... the test proper ...
//! }
//! # a_test_that_needs_kvm();
//! ```

use kvm_ioctls::Kvm;

use crate::error::open_kvm_hint;

/// Name of the environment variable that turns a missing `/dev/kvm` into a test failure (set it
/// in CI on machines that have KVM, so a broken runner cannot pass by skipping).
pub const REQUIRE_KVM: &str = "REQUIRE_KVM";

/// Opens `/dev/kvm` for a test. When that fails, prints `SKIP <test name>: <reason>` to
/// stderr and returns `None` (the test should return), unless `REQUIRE_KVM=1`, in which case it
/// panics with the reason so the test fails.
pub fn kvm_or_skip() -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(e) => {
            let reason = format!("cannot open /dev/kvm: {e}; {}", open_kvm_hint(e.errno()));
            if std::env::var(REQUIRE_KVM).as_deref() == Ok("1") {
                panic!("{REQUIRE_KVM}=1 but {reason}");
            }
            let thread = std::thread::current();
            eprintln!("SKIP {}: {reason}", thread.name().unwrap_or("test"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_say_what_to_do() {
        assert!(open_kvm_hint(libc::ENOENT).contains("modprobe"));
        assert!(open_kvm_hint(libc::EACCES).contains("kvm"));
        assert!(!open_kvm_hint(libc::EIO).is_empty());
    }
}
