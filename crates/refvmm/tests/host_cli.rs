//! `refvmm bind`, `unbind` and `check` as a person runs them, on a fake host tree
//! (`--host-root` / `REFVMM_HOST_ROOT`): exit status, checklist and step messages.
//!
//! A fake tree has no kernel behind it, so a bind there stops at "did not take" after its
//! first write; the full bind/unbind sequence with a simulated kernel is tested in the
//! vfio-pci crate (`tests/host_fake_tree.rs`).

mod common;

use std::path::Path;

use common::Run;

use vfio_pci::host::PciAddress;
use vfio_pci::host::fake::{FakeDevice, FakeHost};

const NVME: &str = "0000:01:00.0";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn refvmm(host: &FakeHost, args: &[&str]) -> Run {
    common::refvmm(args, None, |cmd| {
        cmd.arg("--host-root")
            .arg(host.root())
            .env_remove("REFVMM_HOST_ROOT");
    })
}

/// An Intel host with the IOMMU on, vfio-pci loaded, and an NVMe on `nvme` alone in group 7.
fn host_with_nvme(label: &str) -> FakeHost {
    let host = FakeHost::intel_with_iommu(label).unwrap();
    host.add_device(
        &FakeDevice::new(NVME, 0x1b36, 0x0010, 0x010802)
            .driver("nvme")
            .group(7),
    )
    .unwrap();
    host
}

#[test]
fn check_not_bound_lists_the_fix_and_fails() {
    let host = host_with_nvme("cli-notbound");
    let out = refvmm(&host, &["check", "01:00.0"]);
    let stdout = out.stdout.clone();
    assert_eq!(Some(out.code), Some(1), "{stdout}");
    assert!(
        stdout.starts_with(
            "Passthrough check for 0000:01:00.0\n  [ ok ] device      Red Hat, Inc. QEMU NVM Express \
             Controller [1b36:0010] NVMe/NVM controller (class 0x010802)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("[FAIL] driver      bound to nvme, not vfio-pci"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fix: `refvmm bind 0000:01:00.0`"),
        "{stdout}"
    );
    assert!(stdout.contains("[ ok ] IOMMU       enabled: 1 IOMMU group (units: dmar0)"));
    assert!(
        out.stderr
            .clone()
            .contains("0000:01:00.0 is not ready for passthrough"),
        "{}",
        out.stderr.clone()
    );
}

#[test]
fn check_ready_device_exits_zero() {
    let host = host_with_nvme("cli-ready");
    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    host.add_vfio_nodes(7).unwrap();
    // The sysfs path form, as `ls -l /sys/bus/pci/devices` shows it.
    let out = refvmm(&host, &["check", "/sys/bus/pci/devices/0000:01:00.0"]);
    let stdout = out.stdout.clone();
    assert!(out.ok(), "{stdout}{}", out.stderr.clone());
    assert!(
        stdout.contains("[ ok ] driver      bound to vfio-pci"),
        "{stdout}"
    );
    assert!(stdout.contains("[ ok ] /dev/vfio"), "{stdout}");
    assert!(
        stdout.contains("0000:01:00.0 is ready for passthrough"),
        "{stdout}"
    );
}

#[test]
fn check_open_fails_cleanly_without_vfio() {
    if Path::new("/dev/vfio/vfio").exists() {
        eprintln!("skip: this host has /dev/vfio/vfio; the failure path is not reachable here");
        return;
    }
    let host = host_with_nvme("cli-open");
    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    host.add_vfio_nodes(7).unwrap();
    let out = refvmm(&host, &["check", "--open", NVME]);
    assert_eq!(Some(out.code), Some(1));
    let stderr = out.stderr.clone();
    assert!(
        stderr.contains("refvmm: error: 0000:01:00.0 (VFIO group 7): cannot set up the VFIO container /dev/vfio/vfio"),
        "{stderr}"
    );
    assert!(stderr.contains("caused by: "), "{stderr}");
}

#[test]
fn check_unknown_and_malformed_devices() {
    let host = host_with_nvme("cli-unknown");
    let out = refvmm(&host, &["check", "0000:02:00.0"]);
    assert_eq!(Some(out.code), Some(1));
    let stderr = out.stderr.clone();
    assert!(
        stderr.contains("no PCI device 0000:02:00.0 on this host"),
        "{stderr}"
    );
    assert!(stderr.contains("lspci -D"), "{stderr}");

    // A blank pasted in front is not blamed on the bus number.
    let out = refvmm(&host, &["check", " 01:00.0"]);
    assert_eq!(Some(out.code), Some(2));
    assert!(
        out.stderr
            .clone()
            .contains("\" 01:00.0\": remove the blanks around the PCI address"),
        "{}",
        out.stderr.clone()
    );

    let out = refvmm(&host, &["check", "0000:01:00.8"]);
    assert_eq!(Some(out.code), Some(2));
    assert!(
        out.stderr
            .clone()
            .contains("\"0000:01:00.8\": function must be 0-7"),
        "{}",
        out.stderr.clone()
    );

    let out = refvmm(&host, &["check", "--memory", "2X", NVME]);
    assert_eq!(Some(out.code), Some(2));
    assert!(out.stderr.clone().contains("unknown unit"));
    // The same bounds as `run --memory`.
    for (size, why) in [("0", "too small"), ("999T", "too large")] {
        let out = refvmm(&host, &["check", "--memory", size, NVME]);
        assert_eq!(Some(out.code), Some(2), "{size}");
        assert!(out.stderr.clone().contains(why), "{}", out.stderr.clone());
    }
}

