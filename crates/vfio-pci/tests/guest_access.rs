//! A tiny guest touches a passed-through BAR: a store to a mapped page lands in the device with
//! no exit, a store and a load on a trapped register are one exit each and reach the device.
//! (The full guest that scans the bus and takes an MSI-X is refvmm's end-to-end test.)
//! Skips without /dev/kvm; fails instead when REQUIRE_KVM=1.

use std::sync::Arc;

use kvm_runloop::asm::{Asm, Reg, Width};
use kvm_runloop::{CpuMode, ExitKind, GuestEntry, Privilege, VcpuStop, Vm, VmConfig};
use pci_config::PciFunction;
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, DmaSetup, PassthroughDevice, PassthroughOptions};

const BAR: u64 = 0xc000_0000;

#[test]
fn mapped_stores_do_not_exit_and_trapped_ones_do() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // No irqchip, so `hlt` comes back to us.
    let vm = Arc::new(Vm::new(&VmConfig::default()).unwrap());
    let sim = Arc::new(SimBackend::nvme().unwrap());
    let mut nvme = PassthroughDevice::attach(
        sim.clone(),
        AttachContext {
            interrupts: None,
            dma: DmaSetup::GuestMemory(vm.memory().clone()),
            intx_gsi: None,
            reserved: Vec::new(),
            ..AttachContext::new(Arc::new(KvmPorts::new(vm.clone())), MsiWindow::x86())
        },
        PassthroughOptions::default(),
    )
    .unwrap();
    nvme.config_write(0x10, &(BAR as u32).to_le_bytes());
    nvme.config_write(0x14, &0u32.to_le_bytes());
    nvme.config_write(0x04, &0x0006u16.to_le_bytes());
    sim.poke(0, 0x44, &0xabcd_0123u32.to_le_bytes()).unwrap();

    let mut code = Asm::new();
    code.movabs(Reg::Rbx, BAR + 0x1000); // the doorbell page: mapped
    code.mov_imm(Reg::Rax, 0x1234);
    code.store(Width::W4, Reg::Rbx, 8, Reg::Rax);
    code.movabs(Reg::Rbx, BAR); // page 0: trapped, forwarded to the device
    code.mov_imm(Reg::Rax, 0x5678);
    code.store(Width::W4, Reg::Rbx, 0x40, Reg::Rax);
    code.load(Width::W4, Reg::Rcx, Reg::Rbx, 0x44);
    code.hlt();
    vm.write_memory(0x10000, &code.finish()).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.setup(
        vm.memory(),
        &GuestEntry {
            mode: CpuMode::Long,
            privilege: Privilege::Kernel,
            entry: 0x10000,
            stack: 0x80000,
            tables: 0x1000,
        },
    )
    .unwrap();
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);

    let mut b = [0u8; 4];
    sim.peek(0, 0x1008, &mut b).unwrap();
    assert_eq!(
        u32::from_le_bytes(b),
        0x1234,
        "mapped store reached the device"
    );
    sim.peek(0, 0x40, &mut b).unwrap();
    assert_eq!(
        u32::from_le_bytes(b),
        0x5678,
        "trapped store reached the device"
    );
    assert_eq!(
        vcpu.regs().unwrap().rcx,
        0xabcd_0123,
        "trapped load read the device"
    );
    let exits = vm.exit_counts();
    assert_eq!(exits.get(ExitKind::MmioWrite), 1, "{exits}");
    assert_eq!(exits.get(ExitKind::MmioRead), 1, "{exits}");
    let page0 = nvme
        .exit_counters()
        .into_iter()
        .find(|c| c.at.raw() == BAR)
        .unwrap();
    assert_eq!((page0.reads, page0.writes), (1, 1));
}
