//! [`KvmPorts`]: the three ports over a `kvm-runloop` [`Vm`]: BAR mappings become KVM memory
//! slots, trapped ranges go on its device bus, MSI routes and irqfds on its in-kernel irqchip.
//!
//! The adapter keeps every [`HostMapping`] it placed until KVM deleted the slot over it, so
//! device pages are never unmapped while the guest can reach them. Overlaps are the VM's to
//! refuse: its slots and bus share one [`AddressMap`](kvm_runloop::AddressMap), so a slot over
//! a trapped range, a trapped range over a slot, and anything over the VMM's reserved windows
//! or the ports the in-kernel irqchip serves are refused, whichever device placed them.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_runloop::{Interrupts, MemoryAccess, SlotId, Vm};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{
    BarMappingPort, BarRange, HostMapping, InterruptPort, MsiMessage, RouteChange, TrapAddress,
    TrapHandler, TrapPort,
};

/// The ports of one `kvm-runloop` VM (its slots, bus and irqchip). Pass one `Arc` of it as all
/// three (see [`AttachContext::new`](crate::AttachContext::new)); several devices share it.
pub struct KvmPorts {
    vm: Arc<Vm>,
    /// Slots this adapter added, by guest address, with the mapping each one points at.
    mappings: Mutex<BTreeMap<u64, (SlotId, Arc<HostMapping>)>>,
}

impl std::fmt::Debug for KvmPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmPorts").finish_non_exhaustive()
    }
}

impl KvmPorts {
    /// Ports over `vm` (interrupts need it created with `irqchip: true`).
    pub fn new(vm: Arc<Vm>) -> Self {
        Self {
            vm,
            mappings: Mutex::new(BTreeMap::new()),
        }
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    fn mappings(&self) -> MutexGuard<'_, BTreeMap<u64, (SlotId, Arc<HostMapping>)>> {
        self.mappings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn interrupts(&self) -> io::Result<&Interrupts> {
        self.vm.interrupts().map_err(io::Error::other)
    }
}

impl BarMappingPort for KvmPorts {
    fn map(
        &self,
        range: &BarRange,
        at: GuestAddress,
        mapping: &Arc<HostMapping>,
    ) -> io::Result<()> {
        let mut mappings = self.mappings();
        // SAFETY: `mapping` is a live, page-aligned MAP_SHARED mapping of `len()` bytes, and
        // it stays mapped until KVM deleted the slot: its `Arc` is kept in `mappings` until
        // `unmap` removed the slot, and leaked if the slot outlives this adapter (`Drop`).
        let slot = unsafe {
            self.vm.slots().add_host(
                &range.name,
                at.0,
                mapping.len(),
                mapping.as_ptr(),
                MemoryAccess::ReadWrite,
            )
        }
        .map_err(io::Error::other)?;
        mappings.insert(at.0, (slot, mapping.clone()));
        Ok(())
    }

    fn move_mapping(
        &self,
        range: &BarRange,
        from: GuestAddress,
        to: GuestAddress,
    ) -> io::Result<()> {
        let mut mappings = self.mappings();
        let (slot, mapping) = mappings
            .get(&from.0)
            .cloned()
            .ok_or_else(|| not_found(range, from.0))?;
        self.vm
            .slots()
            .move_region(slot, to.0)
            .map_err(io::Error::other)?;
        mappings.remove(&from.0);
        mappings.insert(to.0, (slot, mapping));
        Ok(())
    }

    fn unmap(&self, range: &BarRange, at: GuestAddress) -> io::Result<()> {
        let mut mappings = self.mappings();
        let (slot, _) = mappings.get(&at.0).ok_or_else(|| not_found(range, at.0))?;
        self.vm.slots().remove(*slot).map_err(io::Error::other)?;
        // Only now may the pages go (when the device drops its own `Arc` too).
        mappings.remove(&at.0);
        Ok(())
    }
}

impl Drop for KvmPorts {
    fn drop(&mut self) {
        // Slots still in place (a device never detached, or KVM refused a removal): the VM may
        // outlive this adapter and reach those pages, so they must never be unmapped and
        // reused. Leak them.
        for (_, (_, mapping)) in std::mem::take(&mut *self.mappings()) {
            std::mem::forget(mapping);
        }
    }
}

fn not_found(range: &BarRange, at: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("\"{range}\" is not mapped at {at:#x}"),
    )
}

