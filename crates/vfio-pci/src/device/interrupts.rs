//! Interrupt wiring: the guest's MSI-X and MSI programming becomes VFIO eventfds bound to the
//! VM's irqfds with MSI routes (through the [`InterruptPort`]); INTx is an eventfd plus a
//! resample fd on a GSI the VMM chose.
//!
//! The guest never chooses a host vector: the MSI-X table is emulated ([`MsixTable`]) and
//! the MSI capability lives in the config model; the guest's address/data only ever become MSI
//! routes of this VM, and only when the address is in the VMM's [`MsiWindow`] (x86:
//! `0xfee00000-0xfeefffff`; anything else is left unrouted and logged once per vector).
//! The host side always gets the device's own vectors `0..N` through `VFIO_DEVICE_SET_IRQS`.
//!
//! Masking (MSI-X, PCI 3.0 §6.8.2.9): a masked vector's irqfd is unbound, so its eventfd
//! counts the device's signals; [`IrqState::poll_masked`] (run on every PBA read and by
//! [`PassthroughDevice::poll_interrupts`](crate::PassthroughDevice::poll_interrupts)) turns a
//! non-zero count into the vector's pending bit, and unmasking delivers it once. Re-binding
//! the irqfd on unmask also delivers a count that was not polled yet (KVM checks the eventfd
//! when an irqfd is assigned), so nothing is lost either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, warn};
use log_limit::LogLimiter;
use pci_config::capability::MsiCapability;
use trap_map::{FireOutcome, MsixEvent, MsixTable};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::guest_log::guest_warn;
use crate::backend::DeviceBackend;
use crate::host::IrqKind;
use crate::ports::{InterruptPort, MsiMessage, MsiWindow, RouteChange};

/// Names a vector in logs (`MSI-X vector 3`) without formatting a string on every guest write
/// of the table.
#[derive(Clone, Copy)]
struct VectorLabel {
    kind: IrqKind,
    index: usize,
}

impl std::fmt::Display for VectorLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} vector {}", self.kind, self.index)
    }
}

/// `n` fresh vectors.
fn new_vectors(n: usize) -> std::io::Result<Vec<Vector>> {
    (0..n).map(|_| Vector::new()).collect()
}

/// One vector wired to the VM (route and irqfd).
struct Vector {
    fd: EventFd,
    gsi: Option<u32>,
    irqfd: bool,
    /// The address was refused once: do not log it again until it changes.
    refused: Option<u64>,
}

impl Vector {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            fd: EventFd::new(EFD_NONBLOCK)?,
            gsi: None,
            irqfd: false,
            refused: None,
        })
    }
}

/// Counters for views and tests.
#[derive(Debug, Default)]
pub(crate) struct IrqCounters {
    pub refused_routes: AtomicU64,
    pub delivered_pending: AtomicU64,
    pub route_errors: AtomicU64,
}

/// MSI-X emulation plus the wiring of its vectors.
pub(crate) struct MsixState {
    pub table: MsixTable,
    vectors: Vec<Vector>,
}

/// MSI wiring (the capability itself is in the config model).
#[derive(Default)]
struct MsiState {
    vectors: Vec<Vector>,
}

struct IntxState {
    trigger: EventFd,
    resample: EventFd,
    gsi: u32,
    at_host: bool,
}

/// All interrupt state of one device; lives under the device's shared mutex.
pub(crate) struct IrqState {
    pub name: String,
    pub backend: Arc<dyn DeviceBackend>,
    pub routing: Option<Arc<dyn InterruptPort>>,
    msi_window: MsiWindow,
    pub msix: Option<MsixState>,
    msi: MsiState,
    intx: Option<IntxState>,
    pub counters: Arc<IrqCounters>,
    /// The device's limit on guest-triggered log lines.
    log: Arc<LogLimiter>,
}

impl IrqState {
    pub fn new(
        name: String,
        backend: Arc<dyn DeviceBackend>,
        routing: Option<Arc<dyn InterruptPort>>,
        msi_window: MsiWindow,
        msix_entries: Option<u16>,
        log: Arc<LogLimiter>,
    ) -> Self {
        let msix = msix_entries.and_then(|n| match MsixTable::new(n) {
            Ok(table) => Some(MsixState {
                table,
                vectors: Vec::new(),
            }),
            Err(e) => {
                warn!("{name}: MSI-X not emulated: {e}");
                None
            }
        });
        Self {
            name,
            backend,
            routing,
            msi_window,
            msix,
            msi: MsiState::default(),
            intx: None,
            counters: Arc::new(IrqCounters::default()),
            log,
        }
    }

