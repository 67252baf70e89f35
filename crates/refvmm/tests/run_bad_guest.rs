//! Bad guest input, guest-driven on real KVM: a guest that programs BARs over its own RAM, or
//! points an MSI-X entry at an absurd address. refvmm keeps running, never maps a device page
//! over RAM, never injects the absurd message, and reports the guest's verdict.
//!
//! `irq-timeout-ms=0`: the interrupt the guest waits for cannot come in these runs, and a zero
//! wait ends without `hlt` (the guest checks its deadline before it idles).

mod common;

use common::{Run, guest, refvmm_run};

#[test]
fn bars_programmed_over_guest_ram_are_not_decoded_and_ram_stays_ram() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--cmdline",
        "mmio=0x1000000 mmio-end=0x2000000 irq-timeout-ms=0",
        "--device",
        "test",
        "--show-counters",
        "--show-mtree",
        "--timeout",
        "30",
    ]);
    // The guest placed BAR0 at 16 MiB, inside its 64 MiB of RAM...
    assert!(
        r.stdout
            .contains("00:01.0 BAR0 mem32 size 0x4000 at 0x1000000"),
        "{}",
        r.all()
    );
    // ...refvmm said no and why...
    assert!(
        r.stderr.contains(
            "BAR0 programmed at 0x1000000-0x1003fff, over guest RAM 0x0-0x3ffffff: not decoded"
        ),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("00:01.0 BAR0: not decoded"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("bar-placements-refused=1"), "{}", r.all());
    // ...no device page is mapped or trapped there: the guest's stores went to its own RAM (so
    // they "pass" and read back) and caused no exit, and the doorbell never rang.
    assert!(!r.stdout.contains("\"00:01.0 BAR0 memory\""), "{}", r.all());
    assert!(
        !r.stdout.contains("\"00:01.0 BAR0 registers\""),
        "{}",
        r.all()
    );
    assert_eq!(
        r.exits("mmio-write") + r.exits("mmio-read"),
        0,
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("slot 0 0x0-0x3ffffff guest-ram"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("doorbells=0"), "{}", r.all());
    assert!(r.step("msix-interrupt").contains(" FAIL "), "{}", r.all());
    // The VMM ran the guest to its end and passed its verdict on: status 1 (fail).
    assert!(r.stdout.contains("GUEST: RESULT FAIL"), "{}", r.all());
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("guest exit status 1 (fail)"),
        "{}",
        r.all()
    );
}

#[test]
fn the_passthrough_device_refuses_to_map_its_bar_over_guest_ram() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--cmdline",
        "mmio=0x1000000 mmio-end=0x2000000 irq-timeout-ms=0",
        "--device",
        "sim",
        "--show-counters",
        "--show-mtree",
        "--timeout",
        "30",
    ]);
    assert!(
        r.stdout
            .contains("00:01.0 BAR0 mem64 size 0x4000 at 0x1000000"),
        "{}",
        r.all()
    );
    assert!(
        r.stderr
            .contains("the guest placed BAR0 at 0x1000000 but it cannot be mapped there"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .contains("00:01.0 BAR0: not mapped: refused at 0x1000000"),
        "{}",
        r.all()
    );
    // Only guest RAM is in the memory map, and no trapped range of the device was registered.
    assert!(
        r.stdout.contains("slot 0 0x0-0x3ffffff guest-ram"),
        "{}",
        r.all()
    );
    assert!(!r.stdout.contains("BAR0 mmap"), "{}", r.all());
    assert!(!r.stdout.contains("MMIO 0x100"), "{}", r.all());
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.step("msix-interrupt").contains(" FAIL "), "{}", r.all());
}

#[test]
fn an_msix_entry_with_an_absurd_address_is_not_injected() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // After programming entry 0 properly, the guest overwrites its address with 0x12345000
    // (`poke` into the MSI-X table at BAR0+0x2000), then rings the doorbell.
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--cmdline",
        "poke=0:0x2000=0x12345000 irq-timeout-ms=0",
        "--device",
        "test",
        "--show-counters",
        "--timeout",
        "30",
    ]);
    assert!(
        r.stderr
            .contains("MSI-X message to 0x12345000 (data 0x30) not delivered"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .contains("doorbells=1 msi-delivered=0 msi-refused=1"),
        "{}",
        r.all()
    );
    let regs = r.range("00:01.0 BAR0 registers");
    assert_eq!(Run::field(regs, "writes"), 1, "{regs}");
    assert!(r.step("msix-interrupt").contains(" FAIL "), "{}", r.all());
    assert_eq!(r.code, 1, "{}", r.all());
}

#[test]
fn a_guest_still_running_at_the_time_limit_is_stopped() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // The guest waits a minute for an interrupt that never comes; the limit is half a second.
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--cmdline",
        "trap=0:0x10 irq-timeout-ms=60000",
        "--device",
        "sim",
        "--timeout",
        "0.5",
    ]);
    assert_eq!(r.code, 124, "{}", r.all());
    assert!(
        r.stderr
            .contains("time limit of 0.5s reached; the guest was stopped at RIP 0x"),
        "{}",
        r.all()
    );
    assert!(!r.stdout.contains("GUEST: RESULT"), "{}", r.all());
}

#[test]
fn a_register_that_raises_nothing_fails_the_guest_after_its_wait() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // BAR0+0x10 is no doorbell: no interrupt comes, and the guest's 20 ms wait must end on its
    // own (it sleeps in `hlt` between APIC timer ticks; see tests/guests/src/lapic.rs on the
    // periodic timer of this KVM).
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--cmdline",
        "trap=0:0x10 irq-timeout-ms=20",
        "--device",
        "sim",
        "--timeout",
        "30",
    ]);
    // The guest reports the wait it measured (20 ms or a tick more), so match the verdict only.
    let step = r.step("msix-interrupt");
    assert!(
        step.contains(" FAIL ") && step.contains("no interrupt on vector 0x30 within "),
        "{}",
        r.all()
    );
    assert_eq!(r.code, 1, "{}", r.all());
}

#[test]
fn the_passthrough_device_leaves_an_absurd_msix_address_unrouted() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&[
        "--guest",
        &guest("pci_probe"),
        "--cmdline",
        "poke=0:0x2000=0x12345000 irq-timeout-ms=0",
        "--device",
        "sim",
        "--show-counters",
        "--timeout",
        "30",
    ]);
    assert!(
        r.stderr
            .contains("MSI-X vector 0: the guest programmed MSI address 0x12345000"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("msi-routes-refused=1"), "{}", r.all());
    // The doorbell still trapped once; no interrupt reached the guest; the VMM ran on.
    let regs = r.range("00:01.0 BAR0 +0x0 (host does not allow mmap)");
    assert_eq!(Run::field(regs, "writes"), 1, "{regs}");
    assert!(r.step("msix-interrupt").contains(" FAIL "), "{}", r.all());
    assert_eq!(r.code, 1, "{}", r.all());
}
