//! The device buses: vm-device's [`IoManager`] with a name, counters and a panic fence around
//! every registered device, safe to change while vCPUs run.
//!
//! # Why a snapshot
//! Registration needs `&mut IoManager`, dispatch needs `&IoManager` on every vCPU thread. A lock
//! around one `IoManager` would either serialize vCPUs or deadlock when a device reprograms the
//! bus from inside its own handler (a guest moving a BAR through a config-space write does exactly
//! that). Instead every change builds a new `IoManager` and publishes it with a generation number;
//! each vCPU keeps an `Arc` of the one it last saw and compares one atomic per exit. A change is
//! visible to every vCPU at its next exit, and to the vCPU making it immediately. So when
//! `unregister_*` or `move_*` returns, another vCPU may still be inside a call to the device
//! (an access it took before the change), and the device is dropped only once every vCPU has
//! picked up a newer snapshot, at its next exit.
//!
//! # Failing devices
//! Every dispatch runs under `catch_unwind`. A device that panics is *fenced*: from then on it is
//! not called, reads from it return all-ones and writes are dropped, which is what a guest sees
//! from a PCI device that fell off the bus (and what drivers already check for). A
//! [`FalliblePio`]/[`FallibleMmio`] device that returns an error is not fenced; that access reads
//! all-ones. Both are counted per device and logged, rate-limited.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log_limit::{LogLimiter, suppressed_note};
use vm_device::bus::{
    MmioAddress, MmioAddressOffset, MmioRange, PioAddress, PioAddressOffset, PioRange,
};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::{DeviceMmio, DevicePio};

use crate::address_map::{AddressMap, Holder, Space};
use crate::error::{Error, Result};

/// The error a [`FalliblePio`] or [`FallibleMmio`] device returns.
pub type DeviceError = Box<dyn std::error::Error + Send + Sync>;

/// A port-IO device whose accesses can fail (for example a passthrough device forwarding to a
/// file descriptor). On error the guest reads all-ones; the error is counted and logged.
pub trait FalliblePio: Send + Sync {
    /// Handles a read of `data.len()` bytes at `base + offset`.
    fn try_pio_read(
        &self,
        base: PioAddress,
        offset: PioAddressOffset,
        data: &mut [u8],
    ) -> std::result::Result<(), DeviceError>;
    /// Handles a write of `data` at `base + offset`.
    fn try_pio_write(
        &self,
        base: PioAddress,
        offset: PioAddressOffset,
        data: &[u8],
    ) -> std::result::Result<(), DeviceError>;
}

/// An MMIO device whose accesses can fail. On error the guest reads all-ones; the error is counted
/// and logged.
pub trait FallibleMmio: Send + Sync {
    /// Handles a read of `data.len()` bytes at `base + offset`.
    fn try_mmio_read(
        &self,
        base: MmioAddress,
        offset: MmioAddressOffset,
        data: &mut [u8],
    ) -> std::result::Result<(), DeviceError>;
    /// Handles a write of `data` at `base + offset`.
    fn try_mmio_write(
        &self,
        base: MmioAddress,
        offset: MmioAddressOffset,
        data: &[u8],
    ) -> std::result::Result<(), DeviceError>;
}

/// Which bus a device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusKind {
    /// x86 port IO.
    Pio,
    /// Memory-mapped IO.
    Mmio,
}

impl BusKind {
    fn name(self) -> &'static str {
        match self {
            BusKind::Pio => "PIO",
            BusKind::Mmio => "MMIO",
        }
    }
}

/// Counters of one registered device range, as returned by [`DeviceBus::device_counts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCounts {
    /// The name given at registration.
    pub name: String,
    /// The bus.
    pub bus: BusKind,
    /// First port or address of the range.
    pub base: u64,
    /// Size of the range.
    pub size: u64,
    /// Trapped reads dispatched to it (string port IO counts each element).
    pub reads: u64,
    /// Trapped writes dispatched to it.
    pub writes: u64,
    /// Accesses that returned an error ([`FalliblePio`]/[`FallibleMmio`] devices).
    pub errors: u64,
    /// Accesses that panicked (at most 1 unless the device is re-registered: it is fenced).
    pub panics: u64,
    /// Whether the device is fenced after a panic.
    pub fenced: bool,
}

impl DeviceCounts {
    /// Reads plus writes: how many traps this range caused.
    pub fn traps(&self) -> u64 {
        self.reads + self.writes
    }
}

