//! `refvmm run`: boot a Linux kernel (`--kernel`, see [`crate::linux`]) or a bare-metal ELF guest
//! (or the built-in bus lister) with a PCI bus, COM1 and an exit-status port, optionally with
//! devices on the bus, and report how it ended.
//!
//! Exit status of `refvmm run`:
//!
//! | status | meaning |
//! |---|---|
//! | N | the guest wrote N to port 0x501 (the test guests: 0 pass, 1 fail, 2 crash) |
//! | 124 | `--timeout` ran out and the guest was stopped |
//! | 125 | refvmm could not start the guest, or the guest stopped without writing a status (bare-metal triple fault, KVM internal error) |
//! | 0 | Linux powered the machine off (ACPI S5: `poweroff`) |
//! | 123 | Linux reset the machine: `reboot`, or a panic with `panic=-1` (ACPI reset register, 8042 reset line, or a triple fault) |
//! | 128+N | refvmm got signal N (SIGINT: 130, SIGTERM: 143), stopped the guest and released its devices |

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::Args;
use kvm_runloop::reexports::vmm_sys_util::eventfd::EventFd;
use kvm_runloop::{Vcpu, VcpuStop, Vm, VmConfig};
use pci_config::Bdf;
use trap_map::{MsixRelocation, PageSize, Policy};
use vfio_pci::ReservedRange;

use crate::console_input::ConsoleInput;
use crate::devices::{self, Attached, DeviceSpec, PassthroughKnobs};
use crate::exit_port::{EXIT_PORT, ExitPort};
use crate::guest_loader;
use crate::linux::{self, LinuxSpec, PowerEvent, PowerRegisters};
use crate::pci::{
    BarAllocator, CONF1_PORT, Conf1, ECAM_BASE, ECAM_SIZE, Ecam, HostBridge, LOW_RAM_END,
    MEM64_WINDOW, PciBus,
};
use crate::report;
use crate::serial::{COM1_GSI, COM1_PORT, Com1, ConsoleOut};
use crate::trace::Tracer;
use crate::trace::hook::SharedTracer;
use crate::trace::sink::TraceSink;
use crate::trace::spec::TraceFilter;

/// Exit status when the time limit ran out.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status when refvmm failed or the guest ended without a status.
pub const EXIT_VMM: u8 = 125;
/// Exit status when Linux powered the machine off.
pub const EXIT_POWEROFF: u8 = 0;
/// Exit status when Linux reset the machine (reboot, or a panic with `panic=-1`).
pub const EXIT_RESET: u8 = 123;

/// Where RAM above the ECAM/PCI hole starts.
const HIGH_RAM_BASE: u64 = 1 << 32;
/// The local APIC and IOAPIC range, never RAM nor a BAR.
const APIC_RANGE: (u64, u64) = (0xfec0_0000, 0xff00_0000);
/// KVM's private pages: the real-mode TSS (three pages at 0xfffb_d000, where kvm-runloop's
/// `KVM_SET_TSS_ADDR` puts it) and, just below, the EPT identity-map page table that Intel KVM
/// places at 0xfffb_c000 by default (`VMX_EPT_IDENTITY_PAGETABLE_ADDR`).
const KVM_TSS: (u64, u64) = (0xfffb_c000, 0xfffc_0000);

/// Options of `refvmm run`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  refvmm run --kernel /boot/vmlinuz-$(uname -r) --initramfs initrd.img --memory 512M --cpus 2 \\
      --cmdline 'console=ttyS0 panic=-1' --device 0000:01:00.0
  refvmm run --device sim                list PCI bus 0 with the built-in guest
  tests/guests/build.sh /tmp/g
  refvmm run --guest /tmp/g/pci_probe.elf --device test --show-counters
  refvmm run --guest /tmp/g/pci_probe.elf --cmdline 'page=0:0x1000 trap=0:0' --device test --timeout 10
  refvmm run --guest /tmp/g/nvme_e2e.elf --device 0000:01:00.0 --show-mtree

