//! `refvmm run --trace` on real KVM with the `pci_probe` guest and the simulated NVMe-class
//! device: the guest's store to BAR0+0x1018 is traced as `SQ3TDBL` when trapped, never seen
//! when mapped, and a trace is cut at its limit. Skipped with a reason without /dev/kvm
//! (failing instead when REQUIRE_KVM=1).

mod common;

use common::{probe, refvmm_run};

/// The guest's "mapped page" store and load, aimed at the queue-3 doorbell.
const AT_SQ3: &str = "page=0:0x1018 page-value=8";

#[test]
fn trap_all_traces_the_doorbell_by_name() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let file = std::env::temp_dir().join(format!("refvmm-trace-{}.txt", std::process::id()));
    let file_arg = file.to_string_lossy().into_owned();
    let r = probe(
        "sim",
        &[
            "--cmdline",
            AT_SQ3,
            "--policy",
            "trap-all",
            "--trace",
            "00:01.0:bar0+0x1000..0x2000",
            "--trace-file",
            &file_arg,
            "--show-counters",
        ],
    );
    r.exited_with(0);
    let trace = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let lines: Vec<&str> = trace.lines().collect();
    assert_eq!(lines.len(), 2, "only the range's store and load:\n{trace}");
    assert!(
        lines[0].ends_with("vcpu0 0000:00:01.0 bar0+0x1018 4 W 0x00000008 SQ3TDBL (tail 8)"),
        "{trace}"
    );
    assert!(
        lines[1].ends_with("vcpu0 0000:00:01.0 bar0+0x1018 4 R 0x00000008 SQ3TDBL (tail 8)"),
        "{trace}"
    );
    r.stdout_has(
        "  0000:00:01.0 bar0+0x1018 SQ3TDBL: written 1 time(s), last value 8; read 1 time(s), \
         last value 8\n",
    );
}

#[test]
fn a_mapped_doorbell_never_shows_in_the_trace() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe(
        "sim",
        &["--cmdline", AT_SQ3, "--trace", "bar0", "--show-counters"],
    );
    r.exited_with(0);
    // The MSI-X table is trapped (and traced); the doorbell page is mapped: no exit, no line.
    r.stderr_has("MSIX[0].CTRL");
    assert!(!r.stderr.contains("SQ3TDBL"), "{}", r.all());
}

#[test]
fn a_trace_stops_at_its_limit_and_says_so() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe(
        "sim",
        &["--trace", "all", "--trace-limit", "3", "--show-counters"],
    );
    r.exited_with(0);
    let traced = r.stderr.lines().filter(|l| l.contains(" vcpu0 ")).count();
    assert_eq!(traced, 3, "{}", r.all());
    r.stderr_has("more line(s) dropped after the limit of 3");
    // The summary still counts every access.
    r.stdout_has("Traced registers:\n");
}

#[test]
fn a_bad_trace_spec_is_named() {
    let r = refvmm_run(&["--trace", "bar9"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("--trace bar9: `bar9` is not a region"),
        "{}",
        r.all()
    );
}
