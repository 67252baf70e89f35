//! `refvmm run` with the `pci_probe` guest on real KVM: the guest scans the bus through
//! 0xCF8/0xCFC, sizes and programs the BARs, enables MSI-X, stores to a mapped page (no exit)
//! and to a trapped register (one exit), and receives the MSI-X interrupt that store raises.
//! Skipped with a reason without /dev/kvm (failing instead when REQUIRE_KVM=1).

mod common;

use common::{Run, guest, refvmm_run};

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
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--device",
        "sim",
        "--show-counters",
        "--show-mtree",
        "--timeout",
        "30",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    for step in ALL_STEPS {
        r.passed(step);
    }
    assert!(
        r.stdout.contains("  pci 00:00.0 1b36:0008 class 06:00:00"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("  pci 00:01.0 1b36:0010 class 01:08:02"),
        "{}",
        r.all()
    );
    // The trapped register: exactly one exit on its range.
    let regs = r.range("00:01.0 BAR0 +0x0 (host does not allow mmap)");
    assert_eq!(
        (Run::field(regs, "writes"), Run::field(regs, "reads")),
        (1, 0),
        "{regs}"
    );
    // The mapped page is a memory slot over the device's mmap...
    assert!(
        r.step("mapped-page").contains("at 0xc0001000"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains(
            "slot 1 0xc0001000-0xc0001fff host write-traps=0 \"00:01.0 BAR0 mmap +0x1000\""
        ),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains(
            "  00000000c0001000-00000000c0001fff (prio 0, ramd): 00:01.0 BAR0 mmap +0x1000\n"
        ),
        "{}",
        r.all()
    );
    // ...and every MMIO exit is accounted for by trapped ranges: 5 writes and 4 reads of the MSI-X
    // table, and the register store. None came from the page's store and load.
    let msix = r.range("00:01.0 BAR0 msix-table");
    assert_eq!(
        (Run::field(msix, "writes"), Run::field(msix, "reads")),
        (5, 4),
        "{msix}"
    );
    assert_eq!(r.exits("mmio-write"), 5 + 1, "{}", r.all());
    assert_eq!(r.exits("mmio-read"), 4, "{}", r.all());
    assert!(r.stdout.contains("unhandled-mmio=0"), "{}", r.all());
    // The interrupt went through the kernel: vector 0's eventfd is bound to a KVM irqfd, and
    // refvmm delivered nothing itself.
    assert!(
        r.stdout
            .contains("msix-irqfd-vectors=1 msix-pending-delivered=0"),
        "{}",
        r.all()
    );
    // The device's own flat view, as `info mtree -f` prints it.
    assert!(
        r.stdout.contains("FlatView (memory) of 00:01.0"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains(
            "  00000000c0001000-00000000c0001fff (prio 0, ramd): 00:01.0 BAR0 mmap +0x1000"
        ),
        "{}",
        r.all()
    );
}

/// With `--policy trap-all` nothing is mapped: the same guest store and load to the "mapped"
/// page now cost one exit each, which is how a user traces every device access.
#[test]
fn trap_all_policy_traps_the_page_that_was_mapped() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--device",
        "sim",
        "--policy",
        "trap-all",
        "--show-counters",
        "--timeout",
        "30",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    for step in ALL_STEPS {
        r.passed(step);
    }
    assert!(
        !r.stdout.contains("BAR0 mmap"),
        "nothing mapped:\n{}",
        r.all()
    );
    let pages = r.range("00:01.0 BAR0 +0x0 (trap-all policy)");
    // The register store, plus the page's store and load.
    assert_eq!(
        (Run::field(pages, "writes"), Run::field(pages, "reads")),
        (2, 1),
        "{pages}"
    );
    assert_eq!(r.exits("mmio-write"), 5 + 2, "{}", r.all());
}

#[test]
fn pci_probe_passes_with_the_test_function_and_the_counters_agree() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--device",
        "test",
        "--show-counters",
        "--show-mtree",
        "--timeout",
        "30",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    for step in ALL_STEPS {
        r.passed(step);
    }
    assert!(
        r.stdout.contains("GUEST: RESULT PASS program=pci_probe"),
        "{}",
        r.all()
    );
    // The scan saw the host bridge at 00:00.0 and the device at 00:01.0.
    assert!(
        r.stdout.contains("  pci 00:00.0 1b36:0008 class 06:00:00"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("  pci 00:01.0 1b36:0005"), "{}", r.all());
    assert!(
        r.stderr.contains("guest exit status 0 (pass)"),
        "{}",
        r.all()
    );

    // The trapped register: exactly one exit, a write.
    let regs = r.range("00:01.0 BAR0 registers");
    assert_eq!(
        (Run::field(regs, "writes"), Run::field(regs, "reads")),
        (1, 0),
        "{regs}"
    );
    // The mapped page is a memory slot, and no trapped range covers it...
    let page = r.step("mapped-page");
    assert!(page.contains("at 0xc0001000"), "{page}");
    assert!(
        r.stdout
            .contains("0xc0001000-0xc0001fff file write-traps=0 \"00:01.0 BAR0 memory\""),
        "{}",
        r.all()
    );
    // ...so every MMIO exit is accounted for by the trapped ranges: the MSI-X table (5 writes and
    // 4 reads for one entry, the guest README says) and the one register store. The page's store
    // and load caused none.
    let msix = r.range("00:01.0 BAR0 msix");
    assert_eq!(
        (Run::field(msix, "writes"), Run::field(msix, "reads")),
        (5, 4),
        "{msix}"
    );
    assert_eq!(r.exits("mmio-write"), 5 + 1, "{}", r.all());
    assert_eq!(r.exits("mmio-read"), 4, "{}", r.all());
    assert!(r.stdout.contains("unhandled-mmio=0"), "{}", r.all());
    // The interrupt came from the test function's doorbell.
    assert!(
        r.stdout
            .contains("doorbells=1 msi-delivered=1 msi-refused=0"),
        "{}",
        r.all()
    );
    // The flat view lists the bus, then shows the device's mapped page as QEMU would.
    assert!(
        r.stdout
            .contains("PCI bus 0 (conf1 at 0xcf8, ECAM at 0xb0000000):\n  00:00.0 "),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .contains("  00000000c0001000-00000000c0001fff (prio 0, ramd): 00:01.0 BAR0 memory\n"),
        "{}",
        r.all()
    );
}

#[test]
fn a_guest_that_keeps_the_vmm_placed_bars_finds_them_where_refvmm_put_them() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--cmdline",
        "bars=keep",
        "--device",
        "test",
        "--timeout",
        "30",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let bars = r.step("bars");
    assert!(bars.contains("kept where they were"), "{bars}");
    // refvmm placed BAR0 at the bottom of the 32-bit window and said so.
    assert!(
        r.stderr
            .contains("BAR0 mem32 [0xc0000000-0xc0003fff] size 0x4000 (32-bit window)"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .contains("00:01.0 BAR0 mem32 size 0x4000 at 0xc0000000"),
        "{}",
        r.all()
    );
    r.passed("msix-interrupt");
}

/// `kill -USR1` prints the reports while the guest runs. The guest waits 2 s for an interrupt
/// that never comes (BAR0+0x10 is no doorbell), so the signal lands mid-run.
#[test]
fn sigusr1_prints_the_reports_while_the_guest_runs() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_refvmm"))
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
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid, with a valid signal number.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout.find("Exits by kind:").expect(&stdout);
    let result = stdout.find("GUEST: RESULT").expect(&stdout);
    assert!(
        report < result,
        "the report came before the guest's end:\n{stdout}"
    );
    assert!(stdout.contains("FlatView (memory) of 00:01.0"), "{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
}