#[test]
fn check_non_viable_group_no_iommu_and_missing_node() {
    let host = host_with_nvme("cli-group");
    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    host.add_device(
        &FakeDevice::new("0000:01:00.1", 0x8086, 0x1234, 0x040300)
            .driver("snd_hda_intel")
            .group(7),
    )
    .unwrap();
    let out = refvmm(&host, &["check", NVME]);
    let stdout = out.stdout.clone();
    assert_eq!(Some(out.code), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "[FAIL] IOMMU group group 7 is not viable: these members are on host drivers:\n\
             \x20                    - 0000:01:00.1 [multimedia controller] (driver snd_hda_intel)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("`refvmm bind 0000:01:00.1`"), "{stdout}");
    // /dev/vfio/7 is missing too: both problems are listed.
    assert!(stdout.contains("/dev/vfio/7 is missing"), "{stdout}");
    assert!(
        stdout.contains("NOT ready for passthrough: 2 problems"),
        "{stdout}"
    );

    let bare = FakeHost::new("cli-noiommu").unwrap();
    bare.set_cpu_vendor("GenuineIntel").unwrap();
    bare.add_device(&FakeDevice::new(NVME, 0x1b36, 0x0010, 0x010802).driver("nvme"))
        .unwrap();
    let out = refvmm(&bare, &["check", NVME]);
    let stdout = out.stdout.clone();
    assert_eq!(Some(out.code), Some(1));
    assert!(
        stdout.contains("[FAIL] IOMMU       not enabled"),
        "{stdout}"
    );
    assert!(
        stdout.contains("add `intel_iommu=on` to the kernel"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("iommu=pt"),
        "not needed for VFIO: {stdout}"
    );
    assert!(
        stdout.contains("`modprobe vfio-pci` (the driver is not loaded)"),
        "{stdout}"
    );
}

#[test]
fn bind_on_a_tree_without_a_kernel_reports_and_rolls_back() {
    let host = host_with_nvme("cli-bind");
    let out = refvmm(&host, &["bind", "01:00.0"]);
    let stdout = out.stdout.clone();
    let stderr = out.stderr.clone();
    assert_eq!(Some(out.code), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("bind 0000:01:00.0:\n  recorded the previous driver (nvme)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  only vfio-pci may bind it now: wrote \"vfio-pci\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("  unbind from nvme: wrote \"0000:01:00.0\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("  roll back: restore driver_override"),
        "{stdout}"
    );
    assert!(
        stderr.contains("wrote to ") && stderr.contains("still bound to nvme"),
        "{stderr}"
    );
    assert_eq!(host.read("sys/bus/pci/drivers/nvme/unbind"), NVME);
}

#[test]
fn bind_already_bound_and_unbind_on_host_driver_are_no_ops() {
    let host = host_with_nvme("cli-noop");
    let out = refvmm(&host, &["unbind", NVME]);
    assert!(out.ok());
    assert_eq!(
        out.stdout.clone(),
        "unbind 0000:01:00.0:\n  0000:01:00.0 is bound to nvme, not vfio-pci: nothing to do\n"
    );

    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    // The environment variable works like --host-root.
    let out = common::refvmm(&["bind", NVME], None, |cmd| {
        cmd.env("REFVMM_HOST_ROOT", host.root());
    });
    assert!(out.ok(), "{}", out.stderr.clone());
    assert_eq!(
        out.stdout.clone(),
        "bind 0000:01:00.0:\n  0000:01:00.0 is already bound to vfio-pci: nothing to do\n"
    );
}

#[test]
fn bind_without_vfio_pci_changes_nothing() {
    let host = host_with_nvme("cli-nomod");
    std::fs::remove_dir_all(host.paths().pci_driver("vfio-pci")).unwrap();
    let out = refvmm(&host, &["bind", NVME]);
    assert_eq!(Some(out.code), Some(1));
    assert!(
        out.stderr
            .clone()
            .contains("run `modprobe vfio-pci` and retry; nothing was changed")
    );
    assert_eq!(host.read("sys/bus/pci/drivers/nvme/unbind"), "");
}

#[test]
fn check_inside_a_virtual_machine_advises_a_virtual_iommu() {
    let host = FakeHost::new("cli-vm").unwrap();
    host.set_cpu_vendor("GenuineIntel").unwrap();
    host.set_dmi("QEMU", "Standard PC (i440FX + PIIX, 1996)")
        .unwrap();
    host.add_driver("vfio-pci").unwrap();
    host.add_device(&FakeDevice::new(NVME, 0x1b36, 0x0010, 0x010802).driver("nvme"))
        .unwrap();
    let out = refvmm(&host, &["check", NVME]);
    let stdout = out.stdout.clone();
    assert_eq!(Some(out.code), Some(1), "{stdout}");
    assert!(
        stdout.contains("fix: this is a virtual machine (QEMU Standard PC (i440FX + PIIX, 1996))"),
        "{stdout}"
    );
    assert!(stdout.contains("virtual IOMMU"), "{stdout}");
    assert!(!stdout.contains("firmware setup"), "{stdout}");
    // The bind fix is rendered as refvmm's own command.
    assert!(
        stdout.contains("fix: `refvmm bind 0000:01:00.0`"),
        "{stdout}"
    );
}
