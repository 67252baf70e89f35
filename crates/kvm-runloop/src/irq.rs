//! Interrupts into the guest with the in-kernel irqchip: the GSI routing table, irqfds and MSIs.
//!
//! `KVM_SET_GSI_ROUTING` replaces the *whole* table, so this module keeps the full table and
//! re-sends it on every change; [`Interrupts::apply_msi_routes`] makes many changes (a guest
//! enabling 2,048 MSI-X vectors) one update. It starts with the routes KVM installs by itself when the irqchip
//! is created (GSI 0-15 to the PIC and IOAPIC pin of the same number, 16-23 to the IOAPIC), so
//! adding an MSI route does not silently unroute the legacy interrupts. The kernel swaps tables
//! under RCU: updates are safe while vCPUs run and while irqfds fire. A failed update leaves both
//! the kernel's table and ours unchanged.
//!
//! A passthrough device gets one GSI per MSI/MSI-X vector, routed to the vector's message in the
//! same step ([`Interrupts::add_msi_route`]), moves the route ([`Interrupts::set_msi_route`])
//! whenever the guest reprograms the vector, and binds the VFIO interrupt eventfd to it with [`Interrupts::register_irqfd`]: from
//! then on, device interrupts reach the guest without passing through userspace. Level-triggered
//! INTx uses [`Interrupts::register_irqfd_with_resample`]: KVM de-asserts the line when the guest
//! EOIs and signals the resample fd, which the VMM uses to unmask INTx at the device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry, kvm_msi,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};

/// First GSI [`Interrupts::add_msi_route`] hands out: 0-23 belong to the PIC/IOAPIC pins.
pub const FIRST_MSI_GSI: u32 = 24;

/// An MSI message: what a device writes, and where, to raise an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (on x86, `0xfee0_0000 | destination APIC id << 12 | ...`).
    pub address: u64,
    /// Message data (on x86, the vector in bits 0-7 and the delivery mode in bits 8-10).
    pub data: u32,
}

impl MsiMessage {
    /// A fixed-delivery, edge-triggered x86 MSI to local APIC `apic_id` with `vector`.
    pub fn x86(apic_id: u8, vector: u8) -> Self {
        MsiMessage {
            address: 0xfee0_0000 | (u64::from(apic_id) << 12),
            data: u32::from(vector),
        }
    }
}

/// One change to the MSI routes, for [`Interrupts::apply_msi_routes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiRouteChange {
    /// Route the lowest free GSI from [`FIRST_MSI_GSI`] up to this message.
    Add(MsiMessage),
    /// Point this GSI at this message.
    Set(u32, MsiMessage),
    /// Remove this GSI's route.
    Remove(u32),
}

/// Where a GSI is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To pins of the in-kernel PIC and/or IOAPIC (legacy lines).
    Irqchip {
        /// The PIC pin, if the GSI also drives the PIC (GSIs 0-15).
        pic: Option<u32>,
        /// The IOAPIC pin.
        ioapic: u32,
    },
    /// An MSI message.
    Msi(MsiMessage),
}

/// The in-kernel irqchip interface of a VM: routes, irqfds, MSIs. Get it from
/// [`Vm::interrupts`](crate::Vm::interrupts).
pub struct Interrupts {
    vm: Arc<VmFd>,
    max_gsi: u32,
    table: Mutex<BTreeMap<u32, Route>>,
}

impl std::fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupts")
            .field("max_gsi", &self.max_gsi)
            .finish_non_exhaustive()
    }
}

impl Interrupts {
    pub(crate) fn new(vm: Arc<VmFd>, max_gsi: u32) -> Self {
        let mut table = BTreeMap::new();
        for gsi in 0..24 {
            table.insert(
                gsi,
                Route::Irqchip {
                    pic: (gsi < 16).then_some(gsi),
                    ioapic: gsi,
                },
            );
        }
        Interrupts {
            vm,
            max_gsi,
            table: Mutex::new(table),
        }
    }

