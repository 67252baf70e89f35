//! Stopping vCPUs from another thread, promptly and without losing an access.
//!
//! # The protocol
//! A stop sets a flag, then sends the kick signal (`SIGRTMIN() + KICK_SIGNAL_OFFSET`) to every
//! thread currently inside [`Vcpu::run`](crate::Vcpu::run). The signal handler sets
//! `kvm_run.immediate_exit` of the vCPU that thread runs (found through a thread-local, as
//! Firecracker does). This closes both windows:
//! - the thread is inside `KVM_RUN`: the signal makes it return `EINTR`;
//! - the thread is about to call `KVM_RUN` (it checked the flag just before the stop): the call
//!   returns `EINTR` at once because `immediate_exit` is set.
//!
//! # No lost or half-done access
//! After a port-IO or MMIO exit the guest instruction is only finished by the *next* `KVM_RUN`
//! (for a read, that is when the data the device produced reaches the guest register). The run
//! loop therefore never returns between an access exit and the following `KVM_RUN`: when a stop
//! is pending it re-enters with `immediate_exit` set, and KVM completes the pending access
//! before it checks `immediate_exit` and returns `EINTR` (KVM API, "KVM_RUN": "the kernel side
//! will first finish incomplete operations and then check for pending signals"). Only then does
//! `run` return [`VcpuStop::Stopped`](crate::VcpuStop::Stopped). The test
//! `stop_during_a_read_completes_it` checks this with a device that stops the VM from inside its
//! read handler.
//!
//! The thread list is guarded by a mutex held while signalling, and a vCPU thread removes itself
//! under the same mutex before leaving `run`, so a signal never goes to a thread that exited.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use kvm_bindings::kvm_run;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::error::{Error, Result};

/// Offset from `SIGRTMIN()` of the signal used to kick vCPU threads out of `KVM_RUN` (the same
/// choice as Firecracker). An embedding VMM must not install another handler for it.
pub const KICK_SIGNAL_OFFSET: c_int = 0;

