//! The host side against a fake sysfs/procfs/dev tree in a temporary directory: the checks
//! and their messages, and bind/unbind with a simulated kernel.

use std::path::Path;

use vfio_pci::host::fake::{FakeDevice, FakeHost, FakeKernel};
use vfio_pci::host::{
    BindError, BindStep, Binder, CheckKind, CheckOptions, CheckStatus, Fix, HostDevice,
    MemlockLimit, OpenError, OpenedDevice, PciAddress, ProcessLimits, Readiness, SysfsError,
};

const NVME: &str = "0000:01:00.0";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn roomy_limits() -> CheckOptions {
    CheckOptions {
        guest_memory: None,
        limits: ProcessLimits {
            memlock: MemlockLimit::Unlimited,
            cap_ipc_lock: false,
        },
    }
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

fn collect(steps: &mut Vec<String>) -> impl FnMut(&BindStep) + '_ {
    |step| steps.push(step.to_string())
}

#[test]
fn unknown_device_is_named_with_a_hint() {
    let host = host_with_nvme("unknown");
    let err = HostDevice::read(&host.paths(), addr("0000:02:00.0")).unwrap_err();
    assert!(matches!(err, SysfsError::DeviceNotFound { .. }));
    let text = err.to_string();
    assert!(text.contains("no PCI device 0000:02:00.0"), "{text}");
    assert!(text.contains("lspci -D"), "{text}");

    let err = Readiness::assess(&host.paths(), addr("02:00.0"), &roomy_limits()).unwrap_err();
    assert!(err.to_string().contains("0000:02:00.0"));

    let binder = Binder::new(host.paths());
    let err = binder.bind(addr("02:00.0"), &mut |_| {}).unwrap_err();
    assert!(matches!(
        err,
        BindError::Sysfs(SysfsError::DeviceNotFound { .. })
    ));
}

#[test]
fn reads_ids_class_driver_and_group() {
    let host = host_with_nvme("read");
    let dev = HostDevice::read(&host.paths(), addr(NVME)).unwrap();
    assert_eq!((dev.vendor, dev.device), (0x1b36, 0x0010));
    assert_eq!(dev.subsystem_vendor, Some(0x1b36));
    assert_eq!(dev.class.0, 0x010802);
    assert_eq!(dev.driver.as_deref(), Some("nvme"));
    assert_eq!(dev.iommu_group, Some(7));
    assert_eq!(dev.ids(), "1b36:0010");
    assert!(!dev.is_bound_to_vfio());
}

#[test]
fn device_not_bound_to_vfio_pci() {
    let host = host_with_nvme("notbound");
    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    assert!(!r.is_ready());
    let driver = r.item(CheckKind::Driver).unwrap();
    assert_eq!(driver.status, CheckStatus::Fail);
    assert_eq!(driver.finding, "bound to nvme, not vfio-pci");
    assert_eq!(driver.fix, Some(Fix::bind(addr(NVME), false)));
    // Only the driver is wrong; /dev/vfio/7 is expected to be missing until the bind.
    assert_eq!(r.problems().count(), 1, "{r}");
    assert_eq!(
        r.item(CheckKind::VfioNodes).unwrap().status,
        CheckStatus::Skip
    );
    assert_eq!(r.item(CheckKind::Iommu).unwrap().status, CheckStatus::Ok);
    let text = r.to_string();
    assert!(
        text.contains("[FAIL] driver      bound to nvme, not vfio-pci"),
        "{text}"
    );
    assert!(
        text.ends_with("0000:01:00.0 is NOT ready for passthrough: 1 problem\n"),
        "{text}"
    );

    // Without vfio-pci loaded, the fix says to load it.
    std::fs::remove_dir_all(host.paths().pci_driver("vfio-pci")).unwrap();
    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    let fix = r.item(CheckKind::Driver).unwrap().fix.clone().unwrap();
    assert_eq!(fix, Fix::bind(addr(NVME), true));

    let err = OpenedDevice::open(&host.paths(), addr(NVME), None).unwrap_err();
    assert!(matches!(err, OpenError::NotBoundToVfio { .. }));
    assert_eq!(
        err.to_string(),
        "0000:01:00.0 is bound to nvme, not vfio-pci: bind it to vfio-pci first"
    );
}