/// Bus-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusCounts {
    /// Port accesses that hit no device (reads returned all-ones).
    pub unhandled_pio: u64,
    /// MMIO accesses that hit no device and no read-only region (reads returned all-ones).
    pub unhandled_mmio: u64,
    /// Guest writes to a read-only memory region (dropped, as ROM does).
    pub read_only_writes: u64,
    /// Device handlers that panicked.
    pub device_panics: u64,
    /// Device handlers that returned an error.
    pub device_errors: u64,
}

/// State shared by the bus and every tracked device: bus-wide counters and log limiters.
struct BusShared {
    unhandled_pio: AtomicU64,
    unhandled_mmio: AtomicU64,
    read_only_writes: AtomicU64,
    device_panics: AtomicU64,
    device_errors: AtomicU64,
    unhandled_log: LogLimiter,
    fault_log: LogLimiter,
}

#[derive(Default)]
struct DeviceCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    fenced: AtomicBool,
}

enum PioHandler {
    Plain(Arc<dyn DevicePio + Send + Sync>),
    Fallible(Arc<dyn FalliblePio>),
}

enum MmioHandler {
    Plain(Arc<dyn DeviceMmio + Send + Sync>),
    Fallible(Arc<dyn FallibleMmio>),
}

/// A registered device as the `IoManager` sees it: counts, fences and forwards.
struct Tracked<H> {
    name: String,
    handler: H,
    counters: DeviceCounters,
    shared: Arc<BusShared>,
}

impl<H> Tracked<H> {
    /// Runs one access under `catch_unwind`. Returns `false` if the device is fenced, panicked or
    /// returned an error: a read must then give the guest all-ones, never the half-written bytes
    /// of a failed handler.
    #[inline]
    fn guarded(
        &self,
        bus: BusKind,
        write: bool,
        addr: u64,
        len: usize,
        access: impl FnOnce() -> std::result::Result<(), DeviceError>,
    ) -> bool {
        let c = if write {
            &self.counters.writes
        } else {
            &self.counters.reads
        };
        c.fetch_add(1, Ordering::Relaxed);
        if self.counters.fenced.load(Ordering::Relaxed) {
            return false;
        }
        let failure = match catch_unwind(AssertUnwindSafe(access)) {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.shared.device_errors.fetch_add(1, Ordering::Relaxed);
                Failure::Error(e)
            }
            Err(payload) => {
                self.counters.panics.fetch_add(1, Ordering::Relaxed);
                self.counters.fenced.store(true, Ordering::Relaxed);
                self.shared.device_panics.fetch_add(1, Ordering::Relaxed);
                Failure::Panic(payload)
            }
        };
        // Formatting only when the line is logged: a guest can make a device fail at exit rate.
        if let Some(suppressed) = self.shared.fault_log.allow() {
            log::error!(
                "device \"{}\" {failure} on {} {} of {len} bytes at {addr:#x}; {}{}",
                self.name,
                bus.name(),
                if write { "write" } else { "read" },
                if write {
                    "the write is dropped"
                } else {
                    "the guest reads all-ones"
                },
                suppressed_note(suppressed)
            );
        }
        false
    }

    fn counts(&self, bus: BusKind, base: u64, size: u64) -> DeviceCounts {
        let c = &self.counters;
        DeviceCounts {
            name: self.name.clone(),
            bus,
            base,
            size,
            reads: c.reads.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            panics: c.panics.load(Ordering::Relaxed),
            fenced: c.fenced.load(Ordering::Relaxed),
        }
    }
}

/// Why a device access failed, kept unformatted until a log line is actually written.
enum Failure {
    Error(DeviceError),
    Panic(Box<dyn std::any::Any + Send>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "returned an error: {e}"),
            Failure::Panic(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("non-string panic payload");
                write!(
                    f,
                    "panicked ({msg}); it is fenced: later accesses read all-ones"
                )
            }
        }
    }
}

impl DevicePio for Tracked<PioHandler> {
    fn pio_read(&self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let addr = u64::from(base.0) + u64::from(offset);
        let len = data.len();
        let served = self.guarded(BusKind::Pio, false, addr, len, || match &self.handler {
            PioHandler::Plain(dev) => {
                dev.pio_read(base, offset, data);
                Ok(())
            }
            PioHandler::Fallible(dev) => dev.try_pio_read(base, offset, data),
        });
        if !served {
            data.fill(0xff);
        }
    }

