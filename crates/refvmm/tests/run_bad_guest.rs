//! Bad guest input, guest-driven on real KVM: a guest that programs BARs over its own RAM or
//! over refvmm's ECAM window, or points an MSI-X entry at an absurd address. refvmm keeps running, never maps a device page
//! over RAM, never injects the absurd message, and reports the guest's verdict.
//!
//! `irq-timeout-ms=0`: the interrupt the guest waits for cannot come in these runs, and a zero
//! wait ends without `hlt` (the guest checks its deadline before it idles).

mod common;

use common::{guest, probe, refvmm_run};

/// Where the guest places its BARs in these runs: at 16 MiB, inside its 64 MiB of RAM.
const BARS_IN_RAM: &str = "mmio=0x1000000 mmio-end=0x2000000 irq-timeout-ms=0";
/// Where the guest places its BARs in this run: over refvmm's ECAM window at 0xb000_0000.
const BARS_OVER_ECAM: &str = "mmio=0xb0000000 mmio-end=0xb0100000 irq-timeout-ms=0";
/// After programming MSI-X entry 0 properly, the guest overwrites its address with 0x12345000
/// (`poke` into the MSI-X table at BAR0+0x2000), then rings the doorbell.
const ABSURD_MSIX_ADDRESS: &str = "poke=0:0x2000=0x12345000 irq-timeout-ms=0";

#[test]
fn bars_programmed_over_guest_ram_are_not_decoded_and_ram_stays_ram() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe(
        "test",
        &["--cmdline", BARS_IN_RAM, "--show-counters", "--show-mtree"],
    );
    // The guest placed BAR0 at 16 MiB, inside its 64 MiB of RAM...
    r.stdout_has("00:01.0 BAR0 mem32 size 0x4000 at 0x1000000");
    // ...refvmm said no and why...
    r.stderr_has(
        "BAR0 programmed at 0x1000000-0x1003fff, over guest RAM 0x0-0x3ffffff: not decoded",
    );
    r.stdout_has("00:01.0 BAR0: not decoded");
    r.stdout_has("bar-placements-refused=1");
    // ...no device page is mapped or trapped there: the guest's stores went to its own RAM (so
    // they "pass" and read back) and caused no exit, and the doorbell never rang.
    r.stdout_lacks("\"00:01.0 BAR0 memory\"");
    r.stdout_lacks("\"00:01.0 BAR0 registers\"");
    assert_eq!(
        r.exits("mmio-write") + r.exits("mmio-read"),
        0,
        "{}",
        r.all()
    );
    r.stdout_has("slot 0 0x0-0x3ffffff guest-ram");
    r.stdout_has("doorbells=0");
    r.failed("msix-interrupt");
    // The VMM ran the guest to its end and passed its verdict on: status 1 (fail).
    r.stdout_has("GUEST: RESULT FAIL");
    r.exited_with(1);
    r.stderr_has("guest exit status 1 (fail)");
}

#[test]
fn the_passthrough_device_refuses_to_map_its_bar_over_guest_ram() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe(
        "sim",
        &["--cmdline", BARS_IN_RAM, "--show-counters", "--show-mtree"],
    );
    r.stdout_has("00:01.0 BAR0 mem64 size 0x4000 at 0x1000000");
    r.stderr_has("the guest placed BAR0 at 0x1000000 but it cannot be mapped there");
    r.stdout_has("00:01.0 BAR0: not mapped: refused at 0x1000000");
    // Only guest RAM is in the memory map, and no trapped range of the device was registered.
    r.stdout_has("slot 0 0x0-0x3ffffff guest-ram");
    // (The refusal message names the region "00:01.0 BAR0 mmap +0x1000" it could not add, so
    // look at the slots and the flat view's mapped-device rows, not for the name.)
    assert_eq!(r.slots().len(), 1, "{}", r.all());
    r.stdout_lacks("(prio 0, ramd)");
    r.stdout_lacks("MMIO 0x100");
    r.exited_with(1);
    r.failed("msix-interrupt");
}

#[test]
fn the_passthrough_device_refuses_to_map_its_bar_over_the_ecam_window() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe(
        "sim",
        &[
            "--cmdline",
            BARS_OVER_ECAM,
            "--show-counters",
            "--show-mtree",
        ],
    );
    r.stdout_has("00:01.0 BAR0 mem64 size 0x4000 at 0xb0000000");
    r.stderr_has("the guest placed BAR0 at 0xb0000000 but it cannot be mapped there");
    r.stdout_has("refused at 0xb0000000 (it would overlap the ECAM window");
    // ECAM keeps its window: no device page is mapped or trapped there.
    assert_eq!(r.slots().len(), 1, "{}", r.all());
    r.stdout_lacks("(prio 0, ramd)");
    r.stdout_has("MMIO 0xb0000000-0xbfffffff");
    r.stdout_lacks("\"00:01.0 BAR0 msix-table\"");
    r.exited_with(1);
    r.failed("msix-interrupt");
}

#[test]
fn an_msix_entry_with_an_absurd_address_is_not_injected() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe(
        "test",
        &["--cmdline", ABSURD_MSIX_ADDRESS, "--show-counters"],
    );
    r.stderr_has("MSI-X message to 0x12345000 (data 0x30) not delivered");
    r.stdout_has("doorbells=1 msi-delivered=0 msi-refused=1");
    assert_eq!(r.range_counts("00:01.0 BAR0 registers").1, 1, "{}", r.all());
    r.failed("msix-interrupt");
    r.exited_with(1);
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
    r.exited_with(124);
    r.stderr_has("time limit of 0.5s reached; the guest was stopped at RIP 0x");
    r.stdout_lacks("GUEST: RESULT");
}

#[test]
fn a_register_that_raises_nothing_fails_the_guest_after_its_wait() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // BAR0+0x10 is no doorbell: no interrupt comes, and the guest's 20 ms wait must end on its
    // own (it sleeps in `hlt` between APIC timer ticks; see tests/guests/src/lapic.rs on the
    // periodic timer of this KVM).
    let r = probe("sim", &["--cmdline", "trap=0:0x10 irq-timeout-ms=20"]);
    // The guest reports the wait it measured (20 ms or a tick more), so match the verdict only.
    r.failed("msix-interrupt");
    let step = r.step("msix-interrupt");
    assert!(
        step.contains("no interrupt on vector 0x30 within "),
        "{}",
        r.all()
    );
    r.exited_with(1);
}

#[test]
fn the_passthrough_device_leaves_an_absurd_msix_address_unrouted() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = probe(
        "sim",
        &["--cmdline", ABSURD_MSIX_ADDRESS, "--show-counters"],
    );
    r.stderr_has("MSI-X vector 0: the guest programmed MSI address 0x12345000");
    r.stdout_has("msi-routes-refused=1");
    // The doorbell still trapped once; no interrupt reached the guest; the VMM ran on.
    assert_eq!(
        r.range_counts("00:01.0 BAR0 +0x0 (host does not allow mmap)")
            .1,
        1,
        "{}",
        r.all()
    );
    r.failed("msix-interrupt");
    r.exited_with(1);
}