#[test]
fn non_viable_group_lists_each_member_and_driver() {
    let host = host_with_nvme("group");
    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    host.add_vfio_nodes(7).unwrap();
    host.add_device(
        &FakeDevice::new("0000:01:00.1", 0x8086, 0x1234, 0x040300)
            .driver("snd_hda_intel")
            .group(7),
    )
    .unwrap();
    host.add_device(
        &FakeDevice::new("0000:01:00.2", 0x8086, 0x1235, 0x0c0330)
            .driver("xhci_hcd")
            .group(7),
    )
    .unwrap();
    // Harmless members: a bridge on pcieport, a function with no driver, one on pci-stub.
    host.add_device(
        &FakeDevice::new("0000:00:1c.0", 0x8086, 0x7ab8, 0x060400)
            .driver("pcieport")
            .group(7),
    )
    .unwrap();
    host.add_device(&FakeDevice::new("0000:01:00.3", 0x8086, 0x1236, 0x0c8000).group(7))
        .unwrap();
    host.add_device(
        &FakeDevice::new("0000:01:00.4", 0x8086, 0x1237, 0x0c8000)
            .driver("pci-stub")
            .group(7),
    )
    .unwrap();

    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    let group = r.item(CheckKind::Group).unwrap();
    assert_eq!(group.status, CheckStatus::Fail);
    assert_eq!(
        group.finding,
        "group 7 is not viable: these members are on host drivers:\n\
         - 0000:01:00.1 [multimedia controller] (driver snd_hda_intel)\n\
         - 0000:01:00.2 [USB controller] (driver xhci_hcd)"
    );
    assert_eq!(
        group.fix,
        Some(Fix::BindToVfio {
            devices: vec!["0000:01:00.1".into(), "0000:01:00.2".into()],
            load_module: false,
            whole_group: true,
        })
    );
    assert_eq!(r.problems().count(), 1, "{r}");

    // Once the two are unbound, the same group is viable, and the rest are listed as fine.
    host.set_driver(addr("0000:01:00.1"), Some("vfio-pci"))
        .unwrap();
    host.set_driver(addr("0000:01:00.2"), None).unwrap();
    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    let group = r.item(CheckKind::Group).unwrap();
    assert_eq!(group.status, CheckStatus::Ok, "{r}");
    assert!(
        group
            .finding
            .contains("- 0000:00:1c.0 [PCI bridge] (driver pcieport): fine (bridge)")
    );
    assert!(group.finding.contains("(driver pci-stub): fine"));
    assert!(r.is_ready(), "{r}");
}

#[test]
fn no_iommu_names_the_kernel_parameter() {
    let host = FakeHost::new("noiommu").unwrap();
    host.set_cpu_vendor("GenuineIntel").unwrap();
    host.set_cmdline("BOOT_IMAGE=/vmlinuz quiet").unwrap();
    host.add_driver("vfio-pci").unwrap();
    host.add_device(&FakeDevice::new(NVME, 0x1b36, 0x0010, 0x010802).driver("nvme"))
        .unwrap();

    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    let iommu = r.item(CheckKind::Iommu).unwrap();
    assert_eq!(iommu.status, CheckStatus::Fail);
    assert!(
        iommu.finding.starts_with("not enabled"),
        "{}",
        iommu.finding
    );
    let fix = iommu.fix.as_ref().unwrap().to_string();
    assert!(fix.contains("`intel_iommu=on`"), "{fix}");
    assert!(!fix.contains("iommu=pt"), "{fix}");
    // The group check is moot without an IOMMU; the driver is still reported: all problems.
    assert_eq!(r.item(CheckKind::Group).unwrap().status, CheckStatus::Skip);
    assert_eq!(r.item(CheckKind::Driver).unwrap().status, CheckStatus::Fail);
    assert_eq!(r.problems().count(), 2, "{r}");

    // An AMD host with the IOMMU switched off on the command line.
    host.set_cpu_vendor("AuthenticAMD").unwrap();
    host.set_cmdline("amd_iommu=off").unwrap();
    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    let iommu = r.item(CheckKind::Iommu).unwrap();
    assert!(iommu.finding.contains("amd_iommu=off"), "{}", iommu.finding);
    let fix = iommu.fix.as_ref().unwrap().to_string();
    assert!(fix.starts_with("remove amd_iommu=off"), "{fix}");
    assert!(fix.contains("AMD-Vi"), "{fix}");

    // Inside a QEMU VM, the IOMMU is the hypervisor's: the advice is a virtual IOMMU.
    host.set_cmdline("quiet").unwrap();
    host.set_dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)")
        .unwrap();
    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    let fix = r
        .item(CheckKind::Iommu)
        .unwrap()
        .fix
        .as_ref()
        .unwrap()
        .to_string();
    assert!(
        fix.starts_with("this is a virtual machine (QEMU Standard PC (Q35 + ICH9, 2009))"),
        "{fix}"
    );
    assert!(
        fix.contains("intel-iommu") && fix.contains("virtio-iommu"),
        "{fix}"
    );
    assert!(
        !fix.contains("AMD-Vi") && !fix.contains("iommu=pt"),
        "{fix}"
    );

    // Binding refuses before touching anything: vfio-pci would not take the device.
    let kernel = FakeKernel::new(host.paths());
    let binder = Binder::with_writer(host.paths(), kernel);
    let err = binder.bind(addr(NVME), &mut |_| {}).unwrap_err();
    assert!(matches!(err, BindError::NoIommuGroup { .. }), "{err}");
    assert!(err.to_string().contains("nothing was changed"));
    assert!(binder_writes_none(&host));
}

