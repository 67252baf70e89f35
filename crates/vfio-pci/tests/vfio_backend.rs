//! `VfioBackend::open` fails with the host side's clear messages (BDF, group, node, fix) on a
//! fake sysfs tree; the real VFIO path runs in the nested test bed.

use vfio_pci::host::PciAddress;
use vfio_pci::host::fake::{FakeDevice, FakeHost};
use vfio_pci::{VfioBackend, VfioBackendError};

#[test]
fn open_failures_name_the_device_and_the_fix() {
    let host = FakeHost::new("vfio-backend-open").unwrap();
    host.add_driver("vfio-pci").unwrap();
    host.add_device(
        &FakeDevice::new("0000:01:00.0", 0x1b36, 0x0010, 0x010802)
            .driver("nvme")
            .group(7),
    )
    .unwrap();
    let nvme = PciAddress::from_arg("01:00.0").unwrap();

    let err = VfioBackend::open(&host.paths(), nvme, None).unwrap_err();
    assert!(matches!(err, VfioBackendError::Open(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "0000:01:00.0 is bound to nvme, not vfio-pci: bind it to vfio-pci first"
    );

    let missing = PciAddress::from_arg("0000:05:00.0").unwrap();
    let err = VfioBackend::open(&host.paths(), missing, None).unwrap_err();
    assert!(err.to_string().contains("0000:05:00.0"), "{err}");
}

#[test]
fn the_kvm_vfio_device_can_be_created() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let vm = kvm_runloop::Vm::new(&kvm_runloop::VmConfig {
        ram: vec![(0, 1 << 20)],
        ..Default::default()
    })
    .expect("VM");
    let device = vfio_pci::create_kvm_vfio_device(vm.fd()).expect("KVM VFIO device");
    assert!(
        device.try_clone().is_ok(),
        "the handle is a live file descriptor"
    );
}