    // ----- INTx -------------------------------------------------------------------------

    /// Wires INTx: trigger eventfd and resample eventfd on `gsi`, then enables it at the host.
    pub fn setup_intx(&mut self, gsi: u32) -> Result<(), String> {
        let Some(routing) = self.routing.clone() else {
            return Err("no interrupt routing given".into());
        };
        let trigger = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
        let resample = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
        routing
            .add_irqfd(gsi, &trigger, Some(&resample))
            .map_err(|e| e.to_string())?;
        // At attach the host must take it: an attach that leaves INTx dead is refused whole.
        let at_host = self
            .backend
            .enable_irqs(IrqKind::Intx, &[&trigger])
            .and_then(|_| self.backend.set_intx_resample(&resample));
        if let Err(e) = at_host {
            let _ = self.backend.disable_irqs(IrqKind::Intx);
            let _ = routing.remove_irqfd(gsi, &trigger);
            return Err(e.to_string());
        }
        self.intx = Some(IntxState {
            trigger,
            resample,
            gsi,
            at_host: true,
        });
        Ok(())
    }

    /// Enables or disables INTx at the host (VFIO allows one interrupt type at a time).
    /// Turning it back on waits until neither MSI nor MSI-X is in use (VFIO refuses INTx then).
    fn intx_at_host(&mut self, on: bool) {
        let msi_in_use = !self.msi.vectors.is_empty()
            || self.msix.as_ref().is_some_and(|m| !m.vectors.is_empty());
        let Some(intx) = self.intx.as_mut() else {
            return;
        };
        if on && msi_in_use {
            return;
        }
        if intx.at_host == on {
            return;
        }
        let result = if on {
            self.backend
                .enable_irqs(IrqKind::Intx, &[&intx.trigger])
                .and_then(|_| self.backend.set_intx_resample(&intx.resample))
        } else {
            self.backend.disable_irqs(IrqKind::Intx)
        };
        match result {
            Ok(()) => intx.at_host = on,
            Err(e) => guest_warn!(self.log, "{}: INTx: {e}", self.name),
        }
    }

    fn teardown_intx(&mut self) {
        self.intx_at_host(false);
        if let (Some(intx), Some(routing)) = (self.intx.take(), self.routing.as_ref()) {
            if let Err(e) = routing.remove_irqfd(intx.gsi, &intx.trigger) {
                debug!("{}: INTx irqfd: {e}", self.name);
            }
        }
    }

    /// The INTx GSI, if wired.
    pub fn intx_gsi(&self) -> Option<u32> {
        self.intx.as_ref().map(|i| i.gsi)
    }

    // ----- MSI-X ------------------------------------------------------------------------

    /// Applies the events of the MSI-X emulation, in order, except that the routes one guest
    /// write changes go to the VM as one batch ([`InterruptPort::apply_msi_routes`]): enabling
    /// MSI-X with 2,048 programmed vectors is one routing-table update, not 2,048. An unmask
    /// that follows a route in the batch is applied after it; any other event applies the
    /// batch first, so the order the guest sees is kept.
    pub fn apply_msix(&mut self, events: Vec<MsixEvent>) {
        let mut routes: Vec<(usize, MsiMessage)> = Vec::new();
        let mut unmasks: Vec<u16> = Vec::new();
        for event in events {
            match event {
                MsixEvent::Route {
                    vector,
                    address,
                    data,
                } => {
                    let msg = MsiMessage {
                        address: GuestAddress(address),
                        data,
                    };
                    routes.push((usize::from(vector), msg));
                    continue;
                }
                MsixEvent::Unmask { vector } if !routes.is_empty() => {
                    unmasks.push(vector);
                    continue;
                }
                _ => {}
            }
            self.flush_msix_routes(&mut routes, &mut unmasks);
            match event {
                MsixEvent::Enabled => self.msix_enable(),
                MsixEvent::Disabled => self.msix_disable(),
                MsixEvent::Route { .. } => {}
                MsixEvent::Mask { vector } => self.msix_mask(vector),
                MsixEvent::Unmask { vector } => self.msix_unmask(vector),
                MsixEvent::DeliverPending {
                    vector,
                    address,
                    data,
                } => self.msix_deliver(vector, address, data),
            }
        }
        self.flush_msix_routes(&mut routes, &mut unmasks);
    }

