//! Xen's recipe against the fake tree: `bind_to(.., XenPciback)` (record, unbind, `new_slot`,
//! `bind`), `unbind` back (unbind, `remove_slot`, the old driver), and the roll back when pciback
//! will not take the device.

use std::path::PathBuf;

use vfio_pci::host::fake::{FakeDevice, FakeHost, FakeKernel};
use vfio_pci::host::{BindError, BindStep, BindTarget, Binder, PciAddress, XEN_PCIBACK_DRIVER};

const NIC: &str = "0000:03:00.0";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// dom0 of a Xen host: pciback loaded, a NIC on e1000e, and no IOMMU groups (Xen, not dom0's
/// Linux, owns the IOMMU).
fn dom0(label: &str) -> FakeHost {
    let host = FakeHost::new(label).unwrap();
    host.add_driver(XEN_PCIBACK_DRIVER).unwrap();
    host.add_device(&FakeDevice::new(NIC, 0x8086, 0x10d3, 0x020000).driver("e1000e"))
        .unwrap();
    host
}

fn collect(steps: &mut Vec<String>) -> impl FnMut(&BindStep) + '_ {
    |step| steps.push(step.to_string())
}

fn written(kernel: &FakeKernel) -> Vec<(String, String)> {
    kernel
        .writes()
        .into_iter()
        .map(|(p, v): (PathBuf, String)| (p.display().to_string(), v))
        .collect()
}

fn pair(path: &str, value: &str) -> (String, String) {
    (path.to_string(), value.to_string())
}

#[test]
fn bind_and_unbind_with_pciback() {
    let host = dom0("pciback");
    let kernel = FakeKernel::new(host.paths()).native_driver(addr(NIC), "e1000e");
    let binder = Binder::with_writer(host.paths(), kernel);

    let mut steps = Vec::new();
    binder
        .bind_to(addr(NIC), BindTarget::XenPciback, &mut collect(&mut steps))
        .unwrap();
    assert_eq!(host.driver_of(addr(NIC)).as_deref(), Some("pciback"));
    let record = host.paths().bind_record(addr(NIC));
    assert!(
        std::fs::read_to_string(&record)
            .unwrap()
            .contains("driver=e1000e\nmethod=pciback_slot\n")
    );
    assert_eq!(
        steps.last().unwrap(),
        "0000:03:00.0 is now bound to pciback"
    );
    assert!(
        steps
            .iter()
            .any(|s| s
                .starts_with("let pciback seize it (its slot list): wrote \"0000:03:00.0\" to")),
        "{steps:#?}"
    );

    let mut again = Vec::new();
    binder
        .bind_to(addr(NIC), BindTarget::XenPciback, &mut collect(&mut again))
        .unwrap();
    assert_eq!(
        again,
        vec!["0000:03:00.0 is already bound to pciback: nothing to do"]
    );

    let mut steps = Vec::new();
    binder.unbind(addr(NIC), &mut collect(&mut steps)).unwrap();
    assert_eq!(host.driver_of(addr(NIC)).as_deref(), Some("e1000e"));
    assert!(!record.exists());
    assert_eq!(steps.last().unwrap(), "0000:03:00.0 is now bound to e1000e");
}

#[test]
fn the_kernel_sees_xens_sequence() {
    let host = dom0("pciback-seq");
    let kernel = FakeKernel::new(host.paths()).native_driver(addr(NIC), "e1000e");
    let binder = Binder::with_writer(host.paths(), &kernel);
    binder
        .bind_to(addr(NIC), BindTarget::XenPciback, &mut |_| {})
        .unwrap();
    binder.unbind(addr(NIC), &mut |_| {}).unwrap();
    assert_eq!(
        written(&kernel),
        vec![
            pair("bus/pci/drivers/e1000e/unbind", NIC),
            pair("bus/pci/drivers/pciback/new_slot", NIC),
            pair("bus/pci/drivers/pciback/bind", NIC),
            pair("bus/pci/drivers/pciback/unbind", NIC),
            pair("bus/pci/drivers/pciback/remove_slot", NIC),
            pair("bus/pci/drivers/e1000e/bind", NIC),
        ]
    );
}

#[test]
fn pciback_not_loaded_changes_nothing() {
    let host = FakeHost::new("no-pciback").unwrap();
    host.add_device(&FakeDevice::new(NIC, 0x8086, 0x10d3, 0x020000).driver("e1000e"))
        .unwrap();
    let kernel = FakeKernel::new(host.paths());
    let binder = Binder::with_writer(host.paths(), &kernel);
    let err = binder
        .bind_to(addr(NIC), BindTarget::XenPciback, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, BindError::PcibackNotLoaded { .. }), "{err:?}");
    assert!(err.to_string().contains("modprobe xen-pciback"), "{err}");
    assert!(kernel.writes().is_empty());
    assert_eq!(host.driver_of(addr(NIC)).as_deref(), Some("e1000e"));
}

#[test]
fn a_refused_bind_is_rolled_back() {
    let host = dom0("pciback-refused");
    let kernel = FakeKernel::new(host.paths())
        .native_driver(addr(NIC), "e1000e")
        .refusing(XEN_PCIBACK_DRIVER);
    let binder = Binder::with_writer(host.paths(), &kernel);
    let mut steps = Vec::new();
    let err = binder
        .bind_to(addr(NIC), BindTarget::XenPciback, &mut collect(&mut steps))
        .unwrap_err();
    assert!(matches!(err, BindError::Write { .. }), "{err:?}");
    assert_eq!(host.driver_of(addr(NIC)).as_deref(), Some("e1000e"));
    let writes = written(&kernel);
    assert!(
        writes.contains(&pair("bus/pci/drivers/pciback/remove_slot", NIC)),
        "{writes:#?}"
    );
    assert!(!host.paths().bind_record(addr(NIC)).exists());
}
