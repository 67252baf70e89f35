//! What each hypervisor needs to pass a host device through, and the lines a person pastes
//! into each one's configuration (`refvmm check`, and `--print-cmdline` of `plan` and `check`).
//!
//! KVM-based VMMs (QEMU, cloud-hypervisor, refvmm) take the device from vfio-pci; Xen's `xl`
//! takes it from pciback in dom0, with Xen itself owning the IOMMU.

use vfio_pci::host::{BindTarget, HostDevice, HostPaths, PciAddress, XEN_PCIBACK_DRIVER};

/// The lines to paste, one per hypervisor, for the device at `bdf` (full `DDDD:BB:DD.F` form).
pub fn cmdline_lines(bdf: &str) -> String {
    format!(
        "QEMU:             -device vfio-pci,host={bdf}\n\
         cloud-hypervisor: --device path=/sys/bus/pci/devices/{bdf}/\n\
         Xen (xl.cfg):     pci = ['{bdf}']\n"
    )
}

/// What KVM and Xen each need for `address`, and where the host stands.
pub fn hypervisor_needs(paths: &HostPaths, address: PciAddress, kvm_ready: bool) -> String {
    let driver = HostDevice::read(paths, address)
        .ok()
        .and_then(|d| d.driver)
        .unwrap_or_else(|| "no driver".into());
    let pciback_loaded = paths.pci_driver(XEN_PCIBACK_DRIVER).is_dir();
    let mut out = String::from("What each hypervisor needs:\n");
    out += &format!(
        "  KVM (QEMU, cloud-hypervisor, refvmm): the device on vfio-pci (`refvmm bind {address}`), \
         the IOMMU on and its group viable, /dev/vfio access, memlock for the guest's RAM: {}\n",
        if kvm_ready {
            "ready"
        } else {
            "not yet, see the checklist above"
        }
    );
    out += &format!(
        "  Xen (xl, from dom0): {} loaded ({}), the device on pciback (now: {driver}; `refvmm bind \
         {address} --driver {}` or `xen-pciback.hide=({address})` on dom0's kernel command \
         line), and Xen's IOMMU on for HVM guests (`iommu=1` on Xen's command line); then `xl \
         pci-assignable-list` lists it\n",
        BindTarget::XenPciback.module(),
        if pciback_loaded {
            "it is"
        } else {
            "it is not: `modprobe xen-pciback` in dom0"
        },
        BindTarget::XenPciback,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_to_paste() {
        assert_eq!(
            cmdline_lines("0000:01:00.0"),
            "QEMU:             -device vfio-pci,host=0000:01:00.0\n\
             cloud-hypervisor: --device path=/sys/bus/pci/devices/0000:01:00.0/\n\
             Xen (xl.cfg):     pci = ['0000:01:00.0']\n"
        );
    }
}