    /// Routes the batched vectors in one call, then applies the unmasks that followed them.
    fn flush_msix_routes(&mut self, routes: &mut Vec<(usize, MsiMessage)>, unmasks: &mut Vec<u16>) {
        if !routes.is_empty() {
            if let (Some(port), Some(msix)) = (self.routing.as_deref(), self.msix.as_mut()) {
                let items: Vec<(usize, MsiMessage, bool)> = routes
                    .iter()
                    .map(|&(i, msg)| (i, msg, !msix.table.is_masked(i as u16)))
                    .collect();
                route_vectors(
                    &self.name,
                    IrqKind::Msix,
                    Router {
                        port,
                        window: &self.msi_window,
                        counters: &self.counters,
                        log: &self.log,
                    },
                    &mut msix.vectors,
                    &items,
                );
            }
            routes.clear();
        }
        for vector in unmasks.drain(..) {
            self.msix_unmask(vector);
        }
    }

    fn msix_enable(&mut self) {
        self.intx_at_host(false);
        let Some(msix) = self.msix.as_mut() else {
            return;
        };
        let n = usize::from(msix.table.len()).min(self.backend.irq_count(IrqKind::Msix) as usize);
        let vectors = match new_vectors(n) {
            Ok(v) => v,
            Err(e) => {
                guest_warn!(
                    self.log,
                    "{}: MSI-X: cannot create {n} eventfds: {e}",
                    self.name
                );
                return;
            }
        };
        let fds: Vec<&EventFd> = vectors.iter().map(|v| &v.fd).collect();
        if let Err(e) = self.backend.enable_irqs(IrqKind::Msix, &fds) {
            guest_warn!(self.log, "{}: MSI-X: {e}", self.name);
        }
        msix.vectors = vectors;
    }

    fn msix_disable(&mut self) {
        if let Some(msix) = self.msix.as_mut() {
            let vectors = std::mem::take(&mut msix.vectors);
            self.release(IrqKind::Msix, vectors);
        }
        self.intx_at_host(true);
    }

    /// Stops interrupts of `kind` at the host, then unbinds and unroutes their vectors and
    /// closes the eventfds: VFIO stops signalling an eventfd before KVM forgets it and before
    /// it is closed (the order of QEMU's `vfio_msix_disable`).
    fn release(&self, kind: IrqKind, vectors: Vec<Vector>) {
        if let Err(e) = self.backend.disable_irqs(kind) {
            guest_warn!(self.log, "{}: {kind}: {e}", self.name);
        }
        for v in vectors {
            unwire(&self.name, self.routing.as_deref(), v);
        }
    }

    fn msix_mask(&mut self, vector: u16) {
        let (Some(routing), Some(msix)) = (self.routing.as_deref(), self.msix.as_mut()) else {
            return;
        };
        let Some(v) = msix.vectors.get_mut(usize::from(vector)) else {
            return;
        };
        if let (true, Some(gsi)) = (v.irqfd, v.gsi) {
            if let Err(e) = routing.remove_irqfd(gsi, &v.fd) {
                guest_warn!(self.log, "{}: MSI-X vector {vector}: {e}", self.name);
            }
            v.irqfd = false;
        }
    }

    fn msix_unmask(&mut self, vector: u16) {
        let (Some(routing), Some(msix)) = (self.routing.as_deref(), self.msix.as_mut()) else {
            return;
        };
        let Some(v) = msix.vectors.get_mut(usize::from(vector)) else {
            return;
        };
        if let (false, Some(gsi)) = (v.irqfd, v.gsi) {
            match routing.add_irqfd(gsi, &v.fd, None) {
                Ok(()) => v.irqfd = true,
                Err(e) => guest_warn!(self.log, "{}: MSI-X vector {vector}: {e}", self.name),
            }
        }
    }

