//! The reports of `refvmm run --show-mtree / --show-counters` (and SIGUSR1).
//!
//! `--show-mtree` is a flat view of guest physical memory like QEMU's `info mtree -f`: every
//! memory slot (RAM and mapped BAR pages: guest accesses cause no exit) and every MMIO range on
//! the device bus (trapped: each access is an exit), sorted by address, then, per device, only the
//! BARs the flat view cannot show (not decoded, refused, unassigned). `--show-counters` gives exits by kind, then per trapped range the reads and
//! writes dispatched to it, then the memory slots (which never count accesses: that is the point
//! of mapping them), then each device's own counters. One line per item, `key=value` fields and
//! the name in quotes at the end, so scripts and tests can pick lines out.

use std::fmt::Write as _;

use kvm_runloop::{BackingKind, BusKind, MemoryAccess, Vm};
use trap_map::{MtreeKind, mtree_line};

use crate::devices::Attached;
use crate::pci::{CONF1_PORT, ECAM_BASE, PciBus};

/// The functions on the bus, then the flat memory view, then what each device's own view adds.
pub fn mtree(vm: &Vm, pci: &PciBus, attached: &[Attached]) -> String {
    let mut out = format!("PCI bus 0 (conf1 at {CONF1_PORT:#x}, ECAM at {ECAM_BASE:#x}):\n");
    out.push_str(&bus_listing(pci));
    let mut rows: Vec<(u64, u64, MtreeKind, String)> = Vec::new();
    for r in vm.slots().regions() {
        let kind = match (r.backing, r.access) {
            (_, MemoryAccess::ReadOnly) => MtreeKind::RomDevice,
            (BackingKind::GuestRam | BackingKind::Anonymous, _) => MtreeKind::Ram,
            // A file or caller-owned mapping: a BAR mmap (the passthrough device maps its
            // VFIO regions itself and hands the slots their host addresses).
            (BackingKind::File { .. } | BackingKind::Host, _) => MtreeKind::RamDevice,
        };
        rows.push((r.guest_addr, r.size, kind, r.name));
    }
    for d in vm.bus().device_counts() {
        if d.bus == BusKind::Mmio {
            rows.push((d.base, d.size, MtreeKind::Io, d.name));
        }
    }
    rows.sort_by_key(|r| r.0);
    out.push_str(
        "FlatView (guest physical memory; i/o ranges exit to refvmm, ram/ramd ranges do not)\n",
    );
    let flat: Vec<String> = rows
        .into_iter()
        .map(|(base, size, kind, name)| mtree_line(base, base + size - 1, kind, &name))
        .collect();
    for line in &flat {
        let _ = writeln!(out, "{line}");
    }
    out.push_str(&host_pages(vm));
    // Each device's own view adds only what the flat view cannot show (BARs not decoded,
    // refused, or unassigned): its live ranges are already above, once.
    for a in attached {
        let extra: Vec<String> = a
            .handle
            .mtree()
            .lines()
            .filter(|l| !flat.iter().any(|f| f == l) && !l.starts_with("FlatView ("))
            .map(str::to_string)
            .collect();
        if !extra.is_empty() {
            let _ = writeln!(out, "device {} ({}):", a.bdf.short(), a.spec);
            for line in extra {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

/// Which host page size backs each memory slot, as /proc/self/smaps says now (huge pages make
/// KVM's and the IOMMU's mappings larger too): `pages=unknown(pfnmap)` for a VFIO BAR, whose
/// page-table level the kernel does not report.
fn host_pages(vm: &Vm) -> String {
    let mut out = String::from(
        "Host pages behind each memory slot (/proc/self/smaps, read at report time)
",
    );
    for r in vm.slots().regions() {
        let pages = kvm_runloop::HostPages::of(r.host_addr, r.size)
            .map_or_else(|| "pages=unknown".to_string(), |p| p.to_string());
        let _ = writeln!(
            out,
            "  {:#x}-{:#x} in slot {}: host {:#x} {pages} \"{}\"",
            r.guest_addr,
            r.guest_addr + r.size - 1,
            r.slot.0,
            r.host_addr,
            r.name
        );
    }
    out
}

/// One line per function on the bus, named as lspci names it (PCI ID database), with what
/// refvmm put there: `  00:01.0 Non-Volatile memory controller: ... [1b36:0010] (sim:nvme)`.
pub fn bus_listing(pci: &PciBus) -> String {
    let mut out = String::new();
    for (bdf, name, function) in pci.functions() {
        let mut function = function.lock().unwrap_or_else(|p| p.into_inner());
        let what = crate::pci_names::describe_function(function.as_mut());
        let _ = writeln!(out, "  {} {what} ({name})", bdf.short());
    }
    out
}

/// The counters.
pub fn counters(vm: &Vm, attached: &[Attached]) -> String {
    let mut out = String::from("Exits by kind:\n");
    let counts = vm.exit_counts();
    for (kind, n) in counts.nonzero() {
        let _ = writeln!(out, "  exit {:<16} {n}", kind.name());
    }
    let b = counts.bus;
    let _ = writeln!(
        out,
        "  bus unhandled-pio={} unhandled-mmio={} read-only-writes={} device-errors={} device-panics={}",
        b.unhandled_pio, b.unhandled_mmio, b.read_only_writes, b.device_errors, b.device_panics
    );
    out.push_str("Trapped ranges (every access is an exit):\n");
    let mut ranges = vm.bus().device_counts();
    ranges.sort_by_key(|d| (d.bus == BusKind::Mmio, d.base));
    for d in ranges {
        let _ = writeln!(
            out,
            "  {} {:#x}-{:#x} reads={} writes={} errors={} panics={}{} \"{}\"",
            if d.bus == BusKind::Mmio {
                "MMIO"
            } else {
                "PIO "
            },
            d.base,
            d.base + d.size - 1,
            d.reads,
            d.writes,
            d.errors,
            d.panics,
            if d.fenced { " FENCED" } else { "" },
            d.name
        );
    }
    out.push_str("Memory slots (accesses cause no exit):\n");
    for r in vm.slots().regions() {
        let _ = writeln!(
            out,
            "  slot {} {:#x}-{:#x} {} write-traps={} \"{}\"",
            r.slot.0,
            r.guest_addr,
            r.guest_addr + r.size - 1,
            match r.backing {
                BackingKind::GuestRam => "guest-ram",
                BackingKind::Anonymous => "anonymous",
                BackingKind::File { .. } => "file",
                BackingKind::Host => "host",
            },
            r.write_traps,
            r.name
        );
    }
    for a in attached {
        let fields: Vec<String> = a
            .handle
            .counters()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "Device {} ({}): {}",
            a.bdf.short(),
            a.spec,
            fields.join(" ")
        );
    }
    out
}