A --guest must follow tests/guests/README.md's boot contract (64-bit ELF at or above 1 MiB; COM1
output; status byte on port 0x501). A --kernel boots by the Linux x86 64-bit boot protocol with
ACPI tables; its console is COM1 (console=ttyS0), wired to stdout and, when stdin is a terminal
or a pipe, to stdin (Ctrl-C ends refvmm). Exit status: the guest's byte; for Linux 0 on poweroff,
123 on reboot or a panic with panic=-1; 124 on --timeout; 125 when refvmm fails or the guest
stops without a status; 128+N on signal N. Needs /dev/kvm.")]
pub struct RunArgs {
    /// The guest: a 64-bit ELF image (see tests/guests/README.md for the boot contract).
    /// Without it, refvmm runs its built-in guest, which lists PCI bus 0 on COM1.
    #[arg(long, value_name = "ELF", conflicts_with = "kernel")]
    pub guest: Option<PathBuf>,
    /// A Linux kernel to boot: a bzImage (/boot/vmlinuz-*) or an uncompressed ELF vmlinux.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// The initramfs for --kernel (a cpio archive, compressed or not).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initramfs: Option<PathBuf>,
    /// Number of vCPUs, each on its own thread. Linux starts the others itself (INIT/SIPI); a
    /// bare-metal guest runs on vCPU 0 and the others wait for a SIPI it never sends.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_cpus)]
    pub cpus: u32,
    /// The kernel command line (--kernel), or the guest's, placed in guest RAM with its address
    /// in RDI (--guest: at most 1023 bytes).
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Guest RAM, in bytes or with a K, M, G or T suffix (binary units). Up to 2816M sits below
    /// the PCI hole; the rest is placed at 4 GiB.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub memory: u64,
    /// What backs guest RAM: `thp` (transparent huge pages where the host has them, 4 KiB pages
    /// where not: never fails, and faster to fault in and to pin for DMA), `anon` (4 KiB pages),
    /// `hugetlb`, `hugetlb:2M`, `hugetlb:1G` (hugetlbfs pages, all reserved at start: the host
    /// needs that many free in /sys/kernel/mm/hugepages).
    #[arg(long, value_name = "BACKING", default_value = "thp")]
    pub memory_backing: kvm_runloop::RamBacking,
    /// Threads that fault in all guest RAM before the guest starts, while the devices are
    /// being attached (0: none). Default: one per host CPU when a host device is passed
    /// through (VFIO's DMA map pins, and so faults in, all guest RAM anyway, on one thread),
    /// else 0 (the guest faults in only what it touches). In the test bed, 0 reached the
    /// first instruction sooner but booted Linux to /init about 3.5 s later.
    #[arg(long, value_name = "N")]
    pub prefault_threads: Option<usize>,
    /// Stop the guest after this many seconds (exit status 124). 0: no limit.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// A device for the PCI bus, repeatable: a host PCI address (0000:01:00.0, 01:00.0) or sysfs
    /// path for VFIO passthrough; `BDF,fd=N,iommufd-fd=M` for a device whose VFIO cdev
    /// (/dev/vfio/devices/vfioN) and iommufd (/dev/iommu) a launcher opened and handed in as
    /// fds N and M (like QEMU's `-device vfio-pci,fd=N` and `-object iommufd,fd=M`: refvmm then
    /// needs no access to /dev/vfio or /dev/iommu, only RLIMIT_MEMLOCK for guest RAM); test aids:
    /// `sim`, `sim:nvme`, `sim:nic` (the passthrough device over vfio-pci's simulated backend:
    /// an NVMe's or NIC's IDs, BARs and MSI-X, but no controller behind the registers, so an NVMe
    /// driver such as nvme_e2e fails on it) and `test` (refvmm's emulated test function).
    #[arg(long = "device", value_name = "SPEC")]
    pub devices: Vec<DeviceSpec>,
    /// trap-map policy for passed-through devices, comma-separated: `default` (map what can be
    /// mapped), `trap-all` (trap every BAR access: trace the device), `trap-pba` (also trap a PBA
    /// on pages of its own).
    #[arg(long, value_name = "POLICY", default_value = "default", value_parser = parse_policy)]
    pub policy: Policy,
    /// Move the MSI-X table and PBA of passed-through devices: `off`, `auto` (when it maps more
    /// of the device), or `bar0`..`bar5` (QEMU's x-msix-relocation).
    #[arg(long, value_name = "WHERE", default_value = "off")]
    pub msix_relocation: MsixRelocation,
    /// Host page size BAR mappings are planned with: 4K, 16K or 64K; default: this host's.
    #[arg(long, value_name = "SIZE")]
    pub page_size: Option<PageSize>,
    /// At exit, print the flat memory map (`info mtree -f` style) with every device's BAR pages,
    /// and the host page size behind each memory slot (from /proc/self/smaps).
    #[arg(long)]
    pub show_mtree: bool,
    /// At exit, print the VM's exits by kind, every trapped range's counters and the memory slots.
    #[arg(long)]
    pub show_counters: bool,
    /// IOMMU interface for host devices: `auto` (iommufd when /dev/iommu and the device's
    /// /dev/vfio/devices/vfioN exist, else the type1 container), `type1` or `iommufd`.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    pub iommu: vfio_pci::host::IommuBackendChoice,
    /// Trace trapped accesses, one line each with the register's name (repeatable): `config`,
    /// `msix`, `bar0`..`bar5`, `rom`, `all`, optionally for one device by its address on the
    /// guest's bus (`00:01.0:bar0`, as printed at start) and an offset range
    /// (`bar0+0x1000..0x2000`). Mapped ranges never exit: add `--policy trap-all`
    /// to see every BAR access. With --show-counters, a summary per register at exit.
    #[arg(long, value_name = "WHAT")]
    pub trace: Vec<crate::trace::spec::TraceSpec>,
    /// Write the trace to FILE instead of standard error.
    #[arg(long, value_name = "FILE", requires = "trace")]
    pub trace_file: Option<PathBuf>,
    /// At most this many trace lines; the rest are counted in one closing line.
    #[arg(long, value_name = "LINES", default_value_t = crate::trace::sink::DEFAULT_LIMIT)]
    pub trace_limit: u64,
}

