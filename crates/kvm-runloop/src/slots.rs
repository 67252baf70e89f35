//! Guest memory regions as KVM memory slots: add, move and remove them while vCPUs run.
//!
//! A slot is memory the guest reaches with no exit at all: RAM, a ROM (read-only slot: reads are
//! direct, writes exit as MMIO and are dropped and counted here), or an mmap of a file
//! descriptor. The last is how a VFIO BAR is passed through: the device driver mmaps the BAR
//! region of the device fd and hands the fd and offset (or the mapping) here; guest loads and
//! stores then go straight to the device. When the guest reprograms the BAR, the passthrough
//! device calls [`MemorySlots::move_region`], which KVM does atomically (`KVM_MR_MOVE`: same
//! slot, new guest address).
//!
//! Slot ids are allocated lowest-free and reused after removal. Overlapping regions are refused
//! with an error naming both ranges: KVM would refuse them too, with a bare `EEXIST`.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, MmapRegion};

use crate::address_map::{AddressMap, Holder, Space};
use crate::error::{Error, Result};

const PAGE_SIZE: u64 = 4096;

/// A KVM memory slot number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId(pub u32);

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// How the guest may access a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryAccess {
    /// Loads and stores go to the memory with no exit.
    ReadWrite,
    /// Loads go to the memory; stores exit as MMIO writes and are dropped (ROM). Needs
    /// `KVM_CAP_READONLY_MEM`.
    ReadOnly,
}

/// Where a region's host memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    /// Boot RAM from the VM's `GuestMemoryMmap`.
    GuestRam,
    /// Anonymous memory this manager allocated.
    Anonymous,
    /// A `MAP_SHARED` mapping this manager made of a file descriptor (a VFIO BAR region, a memfd).
    File {
        /// Offset in the file.
        offset: u64,
    },
    /// Memory the caller mapped and owns.
    Host,
}

/// A region as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// Its KVM slot.
    pub slot: SlotId,
    /// Name given when it was added.
    pub name: String,
    /// Guest physical base.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Guest access.
    pub access: MemoryAccess,
    /// Where the memory comes from.
    pub backing: BackingKind,
    /// Host virtual address of the first byte.
    pub host_addr: u64,
    /// Guest writes that trapped because the region is read-only (always 0 for read-write
    /// regions: a mapped region causes no traps, which is the point).
    pub write_traps: u64,
}

struct Slot {
    name: String,
    guest_addr: u64,
    size: u64,
    access: MemoryAccess,
    backing: BackingKind,
    /// Keeps the host mapping alive (and unmaps it on removal when we own it).
    mapping: Arc<MmapRegion>,
    write_traps: AtomicU64,
}

impl Slot {
    fn info(&self, slot: u32) -> RegionInfo {
        RegionInfo {
            slot: SlotId(slot),
            name: self.name.clone(),
            guest_addr: self.guest_addr,
            size: self.size,
            access: self.access,
            backing: self.backing,
            host_addr: self.mapping.as_ptr() as u64,
            write_traps: self.write_traps.load(Ordering::Relaxed),
        }
    }
}

/// The memory slots of one VM. Shared (`Arc`) between the VM, its vCPUs and device code; every
/// method takes `&self`.
pub struct MemorySlots {
    vm: Arc<VmFd>,
    max_slots: u32,
    readonly_supported: bool,
    table: Mutex<BTreeMap<u32, Slot>>,
    /// The VM's address map, shared with its bus: a slot is never placed over a trapped range
    /// or a reserved window (KVM would serve the slot and the device would never see an access).
    map: Arc<AddressMap>,
}

impl std::fmt::Debug for MemorySlots {
    /// The limits only: the slot table is behind a lock a caller may hold.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySlots")
            .field("max_slots", &self.max_slots)
            .field("readonly_supported", &self.readonly_supported)
            .finish_non_exhaustive()
    }
}

impl MemorySlots {
    pub(crate) fn new(
        vm: Arc<VmFd>,
        max_slots: u32,
        readonly_supported: bool,
        map: Arc<AddressMap>,
    ) -> Self {
        MemorySlots {
            vm,
            max_slots,
            readonly_supported,
            table: Mutex::new(BTreeMap::new()),
            map,
        }
    }

    /// Adds a region of fresh, zeroed anonymous memory.
    pub fn add_anonymous(
        &self,
        name: &str,
        guest_addr: u64,
        size: u64,
        access: MemoryAccess,
    ) -> Result<SlotId> {
        check_region(name, guest_addr, size)?;
        let mapping = MmapRegion::new(size as usize).map_err(|source| Error::MapRegion {
            name: name.into(),
            size,
            source,
        })?;
        self.insert(name, guest_addr, access, BackingKind::Anonymous, mapping)
    }

