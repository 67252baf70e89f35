//! A helper for tests that need `/dev/kvm`, shared by every crate of the workspace.
//!
//! ```
//! fn a_test_that_needs_kvm() {
//!     let Some(_kvm) = kvm_runloop::testing::kvm_or_skip() else { return };
//!     // ... the test proper ...
//! }
//! # a_test_that_needs_kvm();
//! ```
//!
//! A skipped test passes, so the harness's own summary cannot show it. The harness also captures
//! what a passing test prints with `eprintln!`, so a skip notice printed that way is never seen.
//! [`kvm_or_skip`] therefore writes to the process's real standard error (the
//! `std::io::stderr()` handle, which libtest's capture does not cover), once when the test skips
//! and once more, as a summary naming every skipped test and the reason, when the test binary
//! exits: that summary lands right under the binary's `test result:` line, where a person reads
//! `cargo test`'s outcome.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

use kvm_ioctls::Kvm;

use crate::error::open_kvm_hint;

/// Name of the environment variable that turns a missing `/dev/kvm` into a test failure (set it
/// in CI on machines that have KVM, so a broken runner cannot pass by skipping).
pub const REQUIRE_KVM: &str = "REQUIRE_KVM";

/// Name of the environment variable that points [`kvm_or_skip`] at another node than
/// `/dev/kvm`: a missing path or `/dev/null` shows what a machine without KVM does with the
/// tests (the tests themselves still open `/dev/kvm` once `kvm_or_skip` let them run).
pub const TEST_KVM_DEVICE: &str = "TEST_KVM_DEVICE";

/// The tests of this process that skipped, with why.
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// Registers [`print_skip_summary`] once per process.
static SUMMARY_AT_EXIT: Once = Once::new();

/// Opens `/dev/kvm` (or [`TEST_KVM_DEVICE`]) for a test. When that fails, writes `SKIP <test
/// name>: <reason>` to the real standard error, remembers the test for the summary printed
/// when the test binary exits, and returns `None` (the test should return); unless
/// `REQUIRE_KVM=1`, in which case it panics with the reason so the test fails.
pub fn kvm_or_skip() -> Option<Kvm> {
    let device = std::env::var_os(TEST_KVM_DEVICE)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/kvm"));
    let opened = std::ffi::CString::new(device.as_os_str().as_encoded_bytes())
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))
        .and_then(|path| Kvm::new_with_path(&path));
    match opened {
        Ok(kvm) => Some(kvm),
        Err(e) => {
            let reason = format!(
                "cannot open {}: {e}; {}",
                device.display(),
                open_kvm_hint(e.errno())
            );
            if std::env::var(REQUIRE_KVM).as_deref() == Ok("1") {
                panic!("{REQUIRE_KVM}=1 but {reason}");
            }
            let thread = std::thread::current();
            let test = thread.name().unwrap_or("test").to_string();
            // Not eprintln!: the harness would capture it and drop it when the test passes.
            let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
            record_skip(test, reason);
            None
        }
    }
}

fn record_skip(test: String, reason: String) {
    SKIPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push((test, reason));
    SUMMARY_AT_EXIT.call_once(|| {
        // SAFETY: `print_skip_summary` is an `extern "C" fn()` that neither unwinds (it catches
        // nothing that could panic: poisoned locks are taken over, write errors ignored) nor
        // calls `exit`; registering it has no other precondition.
        let rc = unsafe { libc::atexit(print_skip_summary) };
        if rc != 0 {
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: could not register the skip summary (atexit failed)"
            );
        }
    });
}

/// The summary of skipped tests, as [`print_skip_summary`] prints it.
fn skip_summary(skipped: &[(String, String)]) -> String {
    let mut out = format!(
        "\nSKIPPED: {} test{} of {} checked nothing because KVM could not be used ({REQUIRE_KVM}=1 \
         makes them fail instead):\n",
        skipped.len(),
        if skipped.len() == 1 { "" } else { "s" },
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "this test binary".into()),
    );
    let mut reasons: Vec<&str> = Vec::new();
    for (test, reason) in skipped {
        out += &format!("  {test}\n");
        if !reasons.contains(&reason.as_str()) {
            reasons.push(reason);
        }
    }
    for reason in reasons {
        out += &format!("  because: {reason}\n");
    }
    out
}

extern "C" fn print_skip_summary() {
    let skipped = SKIPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !skipped.is_empty() {
        let _ = std::io::stderr().write_all(skip_summary(&skipped).as_bytes());
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

    #[test]
    fn the_summary_names_each_test_and_each_reason_once() {
        let why = "cannot open /dev/kvm: Permission denied (os error 13); permission denied";
        let text = skip_summary(&[("vm::a".into(), why.into()), ("vm::b".into(), why.into())]);
        assert!(text.contains("SKIPPED: 2 tests of "), "{text}");
        assert!(text.contains("REQUIRE_KVM=1 makes them fail"), "{text}");
        assert!(text.contains("\n  vm::a\n  vm::b\n"), "{text}");
        assert_eq!(text.matches("because:").count(), 1, "{text}");
    }
}