/// The tracer of `--trace`, writing to `--trace-file` or standard error; `None` without
/// `--trace`.
fn tracer(args: &RunArgs) -> Result<Option<SharedTracer>, Box<dyn std::error::Error>> {
    if args.trace.is_empty() {
        return Ok(None);
    }
    let out: Box<dyn std::io::Write + Send> = match &args.trace_file {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| format!("--trace-file {}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::stderr()),
    };
    let filter = TraceFilter::new(args.trace.clone());
    let sink = TraceSink::new(out, args.trace_limit);
    Ok(Some(Arc::new(Mutex::new(Tracer::new(filter, sink)))))
}

/// Parses a time limit in seconds: finite, not negative, at most a year.
pub fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=365.0 * 86400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give seconds, e.g. 10 or 0.5 (0: no limit)")),
    }
}

/// Parses `--cpus`: at least 1; the upper limit is KVM's, checked when the VM exists.
pub fn parse_cpus(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?}: give the number of vCPUs, at least 1 (at most what KVM allows, KVM_CAP_MAX_VCPUS)"
        )),
    }
}

/// Parses `default`, `trap-all`, `trap-pba` (comma-separated).
pub fn parse_policy(s: &str) -> Result<Policy, String> {
    let mut p = Policy::default();
    for w in s.split(',').map(str::trim) {
        match w {
            "default" => {}
            "trap-all" => p.trap_all = true,
            "trap-pba" => p.trap_pba = true,
            _ => {
                return Err(format!(
                    "{w:?}: the policies are default, trap-all and trap-pba"
                ));
            }
        }
    }
    Ok(p)
}

/// The least guest RAM: the test guests load at 2 MiB and keep their stack and page tables above.
const MIN_GUEST_RAM: u64 = 4 << 20;

/// Parses guest RAM (`64M`, `1G`, `4096K`, `1048576`; the units of [`crate::size::parse_bytes`])
/// and checks it fits the machine's layout: `run --memory` and `check --memory` share it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = crate::size::parse_bytes(s)?;
    let max = MEM64_WINDOW.0 - HIGH_RAM_BASE;
    if bytes > max {
        return Err(format!(
            "{s:?}: too large: at most {} of guest RAM (it must end below the 64-bit BAR window \
             at {:#x})",
            trap_map::view::human_size(max),
            MEM64_WINDOW.0
        ));
    }
    if bytes < MIN_GUEST_RAM {
        return Err(format!(
            "{s:?}: too small: guest RAM must be at least 4M (the test guests load at 2 MiB)"
        ));
    }
    if bytes % 4096 != 0 {
        return Err(format!(
            "{s:?}: guest RAM must be a multiple of 4K (the page size of its memory slots)"
        ));
    }
    Ok(bytes)
}