    fn pio_write(&self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let addr = u64::from(base.0) + u64::from(offset);
        self.guarded(BusKind::Pio, true, addr, data.len(), || {
            match &self.handler {
                PioHandler::Plain(dev) => {
                    dev.pio_write(base, offset, data);
                    Ok(())
                }
                PioHandler::Fallible(dev) => dev.try_pio_write(base, offset, data),
            }
        });
    }
}

impl DeviceMmio for Tracked<MmioHandler> {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let addr = base.0.wrapping_add(offset);
        let len = data.len();
        let served = self.guarded(BusKind::Mmio, false, addr, len, || match &self.handler {
            MmioHandler::Plain(dev) => {
                dev.mmio_read(base, offset, data);
                Ok(())
            }
            MmioHandler::Fallible(dev) => dev.try_mmio_read(base, offset, data),
        });
        if !served {
            data.fill(0xff);
        }
    }

    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let addr = base.0.wrapping_add(offset);
        self.guarded(BusKind::Mmio, true, addr, data.len(), || {
            match &self.handler {
                MmioHandler::Plain(dev) => {
                    dev.mmio_write(base, offset, data);
                    Ok(())
                }
                MmioHandler::Fallible(dev) => dev.try_mmio_write(base, offset, data),
            }
        });
    }
}

struct Entry<H> {
    base: u64,
    size: u64,
    device: Arc<Tracked<H>>,
}

#[derive(Default)]
struct Registry {
    pio: Vec<Entry<PioHandler>>,
    mmio: Vec<Entry<MmioHandler>>,
}

/// The PIO and MMIO buses of one VM. Shared by all its vCPUs (`Arc<DeviceBus>`); every method
/// takes `&self` and may be called while vCPUs run, including from inside a device handler.
pub struct DeviceBus {
    shared: Arc<BusShared>,
    registry: Mutex<Registry>,
    /// The published `IoManager` and its generation; see the module docs.
    snapshot: Mutex<(u64, Arc<IoManager>)>,
    generation: AtomicU64,
    /// The VM's address map (shared with its memory slots): every range registered here
    /// claims its place in it, so no slot, reserved window or other device covers it.
    map: Arc<AddressMap>,
}

impl std::fmt::Debug for DeviceBus {
    /// The generation only: the registry is behind a lock a handler may hold.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBus")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for DeviceBus {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceBus {
    /// An empty pair of buses with an address map of their own.
    pub fn new() -> Self {
        Self::with_address_map(Arc::new(AddressMap::new()))
    }

    /// An empty pair of buses whose ranges claim their place in `map` (a VM's: see
    /// [`Vm::address_map`](crate::Vm::address_map)).
    pub fn with_address_map(map: Arc<AddressMap>) -> Self {
        DeviceBus {
            shared: Arc::new(BusShared {
                unhandled_pio: AtomicU64::new(0),
                unhandled_mmio: AtomicU64::new(0),
                read_only_writes: AtomicU64::new(0),
                device_panics: AtomicU64::new(0),
                device_errors: AtomicU64::new(0),
                unhandled_log: LogLimiter::new(10, Duration::from_secs(1)),
                fault_log: LogLimiter::new(10, Duration::from_secs(1)),
            }),
            registry: Mutex::new(Registry::default()),
            snapshot: Mutex::new((0, Arc::new(IoManager::new()))),
            generation: AtomicU64::new(0),
            map,
        }
    }

    /// Registers a vm-device port-IO device on ports `[base, base + size)`.
    pub fn register_pio(
        &self,
        name: &str,
        base: u16,
        size: u16,
        device: Arc<dyn DevicePio + Send + Sync>,
    ) -> Result<()> {
        self.add_pio(name, base, size, PioHandler::Plain(device))
    }

    /// Registers a fallible port-IO device on ports `[base, base + size)`.
    pub fn register_fallible_pio(
        &self,
        name: &str,
        base: u16,
        size: u16,
        device: Arc<dyn FalliblePio>,
    ) -> Result<()> {
        self.add_pio(name, base, size, PioHandler::Fallible(device))
    }

    /// Registers a vm-device MMIO device on guest physical `[base, base + size)`.
    pub fn register_mmio(
        &self,
        name: &str,
        base: u64,
        size: u64,
        device: Arc<dyn DeviceMmio + Send + Sync>,
    ) -> Result<()> {
        self.add_mmio(name, base, size, MmioHandler::Plain(device))
    }