    /// Routes `gsi` to an MSI message, replacing whatever it was routed to. An irqfd bound to the
    /// GSI delivers to the new message from now on (the guest moving a vector to another CPU).
    pub fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<()> {
        self.update(gsi, Some(Route::Msi(msg)))
    }

    /// Routes `gsi` to IOAPIC pin `ioapic` (and PIC pin `pic`).
    pub fn set_irqchip_route(&self, gsi: u32, pic: Option<u32>, ioapic: u32) -> Result<()> {
        self.update(gsi, Some(Route::Irqchip { pic, ioapic }))
    }

    /// Removes the route of `gsi`; signals on it are dropped until it is routed again.
    pub fn remove_route(&self, gsi: u32) -> Result<()> {
        self.update(gsi, None)
    }

    /// Routes the lowest unrouted GSI from [`FIRST_MSI_GSI`] up to `msg` and returns it, in one
    /// step under the table's lock: two devices programming vectors at once never get the same
    /// GSI (a free GSI handed out before it is routed could be handed out twice).
    pub fn add_msi_route(&self, msg: MsiMessage) -> Result<u32> {
        let mut table = self.lock();
        let gsi = (FIRST_MSI_GSI..self.max_gsi)
            .find(|g| !table.contains_key(g))
            .ok_or(Error::GsiExhausted { max: self.max_gsi })?;
        self.update_locked(&mut table, gsi, Some(Route::Msi(msg)))?;
        Ok(gsi)
    }

    /// Applies several changes with **one** `KVM_SET_GSI_ROUTING`, all or nothing: a guest
    /// enabling MSI-X on a function with 2,048 programmed vectors costs one table update, not
    /// 2,048 of them (each of which re-sends the whole table). Returns the GSI of each change,
    /// in order (the new one for [`MsiRouteChange::Add`]).
    pub fn apply_msi_routes(&self, changes: &[MsiRouteChange]) -> Result<Vec<u32>> {
        let mut table = self.lock();
        let mut next = table.clone();
        let mut gsis = Vec::with_capacity(changes.len());
        // GSIs below the cursor were found taken in this batch: searching from it keeps a
        // batch of adds linear instead of quadratic.
        let mut search_from = FIRST_MSI_GSI;
        for change in changes {
            let gsi = match *change {
                MsiRouteChange::Add(msg) => {
                    let gsi = (search_from..self.max_gsi)
                        .find(|g| !next.contains_key(g))
                        .ok_or(Error::GsiExhausted { max: self.max_gsi })?;
                    search_from = gsi + 1;
                    next.insert(gsi, Route::Msi(msg));
                    gsi
                }
                MsiRouteChange::Set(gsi, msg) => {
                    self.check_gsi(gsi)?;
                    next.insert(gsi, Route::Msi(msg));
                    gsi
                }
                MsiRouteChange::Remove(gsi) => {
                    next.remove(&gsi);
                    gsi
                }
            };
            gsis.push(gsi);
        }
        let first = gsis.first().copied().unwrap_or(0);
        self.send(&next, first)?;
        *table = next;
        Ok(gsis)
    }

    /// The current table, by GSI.
    pub fn routes(&self) -> Vec<(u32, Route)> {
        self.lock().iter().map(|(g, r)| (*g, *r)).collect()
    }