/// This host's RAM (`MemTotal` in /proc/meminfo), when it can be read.
fn host_ram() -> Option<u64> {
    mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemTotal` of /proc/meminfo text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Warns when the guest is given more RAM than the host has: KVM backs guest RAM lazily, so the
/// guest starts, but it (or the host) runs out of memory once the guest touches that much, and a
/// passed-through device fails at once because VFIO pins all of guest RAM for DMA.
fn warn_if_more_than_host(memory: u64) {
    if let Some(host) = host_ram().filter(|&host| memory > host) {
        eprintln!(
            "refvmm: warning: --memory {} is more than this host's {} of RAM: the guest runs \
             out of memory when it touches it all, and a passed-through device cannot be \
             started (VFIO pins all guest RAM)",
            trap_map::view::human_size(memory),
            trap_map::view::human_size(host)
        );
    }
}

/// RAM ranges for `size` bytes: low RAM up to the ECAM window, the rest at 4 GiB.
pub fn ram_layout(size: u64) -> Vec<(u64, u64)> {
    let low = size.min(LOW_RAM_END);
    let mut ranges = vec![(0, low)];
    if size > low {
        ranges.push((HIGH_RAM_BASE, size - low));
    }
    ranges
}

/// One line on standard error with the start-up's costs, for comparing backings and VMMs (the
/// test bed reads it): `refvmm: start-up: guest RAM 1024 MiB (thp, 2 prefault threads) 0.412 s,
/// devices 0.150 s (DMA map 0.120 s), first instruction at 0.611 s`. RAM and the first
/// instruction are times from the start of `run` (RAM: every page faulted in, or the VM
/// created when nothing prefaults); devices is the time spent attaching them (open, reset, BARs
/// mmapped and placed, guest RAM DMA-mapped), which the prefault threads overlap.
fn print_startup(
    backing: &kvm_runloop::GuestRamBacking,
    memory: u64,
    [ram, devices, total]: [Duration; 3],
    attached: &[Attached],
) {
    let dma: Duration = attached
        .iter()
        .filter_map(|a| a.handle.dma_map_time())
        .sum();
    eprintln!(
        "refvmm: start-up: guest RAM {} MiB ({}, {} prefault threads) {:.3} s, devices {:.3} s \
         (DMA map {:.3} s), first instruction at {:.3} s",
        memory >> 20,
        backing.backing,
        backing.prefault_threads,
        ram.as_secs_f64(),
        devices.as_secs_f64(),
        dma.as_secs_f64(),
        total.as_secs_f64()
    );
}

/// The host CPU's physical address bits (CPUID 0x80000008 EAX bits 7:0); 36, the oldest x86-64
/// width, when the leaf is absent. The 64-bit BAR window ends there.
fn host_phys_bits() -> u8 {
    use std::arch::x86_64::__cpuid;
    if __cpuid(0x8000_0000).eax < 0x8000_0008 {
        return 36;
    }
    (__cpuid(0x8000_0008).eax & 0xff) as u8
}

/// `--memory-backing` and `--prefault-threads` (see their help for the defaults' reasons).
fn ram_backing(args: &RunArgs) -> kvm_runloop::GuestRamBacking {
    let pinned = args
        .devices
        .iter()
        .any(|d| matches!(d, DeviceSpec::Host(_)));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    kvm_runloop::GuestRamBacking {
        backing: args.memory_backing,
        prefault_threads: args
            .prefault_threads
            .unwrap_or(if pinned { cpus } else { 0 }),
    }
}

/// Everything a device BAR must never cover.
fn reserved_ranges(ram: &[(u64, u64)]) -> Vec<ReservedRange> {
    let mut r: Vec<ReservedRange> = ram
        .iter()
        .map(|&(base, size)| ReservedRange {
            base,
            end: base + size,
            what: "guest RAM".into(),
        })
        .collect();
    r.push(ReservedRange {
        base: ECAM_BASE,
        end: ECAM_BASE + ECAM_SIZE,
        what: "the ECAM window".into(),
    });
    r.push(ReservedRange {
        base: APIC_RANGE.0,
        end: APIC_RANGE.1,
        what: "the IOAPIC/local APIC range".into(),
    });
    r.push(ReservedRange {
        base: KVM_TSS.0,
        end: KVM_TSS.1,
        what: "KVM's TSS and identity-map pages".into(),
    });
    r
}

/// Set by SIGUSR1: print the reports while the guest runs.
static REPORT_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    REPORT_REQUESTED.store(true, Ordering::Relaxed);
}

