//! Per-vCPU state for Linux: the CPUID each vCPU reports (KVM's supported set with this vCPU's
//! place in the topology), the MSRs, FPU and local APIC the kernel expects from firmware, and the
//! registers of the 64-bit boot entry (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
//!
//! Topology: one package, `cpus` cores, one thread per core; vCPU n has APIC ID n.

use kvm_runloop::reexports::kvm_bindings::{
    CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MP_STATE_UNINITIALIZED, Msrs, kvm_cpuid_entry2,
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
};
use kvm_runloop::{CpuMode, GuestEntry, Privilege, Vcpu, Vm};

use super::{LinuxError, STACK_TOP, TABLES_ADDR};

/// CPUID.1:ECX bit 31, "hypervisor present".
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24, the local APIC's TSC-deadline timer mode.
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit 28, HTT: EBX bits 23:16 holds the number of logical processors in the package.
const CPUID1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0xB/0x1F level types (SDM vol. 2A, CPUID leaf 0BH).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// The MSRs set on every vCPU, with their values: what firmware leaves behind (Firecracker and
/// cloud-hypervisor set the same). System-call MSRs zeroed; the TSC starts at 0 on every vCPU
/// (KVM then treats the vCPUs' TSCs as synchronized); fast strings on; MTRRs enabled with
/// write-back as the default type, or Linux maps all of RAM uncached (SDM vol. 3A 12.11.2.1).
pub const BOOT_MSRS: [(u32, u64); 11] = [
    (0x174, 0),             // IA32_SYSENTER_CS
    (0x175, 0),             // IA32_SYSENTER_ESP
    (0x176, 0),             // IA32_SYSENTER_EIP
    (0xc000_0081, 0),       // STAR
    (0xc000_0082, 0),       // LSTAR
    (0xc000_0083, 0),       // CSTAR
    (0xc000_0084, 0),       // SYSCALL_MASK (FMASK)
    (0xc000_0102, 0),       // KERNEL_GS_BASE
    (0x10, 0),              // IA32_TSC
    (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
    (0x2ff, (1 << 11) | 6), // IA32_MTRR_DEF_TYPE: enabled, write-back
];

/// Local APIC register offsets and delivery modes (SDM vol. 3A 11.5.1).
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_EXTINT: u32 = 0b111;
const DELIVERY_NMI: u32 = 0b100;

/// KVM's supported CPUID entries adjusted for the vCPU with APIC ID `apic_id` out of `cpus`.
///
/// `tsc_deadline`: KVM has `KVM_CAP_TSC_DEADLINE_TIMER`. Its in-kernel LAPIC emulates the
/// TSC-deadline timer, but `KVM_GET_SUPPORTED_CPUID` never reports the bit (the KVM API
/// documentation, "KVM_GET_SUPPORTED_CPUID"): the VMM sets it, as QEMU, cloud-hypervisor and
/// Firecracker do. Linux then arms its timer with one MSR write instead of the one-shot LAPIC
/// timer's register writes, and the guest sees what it sees under those VMMs.
pub fn cpuid_for(
    supported: &[kvm_cpuid_entry2],
    apic_id: u32,
    cpus: u32,
    tsc_deadline: bool,
) -> Vec<kvm_cpuid_entry2> {
    let amd = supported
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| [e.ebx, e.edx, e.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]);
    // Bits of the APIC ID that number the cores of the package.
    let core_bits = cpus.next_power_of_two().trailing_zeros();
    let mut out = Vec::with_capacity(supported.len());
    for e in supported {
        let mut e = *e;
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xffff) | (apic_id << 24) | (cpus.min(255) << 16);
                e.ecx |= CPUID1_ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= CPUID1_ECX_TSC_DEADLINE;
                }
                if cpus > 1 {
                    e.edx |= CPUID1_EDX_HTT;
                } else {
                    e.edx &= !CPUID1_EDX_HTT;
                }
            }
            // Deterministic cache parameters: cores per package in EAX[31:26], logical
            // processors sharing the cache in EAX[25:14] (the L3 is shared by all, the rest
            // per core).
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((cpus - 1) << 26) | (sharing << 14);
            }
            // Extended topology: level 0 SMT (one thread per core), level 1 cores, then the
            // invalid level that ends the list; EDX is the x2APIC ID at every level.
            0xb | 0x1f => {
                e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                e.edx = apic_id;
                (e.eax, e.ebx, e.ecx) = match e.index {
                    0 => (0, 1, LEVEL_SMT << 8),
                    1 => (core_bits, cpus, (LEVEL_CORE << 8) | 1),
                    n => (0, 0, n),
                };
            }
            // AMD: number of cores - 1 in ECX[7:0] (APM vol. 3, CPUID Fn8000_0008).
            0x8000_0008 if amd => {
                e.ecx = (e.ecx & !0xff) | (cpus - 1);
            }
            _ => {}
        }
        out.push(e);
    }
    out
}