fn binder_writes_none(host: &FakeHost) -> bool {
    host.read("sys/bus/pci/drivers/nvme/unbind").is_empty()
        && host.read("sys/bus/pci/drivers_probe").is_empty()
        && host.read("sys/devices/pci0000:00/0000:01:00.0/driver_override") == "(null)\n"
}

#[test]
fn missing_dev_vfio_node() {
    let host = host_with_nvme("nodev");
    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    let nodes = r.item(CheckKind::VfioNodes).unwrap();
    assert_eq!(nodes.status, CheckStatus::Fail);
    let node = host.paths().vfio_group_node(7);
    assert_eq!(
        nodes.finding,
        format!(
            "{} is missing although vfio-pci drives the device",
            node.display()
        )
    );
    assert!(
        nodes
            .fix
            .as_ref()
            .unwrap()
            .to_string()
            .contains("ls -l /dev/vfio")
    );
    assert_eq!(r.problems().count(), 1, "{r}");

    let err = OpenedDevice::open(&host.paths(), addr(NVME), None).unwrap_err();
    assert!(matches!(err, OpenError::GroupNodeMissing { group: 7, .. }));
    let text = err.to_string();
    assert!(text.starts_with("0000:01:00.0: "), "{text}");
    assert!(
        text.contains("/dev/vfio/7 (VFIO group 7) does not exist"),
        "{text}"
    );

    // With the group node but no container node, the container is reported.
    std::fs::create_dir_all(host.paths().dev.join("vfio")).unwrap();
    std::fs::write(&node, "").unwrap();
    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    let nodes = r.item(CheckKind::VfioNodes).unwrap();
    assert_eq!(nodes.status, CheckStatus::Fail);
    assert!(
        nodes.finding.contains("(the VFIO container) is missing"),
        "{}",
        nodes.finding
    );
    assert!(
        nodes
            .fix
            .as_ref()
            .map(Fix::to_string)
            .as_deref()
            .unwrap()
            .contains("modprobe vfio vfio_iommu_type1")
    );
}