impl TrapPort for KvmPorts {
    fn add_trap(&self, range: &BarRange, at: TrapAddress, handler: TrapHandler) -> io::Result<()> {
        let bus = self.vm.bus();
        match (at, handler) {
            (TrapAddress::Mmio(base), TrapHandler::Mmio(h)) => {
                bus.register_mmio(&range.name, base.0, range.len, h)
            }
            (TrapAddress::Pio(port), TrapHandler::Pio(h)) => {
                let len = u16::try_from(range.len).map_err(|_| too_big(range))?;
                bus.register_pio(&range.name, port, len, h)
            }
            _ => return Err(mismatch(range)),
        }
        .map_err(io::Error::other)
    }

    fn move_trap(&self, range: &BarRange, from: TrapAddress, to: TrapAddress) -> io::Result<()> {
        let bus = self.vm.bus();
        match (from, to) {
            (TrapAddress::Mmio(from), TrapAddress::Mmio(to)) => bus.move_mmio(from.0, to.0),
            (TrapAddress::Pio(from), TrapAddress::Pio(to)) => bus.move_pio(from, to),
            _ => return Err(mismatch(range)),
        }
        .map_err(io::Error::other)
    }

    fn remove_trap(&self, _range: &BarRange, at: TrapAddress) -> io::Result<()> {
        let bus = self.vm.bus();
        match at {
            TrapAddress::Mmio(base) => bus.unregister_mmio(base.0),
            TrapAddress::Pio(port) => bus.unregister_pio(port),
        }
        .map_err(io::Error::other)
    }
}

fn mismatch(range: &BarRange) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("\"{range}\": an MMIO handler must go at an MMIO address, a PIO one at a port"),
    )
}

fn too_big(range: &BarRange) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "\"{range}\": {:#x} bytes do not fit in I/O space",
            range.len
        ),
    )
}

fn kvm_msi(msg: MsiMessage) -> kvm_runloop::MsiMessage {
    kvm_runloop::MsiMessage {
        address: msg.address.0,
        data: msg.data,
    }
}

impl InterruptPort for KvmPorts {
    fn add_msi_route(&self, msg: MsiMessage) -> io::Result<u32> {
        self.interrupts()?
            .add_msi_route(kvm_msi(msg))
            .map_err(io::Error::other)
    }

    fn update_msi_route(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        self.interrupts()?
            .set_msi_route(gsi, kvm_msi(msg))
            .map_err(io::Error::other)
    }

    fn remove_route(&self, gsi: u32) -> io::Result<()> {
        self.interrupts()?
            .remove_route(gsi)
            .map_err(io::Error::other)
    }

    fn apply_msi_routes(&self, changes: &[RouteChange]) -> Vec<io::Result<u32>> {
        // One KVM_SET_GSI_ROUTING for all of them, all or nothing.
        let kvm_changes: Vec<kvm_runloop::MsiRouteChange> = changes
            .iter()
            .map(|c| match *c {
                RouteChange::Add(msg) => kvm_runloop::MsiRouteChange::Add(kvm_msi(msg)),
                RouteChange::Update(gsi, msg) => {
                    kvm_runloop::MsiRouteChange::Set(gsi, kvm_msi(msg))
                }
                RouteChange::Remove(gsi) => kvm_runloop::MsiRouteChange::Remove(gsi),
            })
            .collect();
        match self
            .interrupts()
            .and_then(|irq| irq.apply_msi_routes(&kvm_changes).map_err(io::Error::other))
        {
            Ok(gsis) => gsis.into_iter().map(Ok).collect(),
            Err(e) => {
                let why = e.to_string();
                changes
                    .iter()
                    .map(|_| Err(io::Error::new(e.kind(), why.clone())))
                    .collect()
            }
        }
    }

    fn add_irqfd(&self, gsi: u32, fd: &EventFd, resample: Option<&EventFd>) -> io::Result<()> {
        let irq = self.interrupts()?;
        match resample {
            Some(resample) => irq.register_irqfd_with_resample(fd, resample, gsi),
            None => irq.register_irqfd(fd, gsi),
        }
        .map_err(io::Error::other)
    }

    fn remove_irqfd(&self, gsi: u32, fd: &EventFd) -> io::Result<()> {
        self.interrupts()?
            .unregister_irqfd(fd, gsi)
            .map_err(io::Error::other)
    }

    fn signal_msi(&self, msg: MsiMessage) -> io::Result<bool> {
        self.interrupts()?
            .signal_msi(kvm_msi(msg))
            .map_err(io::Error::other)
    }
}
