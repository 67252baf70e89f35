//! The run loop: `KVM_RUN`, dispatch what trapped, repeat until something ends the run.
//!
//! The exit path is hot (every trapped register access of a passed-through device goes through
//! it), so per exit it does: one ioctl, one load of the stop flag, one relaxed counter update in
//! this vCPU's own cache line, one atomic load to see whether the bus changed, the `IoManager`
//! lookup, the device's trap counter (one atomic add) and the device call under `catch_unwind`
//! (free unless something panics). No allocation, no lock shared with other vCPUs (a device's own
//! `Mutex` aside).

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{Ordering, compiler_fence};

use kvm_bindings::{kvm_regs, kvm_run};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_device::bus::MmioAddress;
use vm_device::device_manager::MmioManager;
use vm_memory::GuestMemoryMmap;

use crate::bus::{BusKind, BusView, DeviceBus};
use crate::cpu_mode::{GuestEntry, SystemTables, setup_vcpu};
use crate::error::{Error, Result};
use crate::exit::{Access, Exit, ExitKind, VcpuStop};
use crate::kick::{RunControl, RunGuard};
use crate::slots::MemorySlots;
use crate::stats::ExitStats;

/// One vCPU and its run loop. Create it with [`Vm::create_vcpu`](crate::Vm::create_vcpu), move
/// it to its own thread and call [`run`](Self::run).
pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
    /// The vCPU's `kvm_run` mapping, owned by `fd`; stable for `fd`'s lifetime.
    run: *mut kvm_run,
    bus: Arc<DeviceBus>,
    view: BusView,
    slots: Arc<MemorySlots>,
    stats: Arc<ExitStats>,
    control: Arc<RunControl>,
    /// An access exit was dispatched and the guest instruction is not complete until the next
    /// `KVM_RUN` (KVM API, "KVM_RUN").
    pending_io: bool,
}

