//! `refvmm run` with the `pci_probe` guest on real KVM: the guest scans the bus through
//! 0xCF8/0xCFC, sizes and programs the BARs, enables MSI-X, stores to a mapped page (no exit)
//! and to a trapped register (one exit), and receives the MSI-X interrupt that store raises.
//! Skipped with a reason without /dev/kvm (failing instead when REQUIRE_KVM=1).

mod common;

use common::{guest, probe};

const ALL_STEPS: [&str; 8] = [
    "pci-scan",
    "bars",
    "command",
    "capabilities",
    "msix",
    "mapped-page",
    "trapped-write",
    "msix-interrupt",
];

/// The host test: the passthrough device (vfio-pci's `PassthroughDevice`) over the
/// simulated NVMe backend. Its BAR0 page 0 is trapped (the host does not let it be mmapped), page
/// 1 is mapped, the MSI-X table is trapped and emulated; a write to BAR0+0 is the simulated
/// device's doorbell, which fires MSI-X vector 0 through its eventfd, KVM irqfd and MSI route.
#[test]
fn pci_probe_passes_with_the_simulated_passthrough_device() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe("sim", &["--show-counters", "--show-mtree"]);
    r.exited_with(0);
    for step in ALL_STEPS {
        r.passed(step);
    }
    r.stdout_has("  pci 00:00.0 1b36:0008 class 06:00:00");
    r.stdout_has("  pci 00:01.0 1b36:0010 class 01:08:02");
    // The mapped page is a memory slot over the device's mmap...
    assert!(
        r.step("mapped-page").contains("at 0xc0001000"),
        "{}",
        r.all()
    );
    r.stdout_has("slot 1 0xc0001000-0xc0001fff host write-traps=0 \"00:01.0 BAR0 mmap +0x1000\"");
    // ...so every MMIO exit is accounted for by trapped ranges: the MSI-X table and exactly one
    // on the trapped register. None came from the page's store and load.
    r.only_trapped_ranges_exited(
        "00:01.0 BAR0 msix-table",
        "00:01.0 BAR0 +0x0 (host does not allow mmap)",
    );
    // The interrupt went through the kernel: vector 0's eventfd is bound to a KVM irqfd, and
    // refvmm delivered nothing itself.
    r.stdout_has("msix-irqfd-vectors=1 msix-pending-delivered=0");
    // The flat view as `info mtree -f` prints it, each range once: the device's own view adds
    // nothing when all its BARs are live.
    let mapped = "  00000000c0001000-00000000c0001fff (prio 0, ramd): 00:01.0 BAR0 mmap +0x1000\n";
    r.stdout_has(mapped);
    assert_eq!(r.stdout.matches(mapped).count(), 1, "{}", r.all());
    r.stdout_lacks("FlatView (memory) of 00:01.0");
    // The bus as lspci would name it.
    r.stdout_has(
        "  00:01.0 Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller \
         [1b36:0010] (sim:nvme)\n",
    );
}

/// With `--policy trap-all` nothing is mapped: the same guest store and load to the "mapped"
/// page now cost one exit each, which is how a user traces every device access.
#[test]
fn trap_all_policy_traps_the_page_that_was_mapped() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe("sim", &["--policy", "trap-all", "--show-counters"]);
    r.exited_with(0);
    for step in ALL_STEPS {
        r.passed(step);
    }
    let slots = r.slots();
    assert!(
        slots.len() == 1 && slots[0].contains("guest-ram"),
        "only RAM is mapped:\n{}",
        r.all()
    );
    // The register store, plus the page's store and load.
    assert_eq!(
        r.range_counts("00:01.0 BAR0 +0x0 (trap-all policy)"),
        (1, 2),
        "{}",
        r.all()
    );
    assert_eq!(r.exits("mmio-write"), 5 + 2, "{}", r.all());
}

#[test]
fn pci_probe_passes_with_the_test_function_and_the_counters_agree() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe("test", &["--show-counters", "--show-mtree"]);
    r.exited_with(0);
    for step in ALL_STEPS {
        r.passed(step);
    }
    r.stdout_has("GUEST: RESULT PASS program=pci_probe");
    // The scan saw the host bridge at 00:00.0 and the device at 00:01.0.
    r.stdout_has("  pci 00:00.0 1b36:0008 class 06:00:00");
    r.stdout_has("  pci 00:01.0 1b36:0005");
    r.stderr_has("guest exit status 0 (pass)");
    // The mapped page is a memory slot, and no trapped range covers it...
    let page = r.step("mapped-page");
    assert!(page.contains("at 0xc0001000"), "{page}");
    r.stdout_has("0xc0001000-0xc0001fff file write-traps=0 \"00:01.0 BAR0 memory\"");
    // ...so every MMIO exit is accounted for by the trapped ranges: the MSI-X table and exactly
    // one on the register. The page's store and load caused none.
    r.only_trapped_ranges_exited("00:01.0 BAR0 msix-table+pba", "00:01.0 BAR0 registers");
    // The interrupt came from the test function's doorbell.
    r.stdout_has("doorbells=1 msi-delivered=1 msi-refused=0");
    // The flat view lists the bus, then shows the device's mapped page as QEMU would.
    r.stdout_has("PCI bus 0 (conf1 at 0xcf8, ECAM at 0xb0000000):\n  00:00.0 ");
    r.stdout_has("  00000000c0001000-00000000c0001fff (prio 0, ramd): 00:01.0 BAR0 memory\n");
}

#[test]
fn a_guest_that_keeps_the_vmm_placed_bars_finds_them_where_refvmm_put_them() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe("test", &["--cmdline", "bars=keep"]);
    r.exited_with(0);
    let bars = r.step("bars");
    assert!(bars.contains("kept where they were"), "{bars}");
    // refvmm placed BAR0 at the bottom of the 32-bit window and said so.
    r.stderr_has("BAR0 mem32 [0xc0000000-0xc0003fff] size 0x4000 (32-bit window)");
    r.stdout_has("00:01.0 BAR0 mem32 size 0x4000 at 0xc0000000");
    r.passed("msix-interrupt");
}

/// `kill -USR1` prints the reports while the guest runs. The guest waits 2 s for an interrupt
/// that never comes (BAR0+0x10 is no doorbell), so the signal lands mid-run.
#[test]
fn sigusr1_prints_the_reports_while_the_guest_runs() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    use std::io::{BufRead, BufReader, Read};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_refvmm"))
        .args([
            "run",
            "--guest",
            &guest("pci_probe"),
            "--cmdline",
            "trap=0:0x10 irq-timeout-ms=2000",
            "--device",
            "sim",
            "--timeout",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Signal once the guest has printed its first line: refvmm installs the handler before it
    // starts the guest, so the signal cannot hit the default action (which would end refvmm).
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut stdout = String::new();
    while !stdout.contains("GUEST: ") {
        let n = out.read_line(&mut stdout).unwrap();
        assert_ne!(
            n, 0,
            "refvmm ended before the guest printed anything:\n{stdout}"
        );
    }
    // SAFETY: kill(2) on our own child's pid (not yet reaped), with a valid signal number.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) };
    out.read_to_string(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    let report = stdout.find("Exits by kind:").expect(&stdout);
    let result = stdout.find("GUEST: RESULT").expect(&stdout);
    assert!(
        report < result,
        "the report came before the guest's end:\n{stdout}"
    );
    // The signal comes at the guest's first line, before it programs any BAR: the device's
    // section is there, its ranges may not be yet.
    assert!(
        stdout[report..result].contains("Device 00:01.0 (sim"),
        "{stdout}"
    );
    assert_eq!(status.code(), Some(1), "{stdout}");
}
