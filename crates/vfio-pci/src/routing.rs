//! [`InterruptRouting`]: what the passthrough device needs from the VM's interrupt controller.
//!
//! Implemented for kvm-runloop's [`Interrupts`] and for a whole [`Vm`] (which owns its
//! `Interrupts`), so a VMM holding an `Arc<Vm>` passes it as is; another VMM implements the
//! seven methods over its own irqchip code.

use kvm_runloop::{Interrupts, MsiMessage, Vm};
use vmm_sys_util::eventfd::EventFd;

/// GSI routing, irqfds and direct MSIs of one VM (see kvm-runloop's [`Interrupts`] for the
/// semantics). All methods take `&self` and are called from vCPU threads.
pub trait InterruptRouting: Send + Sync {
    /// A free GSI for an MSI route; it stays free until routed, so route it at once.
    fn allocate_gsi(&self) -> kvm_runloop::Result<u32>;
    /// Routes `gsi` to an MSI message (replacing its route).
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> kvm_runloop::Result<()>;
    /// Removes the route of `gsi` (frees the GSI).
    fn remove_route(&self, gsi: u32) -> kvm_runloop::Result<()>;
    /// Binds an eventfd to `gsi` (`KVM_IRQFD`).
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> kvm_runloop::Result<()>;
    /// Binds an eventfd and a resample eventfd to a level-triggered `gsi`.
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> kvm_runloop::Result<()>;
    /// Unbinds an eventfd from `gsi`.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> kvm_runloop::Result<()>;
    /// Injects one MSI (`KVM_SIGNAL_MSI`); `false` when no CPU accepted it.
    fn signal_msi(&self, msg: MsiMessage) -> kvm_runloop::Result<bool>;
}

impl InterruptRouting for Interrupts {
    fn allocate_gsi(&self) -> kvm_runloop::Result<u32> {
        Interrupts::allocate_gsi(self)
    }
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> kvm_runloop::Result<()> {
        Interrupts::set_msi_route(self, gsi, msg)
    }
    fn remove_route(&self, gsi: u32) -> kvm_runloop::Result<()> {
        Interrupts::remove_route(self, gsi)
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> kvm_runloop::Result<()> {
        Interrupts::register_irqfd(self, fd, gsi)
    }
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> kvm_runloop::Result<()> {
        Interrupts::register_irqfd_with_resample(self, fd, resample, gsi)
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> kvm_runloop::Result<()> {
        Interrupts::unregister_irqfd(self, fd, gsi)
    }
    fn signal_msi(&self, msg: MsiMessage) -> kvm_runloop::Result<bool> {
        Interrupts::signal_msi(self, msg)
    }
}

impl InterruptRouting for Vm {
    fn allocate_gsi(&self) -> kvm_runloop::Result<u32> {
        self.interrupts()?.allocate_gsi()
    }
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> kvm_runloop::Result<()> {
        self.interrupts()?.set_msi_route(gsi, msg)
    }
    fn remove_route(&self, gsi: u32) -> kvm_runloop::Result<()> {
        self.interrupts()?.remove_route(gsi)
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> kvm_runloop::Result<()> {
        self.interrupts()?.register_irqfd(fd, gsi)
    }
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> kvm_runloop::Result<()> {
        self.interrupts()?
            .register_irqfd_with_resample(fd, resample, gsi)
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> kvm_runloop::Result<()> {
        self.interrupts()?.unregister_irqfd(fd, gsi)
    }
    fn signal_msi(&self, msg: MsiMessage) -> kvm_runloop::Result<bool> {
        self.interrupts()?.signal_msi(msg)
    }
}
