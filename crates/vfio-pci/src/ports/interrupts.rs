//! [`InterruptPort`]: what the device needs from the VM's interrupt controller: MSI routes for
//! the guest's MSI/MSI-X messages, eventfds bound to them (irqfd), a resampled eventfd for
//! INTx, and single MSIs for pending vectors delivered on unmask.

use std::io;
use std::ops::Range;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// An MSI message as the guest programmed it: a write of `data` to the guest-physical
/// `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Where the device writes (on x86, in the local APIC window).
    pub address: GuestAddress,
    /// What it writes (on x86, the vector in bits 0-7).
    pub data: u32,
}

/// The guest-physical addresses an MSI message may target: the interrupt controller's
/// window. Any other address the guest programs leaves the vector unrouted, so a guest never
/// turns a device interrupt into a write elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsiWindow(pub Range<u64>);

impl MsiWindow {
    /// x86's local APIC window, `0xfee00000-0xfeefffff` (Intel SDM vol. 3, 11.11.1).
    pub fn x86() -> Self {
        MsiWindow(0xfee0_0000..0xfef0_0000)
    }

    /// Whether a message to `address` targets the window.
    pub fn contains(&self, address: GuestAddress) -> bool {
        self.0.contains(&address.0)
    }
}

impl std::fmt::Display for MsiWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}-{:#x}", self.0.start, self.0.end.saturating_sub(1))
    }
}

/// One change to the VM's MSI routes, for [`InterruptPort::apply_msi_routes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Allocate a free GSI and route it to the message (as [`InterruptPort::add_msi_route`]).
    Add(MsiMessage),
    /// Point an existing route at a new message (as [`InterruptPort::update_msi_route`]).
    Update(u32, MsiMessage),
    /// Remove a route and free its GSI (as [`InterruptPort::remove_route`]).
    Remove(u32),
}

/// GSI routing, irqfds and direct MSIs of one VM. Called from vCPU threads with `&self`;
/// several devices call it at once.
pub trait InterruptPort: Send + Sync {
    /// Picks a free GSI, routes it to `msg` and returns it, as **one atomic step**: two
    /// devices programming vectors at the same time must never get the same GSI.
    fn add_msi_route(&self, msg: MsiMessage) -> io::Result<u32>;

    /// Points an existing route at a new message (the guest moved the vector). An irqfd bound
    /// to `gsi` delivers the new message from then on.
    fn update_msi_route(&self, gsi: u32, msg: MsiMessage) -> io::Result<()>;

    /// Removes the route of `gsi` and frees it.
    fn remove_route(&self, gsi: u32) -> io::Result<()>;

    /// Applies the route changes one guest write caused (MSI-X enable or function unmask with
    /// every vector programmed: up to 2,048), returning each change's GSI in order. A VM whose
    /// routing table is replaced whole on every change (KVM's `KVM_SET_GSI_ROUTING`) should
    /// override this to send it once. The default applies them one by one.
    fn apply_msi_routes(&self, changes: &[RouteChange]) -> Vec<io::Result<u32>> {
        changes
            .iter()
            .map(|change| match *change {
                RouteChange::Add(msg) => self.add_msi_route(msg),
                RouteChange::Update(gsi, msg) => self.update_msi_route(gsi, msg).map(|()| gsi),
                RouteChange::Remove(gsi) => self.remove_route(gsi).map(|()| gsi),
            })
            .collect()
    }

    /// Binds `fd` to `gsi` (edge): each write raises it, with no exit to the VMM where the
    /// hypervisor can (`KVM_IRQFD`). With `resample`, the GSI is level-triggered (INTx): a write
    /// asserts it, and when the guest EOIs it the line is de-asserted and `resample` signalled.
    fn add_irqfd(&self, gsi: u32, fd: &EventFd, resample: Option<&EventFd>) -> io::Result<()>;

    /// Unbinds `fd` from `gsi`.
    fn remove_irqfd(&self, gsi: u32, fd: &EventFd) -> io::Result<()>;

    /// Injects one MSI now (a pending vector delivered on unmask). `Ok(false)` when no CPU
    /// accepted it.
    fn signal_msi(&self, msg: MsiMessage) -> io::Result<bool>;
}