/// Set by SIGINT or SIGTERM to the signal's number: stop the guest and release the devices.
static TERMINATE_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERMINATE_SIGNAL.store(signo, Ordering::Relaxed);
}

/// The command: returns the exit status described in the module docs.
pub fn main(args: RunArgs) -> ExitCode {
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::report_error(e.as_ref());
            ExitCode::from(EXIT_VMM)
        }
    }
}

/// How a vCPU thread ended.
struct VcpuEnd {
    id: u32,
    stop: Result<VcpuStop, kvm_runloop::Error>,
    rip: Option<u64>,
    interrupts_enabled: Option<bool>,
}

fn run(args: &RunArgs) -> Result<u8, Box<dyn std::error::Error>> {
    // `kill -USR1 <pid>` prints the reports while the guest runs. Installed first, so an early
    // signal cannot end the process; the handler only stores to an atomic (async-signal-safe)
    // and the main loop below does the printing.
    if let Err(e) = kvm_runloop::reexports::vmm_sys_util::signal::register_signal_handler(
        libc::SIGUSR1,
        on_sigusr1,
    ) {
        log::warn!("SIGUSR1 reports unavailable: {e}");
    }
    // Ctrl-C or `kill` stops the guest and detaches the devices (reset, DMA unmapped) instead
    // of leaving them to process exit.
    for signo in [libc::SIGINT, libc::SIGTERM] {
        if let Err(e) = kvm_runloop::reexports::vmm_sys_util::signal::register_signal_handler(
            signo,
            on_terminate,
        ) {
            log::warn!("signal {signo} would end refvmm without detaching devices: {e}");
        }
    }

    warn_if_more_than_host(args.memory);
    let run_start = Instant::now();
    let ram = ram_layout(args.memory);
    let backing = ram_backing(args);
    let vm = Arc::new(Vm::new(&VmConfig {
        ram: ram.iter().map(|&(b, s)| (b, s as usize)).collect(),
        irqchip: true,
        ram_backing: kvm_runloop::GuestRamBacking {
            prefault_threads: 0,
            ..backing
        },
        ..VmConfig::default()
    })?);
    let vm_created = run_start.elapsed();
    // The kernel zeroes guest RAM's pages while the devices open, reset (an FLR alone waits
    // 100 ms) and map their BARs; their DMA map then pins pages already in, and faults in
    // itself whatever the threads have not reached yet (they work top down, the pin bottom up).
    let prefault = (backing.prefault_threads > 0).then(|| {
        kvm_runloop::PrefaultJob::start(vm.memory(), backing.backing, backing.prefault_threads)
    });

    // COM1, wired to GSI 4.
    let com1_irq = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.interrupts()?.register_irqfd(&com1_irq, COM1_GSI)?;
    let com1 = Arc::new(Mutex::new(Com1::new(com1_irq.try_clone()?, ConsoleOut)));
    vm.bus().register_pio("com1", COM1_PORT, 8, com1.clone())?;

    let exit_port = Arc::new(ExitPort::new(vm.stop_handle()));
    vm.bus()
        .register_pio("exit-status", EXIT_PORT, 1, exit_port.clone())?;

    // PCI: host bridge, conf1, ECAM, devices.
    let pci = Arc::new(PciBus::new());
    pci.insert(
        Bdf::new(0, 0, 0),
        "host bridge",
        Box::new(HostBridge::new()),
    )?;
    vm.bus().register_pio(
        "pci-conf1",
        CONF1_PORT,
        8,
        Arc::new(Conf1::new(pci.clone())),
    )?;
    vm.bus().register_mmio(
        "pci-ecam",
        ECAM_BASE,
        ECAM_SIZE,
        Arc::new(Ecam::new(pci.clone())),
    )?;
    let reserved = reserved_ranges(&ram);
    let ram_end = ram.iter().map(|&(b, s)| b + s).max().unwrap_or(0);
    let mut bars = BarAllocator::for_guest(ram_end, host_phys_bits())?;
    let policy = Policy {
        msix_relocation: args.msix_relocation,
        ..args.policy
    };
    // One KVM VFIO device per VM, shared by every host device (mainline KVM refuses a second).
    let kvm_vfio = if args
        .devices
        .iter()
        .any(|d| matches!(d, DeviceSpec::Host(_) | DeviceSpec::HandedIn(_)))
    {
        Some(vfio_pci::create_kvm_vfio_device(vm.fd())?)
    } else {
        None
    };
    let knobs = PassthroughKnobs {
        policy,
        page_size: args.page_size.unwrap_or_else(vfio_pci::host_page_size),
        iommu: args.iommu,
        kvm_vfio,
        tracer: tracer(args)?,
    };
    let mut attached: Vec<Attached> = Vec::new();
    for spec in &args.devices {
        let dev = devices::attach(spec, &vm, &pci, &mut bars, &reserved, &knobs)?;
        eprintln!("refvmm: {} at {}", dev.spec, dev.bdf.short());
        for b in &dev.bars {
            eprintln!("refvmm:   {b}");
        }
        attached.push(dev);
    }

    let devices_ready = run_start.elapsed();
    let ram_ready = match prefault {
        Some(job) => {
            let done = job.wait()?;
            if !done.populated {
                eprintln!(
                    "refvmm: this kernel has no MADV_POPULATE_WRITE (Linux 5.14): guest RAM was \
                     not prefaulted; pages fault in on first use"
                );
            }
            vm_created + done.elapsed
        }
        None => vm_created,
    };
    let (vcpus, power) = start_guest(&vm, args, &ram, bars.mem64_window())?;
    print_startup(
        &backing,
        args.memory,
        [ram_ready, devices_ready - vm_created, run_start.elapsed()],
        &attached,
    );
    let console_input = ConsoleInput::start(com1.clone());

    if let Some(t) = &knobs.tracer {
        t.lock().unwrap_or_else(|p| p.into_inner()).start();
    }
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for mut vcpu in vcpus {
        let tx = tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id()))
                .spawn(move || {
                    let stop = vcpu.run();
                    let regs = vcpu.regs().ok();
                    let _ = tx.send(VcpuEnd {
                        id: vcpu.id(),
                        stop,
                        rip: regs.map(|r| r.rip),
                        interrupts_enabled: regs.map(|r| r.rflags & (1 << 9) != 0),
                    });
                })?,
        );
    }
    drop(tx);
    let deadline = (args.timeout > 0.0).then(|| started + Duration::from_secs_f64(args.timeout));
    let mut timed_out = false;
    let mut signalled = 0;
    // The first vCPU to end for a reason of its own (not a stop request) tells how the run
    // ended, and the others are stopped then.
    let mut first: Option<VcpuEnd> = None;
    let mut ended = 0;
    while ended < threads.len() {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(end) => {
                ended += 1;
                let own_reason = !matches!(end.stop, Ok(VcpuStop::Stopped));
                let first_was_stopped = first
                    .as_ref()
                    .is_none_or(|f| matches!(f.stop, Ok(VcpuStop::Stopped)));
                if first.is_none() || (own_reason && first_was_stopped) {
                    if own_reason {
                        vm.stop_handle().stop();
                    }
                    first = Some(end);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("a vCPU thread ended without a result (it panicked)".into());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if REPORT_REQUESTED.swap(false, Ordering::Relaxed) {
                    print_reports(&vm, &pci, &attached, true, true);
                }
                if !timed_out && deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out = true;
                    vm.stop_handle().stop();
                }
                let signo = TERMINATE_SIGNAL.load(Ordering::Relaxed);
                if signalled == 0 && signo != 0 {
                    signalled = signo;
                    vm.stop_handle().stop();
                }
            }
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    drop(console_input);
    let end = first.ok_or("no vCPU ran")?;
    let elapsed = started.elapsed();
    // The guest's last line, if it did not end it (COM1 leaves flushing to the line buffer).
    let _ = std::io::Write::flush(&mut std::io::stdout());
    print_reports(&vm, &pci, &attached, args.show_mtree, args.show_counters);
    if let Some(t) = &knobs.tracer {
        finish_trace(t, args.show_counters);
    }
    if args.guest.is_none() {
        // The built-in guest prints IDs only (it has no ID database); name them as lspci does.
        eprint!(
            "refvmm: the same bus by name (PCI ID database):\n{}",
            report::bus_listing(&pci)
        );
    }

    // Detach: take the configuration paths off the VM's bus and drop the PCI bus (and with it
    // the bus's hold on every function), then detach each device: interrupts unwired, BARs out
    // of the guest, guest RAM unmapped from the IOMMU, function reset.
    let _ = vm.bus().unregister_pio(CONF1_PORT);
    let _ = vm.bus().unregister_mmio(ECAM_BASE);
    drop(pci);
    for dev in attached {
        if let Err(e) = dev.detach() {
            eprintln!("refvmm: {e}");
        }
    }

    let stop = end.stop?;
    let secs = elapsed.as_secs_f64();
    match power.as_ref().and_then(|p| p.event()) {
        Some(PowerEvent::PowerOff) => {
            eprintln!("refvmm: the guest powered off (ACPI S5) after {secs:.3}s");
            return Ok(EXIT_POWEROFF);
        }
        Some(PowerEvent::Reset { via }) => {
            eprintln!(
                "refvmm: the guest reset the machine through {via} after {secs:.3}s (reboot, or a panic with panic=-1)"
            );
            return Ok(EXIT_RESET);
        }
        None => {}
    }
    if power.is_some() && stop == VcpuStop::Shutdown {
        // Linux's last way to reboot (arch/x86/kernel/reboot.c, BOOT_TRIPLE): an empty IDT and
        // an int3.
        eprintln!(
            "refvmm: the guest reset the machine by a triple fault on vCPU {} after {secs:.3}s (reboot, or a panic with panic=-1)",
            end.id
        );
        return Ok(EXIT_RESET);
    }
    if signalled != 0 && !timed_out {
        eprintln!("refvmm: got signal {signalled}; the guest was stopped after {secs:.3}s");
        return Ok(128u8.saturating_add(signalled as u8));
    }
    if args.kernel.is_none() && args.guest.is_none() && args.devices.is_empty() {
        eprintln!(
            "refvmm: the bus held only the host bridge; next, put a device on it: `refvmm run \
             --device sim --show-mtree` (a simulated passthrough NVMe: which of its pages map, \
             which trap), or `--device 01:00.0` for a host device bound to vfio-pci"
        );
    }
    if let Some(status) = exit_port.status() {
        let what = match status {
            0 => "pass",
            1 => "fail",
            2 => "crash",
            _ => "guest-defined",
        };
        eprintln!(
            "refvmm: guest exit status {status} ({what}) after {:.3}s",
            elapsed.as_secs_f64()
        );
        return Ok(status);
    }
    let rip = end.rip.map_or("unknown".into(), |r| format!("{r:#x}"));
    if timed_out {
        let halted = if end.interrupts_enabled == Some(false) {
            " with interrupts off (a guest that halts with IF=0 never wakes up; did it forget to \
             write its status to port 0x501?)"
        } else {
            ""
        };
        eprintln!(
            "refvmm: time limit of {}s reached; the guest was stopped at RIP {rip}{halted}",
            args.timeout
        );
        return Ok(EXIT_TIMEOUT);
    }
    eprintln!(
        "refvmm: the guest stopped without writing a status to port {EXIT_PORT:#x}: {stop} (vCPU {}, RIP {rip}, after {secs:.3}s)",
        end.id
    );
    Ok(EXIT_VMM)
}