    /// Registers a fallible MMIO device on guest physical `[base, base + size)`.
    pub fn register_fallible_mmio(
        &self,
        name: &str,
        base: u64,
        size: u64,
        device: Arc<dyn FallibleMmio>,
    ) -> Result<()> {
        self.add_mmio(name, base, size, MmioHandler::Fallible(device))
    }

    /// Removes the port-IO range starting at `base`. An access another vCPU already dispatched
    /// to it may still be running (see the module docs).
    pub fn unregister_pio(&self, base: u16) -> Result<()> {
        let mut reg = self.lock_registry();
        let i = find_base(&reg.pio, u64::from(base), BusKind::Pio)?;
        reg.pio.remove(i);
        self.map.release(Space::Io, u64::from(base));
        self.publish(&reg);
        Ok(())
    }

    /// Removes the MMIO range starting at `base`. An access another vCPU already dispatched to
    /// it may still be running (see the module docs).
    pub fn unregister_mmio(&self, base: u64) -> Result<()> {
        let mut reg = self.lock_registry();
        let i = find_base(&reg.mmio, base, BusKind::Mmio)?;
        reg.mmio.remove(i);
        self.map.release(Space::Memory, base);
        self.publish(&reg);
        Ok(())
    }

    /// Moves the MMIO range starting at `old_base` to `new_base`, keeping the device and its
    /// counters (a guest reprogramming a BAR). Refused if the new range overlaps another device.
    pub fn move_mmio(&self, old_base: u64, new_base: u64) -> Result<()> {
        let mut reg = self.lock_registry();
        let i = find_base(&reg.mmio, old_base, BusKind::Mmio)?;
        let (size, name) = (reg.mmio[i].size, reg.mmio[i].device.name.clone());
        check_range(BusKind::Mmio, &name, new_base, size, u64::MAX)?;
        check_overlap(BusKind::Mmio, &reg.mmio, Some(i), &name, new_base, size)?;
        self.map.relocate(Space::Memory, old_base, new_base)?;
        reg.mmio[i].base = new_base;
        self.publish(&reg);
        Ok(())
    }

    /// Moves the port-IO range starting at `old_base` to `new_base`, keeping device and counters.
    pub fn move_pio(&self, old_base: u16, new_base: u16) -> Result<()> {
        let mut reg = self.lock_registry();
        let i = find_base(&reg.pio, u64::from(old_base), BusKind::Pio)?;
        let (size, name) = (reg.pio[i].size, reg.pio[i].device.name.clone());
        check_range(BusKind::Pio, &name, u64::from(new_base), size, 0x1_0000)?;
        check_overlap(
            BusKind::Pio,
            &reg.pio,
            Some(i),
            &name,
            u64::from(new_base),
            size,
        )?;
        self.map
            .relocate(Space::Io, u64::from(old_base), u64::from(new_base))?;
        reg.pio[i].base = u64::from(new_base);
        self.publish(&reg);
        Ok(())
    }

    /// Counters of every registered range, PIO first, each bus in address order.
    pub fn device_counts(&self) -> Vec<DeviceCounts> {
        let reg = self.lock_registry();
        let mut out: Vec<DeviceCounts> = reg
            .pio
            .iter()
            .map(|e| e.device.counts(BusKind::Pio, e.base, e.size))
            .chain(
                reg.mmio
                    .iter()
                    .map(|e| e.device.counts(BusKind::Mmio, e.base, e.size)),
            )
            .collect();
        out.sort_by_key(|c| (c.bus == BusKind::Mmio, c.base));
        out
    }

    /// Bus-wide counters.
    pub fn counts(&self) -> BusCounts {
        let s = &self.shared;
        BusCounts {
            unhandled_pio: s.unhandled_pio.load(Ordering::Relaxed),
            unhandled_mmio: s.unhandled_mmio.load(Ordering::Relaxed),
            read_only_writes: s.read_only_writes.load(Ordering::Relaxed),
            device_panics: s.device_panics.load(Ordering::Relaxed),
            device_errors: s.device_errors.load(Ordering::Relaxed),
        }
    }

