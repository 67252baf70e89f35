//! [`InMemoryPorts`]: the three ports as plain bookkeeping, with no hypervisor: one map of
//! guest-physical ranges (the VMM's own, mapped BAR pages and trapped ranges alike) and one of
//! I/O ports, in which any overlap is refused; MSI routes with GSIs allocated under the same
//! lock as the route; irqfds recorded by GSI. It also dispatches accesses to what is placed,
//! as a VMM's exit handler would, so tests and fuzz targets drive a
//! [`PassthroughDevice`](crate::PassthroughDevice) with no `/dev/kvm`. Feature `sim`.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_device::bus::{MmioAddress, PioAddress};
use vm_memory::{GuestAddress, VolatileMemory};
use vmm_sys_util::eventfd::EventFd;

use super::{
    BarMappingPort, BarRange, BarRangeKind, HostMapping, InterruptPort, MsiMessage, RouteChange,
    TrapAddress, TrapHandler, TrapPort,
};

/// The first GSI handed out for MSI routes (below: the legacy PIC/IOAPIC lines, as on KVM).
const FIRST_MSI_GSI: u32 = 24;
/// One past the last GSI (KVM's default `KVM_MAX_IRQ_ROUTES` is 4096).
const MAX_GSI: u32 = 4096;

/// Memory or I/O space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSpace {
    /// Guest-physical memory.
    Memory,
    /// x86 I/O ports.
    Io,
}

/// Something placed in the guest's address spaces, as [`InMemoryPorts::placed`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedRange {
    /// Which space.
    pub space: AddressSpace,
    /// First address or port.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Its name (the [`BarRange`] name, or what the VMM reserved it for).
    pub name: String,
    /// Which part of which BAR it is; `None` for a range the VMM reserved (RAM, its windows).
    pub bar_range: Option<BarRange>,
}

impl PlacedRange {
    /// What part of a BAR it is; `None` for a range the VMM reserved.
    pub fn kind(&self) -> Option<BarRangeKind> {
        self.bar_range.as_ref().map(|r| r.kind)
    }
}

/// An eventfd bound to a GSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqfdRecord {
    /// The GSI.
    pub gsi: u32,
    /// The eventfd's descriptor number (its identity while it is open).
    pub fd: RawFd,
    /// Level-triggered with a resample eventfd (INTx).
    pub resample: bool,
}

/// What occupies a range.
#[derive(Clone)]
enum Occupant {
    Reserved(String),
    Mapped(BarRange, Arc<HostMapping>),
    Trapped(BarRange, TrapHandler),
}

#[derive(Clone)]
struct Entry {
    len: u64,
    occupant: Occupant,
}

impl Entry {
    fn name(&self) -> &str {
        match &self.occupant {
            Occupant::Reserved(what) => what,
            Occupant::Mapped(r, _) | Occupant::Trapped(r, _) => &r.name,
        }
    }
}

#[derive(Default)]
struct State {
    memory: BTreeMap<u64, Entry>,
    io: BTreeMap<u64, Entry>,
    routes: BTreeMap<u32, MsiMessage>,
    irqfds: Vec<IrqfdRecord>,
    signalled: Vec<MsiMessage>,
}

impl State {
    fn space(&mut self, space: AddressSpace) -> &mut BTreeMap<u64, Entry> {
        match space {
            AddressSpace::Memory => &mut self.memory,
            AddressSpace::Io => &mut self.io,
        }
    }
}

/// KVM-free ports: see the module docs. Share one `Arc` between the devices of one "VM".
#[derive(Default)]
pub struct InMemoryPorts {
    state: Mutex<State>,
}

impl std::fmt::Debug for InMemoryPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryPorts").finish_non_exhaustive()
    }
}

fn split(at: TrapAddress) -> (AddressSpace, u64) {
    match at {
        TrapAddress::Mmio(a) => (AddressSpace::Memory, a.0),
        TrapAddress::Pio(p) => (AddressSpace::Io, u64::from(p)),
    }
}