// SAFETY: `run` points into the kvm_run mmap owned by `fd` (a VcpuFd, which is Send); it moves
// with the Vcpu and is only dereferenced by the thread that owns the Vcpu (and by the kick signal
// handler running on that same thread).
unsafe impl Send for Vcpu {}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("id", &self.id)
            .field("pending_io", &self.pending_io)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    pub(crate) fn new(
        id: u32,
        mut fd: VcpuFd,
        bus: Arc<DeviceBus>,
        slots: Arc<MemorySlots>,
        stats: Arc<ExitStats>,
        control: Arc<RunControl>,
    ) -> Self {
        let run = fd.get_kvm_run() as *mut kvm_run;
        let view = BusView::new(&bus);
        Vcpu {
            id,
            fd,
            run,
            bus,
            view,
            slots,
            stats,
            control,
            pending_io: false,
        }
    }

    /// The vCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The kvm-ioctls vCPU, for register access (`get_regs`, `get_sregs`, `set_lapic`, ...).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// This vCPU's exit counters (readable from any thread while it runs).
    pub fn stats(&self) -> &Arc<ExitStats> {
        &self.stats
    }

    /// Puts the vCPU in `guest.mode` at `guest.entry`; see [`setup_vcpu`].
    pub fn setup(&self, mem: &GuestMemoryMmap, guest: &GuestEntry) -> Result<Option<SystemTables>> {
        setup_vcpu(&self.fd, self.id, mem, guest)
    }

    /// The general registers.
    pub fn regs(&self) -> Result<kvm_regs> {
        self.fd.get_regs().map_err(|source| Error::VcpuRegisters {
            op: "KVM_GET_REGS",
            vcpu: self.id,
            source,
        })
    }

    /// Sets the general registers.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd
            .set_regs(regs)
            .map_err(|source| Error::VcpuRegisters {
                op: "KVM_SET_REGS",
                vcpu: self.id,
                source,
            })
    }

    /// Whether a dispatched access still waits for the next `KVM_RUN` to complete in the guest
    /// (only after [`run_once`](Self::run_once) returned an access).
    pub fn has_pending_io(&self) -> bool {
        self.pending_io
    }

    /// Runs the guest until something ends the run: `hlt`, shutdown, an error exit, or a stop
    /// request. Port-IO and MMIO exits are dispatched to the bus and the guest continues;
    /// signals other than a stop are absorbed. Returns with no access in flight.
    pub fn run(&mut self) -> Result<VcpuStop> {
        let control = self.control.clone();
        let _guard = RunGuard::enter(&control, self.id, self.run);
        // Clear a kick left over from an earlier stop *before* the flag is read (in `step`), so a
        // stop requested from now on is never lost.
        self.set_immediate_exit(0);
        loop {
            if let Exit::Stop(stop) = self.step()? {
                return Ok(stop);
            }
        }
    }

    /// Runs the guest until the next exit and handles it: an access is dispatched (and completes
    /// in the guest at the next run), anything else is returned as it is.
    pub fn run_once(&mut self) -> Result<Exit> {
        let control = self.control.clone();
        let _guard = RunGuard::enter(&control, self.id, self.run);
        self.set_immediate_exit(0);
        self.step()
    }

    /// Completes a dispatched access in the guest without running any further guest
    /// instruction (re-enters `KVM_RUN` with `immediate_exit` set). Call it before saving the
    /// vCPU state after [`run_once`](Self::run_once). Returns a stop if completing the access
    /// ended the run.
    pub fn complete_pending_io(&mut self) -> Result<Option<VcpuStop>> {
        while self.pending_io {
            self.set_immediate_exit(1);
            let step = self.step();
            self.set_immediate_exit(0);
            if let Exit::Stop(stop) = step? {
                return Ok(Some(stop));
            }
        }
        Ok(None)
    }

    #[inline]
    fn set_immediate_exit(&mut self, value: u8) {
        // SAFETY: `self.run` is the live kvm_run mapping of `self.fd`, and `&mut self` means this
        // thread owns the vCPU.
        unsafe { store_immediate_exit(self.run, value) };
    }

    #[inline]
    fn step(&mut self) -> Result<Exit> {
        if self.control.stop_requested() {
            if !self.pending_io {
                return Ok(Exit::Stop(VcpuStop::Stopped));
            }
            // Re-enter only to finish the access in flight: KVM completes it, then sees
            // immediate_exit and returns EINTR without running another guest instruction.
            self.set_immediate_exit(1);
        }
        let run = self.run;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // KVM finishes a pending access before it looks at signals or immediate_exit.
                self.pending_io = false;
                self.stats.bump(ExitKind::Interrupted);
                // Clear before the flag is read again at the top of the next step: a kick that
                // lands after this store sets it again, one that landed before is followed by a
                // flag the next step sees.
                // SAFETY: as in `set_immediate_exit` (which borrowck forbids calling here).
                unsafe { store_immediate_exit(run, 0) };
                return Ok(Exit::Interrupted);
            }
            Err(source) => {
                return Err(Error::Run {
                    vcpu: self.id,
                    source,
                });
            }
        };
        self.pending_io = false;
        let access = match exit {
            // String IO (`rep outs`/`rep ins`) carries `count` elements of `size` bytes in one
            // exit; the device sees them one by one, in order, as the hardware would.
            VcpuExit::IoOut(port, data) => {
                // SAFETY: `run` is this vCPU's kvm_run and the exit is KVM_EXIT_IO.
                let size = unsafe { io_size(run) };
                let io = self.view.get(&self.bus);
                for element in data.chunks(size) {
                    self.bus.dispatch_pio_write(io, port, element);
                }
                Access {
                    kind: ExitKind::PioOut,
                    addr: u64::from(port),
                    size: size as u8,
                    count: (data.len() / size) as u32,
                }
            }
            VcpuExit::IoIn(port, data) => {
                // SAFETY: as for IoOut.
                let size = unsafe { io_size(run) };
                let io = self.view.get(&self.bus);
                for element in data.chunks_mut(size) {
                    self.bus.dispatch_pio_read(io, port, element);
                }
                Access {
                    kind: ExitKind::PioIn,
                    addr: u64::from(port),
                    size: size as u8,
                    count: (data.len() / size) as u32,
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                let len = data.len();
                let io = self.view.get(&self.bus);
                if io.mmio_write(MmioAddress(addr), data).is_err() {
                    // No device: either a store into a read-only region (ROM semantics: dropped)
                    // or into nothing at all.
                    match self.slots.note_read_only_write(addr) {
                        Some(region) => self.bus.note_read_only_write(&region, addr, len),
                        None => self.bus.note_unhandled(BusKind::Mmio, true, addr, len),
                    }
                }
                Access {
                    kind: ExitKind::MmioWrite,
                    addr,
                    size: len as u8,
                    count: 1,
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                let io = self.view.get(&self.bus);
                self.bus.dispatch_mmio_read(io, addr, data);
                Access {
                    kind: ExitKind::MmioRead,
                    addr,
                    size: data.len() as u8,
                    count: 1,
                }
            }
            other => {
                // SAFETY: `run` is this vCPU's kvm_run, and `other` was decoded from it.
                let Some(stop) = (unsafe { non_access_exit(other, run) }) else {
                    self.stats.bump(ExitKind::Interrupted);
                    return Ok(Exit::Interrupted);
                };
                self.stats.bump(stop.kind());
                return Ok(Exit::Stop(stop));
            }
        };
        // The guest instruction completes at the next KVM_RUN (see `complete_pending_io`).
        self.pending_io = true;
        self.stats.bump(access.kind);
        Ok(Exit::Access(access))
    }
}

/// Sets `kvm_run.immediate_exit`, the byte the kick signal handler also writes.
///
/// # Safety
/// `run` is the live kvm_run mapping of a vCPU that the calling thread runs.
#[inline]
unsafe fn store_immediate_exit(run: *mut kvm_run, value: u8) {
    // SAFETY: per the contract. Volatile: the kick handler writes the same byte behind the
    // compiler's back.
    unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(value) };
    // The store must stay before the stop-flag check that follows it (see `kick`): the handler
    // runs on this same thread, so a compiler fence is all the ordering needed.
    compiler_fence(Ordering::SeqCst);
}