thread_local! {
    /// The `kvm_run` of the vCPU this thread is running, or null. Read by the signal handler.
    static RUNNING: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

extern "C" fn kick_handler(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // `try_with`: the handler may run while the thread-local is being torn down.
    let _ = RUNNING.try_with(|r| {
        let run = r.get();
        if !run.is_null() {
            // SAFETY: `run` points at the mmap'd kvm_run of the vCPU this thread is running; it is
            // set by `RunGuard::enter` and cleared before the vCPU (and its mapping) can go away.
            // A volatile byte store is async-signal-safe and is what KVM reads on entry.
            unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler once per process; returns the signal number.
fn kick_signal() -> Result<c_int> {
    static INSTALLED: OnceLock<std::result::Result<c_int, (c_int, kvm_ioctls::Error)>> =
        OnceLock::new();
    (*INSTALLED.get_or_init(|| {
        let signal = SIGRTMIN() + KICK_SIGNAL_OFFSET;
        register_signal_handler(signal, kick_handler)
            .and_then(|()| restart_interrupted_syscalls(signal))
            .map(|()| signal)
            .map_err(|e| (signal, e))
    }))
    .map_err(|(signal, source)| Error::KickSignal { signal, source })
}

/// Adds `SA_RESTART` to the kick handler that vmm-sys-util installed (with `SA_SIGINFO` only).
///
/// Device handlers run on the vCPU thread and may block in a syscall (a VFIO region `pread`, an
/// eventfd read): without `SA_RESTART` a kick would fail that syscall with `EINTR` and leave the
/// access half done. `KVM_RUN` is unaffected: it returns `EINTR` itself, which is never restarted.
fn restart_interrupted_syscalls(signal: c_int) -> std::result::Result<(), kvm_ioctls::Error> {
    // SAFETY: `sigaction` is plain old data; the all-zero value is valid and is overwritten below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a valid signal number, no new action, and a valid pointer for the current one.
    if unsafe { libc::sigaction(signal, ptr::null(), &mut action) } != 0 {
        return Err(kvm_ioctls::Error::last());
    }
    action.sa_flags |= libc::SA_RESTART;
    // SAFETY: re-installs the handler, mask and flags just read, plus one flag.
    if unsafe { libc::sigaction(signal, &action, ptr::null_mut()) } != 0 {
        return Err(kvm_ioctls::Error::last());
    }
    Ok(())
}

/// Run state shared by a VM's vCPUs and its [`StopHandle`]s.
pub(crate) struct RunControl {
    stop: AtomicBool,
    /// (vCPU id, thread) for every thread inside `Vcpu::run`.
    threads: Mutex<Vec<(u32, libc::pthread_t)>>,
    signal: c_int,
}

impl RunControl {
    pub(crate) fn new() -> Result<Arc<Self>> {
        Ok(Arc::new(RunControl {
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            signal: kick_signal()?,
        }))
    }

    #[inline]
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn request_stop(&self) {
        // The flag first, then the signals: a thread that misses the signal (it was not yet in
        // the list) registers under the same mutex and then reads the flag.
        self.stop.store(true, Ordering::SeqCst);
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for (_, thread) in threads.iter() {
            // SAFETY: every listed thread is alive: it removes itself under this mutex before
            // returning from `Vcpu::run`. The signal has a handler installed by `kick_signal`.
            unsafe { libc::pthread_kill(*thread, self.signal) };
        }
    }
}

/// Marks the calling thread as running a vCPU for the duration of one `Vcpu::run`.
pub(crate) struct RunGuard<'a> {
    control: &'a RunControl,
    vcpu: u32,
}

impl<'a> RunGuard<'a> {
    /// Registers the thread and points the kick handler at `run`.
    pub(crate) fn enter(control: &'a RunControl, vcpu: u32, run: *mut kvm_run) -> Self {
        RUNNING.with(|r| r.set(run));
        // SAFETY: `pthread_self` has no preconditions.
        let me = unsafe { libc::pthread_self() };
        control
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((vcpu, me));
        RunGuard { control, vcpu }
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        let mut threads = self
            .control
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // SAFETY: `pthread_self` has no preconditions.
        let me = unsafe { libc::pthread_self() };
        threads.retain(|(id, t)| !(*id == self.vcpu && *t == me));
        RUNNING.with(|r| r.set(ptr::null_mut()));
    }
}

/// Stops (and lets resume) every vCPU of a VM from any thread. Cheap to clone.
#[derive(Clone)]
pub struct StopHandle {
    pub(crate) control: Arc<RunControl>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle").finish_non_exhaustive()
    }
}

impl StopHandle {
    /// Asks every vCPU to stop: each `Vcpu::run` returns
    /// [`VcpuStop::Stopped`](crate::VcpuStop::Stopped) promptly, after completing the access in
    /// flight if there is one. vCPUs that start running later stop at once, until
    /// [`resume`](Self::resume). Callable from a device handler on a vCPU thread too.
    pub fn stop(&self) {
        self.control.request_stop();
    }

    /// Clears a stop request so `Vcpu::run` may be called again.
    pub fn resume(&self) {
        self.control.stop.store(false, Ordering::SeqCst);
    }

    /// Whether a stop is requested.
    pub fn is_stop_requested(&self) -> bool {
        self.control.stop_requested()
    }

    /// How many threads are inside `Vcpu::run` right now.
    pub fn running_vcpus(&self) -> usize {
        self.control
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_handler_restarts_interrupted_syscalls() {
        let signal = kick_signal().expect("install the kick handler");
        // SAFETY: plain old data, filled in by sigaction.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a valid signal number and a valid pointer for the current action.
        let rc = unsafe { libc::sigaction(signal, ptr::null(), &mut action) };
        assert_eq!(rc, 0);
        assert_eq!(action.sa_sigaction, kick_handler as *const () as usize);
        assert_ne!(
            action.sa_flags & libc::SA_RESTART,
            0,
            "flags {:#x}",
            action.sa_flags
        );
        assert_ne!(
            action.sa_flags & libc::SA_SIGINFO,
            0,
            "flags {:#x}",
            action.sa_flags
        );
    }
}