/// Closes the trace: the dropped-lines line on stderr (also in the trace), and with
/// `--show-counters` the per-register summary.
fn finish_trace(tracer: &SharedTracer, counters: bool) {
    let mut t = tracer.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dropped) = t.finish() {
        eprintln!("refvmm: {dropped}");
    }
    if counters {
        println!("Traced registers:");
        print!("{}", t.summary());
    }
}

/// Loads the guest and creates its vCPUs: the Linux machine for `--kernel`, else the bare-metal
/// guest on vCPU 0 with the other vCPUs waiting for a SIPI. The power registers for Linux.
type StartedGuest = (Vec<Vcpu>, Option<Arc<PowerRegisters>>);

fn start_guest(
    vm: &Vm,
    args: &RunArgs,
    ram: &[(u64, u64)],
    mem64_window: (u64, u64),
) -> Result<StartedGuest, Box<dyn std::error::Error>> {
    if let Some(kernel) = &args.kernel {
        let spec = LinuxSpec {
            kernel: kernel.clone(),
            initramfs: args.initramfs.clone(),
            cmdline: args.cmdline.clone(),
            cpus: args.cpus,
            mem64_window,
        };
        let machine = linux::setup(vm, &spec, ram)?;
        return Ok((machine.vcpus, Some(machine.power)));
    }
    let max = vm.kvm().get_max_vcpus() as u32;
    if args.cpus > max {
        return Err(format!(
            "--cpus {}: this host's KVM allows at most {max} vCPUs per VM (KVM_CAP_MAX_VCPUS); give a smaller number",
            args.cpus
        )
        .into());
    }
    let guest = match &args.guest {
        Some(path) => guest_loader::load(vm, path, &args.cmdline, ram[0].1)?,
        None => guest_loader::load_builtin(vm, &args.cmdline)?,
    };
    let vcpu = vm.create_vcpu(0)?;
    guest_loader::start_vcpu(vm, &vcpu, &guest)?;
    let mut vcpus = vec![vcpu];
    for id in 1..args.cpus {
        let ap = vm.create_vcpu(id)?;
        linux::wait_for_sipi(&ap)?;
        vcpus.push(ap);
    }
    Ok((vcpus, None))
}