impl InMemoryPorts {
    /// Empty address spaces, no routes.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `[base, base + len)` of `space` for the VMM (guest RAM, its own MMIO windows):
    /// no BAR may be placed over it.
    pub fn reserve(&self, space: AddressSpace, base: u64, len: u64, what: &str) -> io::Result<()> {
        let entry = Entry {
            len,
            occupant: Occupant::Reserved(what.to_string()),
        };
        insert(self.lock().space(space), space, base, entry)
    }

    /// Everything placed, memory space first, each by address.
    pub fn placed(&self) -> Vec<PlacedRange> {
        let state = self.lock();
        let list = |space, map: &BTreeMap<u64, Entry>| -> Vec<PlacedRange> {
            map.iter()
                .map(|(base, e)| PlacedRange {
                    space,
                    base: *base,
                    len: e.len,
                    name: e.name().to_string(),
                    bar_range: match &e.occupant {
                        Occupant::Reserved(_) => None,
                        Occupant::Mapped(r, _) | Occupant::Trapped(r, _) => Some(r.clone()),
                    },
                })
                .collect()
        };
        let mut out = list(AddressSpace::Memory, &state.memory);
        out.extend(list(AddressSpace::Io, &state.io));
        out
    }

    /// The MSI routes, by GSI.
    pub fn routes(&self) -> Vec<(u32, MsiMessage)> {
        self.lock().routes.iter().map(|(g, m)| (*g, *m)).collect()
    }

    /// The bound eventfds.
    pub fn irqfds(&self) -> Vec<IrqfdRecord> {
        self.lock().irqfds.clone()
    }

    /// The MSIs injected with [`InterruptPort::signal_msi`] so far.
    pub fn signalled_msis(&self) -> Vec<MsiMessage> {
        self.lock().signalled.clone()
    }

    /// A guest read of `data.len()` bytes at guest-physical `addr`, dispatched to the mapped
    /// page or trapped range that holds all of it. `false` (and all-ones) when none does.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.access(AddressSpace::Memory, addr, Access::Read(data))
    }

    /// A guest write at guest-physical `addr` (see [`mmio_read`](Self::mmio_read)).
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.access(AddressSpace::Memory, addr, Access::Write(data))
    }

    /// A guest `in` of `data.len()` bytes at `port`.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        self.access(AddressSpace::Io, u64::from(port), Access::Read(data))
    }

    /// A guest `out` at `port`.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        self.access(AddressSpace::Io, u64::from(port), Access::Write(data))
    }

    fn access(&self, space: AddressSpace, addr: u64, access: Access<'_>) -> bool {
        let len = access.len() as u64;
        // The lock is released before the handler runs: a handler calls back into the ports
        // (an MSI-X table write routes a vector).
        let found = {
            let mut state = self.lock();
            state
                .space(space)
                .range(..=addr)
                .next_back()
                .filter(|(base, e)| {
                    addr.checked_add(len)
                        .is_some_and(|end| end <= **base + e.len)
                })
                .map(|(base, e)| (*base, e.occupant.clone()))
        };
        match (found, access) {
            (Some((base, Occupant::Trapped(_, TrapHandler::Mmio(h)))), Access::Read(d)) => {
                h.mmio_read(MmioAddress(base), addr - base, d);
                true
            }
            (Some((base, Occupant::Trapped(_, TrapHandler::Mmio(h)))), Access::Write(d)) => {
                h.mmio_write(MmioAddress(base), addr - base, d);
                true
            }
            (Some((base, Occupant::Trapped(_, TrapHandler::Pio(h)))), Access::Read(d)) => {
                h.pio_read(PioAddress(base as u16), (addr - base) as u16, d);
                true
            }
            (Some((base, Occupant::Trapped(_, TrapHandler::Pio(h)))), Access::Write(d)) => {
                h.pio_write(PioAddress(base as u16), (addr - base) as u16, d);
                true
            }
            (Some((base, Occupant::Mapped(_, m))), access) => {
                let slice = m.region().get_slice((addr - base) as usize, len as usize);
                match (slice, access) {
                    (Ok(s), Access::Read(d)) => {
                        s.copy_to(d);
                        true
                    }
                    (Ok(s), Access::Write(d)) => {
                        s.copy_from(d);
                        true
                    }
                    (Err(_), Access::Read(d)) => {
                        d.fill(0xff);
                        false
                    }
                    (Err(_), Access::Write(_)) => false,
                }
            }
            (_, Access::Read(d)) => {
                d.fill(0xff);
                false
            }
            (_, Access::Write(_)) => false,
        }
    }
}

