//! `refvmm demo` as a newcomer runs it: each mode on real KVM (skipped with a reason without
//! /dev/kvm, failing instead when REQUIRE_KVM=1), and the errors a newcomer can hit.

mod common;

use common::{Run, refvmm};

fn demo(args: &[&str]) -> Run {
    refvmm(&[&["demo"], args].concat(), None, |_| {})
}

fn ok(args: &[&str]) -> String {
    let r = demo(args);
    assert!(
        r.ok(),
        "refvmm demo {args:?} failed:\n{}{}",
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// The count printed on the line starting with `label` (after indentation).
fn count(out: &str, label: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{out}"));
    line.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number on {line:?}"))
}

#[test]
fn runs_the_one_instruction_machine() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let out = ok(&[]);
    assert!(out.contains("mov $7, %rax"), "{out}");
    assert!(out.contains("48 c7 c0 07 00 00 00"), "{out}");
    assert!(out.contains("RAX = 7"), "{out}");
    assert!(out.contains("ended by: HLT"), "{out}");
    assert_eq!(count(&out, "hlt "), 1);
}

#[test]
fn repeat_traps_once_per_run_and_reports_time_per_exit() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let out = ok(&["--repeat", "50"]);
    assert!(out.contains("RAX = 7"), "{out}");
    // 50 runs trapping, plus the power-off write.
    assert_eq!(count(&out, "pio-out"), 51, "{out}");
    assert_eq!(count(&out, "port 0x10"), 50, "{out}");
    assert!(out.contains("per exit"), "{out}");
}

#[test]
fn repeat_without_trapping_exits_once() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let out = ok(&["--repeat", "50", "--no-trap"]);
    assert!(out.contains("RAX = 7"), "{out}");
    assert_eq!(count(&out, "pio-out"), 1, "{out}");
    assert_eq!(count(&out, "port 0x10"), 0, "{out}");
    assert!(out.contains("per run, one exit in total"), "{out}");
}

#[test]
fn trap_vs_map_shows_zero_exits_mapped_and_one_per_store_trapped() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let out = ok(&["--trap-vs-map", "--stores", "100"]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("exits (traps)"))
        .unwrap_or_else(|| panic!("{out}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers, [0, 100], "{line}");
    assert!(out.contains("time per store"), "{out}");
    assert_eq!(count(&out, "mmio-write"), 100, "{out}");
}

#[test]
fn ring_zero_guests_run_too() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let out = ok(&["--repeat", "20", "--ring", "0"]);
    assert!(out.contains("(ring 0)"), "{out}");
    assert_eq!(count(&out, "port 0x10"), 20, "{out}");
}

#[test]
fn missing_kvm_says_what_to_do() {
    let r = demo(&["--kvm-device", "/nonexistent/kvm"]);
    assert!(!r.ok());
    assert!(r.stderr.contains("needs KVM"), "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot open /nonexistent/kvm"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("modprobe kvm_intel"), "{}", r.stderr);
}

#[test]
fn a_node_that_is_not_kvm_is_named() {
    let r = demo(&["--kvm-device", "/dev/null"]);
    assert!(!r.ok());
    assert!(
        r.stderr.contains(
            "KVM_CREATE_VM on /dev/null failed: it opened, but it is not a KVM device node"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_options_are_refused_with_a_reason() {
    for (args, expect) in [
        (&["--repeat", "0"][..], "--repeat"),
        (&["--no-trap"][..], "--repeat"),
        (&["--repeat", "3", "--ring", "1"][..], "ring 0 or ring 3"),
        (
            &["--repeat", "3", "--trap-vs-map"][..],
            "cannot be used with",
        ),
        (&["--stores", "5"][..], "--trap-vs-map"),
    ] {
        let r = demo(args);
        assert!(!r.ok(), "{args:?} succeeded");
        assert!(r.stderr.contains(expect), "{args:?}: {}", r.stderr);
    }
}