    fn msix_deliver(&self, vector: u16, address: u64, data: u32) {
        let Some(routing) = self.routing.as_deref() else {
            return;
        };
        let msg = MsiMessage {
            address: GuestAddress(address),
            data,
        };
        if !self.msi_window.contains(msg.address) {
            self.counters.refused_routes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let v = self
            .msix
            .as_ref()
            .and_then(|m| m.vectors.get(usize::from(vector)));
        let result = match v {
            // Through the irqfd, so the message follows the route the VM holds.
            Some(v) if v.irqfd => v.fd.write(1).map_err(|e| e.to_string()),
            _ => routing
                .signal_msi(msg)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => {
                self.counters
                    .delivered_pending
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => guest_warn!(
                self.log,
                "{}: MSI-X vector {vector}: pending delivery: {e}",
                self.name
            ),
        }
    }

    /// Turns device signals on vectors that are not bound to an irqfd (masked, or unroutable) into
    /// pending bits, or delivers them when they are deliverable.
    pub fn poll_masked(&mut self) {
        let Some(msix) = self.msix.as_mut() else {
            return;
        };
        let mut deliver = Vec::new();
        for (i, v) in msix.vectors.iter().enumerate() {
            if v.irqfd {
                continue;
            }
            // Non-blocking: EAGAIN means no signal since the last poll.
            if v.fd.read().is_ok_and(|n| n > 0) {
                match msix.table.fire(i as u16) {
                    Ok(FireOutcome::Deliver { address, data }) => {
                        deliver.push((i as u16, address, data))
                    }
                    Ok(FireOutcome::Pending) | Ok(FireOutcome::Dropped) => {}
                    Err(e) => debug!("{}: {e}", self.name),
                }
            }
        }
        for (vector, address, data) in deliver {
            self.msix_deliver(vector, address, data);
        }
    }

    // ----- MSI --------------------------------------------------------------------------

    /// Re-applies the MSI capability after a guest write changed it.
    pub fn apply_msi(&mut self, cap: Option<MsiCapability>) {
        let Some(cap) = cap else {
            return;
        };
        if !cap.enabled() {
            self.msi_disable();
            return;
        }
        let host = self.backend.irq_count(IrqKind::Msi) as usize;
        if host == 0 {
            if self.msi.vectors.is_empty() {
                guest_warn!(
                    self.log,
                    "{}: MSI enabled by the guest but the host offers no MSI",
                    self.name
                );
            }
            return;
        }
        let n = usize::from(cap.vectors_enabled()).min(host);
        if self.msi.vectors.len() != n {
            // VFIO cannot grow an enabled MSI block: disable, then enable with the new count
            // (INTx stays off in between).
            let old = std::mem::take(&mut self.msi.vectors);
            if !old.is_empty() {
                self.release(IrqKind::Msi, old);
            }
            self.intx_at_host(false);
            let vectors = match new_vectors(n) {
                Ok(v) => v,
                Err(e) => {
                    guest_warn!(
                        self.log,
                        "{}: MSI: cannot create {n} eventfds: {e}",
                        self.name
                    );
                    return;
                }
            };
            let fds: Vec<&EventFd> = vectors.iter().map(|v| &v.fd).collect();
            if let Err(e) = self.backend.enable_irqs(IrqKind::Msi, &fds) {
                guest_warn!(self.log, "{}: MSI: {e}", self.name);
            }
            self.msi.vectors = vectors;
        }
        let Some(routing) = self.routing.as_deref() else {
            return;
        };
        // Multiple Message: vector i sends the data with its low log2(MME) bits replaced by i
        // (PCI 3.0 §6.8.1.6); the guest's Multiple Message Enable says how many bits.
        let low = u32::from(cap.vectors_enabled()) - 1;
        let items: Vec<(usize, MsiMessage, bool)> = (0..self.msi.vectors.len())
            .map(|i| {
                let msg = MsiMessage {
                    address: GuestAddress(cap.address),
                    data: (u32::from(cap.data) & !low) | i as u32,
                };
                (i, msg, !cap.is_masked(i as u8))
            })
            .collect();
        route_vectors(
            &self.name,
            IrqKind::Msi,
            Router {
                port: routing,
                window: &self.msi_window,
                counters: &self.counters,
                log: &self.log,
            },
            &mut self.msi.vectors,
            &items,
        );
    }

    /// Turns MSI off at the host and unwires its vectors (nothing to do when it is off).
    fn msi_disable(&mut self) {
        if self.msi.vectors.is_empty() {
            return;
        }
        let vectors = std::mem::take(&mut self.msi.vectors);
        self.release(IrqKind::Msi, vectors);
        self.intx_at_host(true);
    }

    // ----- all --------------------------------------------------------------------------

    /// Unwires everything (detach): MSI-X, MSI and INTx.
    pub fn teardown(&mut self) {
        // INTx first, so turning MSI and MSI-X off does not hand the device back to INTx.
        self.teardown_intx();
        if let Some(msix) = self.msix.as_mut() {
            let events = msix.table.reset();
            self.apply_msix(events);
        }
        self.msi_disable();
    }

    /// GSI and irqfd state of MSI-X vector `v`, for views and tests.
    pub fn msix_vector_state(&self, vector: u16) -> Option<(Option<u32>, bool)> {
        let v = self.msix.as_ref()?.vectors.get(usize::from(vector))?;
        Some((v.gsi, v.irqfd))
    }

    /// GSIs of the MSI vectors.
    pub fn msi_gsis(&self) -> Vec<Option<u32>> {
        self.msi.vectors.iter().map(|v| v.gsi).collect()
    }
}

/// What routing a vector needs: the VM's port, the window its messages must target and the
/// device's counters.
struct Router<'a> {
    port: &'a dyn InterruptPort,
    window: &'a MsiWindow,
    counters: &'a IrqCounters,
    log: &'a LogLimiter,
}

/// Points each vector `i` of `items` at its message (a GSI allocated and routed the first time,
/// the route updated after) and binds its irqfd when asked; an address outside the MSI window
/// unroutes the vector instead. All route changes go to the VM in one
/// [`InterruptPort::apply_msi_routes`] call; a vector named twice keeps its last message.
fn route_vectors(
    name: &str,
    kind: IrqKind,
    router: Router<'_>,
    vectors: &mut [Vector],
    items: &[(usize, MsiMessage, bool)],
) {
    let Router {
        port,
        window,
        counters,
        log,
    } = router;
    let mut changes = Vec::new();
    // For each change, the item whose vector it routes (`None`: a route removed).
    let mut owners: Vec<Option<usize>> = Vec::new();
    // The last item naming each vector (linear: 2,048 vectors come in one batch).
    let mut last = vec![usize::MAX; vectors.len()];
    for (k, &(i, _, _)) in items.iter().enumerate() {
        if let Some(l) = last.get_mut(i) {
            *l = k;
        }
    }
    for (k, &(i, msg, _)) in items.iter().enumerate() {
        if last.get(i) != Some(&k) {
            continue;
        }
        let v = &mut vectors[i];
        if !window.contains(msg.address) {
            if v.refused != Some(msg.address.0) {
                guest_warn!(
                    log,
                    "{name}: {}: the guest programmed MSI address {:#x}, outside the interrupt \
                     window {window}; the vector stays unrouted",
                    VectorLabel { kind, index: i },
                    msg.address.0
                );
                v.refused = Some(msg.address.0);
            }
            counters.refused_routes.fetch_add(1, Ordering::Relaxed);
            if let Some(gsi) = v.gsi.take() {
                if v.irqfd {
                    let _ = port.remove_irqfd(gsi, &v.fd);
                    v.irqfd = false;
                }
                changes.push(RouteChange::Remove(gsi));
                owners.push(None);
            }
            continue;
        }
        v.refused = None;
        changes.push(match v.gsi {
            Some(gsi) => RouteChange::Update(gsi, msg),
            None => RouteChange::Add(msg),
        });
        owners.push(Some(k));
    }
    if changes.is_empty() {
        return;
    }
    let results = port.apply_msi_routes(&changes);
    for (result, owner) in results.into_iter().zip(owners) {
        let Some(k) = owner else {
            if let Err(e) = result {
                debug!("{name}: removing a route: {e}");
            }
            continue;
        };
        let (i, _, bind) = items[k];
        let what = VectorLabel { kind, index: i };
        let v = &mut vectors[i];
        let gsi = match result {
            Ok(gsi) => gsi,
            Err(e) => {
                counters.route_errors.fetch_add(1, Ordering::Relaxed);
                guest_warn!(log, "{name}: {what}: {e}");
                continue;
            }
        };
        v.gsi = Some(gsi);
        if bind && !v.irqfd {
            match port.add_irqfd(gsi, &v.fd, None) {
                Ok(()) => v.irqfd = true,
                Err(e) => guest_warn!(log, "{name}: {what}: {e}"),
            }
        } else if !bind && v.irqfd {
            let _ = port.remove_irqfd(gsi, &v.fd);
            v.irqfd = false;
        }
    }
}

/// Unbinds and unroutes a vector that goes away.
fn unwire(name: &str, routing: Option<&dyn InterruptPort>, v: Vector) {
    let (Some(routing), Some(gsi)) = (routing, v.gsi) else {
        return;
    };
    if v.irqfd {
        if let Err(e) = routing.remove_irqfd(gsi, &v.fd) {
            debug!("{name}: irqfd of GSI {gsi}: {e}");
        }
    }
    if let Err(e) = routing.remove_route(gsi) {
        debug!("{name}: route of GSI {gsi}: {e}");
    }
}