enum Access<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Access<'_> {
    fn len(&self) -> usize {
        match self {
            Access::Read(d) => d.len(),
            Access::Write(d) => d.len(),
        }
    }
}

/// Inserts `entry` at `base` unless it overlaps anything in `map` or leaves the space.
fn insert(
    map: &mut BTreeMap<u64, Entry>,
    space: AddressSpace,
    base: u64,
    entry: Entry,
) -> io::Result<()> {
    let limit = match space {
        AddressSpace::Memory => u64::MAX,
        AddressSpace::Io => 1 << 16,
    };
    let end = base
        .checked_add(entry.len)
        .filter(|&e| e <= limit && entry.len > 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "\"{}\" [{base:#x}, +{:#x}) does not fit in the address space",
                    entry.name(),
                    entry.len
                ),
            )
        })?;
    // The last range starting before `end` is the only one that can overlap (ranges are
    // disjoint).
    if let Some((b, e)) = map.range(..end).next_back() {
        if *b + e.len > base {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "\"{}\" [{base:#x}, {end:#x}) overlaps \"{}\" [{b:#x}, {:#x})",
                    entry.name(),
                    e.name(),
                    *b + e.len
                ),
            ));
        }
    }
    map.insert(base, entry);
    Ok(())
}

/// Moves the entry at `from` to `to` (refused, and left where it was, on overlap).
fn relocate(
    map: &mut BTreeMap<u64, Entry>,
    space: AddressSpace,
    from: u64,
    to: u64,
    range: &BarRange,
) -> io::Result<()> {
    let entry = map.remove(&from).ok_or_else(|| not_placed(range, from))?;
    if let Err(e) = insert(map, space, to, entry.clone()) {
        map.insert(from, entry);
        return Err(e);
    }
    Ok(())
}

fn not_placed(range: &BarRange, at: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("\"{range}\" is not placed at {at:#x}"),
    )
}

impl BarMappingPort for InMemoryPorts {
    fn map(
        &self,
        range: &BarRange,
        at: GuestAddress,
        mapping: &Arc<HostMapping>,
    ) -> io::Result<()> {
        let entry = Entry {
            len: mapping.len(),
            occupant: Occupant::Mapped(range.clone(), mapping.clone()),
        };
        insert(&mut self.lock().memory, AddressSpace::Memory, at.0, entry)
    }

    fn move_mapping(
        &self,
        range: &BarRange,
        from: GuestAddress,
        to: GuestAddress,
    ) -> io::Result<()> {
        relocate(
            &mut self.lock().memory,
            AddressSpace::Memory,
            from.0,
            to.0,
            range,
        )
    }

    fn unmap(&self, range: &BarRange, at: GuestAddress) -> io::Result<()> {
        let mut state = self.lock();
        match state.memory.get(&at.0) {
            Some(Entry {
                occupant: Occupant::Mapped(..),
                ..
            }) => {
                state.memory.remove(&at.0);
                Ok(())
            }
            _ => Err(not_placed(range, at.0)),
        }
    }
}