#[test]
fn memlock_limit() {
    let host = host_with_nvme("memlock");
    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    host.add_vfio_nodes(7).unwrap();
    let low = ProcessLimits {
        memlock: MemlockLimit::Bytes(8 << 20),
        cap_ipc_lock: false,
    };

    // A known guest size that the limit does not cover: a failure that states both numbers.
    let options = CheckOptions {
        guest_memory: Some(2 << 30),
        limits: low,
    };
    let r = Readiness::assess(&host.paths(), addr(NVME), &options).unwrap();
    let memlock = r.item(CheckKind::Memlock).unwrap();
    assert_eq!(memlock.status, CheckStatus::Fail);
    assert!(
        memlock
            .finding
            .starts_with("limit 8 MiB is below the guest's 2 GiB"),
        "{}",
        memlock.finding
    );
    assert!(
        memlock
            .fix
            .as_ref()
            .unwrap()
            .to_string()
            .contains("ulimit -l")
    );
    assert!(!r.is_ready());

    // Unknown guest size: below 1 GiB is a warning, and the device counts as ready.
    let options = CheckOptions {
        guest_memory: None,
        limits: low,
    };
    let r = Readiness::assess(&host.paths(), addr(NVME), &options).unwrap();
    assert_eq!(
        r.item(CheckKind::Memlock).unwrap().status,
        CheckStatus::Warn
    );
    assert!(r.is_ready(), "{r}");
    assert!(
        r.to_string()
            .ends_with("is ready for passthrough (1 warning)\n"),
        "{r}"
    );

    // A small guest fits; CAP_IPC_LOCK lifts the limit.
    let options = CheckOptions {
        guest_memory: Some(4 << 20),
        limits: low,
    };
    let r = Readiness::assess(&host.paths(), addr(NVME), &options).unwrap();
    assert_eq!(r.item(CheckKind::Memlock).unwrap().status, CheckStatus::Ok);
    let options = CheckOptions {
        guest_memory: Some(2 << 30),
        limits: ProcessLimits {
            cap_ipc_lock: true,
            ..low
        },
    };
    let r = Readiness::assess(&host.paths(), addr(NVME), &options).unwrap();
    let memlock = r.item(CheckKind::Memlock).unwrap();
    assert_eq!(memlock.status, CheckStatus::Ok);
    assert!(memlock.finding.contains("CAP_IPC_LOCK"));
}

#[test]
fn bridge_cannot_be_passed_through() {
    let host = host_with_nvme("bridge");
    host.add_device(
        &FakeDevice::new("0000:00:1c.0", 0x8086, 0x7ab8, 0x060400)
            .driver("pcieport")
            .group(3),
    )
    .unwrap();
    let r = Readiness::assess(&host.paths(), addr("00:1c.0"), &roomy_limits()).unwrap();
    assert_eq!(r.item(CheckKind::Device).unwrap().status, CheckStatus::Fail);
}