    /// Dispatches a port read outside a vCPU (device tests, emulation). Returns `false`, with
    /// `data` all-ones and the access counted as unhandled, when no device covers it.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        self.dispatch_pio_read(&self.current(), port, data)
    }

    /// Dispatches a port write outside a vCPU. Returns `false` (counted as unhandled) on a miss.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        self.dispatch_pio_write(&self.current(), port, data)
    }

    /// Dispatches an MMIO read outside a vCPU. Returns `false` (all-ones, counted) on a miss.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.dispatch_mmio_read(&self.current(), addr, data)
    }

    /// Dispatches an MMIO write outside a vCPU. Returns `false` (counted) on a miss.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let hit = self.current().mmio_write(MmioAddress(addr), data).is_ok();
        if !hit {
            self.note_unhandled(BusKind::Mmio, true, addr, data.len());
        }
        hit
    }

    // What a miss (no device covers the whole access) means, in one place for the run loop and
    // the methods above: a read gives all-ones, and every miss is counted and logged.

    #[inline]
    pub(crate) fn dispatch_pio_read(&self, io: &IoManager, port: u16, data: &mut [u8]) -> bool {
        let hit = io.pio_read(PioAddress(port), data).is_ok();
        if !hit {
            data.fill(0xff);
            self.note_unhandled(BusKind::Pio, false, u64::from(port), data.len());
        }
        hit
    }

    #[inline]
    pub(crate) fn dispatch_pio_write(&self, io: &IoManager, port: u16, data: &[u8]) -> bool {
        let hit = io.pio_write(PioAddress(port), data).is_ok();
        if !hit {
            self.note_unhandled(BusKind::Pio, true, u64::from(port), data.len());
        }
        hit
    }

    #[inline]
    pub(crate) fn dispatch_mmio_read(&self, io: &IoManager, addr: u64, data: &mut [u8]) -> bool {
        let hit = io.mmio_read(MmioAddress(addr), data).is_ok();
        if !hit {
            data.fill(0xff);
            self.note_unhandled(BusKind::Mmio, false, addr, data.len());
        }
        hit
    }

    /// Counts and logs (rate-limited) an access that hit no device.
    pub(crate) fn note_unhandled(&self, bus: BusKind, write: bool, addr: u64, len: usize) {
        let c = match bus {
            BusKind::Pio => &self.shared.unhandled_pio,
            BusKind::Mmio => &self.shared.unhandled_mmio,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.shared.unhandled_log.allow() {
            log::warn!(
                "unhandled {} {} of {len} bytes at {addr:#x}: no device there; {}{}",
                bus.name(),
                if write { "write" } else { "read" },
                if write {
                    "the write is dropped"
                } else {
                    "the guest reads all-ones"
                },
                suppressed_note(suppressed)
            );
        }
    }

    /// Counts and logs (rate-limited) a guest write into a read-only memory region.
    pub(crate) fn note_read_only_write(&self, region: &str, addr: u64, len: usize) {
        self.shared.read_only_writes.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.shared.unhandled_log.allow() {
            log::warn!(
                "guest wrote {len} bytes at {addr:#x} into read-only region \"{region}\"; dropped{}",
                suppressed_note(suppressed)
            );
        }
    }

    /// The current generation; a vCPU whose cached view has another one refreshes.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current `IoManager` and its generation.
    pub(crate) fn snapshot(&self) -> (u64, Arc<IoManager>) {
        let s = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        (s.0, s.1.clone())
    }

    fn current(&self) -> Arc<IoManager> {
        self.snapshot().1
    }

    fn lock_registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the registry lock cannot leave it inconsistent: every change is a
        // single push/remove/field store after all checks.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add_pio(&self, name: &str, base: u16, size: u16, handler: PioHandler) -> Result<()> {
        let (base, size) = (u64::from(base), u64::from(size));
        check_range(BusKind::Pio, name, base, size, 0x1_0000)?;
        let mut reg = self.lock_registry();
        check_overlap(BusKind::Pio, &reg.pio, None, name, base, size)?;
        self.map.claim(Space::Io, base, size, name, Holder::Bus)?;
        reg.pio.push(Entry {
            base,
            size,
            device: Arc::new(self.track(name, handler)),
        });
        self.publish(&reg);
        Ok(())
    }

    fn add_mmio(&self, name: &str, base: u64, size: u64, handler: MmioHandler) -> Result<()> {
        check_range(BusKind::Mmio, name, base, size, u64::MAX)?;
        let mut reg = self.lock_registry();
        check_overlap(BusKind::Mmio, &reg.mmio, None, name, base, size)?;
        self.map
            .claim(Space::Memory, base, size, name, Holder::Bus)?;
        reg.mmio.push(Entry {
            base,
            size,
            device: Arc::new(self.track(name, handler)),
        });
        self.publish(&reg);
        Ok(())
    }

    fn track<H>(&self, name: &str, handler: H) -> Tracked<H> {
        Tracked {
            name: name.to_string(),
            handler,
            counters: DeviceCounters::default(),
            shared: self.shared.clone(),
        }
    }

    /// Builds a fresh `IoManager` from the registry and publishes it. Called with the registry
    /// lock held, so publications are ordered like the changes.
    fn publish(&self, reg: &Registry) {
        let mut io = IoManager::new();
        for e in &reg.pio {
            let range = PioRange::new(PioAddress(e.base as u16), e.size as u16)
                .expect("range checked at registration");
            io.register_pio(range, e.device.clone())
                .expect("overlaps checked at registration");
        }
        for e in &reg.mmio {
            let range =
                MmioRange::new(MmioAddress(e.base), e.size).expect("range checked at registration");
            io.register_mmio(range, e.device.clone())
                .expect("overlaps checked at registration");
        }
        let mut snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let generation = snap.0 + 1;
        *snap = (generation, Arc::new(io));
        self.generation.store(generation, Ordering::Release);
    }
}