    /// Binds `fd` to `gsi`: each write to the eventfd raises the GSI in the kernel, with no
    /// userspace exit (how VFIO MSI/MSI-X vectors are delivered).
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.check_gsi(gsi)?;
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(|source| Error::Irqfd {
                op: "assign",
                gsi,
                source,
            })
    }

    /// Binds `fd` to a level-triggered `gsi`: a write asserts the line; when the guest EOIs it,
    /// KVM de-asserts it and signals `resample` (VFIO INTx: unmask the device then).
    pub fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<()> {
        self.check_gsi(gsi)?;
        self.vm
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(|source| Error::Irqfd {
                op: "assign with resample",
                gsi,
                source,
            })
    }

    /// Unbinds `fd` from `gsi`.
    pub fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(|source| Error::Irqfd {
                op: "deassign",
                gsi,
                source,
            })
    }

    /// Injects one MSI directly (`KVM_SIGNAL_MSI`), without a route. Returns `false` if the guest
    /// blocked it (for example: no APIC accepted the destination).
    pub fn signal_msi(&self, msg: MsiMessage) -> Result<bool> {
        let msi = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|delivered| delivered > 0)
            .map_err(|source| Error::SignalMsi {
                address: msg.address,
                data: msg.data,
                source,
            })
    }

    /// Sets the level of a legacy interrupt line (`KVM_IRQ_LINE`).
    pub fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        self.vm
            .set_irq_line(gsi, level)
            .map_err(|source| Error::IrqLine { gsi, source })
    }

    fn check_gsi(&self, gsi: u32) -> Result<()> {
        if gsi >= self.max_gsi {
            return Err(Error::GsiOutOfRange {
                gsi,
                max: self.max_gsi,
            });
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Route>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one change: builds the whole new table, sends it, and keeps it only on success.
    fn update(&self, gsi: u32, route: Option<Route>) -> Result<()> {
        self.check_gsi(gsi)?;
        self.update_locked(&mut self.lock(), gsi, route)
    }

    /// [`update`](Self::update) with the table already locked.
    fn update_locked(
        &self,
        table: &mut BTreeMap<u32, Route>,
        gsi: u32,
        route: Option<Route>,
    ) -> Result<()> {
        let mut next = table.clone();
        match route {
            Some(r) => next.insert(gsi, r),
            None => next.remove(&gsi),
        };
        self.send(&next, gsi)?;
        *table = next;
        Ok(())
    }

    /// Sends `table` to KVM as the whole routing table (`gsi` names the change, for errors).
    fn send(&self, table: &BTreeMap<u32, Route>, gsi: u32) -> Result<()> {
        let entries: Vec<kvm_irq_routing_entry> = table
            .iter()
            .flat_map(|(g, r)| routing_entries(*g, r))
            .collect();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| Error::GsiExhausted { max: self.max_gsi })?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|source| Error::GsiRouting {
                gsi,
                routes: entries.len(),
                source,
            })
    }
}

fn routing_entries(gsi: u32, route: &Route) -> Vec<kvm_irq_routing_entry> {
    let mut out = Vec::with_capacity(2);
    match route {
        Route::Irqchip { pic, ioapic } => {
            if let Some(pin) = pic {
                let (chip, pin) = if *pin < 8 {
                    (KVM_IRQCHIP_PIC_MASTER, *pin)
                } else {
                    (KVM_IRQCHIP_PIC_SLAVE, pin - 8)
                };
                out.push(irqchip_entry(gsi, chip, pin));
            }
            out.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, *ioapic));
        }
        Route::Msi(msg) => {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = msg.address as u32;
            e.u.msi.address_hi = (msg.address >> 32) as u32;
            e.u.msi.data = msg.data;
            out.push(e);
        }
    }
    out
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_msi_message_layout() {
        let m = MsiMessage::x86(3, 0x41);
        assert_eq!(m.address, 0xfee0_3000);
        assert_eq!(m.data, 0x41);
    }

    #[test]
    fn legacy_routes_match_the_kernel_default() {
        let e = routing_entries(
            9,
            &Route::Irqchip {
                pic: Some(9),
                ioapic: 9,
            },
        );
        assert_eq!(e.len(), 2);
        // SAFETY: irqchip entries were written through the `irqchip` member.
        let (a, b) = unsafe { (e[0].u.irqchip, e[1].u.irqchip) };
        assert_eq!((a.irqchip, a.pin), (KVM_IRQCHIP_PIC_SLAVE, 1));
        assert_eq!((b.irqchip, b.pin), (KVM_IRQCHIP_IOAPIC, 9));
    }
}
