//! The two host recipes from the command line: `refvmm bind --driver xen-pciback`, what
//! `refvmm check` says each hypervisor needs, and `--print-cmdline` of `plan` and `check`.
//! (The bind sequences with a simulated kernel are tested in vfio-pci's `tests/host_pciback.rs`.)

mod common;

use common::Run;

use vfio_pci::host::fake::{FakeDevice, FakeHost};

const NIC: &str = "0000:03:00.0";

fn refvmm(host: Option<&FakeHost>, args: &[&str]) -> Run {
    common::refvmm(args, None, |cmd| {
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("REFVMM_HOST_ROOT");
        if let Some(host) = host {
            cmd.arg("--host-root").arg(host.root());
        }
    })
}

fn host_with_nic(label: &str) -> FakeHost {
    let host = FakeHost::intel_with_iommu(label).unwrap();
    host.add_device(
        &FakeDevice::new(NIC, 0x8086, 0x10d3, 0x020000)
            .driver("e1000e")
            .group(9),
    )
    .unwrap();
    host
}

#[test]
fn bind_to_pciback_needs_pciback_loaded() {
    let host = host_with_nic("cli-pciback-missing");
    let out = refvmm(Some(&host), &["bind", "03:00.0", "--driver", "xen-pciback"]);
    assert_eq!(Some(out.code), Some(1));
    let stderr = out.stderr.clone();
    assert!(
        stderr.contains("Xen's PCI backend is not loaded")
            && stderr.contains("modprobe xen-pciback"),
        "{stderr}"
    );
    assert_eq!(
        host.driver_of(NIC.parse().unwrap()).as_deref(),
        Some("e1000e")
    );
}

#[test]
fn bind_to_pciback_writes_xens_sequence() {
    let host = host_with_nic("cli-pciback");
    host.add_driver("pciback").unwrap();
    // A plain tree has no kernel: the unbind write lands, the driver link stays, and the bind
    // stops there and says so, after putting back what it changed.
    let out = refvmm(Some(&host), &["bind", "03:00.0", "--driver", "xen-pciback"]);
    let stdout = out.stdout.clone();
    assert_eq!(Some(out.code), Some(1), "{stdout}");
    assert!(
        stdout.contains("unbind from e1000e: wrote \"0000:03:00.0\""),
        "{stdout}"
    );
    assert_eq!(host.read("sys/bus/pci/drivers/e1000e/unbind"), NIC);
}

#[test]
fn bad_driver_is_named() {
    let out = refvmm(None, &["bind", "03:00.0", "--driver", "pci-stub"]);
    assert_eq!(Some(out.code), Some(2));
    assert!(
        out.stderr
            .clone()
            .contains("use vfio-pci (KVM) or xen-pciback (Xen)"),
        "{}",
        out.stderr.clone()
    );
}

#[test]
fn check_says_what_each_hypervisor_needs_and_prints_the_lines() {
    let host = host_with_nic("cli-check-recipes");
    let out = refvmm(Some(&host), &["check", "03:00.0", "--print-cmdline"]);
    let stdout = out.stdout.clone();
    assert!(stdout.contains("What each hypervisor needs:\n"), "{stdout}");
    assert!(
        stdout.contains("KVM (QEMU, cloud-hypervisor, refvmm): the device on vfio-pci")
            && stdout.contains("not yet, see the checklist above"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Xen (xl, from dom0): xen-pciback loaded (it is not: `modprobe xen-pciback` in dom0)"
        ) && stdout.contains("(now: e1000e;"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "QEMU:             -device vfio-pci,host=0000:03:00.0\n\
             cloud-hypervisor: --device path=/sys/bus/pci/devices/0000:03:00.0/\n\
             Xen (xl.cfg):     pci = ['0000:03:00.0']\n"
        ),
        "{stdout}"
    );
}

#[test]
fn plan_prints_the_lines_on_request() {
    let args = ["plan", "tests/data/plan_qemu_nvme.lspci"];
    let plain = refvmm(None, &args).stdout;
    assert!(!plain.contains("-device vfio-pci"), "{plain}");
    let out = refvmm(None, &[args[0], args[1], "--print-cmdline"]);
    assert!(out.ok());
    let stdout = out.stdout.clone();
    assert!(
        stdout.ends_with(
            "To pass it through:\n\
             QEMU:             -device vfio-pci,host=0000:00:04.0\n\
             cloud-hypervisor: --device path=/sys/bus/pci/devices/0000:00:04.0/\n\
             Xen (xl.cfg):     pci = ['0000:00:04.0']\n"
        ),
        "{stdout}"
    );
}