impl TrapPort for InMemoryPorts {
    fn add_trap(&self, range: &BarRange, at: TrapAddress, handler: TrapHandler) -> io::Result<()> {
        let (space, base) = split(at);
        if matches!(
            (space, &handler),
            (AddressSpace::Memory, TrapHandler::Pio(_)) | (AddressSpace::Io, TrapHandler::Mmio(_))
        ) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{range}\": the handler does not match the address space"),
            ));
        }
        let entry = Entry {
            len: range.len,
            occupant: Occupant::Trapped(range.clone(), handler),
        };
        insert(self.lock().space(space), space, base, entry)
    }

    fn move_trap(&self, range: &BarRange, from: TrapAddress, to: TrapAddress) -> io::Result<()> {
        let ((space, from), (to_space, to)) = (split(from), split(to));
        if space != to_space {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{range}\" cannot move between memory and I/O space"),
            ));
        }
        relocate(self.lock().space(space), space, from, to, range)
    }

    fn remove_trap(&self, range: &BarRange, at: TrapAddress) -> io::Result<()> {
        let (space, base) = split(at);
        let mut state = self.lock();
        let map = state.space(space);
        match map.get(&base) {
            Some(Entry {
                occupant: Occupant::Trapped(..),
                ..
            }) => {
                map.remove(&base);
                Ok(())
            }
            _ => Err(not_placed(range, base)),
        }
    }
}

fn no_route(gsi: u32) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("GSI {gsi} has no route"))
}

/// Routes the lowest free GSI from `from` up to `msg`.
fn add_route(
    routes: &mut BTreeMap<u32, MsiMessage>,
    from: u32,
    msg: MsiMessage,
) -> io::Result<u32> {
    let gsi = (from..MAX_GSI)
        .find(|g| !routes.contains_key(g))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("all GSIs {FIRST_MSI_GSI}-{} are routed", MAX_GSI - 1),
            )
        })?;
    routes.insert(gsi, msg);
    Ok(gsi)
}

impl InterruptPort for InMemoryPorts {
    fn add_msi_route(&self, msg: MsiMessage) -> io::Result<u32> {
        add_route(&mut self.lock().routes, FIRST_MSI_GSI, msg)
    }

    fn apply_msi_routes(&self, changes: &[RouteChange]) -> Vec<io::Result<u32>> {
        // Under one lock, as a VM would apply one table; a batch of adds searches on from the
        // last GSI it took (linear, not quadratic, for 2,048 vectors).
        let mut state = self.lock();
        let mut from = FIRST_MSI_GSI;
        changes
            .iter()
            .map(|change| match *change {
                RouteChange::Add(msg) => {
                    let gsi = add_route(&mut state.routes, from, msg)?;
                    from = gsi + 1;
                    Ok(gsi)
                }
                RouteChange::Update(gsi, msg) => {
                    let route = state.routes.get_mut(&gsi).ok_or_else(|| no_route(gsi))?;
                    *route = msg;
                    Ok(gsi)
                }
                RouteChange::Remove(gsi) => state
                    .routes
                    .remove(&gsi)
                    .map(|_| gsi)
                    .ok_or_else(|| no_route(gsi)),
            })
            .collect()
    }

    fn update_msi_route(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        let mut state = self.lock();
        let route = state.routes.get_mut(&gsi).ok_or_else(|| no_route(gsi))?;
        *route = msg;
        Ok(())
    }

    fn remove_route(&self, gsi: u32) -> io::Result<()> {
        self.lock()
            .routes
            .remove(&gsi)
            .map(|_| ())
            .ok_or_else(|| no_route(gsi))
    }

    fn add_irqfd(&self, gsi: u32, fd: &EventFd, resample: Option<&EventFd>) -> io::Result<()> {
        let mut state = self.lock();
        let fd = fd.as_raw_fd();
        if state.irqfds.iter().any(|r| r.gsi == gsi && r.fd == fd) {
            // KVM says EBUSY for the same pair.
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("eventfd {fd} is already bound to GSI {gsi}"),
            ));
        }
        state.irqfds.push(IrqfdRecord {
            gsi,
            fd,
            resample: resample.is_some(),
        });
        Ok(())
    }

    fn remove_irqfd(&self, gsi: u32, fd: &EventFd) -> io::Result<()> {
        let mut state = self.lock();
        let fd = fd.as_raw_fd();
        let i = state
            .irqfds
            .iter()
            .position(|r| r.gsi == gsi && r.fd == fd)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("eventfd {fd} is not bound to GSI {gsi}"),
                )
            })?;
        state.irqfds.remove(i);
        Ok(())
    }

    fn signal_msi(&self, msg: MsiMessage) -> io::Result<bool> {
        self.lock().signalled.push(msg);
        Ok(true)
    }
}