#[test]
fn ready_device_and_open_fails_cleanly_without_vfio() {
    let host = host_with_nvme("ready");
    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    host.add_vfio_nodes(7).unwrap();
    let r = Readiness::assess(&host.paths(), addr(NVME), &roomy_limits()).unwrap();
    assert!(r.is_ready(), "{r}");
    assert_eq!(
        r.item(CheckKind::Group).unwrap().finding,
        "group 7: viable, the device is alone in it"
    );

    // The sysfs checks pass, so vfio-ioctls opens the real /dev/vfio/vfio.
    if Path::new("/dev/vfio/vfio").exists() {
        eprintln!("skip: this host has /dev/vfio/vfio; the failure path is not reachable here");
        return;
    }
    let err = OpenedDevice::open(&host.paths(), addr(NVME), None).unwrap_err();
    assert!(
        matches!(err, OpenError::Container { group: 7, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.starts_with("0000:01:00.0 (VFIO group 7)"), "{text}");
    assert!(text.contains("/dev/vfio/vfio"), "{text}");
    assert!(text.contains("check the node's permissions"), "{text}");
    assert!(
        !text.contains("refvmm"),
        "a library names no VMM's commands: {text}"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("/dev/vfio/vfio"), "{source}");
}

#[test]
fn bind_and_unbind_with_driver_override() {
    let host = host_with_nvme("override");
    let kernel = FakeKernel::new(host.paths()).native_driver(addr(NVME), "nvme");
    let binder = Binder::with_writer(host.paths(), kernel);

    let mut steps = Vec::new();
    binder.bind(addr(NVME), &mut collect(&mut steps)).unwrap();
    assert_eq!(host.driver_of(addr(NVME)).as_deref(), Some("vfio-pci"));
    let record = host.paths().bind_record(addr(NVME));
    assert!(
        std::fs::read_to_string(&record)
            .unwrap()
            .contains("driver=nvme\nmethod=driver_override\n")
    );
    let sys = host.paths().sys;
    assert_eq!(
        steps,
        vec![
            format!(
                "recorded the previous driver (nvme) in {}",
                record.display()
            ),
            format!(
                "only vfio-pci may bind it now: wrote \"vfio-pci\" to {}",
                sys.join("bus/pci/devices/0000:01:00.0/driver_override")
                    .display()
            ),
            format!(
                "unbind from nvme: wrote \"0000:01:00.0\" to {}",
                sys.join("bus/pci/drivers/nvme/unbind").display()
            ),
            "0000:01:00.0 is released from nvme".to_string(),
            format!(
                "probe drivers: wrote \"0000:01:00.0\" to {}",
                sys.join("bus/pci/drivers_probe").display()
            ),
            "0000:01:00.0 is now bound to vfio-pci".to_string(),
        ]
    );

    // Binding again is a no-op that says so.
    let mut again = Vec::new();
    binder.bind(addr(NVME), &mut collect(&mut again)).unwrap();
    assert_eq!(
        again,
        vec!["0000:01:00.0 is already bound to vfio-pci: nothing to do"]
    );

    let mut steps = Vec::new();
    binder.unbind(addr(NVME), &mut collect(&mut steps)).unwrap();
    assert_eq!(host.driver_of(addr(NVME)).as_deref(), Some("nvme"));
    assert_eq!(
        host.read("sys/devices/pci0000:00/0000:01:00.0/driver_override"),
        "(null)\n"
    );
    assert!(!record.exists());
    assert_eq!(
        steps,
        vec![
            format!(
                "clear driver_override: wrote \"\\n\" to {}",
                sys.join("bus/pci/devices/0000:01:00.0/driver_override")
                    .display()
            ),
            format!(
                "unbind from vfio-pci: wrote \"0000:01:00.0\" to {}",
                sys.join("bus/pci/drivers/vfio-pci/unbind").display()
            ),
            "0000:01:00.0 is released from vfio-pci".to_string(),
            format!(
                "give it back to nvme: wrote \"0000:01:00.0\" to {}",
                sys.join("bus/pci/drivers/nvme/bind").display()
            ),
            "0000:01:00.0 is now bound to nvme".to_string(),
        ]
    );

    // Unbinding a device on its host driver leaves it alone.
    let mut steps = Vec::new();
    binder.unbind(addr(NVME), &mut collect(&mut steps)).unwrap();
    assert_eq!(
        steps,
        vec!["0000:01:00.0 is bound to nvme, not vfio-pci: nothing to do"]
    );
}

#[test]
fn bind_and_unbind_with_new_id_on_old_kernels() {
    let host = FakeHost::new("newid").unwrap();
    host.add_iommu_unit("dmar0").unwrap();
    host.add_driver("vfio-pci").unwrap();
    host.add_device(
        &FakeDevice::new("0000:00:02.0", 0x8086, 0x10d3, 0x020000)
            .driver("e1000e")
            .group(2)
            .without_driver_override(),
    )
    .unwrap();
    let e1000e = addr("00:02.0");
    let kernel = FakeKernel::new(host.paths()).native_driver(e1000e, "e1000e");
    let binder = Binder::with_writer(host.paths(), kernel);

    let mut steps = Vec::new();
    binder.bind(e1000e, &mut collect(&mut steps)).unwrap();
    assert_eq!(host.driver_of(e1000e).as_deref(), Some("vfio-pci"));
    assert_eq!(
        host.read("sys/bus/pci/drivers/vfio-pci/new_id"),
        "8086 10d3"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.contains("let vfio-pci claim this vendor:device ID"))
    );

    let mut steps = Vec::new();
    binder.unbind(e1000e, &mut collect(&mut steps)).unwrap();
    assert_eq!(host.driver_of(e1000e).as_deref(), Some("e1000e"));
    // The ID is removed first, or vfio-pci would take the device again.
    assert_eq!(
        host.read("sys/bus/pci/drivers/vfio-pci/remove_id"),
        "8086 10d3"
    );
    assert!(
        steps[0].starts_with("remove the ID from vfio-pci"),
        "{steps:?}"
    );
}

#[test]
fn bind_that_does_not_take_is_reported_and_rolled_back() {
    // On a plain fake tree nothing acts on writes: the unbind "does not take".
    let host = host_with_nvme("stuck");
    let binder = Binder::new(host.paths());
    let mut steps = Vec::new();
    let err = binder
        .bind(addr(NVME), &mut collect(&mut steps))
        .unwrap_err();
    assert!(matches!(err, BindError::UnbindDidNotTake { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("still bound to nvme"), "{text}");
    assert!(text.contains("drivers/nvme/unbind"), "{text}");
    // The writes landed where the kernel expects them...
    assert_eq!(host.read("sys/bus/pci/drivers/nvme/unbind"), NVME);
    // ...and the override was put back, the record removed.
    assert_eq!(
        host.read("sys/devices/pci0000:00/0000:01:00.0/driver_override"),
        "\n"
    );
    assert!(
        steps
            .last()
            .unwrap()
            .starts_with("roll back: restore driver_override"),
        "{steps:?}"
    );
    assert!(!host.paths().bind_record(addr(NVME)).exists());

    // vfio-pci refuses the device: the device goes back to nvme and the error says why.
    let host = host_with_nvme("refused");
    let kernel = FakeKernel::new(host.paths())
        .native_driver(addr(NVME), "nvme")
        .refusing("vfio-pci");
    let binder = Binder::with_writer(host.paths(), kernel);
    let mut steps = Vec::new();
    let err = binder
        .bind(addr(NVME), &mut collect(&mut steps))
        .unwrap_err();
    assert!(matches!(err, BindError::BindDidNotTake { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("asked the kernel to bind vfio-pci, but the device now has no driver")
    );
    assert_eq!(host.driver_of(addr(NVME)).as_deref(), Some("nvme"));
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("roll back: give the device back to nvme"))
    );
}

#[test]
fn bind_needs_vfio_pci_loaded() {
    let host = host_with_nvme("nomodule");
    std::fs::remove_dir_all(host.paths().pci_driver("vfio-pci")).unwrap();
    let binder = Binder::with_writer(host.paths(), FakeKernel::new(host.paths()));
    let err = binder.bind(addr(NVME), &mut |_| {}).unwrap_err();
    assert!(matches!(err, BindError::VfioPciNotLoaded { .. }));
    assert!(err.to_string().contains("run `modprobe vfio-pci`"));
    assert_eq!(host.driver_of(addr(NVME)).as_deref(), Some("nvme"));
    assert!(binder_writes_none(&host));
}

#[test]
fn unbind_without_record_lets_the_kernel_choose() {
    let host = host_with_nvme("norecord");
    host.set_driver(addr(NVME), Some("vfio-pci")).unwrap();
    let kernel = FakeKernel::new(host.paths()).native_driver(addr(NVME), "nvme");
    let binder = Binder::with_writer(host.paths(), kernel);
    let mut steps = Vec::new();
    binder.unbind(addr(NVME), &mut collect(&mut steps)).unwrap();
    assert!(
        steps[0].starts_with("no record of the previous driver"),
        "{steps:?}"
    );
    assert!(steps.iter().any(|s| s.starts_with("probe drivers")));
    assert_eq!(host.driver_of(addr(NVME)).as_deref(), Some("nvme"));
}

#[test]
fn unbind_when_the_host_driver_does_not_take_it_back() {
    let host = host_with_nvme("noreturn");
    let kernel = FakeKernel::new(host.paths())
        .native_driver(addr(NVME), "nvme")
        .refusing("nvme");
    let binder = Binder::with_writer(host.paths(), kernel);
    binder.bind(addr(NVME), &mut |_| {}).unwrap();
    let err = binder.unbind(addr(NVME), &mut |_| {}).unwrap_err();
    assert!(matches!(err, BindError::BindDidNotTake { .. }), "{err}");
    assert!(err.to_string().contains("asked the kernel to bind nvme"));
}

#[test]
fn a_bridge_is_not_told_to_go_to_vfio_pci() {
    let host = FakeHost::intel_with_iommu("bridge").unwrap();
    host.add_device(
        &FakeDevice::new("0000:00:00.0", 0x8086, 0x1237, 0x060000)
            .driver("agpgart-intel")
            .group(0),
    )
    .unwrap();
    let r = Readiness::assess(&host.paths(), addr("0000:00:00.0"), &roomy_limits()).unwrap();
    assert_eq!(r.item(CheckKind::Device).unwrap().status, CheckStatus::Fail);
    let driver = r.item(CheckKind::Driver).unwrap();
    assert_eq!(driver.status, CheckStatus::Skip, "{r}");
    assert_eq!(driver.fix, None, "{r}");
}
