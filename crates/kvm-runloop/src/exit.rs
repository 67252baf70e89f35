//! What a vCPU exit is: the kinds the run loop counts, and why `Vcpu::run` returned.

use std::fmt;

/// Every kind of `KVM_RUN` return the run loop tells apart; the index of the per-kind counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum ExitKind {
    /// `in` from a port (`KVM_EXIT_IO`, direction in); dispatched to the PIO bus.
    PioIn,
    /// `out` to a port (`KVM_EXIT_IO`, direction out); dispatched to the PIO bus.
    PioOut,
    /// A load from an address with no memory slot (`KVM_EXIT_MMIO`); dispatched to the MMIO bus.
    MmioRead,
    /// A store to an address with no slot or a read-only slot; dispatched to the MMIO bus.
    MmioWrite,
    /// `hlt` without an in-kernel irqchip (with one, `hlt` waits in the kernel).
    Hlt,
    /// Triple fault or similar: the guest reset itself.
    Shutdown,
    /// KVM could not emulate or continue (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError,
    /// The hardware refused to enter the guest (`KVM_EXIT_FAIL_ENTRY`).
    FailEntry,
    /// A system event (reset, shutdown, crash) reported by KVM.
    SystemEvent,
    /// A guest debug event (`KVM_SET_GUEST_DEBUG` single step or breakpoint).
    Debug,
    /// `KVM_RUN` returned `EINTR`/`EAGAIN` or `KVM_EXIT_INTR`: a signal or a stop request kicked
    /// the vCPU out.
    Interrupted,
    /// Any other exit reason; the run loop stops and reports it.
    Other,
}

impl ExitKind {
    /// Number of kinds (length of [`ExitKind::ALL`]).
    pub const COUNT: usize = 12;

    /// Every kind, in counter order.
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::PioIn,
        ExitKind::PioOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::InternalError,
        ExitKind::FailEntry,
        ExitKind::SystemEvent,
        ExitKind::Debug,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// Short stable name, used in tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::PioIn => "pio-in",
            ExitKind::PioOut => "pio-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::InternalError => "internal-error",
            ExitKind::FailEntry => "fail-entry",
            ExitKind::SystemEvent => "system-event",
            ExitKind::Debug => "debug",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Other => "other",
        }
    }

    /// One line saying what an exit of this kind is, for people reading a table of counts.
    pub fn description(self) -> &'static str {
        match self {
            ExitKind::PioIn => "port reads (`in`), each handed to the device on that port",
            ExitKind::PioOut => "port writes (`out`), each handed to the device on that port",
            ExitKind::MmioRead => "loads from guest addresses with no memory, handed to a device",
            ExitKind::MmioWrite => {
                "stores to guest addresses with no (or read-only) memory, handed to a device"
            }
            ExitKind::Hlt => "the guest executed `hlt`",
            ExitKind::Shutdown => "the guest reset itself (a triple fault)",
            ExitKind::InternalError => {
                "KVM could not go on (e.g. an instruction it cannot emulate)"
            }
            ExitKind::FailEntry => "the CPU refused to enter the guest (invalid guest state)",
            ExitKind::SystemEvent => "a reset, shutdown or crash reported by KVM",
            ExitKind::Debug => "a single step or breakpoint requested by the VMM",
            ExitKind::Interrupted => {
                "KVM_RUN returned early for a signal, e.g. the VMM asking the vCPU to stop"
            }
            ExitKind::Other => "any other exit reason",
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why [`Vcpu::run`](crate::Vcpu::run) returned. Port-IO and MMIO exits never end a run: they
/// are dispatched and the guest continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest executed `hlt` (only seen without an in-kernel irqchip).
    Hlt,
    /// The guest shut down (on x86 usually a triple fault: an exception with no usable IDT).
    Shutdown,
    /// [`StopHandle::stop`](crate::StopHandle::stop) was called. Any access that was in flight
    /// has been completed in the vCPU state.
    Stopped,
    /// KVM gave up on the guest (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError {
        /// `KVM_INTERNAL_ERROR_*` sub-error (1 = emulation failure, 2 = simultaneous exceptions,
        /// 3 = delivery event, ...).
        suberror: u32,
        /// The extra data words KVM attached.
        data: Vec<u64>,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware-specific entry failure reason.
        hardware_reason: u64,
        /// The host CPU the entry was attempted on.
        cpu: u32,
    },
    /// A `KVM_EXIT_SYSTEM_EVENT`.
    SystemEvent {
        /// `KVM_SYSTEM_EVENT_*` type.
        kind: u32,
        /// Event data words.
        data: Vec<u64>,
    },
    /// A debug exit requested with `KVM_SET_GUEST_DEBUG`.
    Debug {
        /// The exception vector (1 = #DB, 3 = #BP).
        exception: u32,
        /// Guest instruction pointer.
        pc: u64,
    },
    /// An exit the run loop has no handler for; `exit_reason` is the raw `KVM_EXIT_*` number.
    Unhandled {
        /// The raw `KVM_EXIT_*` number.
        exit_reason: u32,
    },
}