/// Bytes per element of the port-IO exit in `run`: `VcpuExit` gives only the whole data slice
/// (`size * count` bytes).
///
/// # Safety
/// `run` points at a readable `kvm_run` whose exit reason is `KVM_EXIT_IO`.
#[inline]
unsafe fn io_size(run: *const kvm_run) -> usize {
    // SAFETY: per the contract `io` is the live union member; a plain read of one byte that the
    // exit's data slice (which lies past the struct, at `data_offset`) does not cover.
    usize::from(unsafe { (*run).__bindgen_anon_1.io.size }).max(1)
}

/// Maps every exit other than port IO and MMIO: `Some` ends the run, `None` means continue.
/// `run` is read for the details `VcpuExit` does not carry (internal error data, the raw reason).
///
/// # Safety
/// `run` points at a readable `kvm_run` whose exit reason is the one `exit` was decoded from.
unsafe fn non_access_exit(exit: VcpuExit<'_>, run: *const kvm_run) -> Option<VcpuStop> {
    Some(match exit {
        VcpuExit::Hlt => VcpuStop::Hlt,
        VcpuExit::Shutdown => VcpuStop::Shutdown,
        VcpuExit::InternalError => {
            // SAFETY: per the contract the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
            // is the live member.
            let internal = unsafe { (*run).__bindgen_anon_1.internal };
            let n = (internal.ndata as usize).min(internal.data.len());
            VcpuStop::InternalError {
                suberror: internal.suberror,
                data: internal.data[..n].to_vec(),
            }
        }
        VcpuExit::FailEntry(hardware_reason, cpu) => VcpuStop::FailEntry {
            hardware_reason,
            cpu,
        },
        VcpuExit::SystemEvent(kind, data) => VcpuStop::SystemEvent {
            kind,
            data: data.to_vec(),
        },
        VcpuExit::Debug(arch) => VcpuStop::Debug {
            exception: arch.exception,
            pc: arch.pc,
        },
        // A signal arrived as an exit rather than EINTR; or exits that need nothing from us (we
        // never request an interrupt window; IOAPIC EOI exits only come with a split irqchip).
        VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::IoapicEoi(_) => return None,
        _ => VcpuStop::Unhandled {
            // SAFETY: `run` is readable per the contract; a plain read of the exit reason.
            exit_reason: unsafe { (*run).exit_reason },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_WATCHDOG, kvm_debug_exit_arch};

    // Exits this host cannot be made to produce (fail-entry needs hardware VMX checks, system
    // events need PSCI or Xen) are checked here with synthetic exits; the others are produced by
    // real guests in tests/run_loop.rs.
    #[test]
    fn every_non_access_exit_maps_to_a_typed_outcome() {
        // SAFETY: kvm_run is plain old data; all-zero is a valid value.
        let mut run: kvm_run = unsafe { std::mem::zeroed() };
        run.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        // SAFETY: writing the union member that the exit reason selects.
        unsafe {
            run.__bindgen_anon_1.internal.suberror = 1;
            run.__bindgen_anon_1.internal.ndata = 2;
            run.__bindgen_anon_1.internal.data[..2].copy_from_slice(&[7, 8]);
        }
        // SAFETY: `p` points at the live local `kvm_run`; its exit reason matches every exit
        // whose details are read from it (internal error here, the raw reason below).
        let map = |exit, p| unsafe { non_access_exit(exit, p) };
        let p = &run as *const kvm_run;
        assert_eq!(
            map(VcpuExit::InternalError, p),
            Some(VcpuStop::InternalError {
                suberror: 1,
                data: vec![7, 8]
            })
        );
        assert_eq!(
            map(VcpuExit::FailEntry(0x8000_0021, 1), p),
            Some(VcpuStop::FailEntry {
                hardware_reason: 0x8000_0021,
                cpu: 1
            })
        );
        assert_eq!(
            map(VcpuExit::SystemEvent(2, &[5]), p),
            Some(VcpuStop::SystemEvent {
                kind: 2,
                data: vec![5]
            })
        );
        let arch = kvm_debug_exit_arch {
            exception: 3,
            pc: 0x1000,
            ..Default::default()
        };
        assert_eq!(
            map(VcpuExit::Debug(arch), p),
            Some(VcpuStop::Debug {
                exception: 3,
                pc: 0x1000
            })
        );
        assert_eq!(map(VcpuExit::Hlt, p), Some(VcpuStop::Hlt));
        assert_eq!(map(VcpuExit::Shutdown, p), Some(VcpuStop::Shutdown));
        assert_eq!(map(VcpuExit::Intr, p), None);
        assert_eq!(map(VcpuExit::IrqWindowOpen, p), None);
        run.exit_reason = KVM_EXIT_WATCHDOG;
        let p = &run as *const kvm_run;
        for exit in [VcpuExit::Watchdog, VcpuExit::Unknown, VcpuExit::Exception] {
            assert_eq!(
                map(exit, p),
                Some(VcpuStop::Unhandled {
                    exit_reason: KVM_EXIT_WATCHDOG
                })
            );
        }
        assert_eq!(
            map(VcpuExit::Unsupported(99), p).map(|s| s.kind()),
            Some(ExitKind::Other)
        );
    }
}