    /// Adds a region backed by a `MAP_SHARED` mapping of `fd` at `offset`, as a VFIO BAR region
    /// or a memfd is mapped. The manager makes and owns the mapping (keeping a duplicate of the
    /// fd); `fd` may be closed afterwards.
    pub fn add_file(
        &self,
        name: &str,
        guest_addr: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
        access: MemoryAccess,
    ) -> Result<SlotId> {
        check_region(name, guest_addr, size)?;
        check_aligned("file offset", offset)?;
        let file = File::from(fd.try_clone_to_owned().map_err(|source| Error::DupFd {
            name: name.into(),
            source,
        })?);
        let prot = match access {
            MemoryAccess::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            MemoryAccess::ReadOnly => libc::PROT_READ,
        };
        let mapping = MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            size as usize,
            prot,
            libc::MAP_SHARED,
        )
        .map_err(|source| Error::MapRegion {
            name: name.into(),
            size,
            source,
        })?;
        self.insert(
            name,
            guest_addr,
            access,
            BackingKind::File { offset },
            mapping,
        )
    }

    /// Adds a region backed by host memory the caller mapped (for example a BAR mmap made by a
    /// VFIO library).
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must be a valid, page-aligned mapping in this process
    /// (readable, and writable for [`MemoryAccess::ReadWrite`]) that stays mapped until the region is
    /// removed with [`remove`](Self::remove), or else until the KVM VM is gone: the [`Vm`], this
    /// manager, every [`Vcpu`] and any vCPU fd made through [`Vm::fd`] all dropped (KVM keeps
    /// using the address while any of them lives, and would reach whatever is mapped there
    /// next). The guest may read and write it at any time.
    ///
    /// [`Vm`]: crate::Vm
    /// [`Vm::fd`]: crate::Vm::fd
    /// [`Vcpu`]: crate::Vcpu
    pub unsafe fn add_host(
        &self,
        name: &str,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
        access: MemoryAccess,
    ) -> Result<SlotId> {
        check_region(name, guest_addr, size)?;
        check_aligned("host address", host_addr as u64)?;
        let prot = match access {
            MemoryAccess::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            MemoryAccess::ReadOnly => libc::PROT_READ,
        };
        // SAFETY: the caller guarantees the mapping is valid for the region's lifetime; the
        // resulting MmapRegion is not owned, so dropping it does not unmap.
        let mapping =
            unsafe { MmapRegion::build_raw(host_addr, size as usize, prot, libc::MAP_SHARED) }
                .map_err(|source| Error::MapRegion {
                    name: name.into(),
                    size,
                    source,
                })?;
        self.insert(name, guest_addr, access, BackingKind::Host, mapping)
    }

    /// Registers one region of the VM's boot RAM.
    pub(crate) fn add_guest_ram(
        &self,
        name: &str,
        guest_addr: u64,
        mapping: Arc<MmapRegion>,
    ) -> Result<SlotId> {
        check_region(name, guest_addr, mapping.size() as u64)?;
        self.insert_arc(
            name,
            guest_addr,
            MemoryAccess::ReadWrite,
            BackingKind::GuestRam,
            mapping,
        )
    }

    /// Moves a region to a new guest address, keeping its slot, memory and contents. KVM applies
    /// the move atomically with respect to vCPUs.
    pub fn move_region(&self, slot: SlotId, new_guest_addr: u64) -> Result<()> {
        let mut table = self.lock();
        let s = table.get(&slot.0).ok_or(Error::NoSuchSlot(slot.0))?;
        check_region(&s.name, new_guest_addr, s.size)?;
        check_overlap(&table, Some(slot.0), &s.name, new_guest_addr, s.size)?;
        let old_guest_addr = s.guest_addr;
        self.map
            .relocate(Space::Memory, old_guest_addr, new_guest_addr)?;
        let s = &table[&slot.0];
        if let Err(e) = self.set_region(
            slot.0,
            &s.name,
            new_guest_addr,
            s.size,
            s.access,
            s.mapping.as_ptr(),
        ) {
            // Back where KVM still has it; its old place was only free for it.
            let _ = self
                .map
                .relocate(Space::Memory, new_guest_addr, old_guest_addr);
            return Err(e);
        }
        table.get_mut(&slot.0).expect("looked up above").guest_addr = new_guest_addr;
        Ok(())
    }

    /// Removes a region; the guest sees no memory there any more (accesses exit as MMIO). The
    /// slot id becomes free for reuse. Returns what the region was.
    pub fn remove(&self, slot: SlotId) -> Result<RegionInfo> {
        let mut table = self.lock();
        let s = table.get(&slot.0).ok_or(Error::NoSuchSlot(slot.0))?;
        // memory_size 0 deletes the slot (KVM API, KVM_SET_USER_MEMORY_REGION).
        let region = kvm_userspace_memory_region {
            slot: slot.0,
            flags: 0,
            guest_phys_addr: s.guest_addr,
            memory_size: 0,
            userspace_addr: 0,
        };
        // SAFETY: deleting a slot makes KVM drop its reference to the host memory; the mapping is
        // dropped only after the ioctl has returned.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|source| {
            Error::SetMemoryRegion {
                name: s.name.clone(),
                slot: slot.0,
                guest_addr: s.guest_addr,
                source,
            }
        })?;
        let s = table.remove(&slot.0).expect("looked up above");
        self.map.release(Space::Memory, s.guest_addr);
        Ok(s.info(slot.0))
    }

    /// Every region, by slot.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.lock().iter().map(|(id, s)| s.info(*id)).collect()
    }

    /// One region.
    pub fn region(&self, slot: SlotId) -> Option<RegionInfo> {
        self.lock().get(&slot.0).map(|s| s.info(slot.0))
    }

    /// The region containing guest physical `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<RegionInfo> {
        self.lock()
            .iter()
            .find(|(_, s)| addr >= s.guest_addr && addr - s.guest_addr < s.size)
            .map(|(id, s)| s.info(*id))
    }

    /// The host mapping of a region, for reading or filling it through vm-memory's
    /// `VolatileMemory` API.
    pub fn mapping(&self, slot: SlotId) -> Option<Arc<MmapRegion>> {
        self.lock().get(&slot.0).map(|s| s.mapping.clone())
    }

    /// The KVM slot limit for this VM.
    pub fn max_slots(&self) -> u32 {
        self.max_slots
    }

    /// Counts a guest write into a read-only region; returns the region's name if `addr` is in
    /// one. Called by the run loop on an MMIO write that no device claimed.
    pub(crate) fn note_read_only_write(&self, addr: u64) -> Option<String> {
        let table = self.lock();
        let s = table.values().find(|s| {
            s.access == MemoryAccess::ReadOnly
                && addr >= s.guest_addr
                && addr - s.guest_addr < s.size
        })?;
        s.write_traps.fetch_add(1, Ordering::Relaxed);
        Some(s.name.clone())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Slot>> {
        // Every change to the table happens after its ioctl succeeded, in one statement.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(
        &self,
        name: &str,
        guest_addr: u64,
        access: MemoryAccess,
        backing: BackingKind,
        mapping: MmapRegion,
    ) -> Result<SlotId> {
        self.insert_arc(name, guest_addr, access, backing, Arc::new(mapping))
    }

    fn insert_arc(
        &self,
        name: &str,
        guest_addr: u64,
        access: MemoryAccess,
        backing: BackingKind,
        mapping: Arc<MmapRegion>,
    ) -> Result<SlotId> {
        if access == MemoryAccess::ReadOnly && !self.readonly_supported {
            return Err(Error::MissingCapability {
                capability: "KVM_CAP_READONLY_MEM",
                needed_for: "read-only memory regions",
            });
        }
        let size = mapping.size() as u64;
        let mut table = self.lock();
        check_overlap(&table, None, name, guest_addr, size)?;
        let slot = (0..self.max_slots)
            .find(|id| !table.contains_key(id))
            .ok_or_else(|| Error::SlotsExhausted {
                max: self.max_slots,
                name: name.into(),
            })?;
        self.map
            .claim(Space::Memory, guest_addr, size, name, Holder::Slot(slot))?;
        if let Err(e) = self.set_region(slot, name, guest_addr, size, access, mapping.as_ptr()) {
            self.map.release(Space::Memory, guest_addr);
            return Err(e);
        }
        table.insert(
            slot,
            Slot {
                name: name.into(),
                guest_addr,
                size,
                access,
                backing,
                mapping,
                write_traps: AtomicU64::new(0),
            },
        );
        Ok(SlotId(slot))
    }

    fn set_region(
        &self,
        slot: u32,
        name: &str,
        guest_addr: u64,
        size: u64,
        access: MemoryAccess,
        host: *mut u8,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: match access {
                MemoryAccess::ReadWrite => 0,
                MemoryAccess::ReadOnly => KVM_MEM_READONLY,
            },
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: `host..host + size` is a live mapping held by the slot table entry for as long
        // as the KVM slot exists (entries are removed only after the slot is deleted).
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|source| Error::SetMemoryRegion {
            name: name.into(),
            slot,
            guest_addr,
            source,
        })
    }
}

fn check_aligned(what: &'static str, value: u64) -> Result<()> {
    if value % PAGE_SIZE != 0 {
        return Err(Error::Unaligned { what, value });
    }
    Ok(())
}

fn check_region(name: &str, guest_addr: u64, size: u64) -> Result<()> {
    check_aligned("guest address", guest_addr)?;
    check_aligned("region size", size)?;
    if size == 0 || guest_addr.checked_add(size).is_none() {
        return Err(Error::BadRegion {
            name: name.into(),
            guest_addr,
            size,
        });
    }
    Ok(())
}

fn check_overlap(
    table: &BTreeMap<u32, Slot>,
    skip: Option<u32>,
    name: &str,
    start: u64,
    size: u64,
) -> Result<()> {
    let end = start + size;
    for (id, s) in table {
        if Some(*id) == skip {
            continue;
        }
        if start < s.guest_addr + s.size && s.guest_addr < end {
            return Err(Error::SlotOverlap {
                name: name.into(),
                start,
                end,
                other_name: s.name.clone(),
                other_start: s.guest_addr,
                other_end: s.guest_addr + s.size,
                other_slot: *id,
            });
        }
    }
    Ok(())
}