impl VcpuStop {
    /// The exit kind this stop is counted under.
    pub fn kind(&self) -> ExitKind {
        match self {
            VcpuStop::Hlt => ExitKind::Hlt,
            VcpuStop::Shutdown => ExitKind::Shutdown,
            VcpuStop::Stopped => ExitKind::Interrupted,
            VcpuStop::InternalError { .. } => ExitKind::InternalError,
            VcpuStop::FailEntry { .. } => ExitKind::FailEntry,
            VcpuStop::SystemEvent { .. } => ExitKind::SystemEvent,
            VcpuStop::Debug { .. } => ExitKind::Debug,
            VcpuStop::Unhandled { .. } => ExitKind::Other,
        }
    }
}

impl fmt::Display for VcpuStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuStop::Hlt => write!(f, "HLT (the guest halted)"),
            VcpuStop::Shutdown => write!(
                f,
                "SHUTDOWN (the guest reset itself, usually a triple fault: an exception with no usable IDT)"
            ),
            VcpuStop::Stopped => write!(f, "stopped on request"),
            VcpuStop::InternalError { suberror, data } => {
                write!(f, "KVM internal error, suberror {suberror}")?;
                let what = match suberror {
                    1 => " (emulation failure: KVM could not emulate an instruction)",
                    2 => " (simultaneous exceptions)",
                    3 => " (event delivery failed)",
                    4 => " (unexpected exit reason)",
                    _ => "",
                };
                write!(f, "{what}, data {data:x?}")
            }
            VcpuStop::FailEntry {
                hardware_reason,
                cpu,
            } => write!(
                f,
                "VM entry failed on host CPU {cpu}, hardware reason {hardware_reason:#x} (invalid guest state)"
            ),
            VcpuStop::SystemEvent { kind, data } => {
                write!(f, "system event type {kind}, data {data:x?}")
            }
            VcpuStop::Debug { exception, pc } => {
                write!(f, "debug exit, exception {exception} at {pc:#x}")
            }
            VcpuStop::Unhandled { exit_reason } => {
                write!(f, "unhandled KVM exit reason {exit_reason}")
            }
        }
    }
}

/// What one [`Vcpu::run_once`](crate::Vcpu::run_once) saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// A port-IO or MMIO access was dispatched to the bus. The guest instruction completes the next
    /// time the vCPU runs (see [`Vcpu::complete_pending_io`](crate::Vcpu::complete_pending_io)).
    Access(Access),
    /// `KVM_RUN` was interrupted by a signal and no stop was requested.
    Interrupted,
    /// The run ended; [`Vcpu::run`](crate::Vcpu::run) would return this.
    Stop(VcpuStop),
}

/// One trapped access, as dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Which of the four access kinds.
    pub kind: ExitKind,
    /// Port number or guest physical address.
    pub addr: u64,
    /// Bytes per access (1, 2, 4, or 8 for MMIO).
    pub size: u8,
    /// Repeat count (more than 1 only for string port IO, `rep ins`/`rep outs`).
    pub count: u32,
}