fn print_reports(vm: &Vm, pci: &PciBus, attached: &[Attached], mtree: bool, counters: bool) {
    let mut out = String::new();
    if mtree {
        out.push_str(&report::mtree(vm, pci, attached));
    }
    if counters {
        out.push_str(&report::counters(vm, attached));
    }
    if !out.is_empty() {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `refvmm run` as the command line would give it.
    fn run_args(args: &[&str]) -> RunArgs {
        #[derive(clap::Parser)]
        struct Line {
            #[command(flatten)]
            run: RunArgs,
        }
        let line: Line = clap::Parser::try_parse_from([&["refvmm"], args].concat()).unwrap();
        line.run
    }

    /// One prefault thread per CPU with a host device (VFIO pins all RAM), none without one
    /// (the guest faults in what it touches), and what the user asks for in any case.
    #[test]
    fn prefault_threads_default_to_one_per_cpu_with_a_host_device() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(ram_backing(&run_args(&[])).prefault_threads, 0);
        let host = run_args(&["--device", "0000:01:00.0"]);
        assert_eq!(ram_backing(&host).prefault_threads, cpus);
        let asked = run_args(&["--device", "0000:01:00.0", "--prefault-threads", "0"]);
        assert_eq!(ram_backing(&asked).prefault_threads, 0);
    }

    #[test]
    fn sizes_parse_and_are_checked() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("8192K"), Ok(8 << 20));
        assert!(parse_size("1M").unwrap_err().contains("too small"));
        assert!(parse_size("0").unwrap_err().contains("too small"));
        assert!(parse_size("lots").unwrap_err().contains("K, M, G or T"));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert!(parse_size("4097K").unwrap_err().contains("multiple of 4K"));
        for large in [
            "600G",
            "999T",
            "18446744073709551615",
            "99999999999999999999",
        ] {
            assert!(
                parse_size(large).unwrap_err().contains("too large"),
                "{large}"
            );
        }
        assert!(
            parse_size("600G")
                .unwrap_err()
                .contains("64-bit BAR window")
        );
    }

    #[test]
    fn host_ram_from_meminfo() {
        let text = "MemTotal:       24350540 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(text), Some(24350540 << 10));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn ram_never_overlaps_the_pci_hole() {
        assert_eq!(ram_layout(64 << 20), vec![(0, 64 << 20)]);
        let big = ram_layout(4 << 30);
        assert_eq!(
            big,
            vec![(0, LOW_RAM_END), (1 << 32, (4 << 30) - LOW_RAM_END)]
        );
        for (base, size) in big {
            let end = base + size;
            assert!(end <= ECAM_BASE || base >= 1 << 32);
            assert!(end <= MEM64_WINDOW.0);
        }
    }
}