fn kvm_err(
    step: &str,
    vcpu: &Vcpu,
) -> impl FnOnce(kvm_runloop::reexports::kvm_ioctls::Error) -> LinuxError {
    let step = format!("{step} on vCPU {}", vcpu.id());
    move |source| LinuxError::Kvm { step, source }
}

/// Sets CPUID, the MSRs, the FPU and the local APIC's LINT pins of `vcpu` (any vCPU: INIT and
/// SIPI keep all of these). `tsc_deadline` as for [`cpuid_for`].
pub fn configure(
    vcpu: &Vcpu,
    supported: &CpuId,
    cpus: u32,
    tsc_deadline: bool,
) -> Result<(), LinuxError> {
    let entries = cpuid_for(supported.as_slice(), vcpu.id(), cpus, tsc_deadline);
    let cpuid = CpuId::from_entries(&entries).map_err(|_| LinuxError::Kvm {
        step: format!("building {} CPUID entries", entries.len()),
        source: kvm_runloop::reexports::kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    vcpu.fd()
        .set_cpuid2(&cpuid)
        .map_err(kvm_err("KVM_SET_CPUID2", vcpu))?;

    let msr_entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&msr_entries).map_err(|_| LinuxError::Kvm {
        step: "building the MSR list".into(),
        source: kvm_runloop::reexports::kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let set = vcpu
        .fd()
        .set_msrs(&msrs)
        .map_err(kvm_err("KVM_SET_MSRS", vcpu))?;
    if set < BOOT_MSRS.len() {
        // KVM stops at the first MSR it refuses.
        return Err(LinuxError::Kvm {
            step: format!(
                "KVM_SET_MSRS of MSR {:#x} on vCPU {} (KVM refused it)",
                BOOT_MSRS[set].0,
                vcpu.id()
            ),
            source: kvm_runloop::reexports::kvm_ioctls::Error::new(libc::EINVAL),
        });
    }

    // The FPU as after FNINIT, SSE exceptions masked (SDM vol. 1 8.1.5 and 10.2.3.1).
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.fd()
        .set_fpu(&fpu)
        .map_err(kvm_err("KVM_SET_FPU", vcpu))?;

    // LINT0 takes the 8259's interrupts (ExtINT), LINT1 the NMI line: the virtual-wire mode a PC
    // BIOS leaves (MP spec 3.6.2.2).
    let mut lapic = vcpu
        .fd()
        .get_lapic()
        .map_err(kvm_err("KVM_GET_LAPIC", vcpu))?;
    set_delivery_mode(&mut lapic, APIC_LVT_LINT0, DELIVERY_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT_LINT1, DELIVERY_NMI);
    vcpu.fd()
        .set_lapic(&lapic)
        .map_err(kvm_err("KVM_SET_LAPIC", vcpu))?;
    Ok(())
}

/// Reads a 32-bit local APIC register from KVM's register page.
pub fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let value = (lapic_reg(lapic, offset) & !0x700) | (mode << 8);
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// Puts vCPU 0 at the kernel's 64-bit entry: long mode with the first 4 GiB identity-mapped
/// (kvm-runloop's tables), flat 64-bit code and data segments, interrupts off, RSI = the zero
/// page.
pub fn enter_64bit(vm: &Vm, vcpu: &Vcpu, entry: u64, zero_page: u64) -> Result<(), LinuxError> {
    vcpu.setup(
        vm.memory(),
        &GuestEntry {
            mode: CpuMode::Long,
            privilege: Privilege::Kernel,
            entry,
            stack: STACK_TOP,
            tables: TABLES_ADDR,
        },
    )?;
    let mut regs = vcpu.regs()?;
    regs.rsi = zero_page;
    regs.rbp = STACK_TOP;
    vcpu.set_regs(&regs)?;
    Ok(())
}

/// Makes `vcpu` an application processor that waits inside `KVM_RUN` for the INIT/SIPI the
/// guest's boot processor sends (the in-kernel local APIC handles both). kvm-runloop makes every
/// vCPU runnable at creation, which suits guests that start all CPUs at once; Linux wants its
/// APs held at reset.
pub fn wait_for_sipi(vcpu: &Vcpu) -> Result<(), LinuxError> {
    vcpu.fd()
        .set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_UNINITIALIZED,
        })
        .map_err(kvm_err("KVM_SET_MP_STATE", vcpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0x1234,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    #[test]
    fn topology_per_vcpu() {
        let mut l4 = entry(4, 2);
        l4.eax = (3 << 5) | 3; // L3 unified
        let supported = [entry(1, 0), l4, entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        let out = cpuid_for(&supported, 2, 3, false);
        let get = |f, i| {
            *out.iter()
                .find(|e| e.function == f && e.index == i)
                .unwrap()
        };
        let l1 = get(1, 0);
        assert_eq!(l1.ebx >> 24, 2, "initial APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 3, "logical processors");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.edx & CPUID1_EDX_HTT, 0);
        assert_ne!(l1.ecx & CPUID1_ECX_HYPERVISOR, 0);
        let l4 = get(4, 2);
        assert_eq!(l4.eax >> 26, 2, "cores per package - 1");
        assert_eq!((l4.eax >> 14) & 0xfff, 2, "the L3 is shared by all");
        let smt = get(0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = get(0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let end = get(0xb, 2);
        assert_eq!((end.ebx, end.ecx & 0xff00, end.edx), (0, 0, 2));
        assert!(
            out.iter()
                .filter(|e| e.function == 0xb)
                .all(|e| e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0)
        );
    }

    #[test]
    fn one_cpu_has_no_htt() {
        let mut l1 = entry(1, 0);
        l1.edx = CPUID1_EDX_HTT;
        let out = cpuid_for(&[l1], 0, 1, false);
        assert_eq!(out[0].edx & CPUID1_EDX_HTT, 0);
        assert_eq!(out[0].ebx >> 16, 1);
    }

    #[test]
    fn tsc_deadline_bit_follows_kvms_capability() {
        let l1 = entry(1, 0);
        assert_ne!(
            cpuid_for(&[l1], 0, 1, true)[0].ecx & CPUID1_ECX_TSC_DEADLINE,
            0
        );
        assert_eq!(
            cpuid_for(&[l1], 0, 1, false)[0].ecx & CPUID1_ECX_TSC_DEADLINE,
            0
        );
    }

    #[test]
    fn vcpu_state_reads_back() {
        let Some(_kvm) = kvm_runloop::testing::kvm_or_skip() else {
            return;
        };
        let vm = Vm::new(&kvm_runloop::VmConfig {
            ram: vec![(0, 4 << 20)],
            irqchip: true,
            ..Default::default()
        })
        .unwrap();
        let supported = vm
            .kvm()
            .get_supported_cpuid(kvm_runloop::reexports::kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let vcpu = vm.create_vcpu(1).unwrap();
        // KVM accepts the TSC-deadline bit where it has the capability (every KVM with an
        // in-kernel LAPIC since Linux 3.2).
        let tsc_deadline = vm
            .kvm()
            .check_extension(kvm_runloop::reexports::kvm_ioctls::Cap::TscDeadlineTimer);
        configure(&vcpu, &supported, 2, tsc_deadline).unwrap();

        let cpuid = vcpu
            .fd()
            .get_cpuid2(kvm_runloop::reexports::kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let l1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.ebx >> 24, 1, "vCPU 1 reports APIC ID 1");
        assert_eq!(
            l1.ecx & CPUID1_ECX_TSC_DEADLINE != 0,
            tsc_deadline,
            "the TSC-deadline bit as KVM's capability says"
        );

        let mut msrs = Msrs::from_entries(
            &BOOT_MSRS
                .iter()
                .map(|&(index, _)| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(vcpu.fd().get_msrs(&mut msrs).unwrap(), BOOT_MSRS.len());
        for (got, &(index, want)) in msrs.as_slice().iter().zip(&BOOT_MSRS) {
            if index == 0x10 {
                continue; // the TSC has moved on since it was set
            }
            assert_eq!(got.data, want, "MSR {index:#x}");
        }

        let lapic = vcpu.fd().get_lapic().unwrap();
        assert_eq!(
            (lapic_reg(&lapic, APIC_LVT_LINT0) >> 8) & 7,
            DELIVERY_EXTINT
        );
        assert_eq!((lapic_reg(&lapic, APIC_LVT_LINT1) >> 8) & 7, DELIVERY_NMI);
        // (KVM_GET_FPU reads MXCSR back from the XSAVE image, where it is only valid once the
        // guest used SSE, so only the x87 control word is checked.)
        assert_eq!(vcpu.fd().get_fpu().unwrap().fcw, 0x37f);

        wait_for_sipi(&vcpu).unwrap();
        assert_eq!(
            vcpu.fd().get_mp_state().unwrap().mp_state,
            KVM_MP_STATE_UNINITIALIZED
        );
    }
}