/// A vCPU's cached view of the bus: the `IoManager` it last saw, refreshed when the generation
/// moves. One atomic load per exit in the common case.
pub(crate) struct BusView {
    generation: u64,
    io: Arc<IoManager>,
}

impl BusView {
    pub(crate) fn new(bus: &DeviceBus) -> Self {
        let (generation, io) = bus.snapshot();
        BusView { generation, io }
    }

    #[inline]
    pub(crate) fn get(&mut self, bus: &DeviceBus) -> &IoManager {
        if bus.generation() != self.generation {
            (self.generation, self.io) = bus.snapshot();
        }
        &self.io
    }
}

fn check_range(bus: BusKind, name: &str, base: u64, size: u64, limit: u64) -> Result<()> {
    let end = base.checked_add(size);
    if size == 0 || end.is_none() || end.is_some_and(|e| e > limit) {
        return Err(Error::BadBusRange {
            bus: bus.name(),
            name: name.to_string(),
            base,
            size,
        });
    }
    Ok(())
}

fn check_overlap<H>(
    bus: BusKind,
    entries: &[Entry<H>],
    skip: Option<usize>,
    name: &str,
    base: u64,
    size: u64,
) -> Result<()> {
    let end = base + size;
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        if base < e.base + e.size && e.base < end {
            return Err(Error::BusOverlap {
                bus: bus.name(),
                name: name.to_string(),
                start: base,
                end,
                other_name: e.device.name.clone(),
                other_start: e.base,
                other_end: e.base + e.size,
            });
        }
    }
    Ok(())
}

