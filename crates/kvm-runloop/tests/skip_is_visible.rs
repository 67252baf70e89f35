//! A test that cannot use KVM must be seen skipping at the end of `cargo test`, and must fail
//! under `REQUIRE_KVM=1`. This binary runs itself again with `TEST_KVM_DEVICE` pointing at a
//! node that is not there, and looks at what a person would see.

use std::process::{Command, Output};

use kvm_runloop::testing::{REQUIRE_KVM, TEST_KVM_DEVICE, kvm_or_skip};

/// The test the child runs: it needs KVM and skips without it.
#[test]
fn needs_kvm() {
    let Some(_kvm) = kvm_or_skip() else { return };
}

fn run_needs_kvm(require: bool) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "needs_kvm", "--test-threads", "1"])
        .env(TEST_KVM_DEVICE, "/nonexistent/kvm")
        .env_remove(REQUIRE_KVM);
    if require {
        cmd.env(REQUIRE_KVM, "1");
    }
    cmd.output().unwrap()
}

#[test]
fn a_skip_is_summarised_after_the_test_result() {
    let out = run_needs_kvm(false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
    assert!(
        stderr.contains("SKIP needs_kvm: cannot open /nonexistent/kvm"),
        "{stderr}"
    );
    assert!(
        stderr.contains("SKIPPED: 1 test of ")
            && stderr.contains("\n  needs_kvm\n  because: cannot open /nonexistent/kvm")
            && stderr.contains("modprobe"),
        "{stderr}"
    );
}

#[test]
fn require_kvm_turns_the_skip_into_a_failure() {
    let out = run_needs_kvm(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("REQUIRE_KVM=1 but cannot open /nonexistent/kvm"),
        "{stdout}"
    );
}