fn find_base<H>(entries: &[Entry<H>], base: u64, bus: BusKind) -> Result<usize> {
    entries
        .iter()
        .position(|e| e.base == base)
        .ok_or(Error::NoSuchDevice {
            bus: bus.name(),
            base,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_device::MutDeviceMmio;

    struct Reg(u64);
    impl MutDeviceMmio for Reg {
        fn mmio_read(&mut self, _: MmioAddress, off: MmioAddressOffset, data: &mut [u8]) {
            let bytes = (self.0 >> (8 * off)).to_le_bytes();
            data.copy_from_slice(&bytes[..data.len()]);
        }
        fn mmio_write(&mut self, _: MmioAddress, _: MmioAddressOffset, data: &[u8]) {
            let mut b = [0u8; 8];
            b[..data.len()].copy_from_slice(data);
            self.0 = u64::from_le_bytes(b);
        }
    }

    struct Panicky;
    impl DevicePio for Panicky {
        fn pio_read(&self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
            data.fill(0x12); // half-done work the guest must not see
            panic!("boom");
        }
        fn pio_write(&self, _: PioAddress, _: PioAddressOffset, _: &[u8]) {}
    }

    struct Failing;
    impl FalliblePio for Failing {
        fn try_pio_read(
            &self,
            _: PioAddress,
            _: PioAddressOffset,
            data: &mut [u8],
        ) -> std::result::Result<(), DeviceError> {
            data.fill(0);
            Err("register file unreadable".into())
        }
        fn try_pio_write(
            &self,
            _: PioAddress,
            _: PioAddressOffset,
            _: &[u8],
        ) -> std::result::Result<(), DeviceError> {
            Ok(())
        }
    }

    #[test]
    fn dispatches_with_offset_and_length() {
        let bus = DeviceBus::new();
        bus.register_mmio("reg", 0x1000, 0x10, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        assert!(bus.mmio_write(0x1000, &0x1122_3344_5566_7788u64.to_le_bytes()));
        let mut d = [0u8; 2];
        assert!(bus.mmio_read(0x1002, &mut d));
        assert_eq!(d, [0x66, 0x55]);
        let c = &bus.device_counts()[0];
        assert_eq!((c.reads, c.writes, c.traps()), (1, 1, 2));
    }

    #[test]
    fn miss_reads_all_ones_and_is_counted() {
        let bus = DeviceBus::new();
        let mut d = [0u8; 4];
        assert!(!bus.pio_read(0x80, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.mmio_write(0xdead_0000, &[1]));
        let c = bus.counts();
        assert_eq!((c.unhandled_pio, c.unhandled_mmio), (1, 1));
    }

    #[test]
    fn access_straddling_the_end_of_a_range_is_a_miss() {
        let bus = DeviceBus::new();
        bus.register_mmio("reg", 0x1000, 4, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.mmio_read(0x1002, &mut d));
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn panicking_device_is_fenced_and_reads_all_ones() {
        let bus = DeviceBus::new();
        bus.register_pio("panicky", 0x60, 4, Arc::new(Panicky))
            .unwrap();
        let mut d = [0u8; 2];
        assert!(bus.pio_read(0x60, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        assert!(bus.pio_read(0x61, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        let c = &bus.device_counts()[0];
        assert_eq!((c.panics, c.reads, c.fenced), (1, 2, true));
        assert_eq!(bus.counts().device_panics, 1);
    }

    #[test]
    fn erroring_device_reads_all_ones_and_stays_live() {
        let bus = DeviceBus::new();
        bus.register_fallible_pio("failing", 0x70, 2, Arc::new(Failing))
            .unwrap();
        let mut d = [0u8; 1];
        bus.pio_read(0x70, &mut d);
        bus.pio_read(0x70, &mut d);
        assert_eq!(d, [0xff]);
        let c = &bus.device_counts()[0];
        assert_eq!((c.errors, c.fenced), (2, false));
    }

    #[test]
    fn overlap_is_refused_naming_both_ranges() {
        let bus = DeviceBus::new();
        bus.register_mmio("a", 0x1000, 0x1000, Arc::new(Mutex::new(Reg(0))))
            .unwrap();
        let err = bus
            .register_mmio("b", 0x1800, 0x1000, Arc::new(Mutex::new(Reg(0))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[0x1800, 0x2800)"), "{err}");
        assert!(err.contains("[0x1000, 0x2000)"), "{err}");
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
        assert!(
            bus.register_pio("p", 0xfff0, 0x20, Arc::new(Panicky))
                .is_err()
        );
        assert!(bus.register_pio("p", 0x10, 0, Arc::new(Panicky)).is_err());
    }

    #[test]
    fn move_keeps_counters_and_view_follows_generation() {
        let bus = DeviceBus::new();
        let mut view = BusView::new(&bus);
        bus.register_mmio("bar0", 0x1000, 0x100, Arc::new(Mutex::new(Reg(7))))
            .unwrap();
        let mut d = [0u8; 1];
        assert!(
            view.get(&bus)
                .mmio_read(MmioAddress(0x1000), &mut d)
                .is_ok()
        );
        bus.move_mmio(0x1000, 0x8000).unwrap();
        assert!(
            view.get(&bus)
                .mmio_read(MmioAddress(0x1000), &mut d)
                .is_err()
        );
        assert!(
            view.get(&bus)
                .mmio_read(MmioAddress(0x8000), &mut d)
                .is_ok()
        );
        assert_eq!(d, [7]);
        assert_eq!(bus.device_counts()[0].reads, 2);
        assert!(bus.move_mmio(0x1000, 0x9000).is_err());
        bus.unregister_mmio(0x8000).unwrap();
        assert!(bus.device_counts().is_empty());
    }
}
