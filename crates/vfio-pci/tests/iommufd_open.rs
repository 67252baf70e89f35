//! Choosing between the type1 container and iommufd, and opening through iommufd, on a fake
//! host tree. The fake `/dev/iommu` is a plain file, so the first iommufd ioctl fails: that
//! checks the message; the real iommufd path runs in the nested test bed.

use std::fs;

use vfio_pci::host::fake::{FakeDevice, FakeHost};
use vfio_pci::host::{
    IommuAvailability, IommuBackend, IommuBackendChoice, IommuChoiceError, IommufdOpenError,
    OpenError, OpenVfioError, OpenedIommufdDevice, OpenedVfio, PciAddress,
};

const NVME: &str = "0000:01:00.0";

fn addr(s: &str) -> PciAddress {
    PciAddress::from_arg(s).unwrap()
}

/// A host with an NVMe controller in group 7 on `driver`, and the chosen iommufd pieces.
struct Host {
    fake: FakeHost,
}

impl Host {
    fn new(label: &str, driver: &str) -> Self {
        let fake = FakeHost::new(label).unwrap();
        fake.add_driver("vfio-pci").unwrap();
        fake.add_device(
            &FakeDevice::new(NVME, 0x1b36, 0x0010, 0x010802)
                .driver(driver)
                .group(7),
        )
        .unwrap();
        Self { fake }
    }

    /// `/dev/iommu` (a plain file: only its presence is looked at before the first ioctl).
    fn with_iommufd(self) -> Self {
        fs::write(self.fake.paths().iommufd_node(), "").unwrap();
        self
    }

    /// `BDF/vfio-dev/vfio0`, as the kernel makes it with CONFIG_VFIO_DEVICE_CDEV.
    fn with_cdev_in_sysfs(self) -> Self {
        let dir = self
            .fake
            .paths()
            .pci_device(addr(NVME))
            .join("vfio-dev/vfio0");
        fs::create_dir_all(dir).unwrap();
        self
    }

    /// `/dev/vfio/devices/vfio0`.
    fn with_cdev_node(self) -> Self {
        let node = self.fake.paths().vfio_device_cdev("vfio0");
        fs::create_dir_all(node.parent().unwrap()).unwrap();
        fs::write(node, "").unwrap();
        self
    }

    fn with_iommufd_complete(self) -> Self {
        self.with_iommufd().with_cdev_in_sysfs().with_cdev_node()
    }

    fn decide(&self, choice: IommuBackendChoice) -> Result<IommuBackend, IommuChoiceError> {
        choice
            .resolve(&self.fake.paths(), addr(NVME))
            .map(|d| d.backend)
    }

    fn root(&self) -> String {
        self.fake.root().display().to_string()
    }
}

#[test]
fn auto_picks_iommufd_only_when_all_of_it_is_there() {
    let host = Host::new("auto-all", "vfio-pci").with_iommufd_complete();
    let decision = IommuBackendChoice::Auto
        .resolve(&host.fake.paths(), addr(NVME))
        .unwrap();
    assert_eq!(decision.backend, IommuBackend::Iommufd);
    let root = host.root();
    assert_eq!(
        decision.to_string(),
        format!("iommufd ({root}/dev/iommu and {root}/dev/vfio/devices/vfio0 exist)")
    );
}

#[test]
fn auto_falls_back_to_type1_and_says_why() {
    let no_iommufd = Host::new("auto-no-iommufd", "vfio-pci")
        .with_cdev_in_sysfs()
        .with_cdev_node();
    let d = IommuBackendChoice::Auto
        .resolve(&no_iommufd.fake.paths(), addr(NVME))
        .unwrap();
    assert_eq!(d.backend, IommuBackend::Type1);
    assert_eq!(
        d.reason,
        format!("no {}/dev/iommu (CONFIG_IOMMUFD)", no_iommufd.root())
    );

    let no_cdev = Host::new("auto-no-cdev", "vfio-pci").with_iommufd();
    let d = IommuBackendChoice::Auto
        .resolve(&no_cdev.fake.paths(), addr(NVME))
        .unwrap();
    assert_eq!(d.backend, IommuBackend::Type1);
    assert!(d.reason.contains("CONFIG_VFIO_DEVICE_CDEV"), "{d}");
    assert!(d.reason.contains("0000:01:00.0/vfio-dev"), "{d}");

    let no_node = Host::new("auto-no-node", "vfio-pci")
        .with_iommufd()
        .with_cdev_in_sysfs();
    let d = IommuBackendChoice::Auto
        .resolve(&no_node.fake.paths(), addr(NVME))
        .unwrap();
    assert_eq!(d.backend, IommuBackend::Type1);
    assert_eq!(
        d.reason,
        format!("no {}/dev/vfio/devices/vfio0", no_node.root())
    );

    // On its host driver the device has no cdev: type1, whose opening says to bind it.
    let unbound = Host::new("auto-unbound", "nvme").with_iommufd_complete();
    assert_eq!(
        unbound.decide(IommuBackendChoice::Auto).unwrap(),
        IommuBackend::Type1
    );
    let err = OpenedVfio::open(
        &unbound.fake.paths(),
        addr(NVME),
        None,
        IommuBackendChoice::Auto,
    )
    .unwrap_err();
    assert!(
        matches!(err, OpenVfioError::Type1(OpenError::NotBoundToVfio { .. })),
        "{err:?}"
    );
}

#[test]
fn asking_for_iommufd_names_the_missing_piece_and_the_fallback() {
    let host = Host::new("ask-iommufd-no-dev", "vfio-pci").with_cdev_in_sysfs();
    let err = host.decide(IommuBackendChoice::Iommufd).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "0000:01:00.0: iommufd asked for, but {}/dev/iommu does not exist: this kernel \
             lacks CONFIG_IOMMUFD (or `modprobe iommufd`); use the type1 container",
            host.root()
        )
    );

    let host = Host::new("ask-iommufd-no-cdev", "vfio-pci").with_iommufd();
    let err = host.decide(IommuBackendChoice::Iommufd).unwrap_err();
    assert!(
        matches!(err, IommuChoiceError::CdevMissing { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "0000:01:00.0: iommufd asked for, but {}/sys/bus/pci/devices/0000:01:00.0/vfio-dev \
             names no VFIO device cdev: this kernel lacks CONFIG_VFIO_DEVICE_CDEV; use \
             the type1 container",
            host.root()
        )
    );

    let host = Host::new("ask-iommufd-no-node", "vfio-pci")
        .with_iommufd()
        .with_cdev_in_sysfs();
    let msg = host
        .decide(IommuBackendChoice::Iommufd)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("VFIO cdev vfio0"), "{msg}");
    assert!(msg.contains("/dev/vfio/devices/vfio0"), "{msg}");
    assert!(msg.contains("the type1 container"), "{msg}");

    let host = Host::new("ask-iommufd-unbound", "nvme").with_iommufd_complete();
    assert_eq!(
        host.decide(IommuBackendChoice::Iommufd)
            .unwrap_err()
            .to_string(),
        "0000:01:00.0 is bound to nvme, not vfio-pci: bind it to vfio-pci first"
    );

    let err = IommuBackendChoice::Iommufd
        .resolve(&host.fake.paths(), addr("0000:05:00.0"))
        .unwrap_err();
    assert!(matches!(err, IommuChoiceError::Sysfs(_)), "{err:?}");
    assert!(err.to_string().contains("0000:05:00.0"), "{err}");
}

#[test]
fn asking_for_type1_needs_the_container_node() {
    let host = Host::new("ask-type1", "vfio-pci").with_iommufd_complete();
    let err = host.decide(IommuBackendChoice::Type1).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "0000:01:00.0: type1 asked for, but {}/dev/vfio/vfio does not exist: load VFIO \
             (`modprobe vfio-pci`); a kernel without CONFIG_VFIO_CONTAINER needs \
             CONFIG_IOMMUFD_VFIO_CONTAINER for it; open it through iommufd, which this host offers",
            host.root()
        )
    );

    let bare = Host::new("ask-type1-bare", "vfio-pci");
    let msg = bare
        .decide(IommuBackendChoice::Type1)
        .unwrap_err()
        .to_string();
    assert!(
        msg.ends_with("neither is iommufd available (the host readiness check says why)"),
        "{msg}"
    );

    bare.fake.add_vfio_nodes(7).unwrap();
    let d = IommuBackendChoice::Type1
        .resolve(&bare.fake.paths(), addr(NVME))
        .unwrap();
    assert_eq!(d.to_string(), "type1 (asked for (type1))");
}

#[test]
fn decide_is_consistent_over_every_host() {
    let base = IommuAvailability::probe(
        &Host::new("decide-all", "vfio-pci").fake.paths(),
        addr(NVME),
    )
    .unwrap();
    for bits in 0u32..64 {
        let on = |n: u32| bits & (1 << n) != 0;
        let host = IommuAvailability {
            driver: Some(if on(0) { "vfio-pci" } else { "nvme" }.to_string()),
            iommufd_present: on(1),
            cdev: on(2).then(|| "vfio3".to_string()),
            cdev_node: on(2).then(|| "/dev/vfio/devices/vfio3".into()),
            cdev_node_present: on(2) && on(3),
            container_present: on(4),
            iommu_group: on(5).then_some(7),
            ..base.clone()
        };
        let iommufd_ready = on(0) && on(1) && on(2) && on(3);
        let auto = IommuBackendChoice::Auto.decide(&host).unwrap();
        assert_eq!(
            auto.backend == IommuBackend::Iommufd,
            iommufd_ready,
            "{host:?}"
        );
        let explicit = IommuBackendChoice::Iommufd.decide(&host);
        assert_eq!(explicit.is_ok(), iommufd_ready, "{host:?}");
        if let Err(e) = explicit {
            let msg = e.to_string();
            assert!(msg.contains("0000:01:00.0"), "{msg}");
            assert!(
                msg.contains("bind it to vfio-pci") || msg.contains("the type1 container"),
                "{msg}"
            );
        }
        assert_eq!(
            IommuBackendChoice::Type1.decide(&host).is_ok(),
            on(4),
            "{host:?}"
        );
    }
}

#[test]
fn a_fake_dev_iommu_fails_at_the_first_ioctl_with_a_clear_message() {
    let host = Host::new("open-fake-iommu", "vfio-pci").with_iommufd_complete();
    let err = OpenedIommufdDevice::open(&host.fake.paths(), addr(NVME), None).unwrap_err();
    assert!(matches!(err, IommufdOpenError::Ioas { .. }), "{err:?}");
    let msg = err.to_string();
    let node = format!("{}/dev/iommu", host.root());
    assert!(
        msg.starts_with(&format!(
            "0000:01:00.0: {node} is not a working iommufd: IOMMU_IOAS_ALLOC failed ("
        )),
        "{msg}"
    );
    // A plain file answers every ioctl with ENOTTY.
    assert!(msg.contains("os error 25"), "{msg}");
    assert!(msg.contains(&format!("`ls -l {node}`")), "{msg}");
    assert!(msg.contains("CONFIG_IOMMUFD"), "{msg}");
    assert!(msg.ends_with("or use the type1 container"), "{msg}");

    // Auto picks iommufd here, so the combined open reports the same failure.
    let err = OpenedVfio::open(
        &host.fake.paths(),
        addr(NVME),
        None,
        IommuBackendChoice::Auto,
    )
    .unwrap_err();
    assert!(
        matches!(err, OpenVfioError::Iommufd(IommufdOpenError::Ioas { .. })),
        "{err:?}"
    );
    assert_eq!(err.to_string(), msg);
}

#[test]
fn open_checks_before_any_ioctl() {
    let host = Host::new("open-no-iommu", "vfio-pci")
        .with_cdev_in_sysfs()
        .with_cdev_node();
    let err = OpenedIommufdDevice::open(&host.fake.paths(), addr(NVME), None).unwrap_err();
    assert!(
        matches!(
            err,
            IommufdOpenError::Unavailable(IommuChoiceError::IommufdMissing { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("CONFIG_IOMMUFD"), "{err}");

    // A /dev/iommu that cannot be opened read-write (here a directory).
    let host = Host::new("open-iommu-dir", "vfio-pci")
        .with_cdev_in_sysfs()
        .with_cdev_node();
    fs::create_dir(host.fake.paths().iommufd_node()).unwrap();
    let err = OpenedIommufdDevice::open(&host.fake.paths(), addr(NVME), None).unwrap_err();
    assert!(
        matches!(err, IommufdOpenError::OpenIommufd { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "0000:01:00.0: cannot open {}/dev/iommu: ",
            host.root()
        )),
        "{msg}"
    );
}

#[test]
fn auto_without_iommufd_opens_through_type1() {
    // No VFIO nodes at all: type1 is chosen and its own preflight names the group node.
    let host = Host::new("open-auto-type1", "vfio-pci");
    let err = OpenedVfio::open(
        &host.fake.paths(),
        addr(NVME),
        None,
        IommuBackendChoice::Auto,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            OpenVfioError::Type1(OpenError::GroupNodeMissing { group: 7, .. })
        ),
        "{err:?}"
    );
}

#[test]
fn choice_parses_and_prints() {
    for name in IommuBackendChoice::NAMES {
        let choice: IommuBackendChoice = name.parse().unwrap();
        assert_eq!(choice.to_string(), name);
    }
    assert_eq!("IOMMUFD".parse(), Ok(IommuBackendChoice::Iommufd));
    assert_eq!(IommuBackendChoice::default(), IommuBackendChoice::Auto);
    assert_eq!(
        "type2".parse::<IommuBackendChoice>().unwrap_err(),
        "unknown IOMMU backend `type2`: use auto, type1 or iommufd"
    );
    assert_eq!(IommuBackend::Iommufd.to_string(), "iommufd");
}

/// Callers wrap these errors once more (`VfioBackendError`, then a VMM's own attach error):
/// they must stay well below clippy's `result_large_err` limit of 128 bytes.
#[test]
fn errors_stay_small() {
    use std::mem::size_of;
    assert!(
        size_of::<IommuChoiceError>() <= 64,
        "{}",
        size_of::<IommuChoiceError>()
    );
    assert!(
        size_of::<IommufdOpenError>() <= 96,
        "{}",
        size_of::<IommufdOpenError>()
    );
    assert!(
        size_of::<OpenVfioError>() <= 104,
        "{}",
        size_of::<OpenVfioError>()
    );
}

#[test]
fn check_says_what_a_launcher_must_grant_and_what_is_missing() {
    use vfio_pci::host::{
        CheckKind, CheckOptions, CheckStatus, Fix, MemlockLimit, ProcessLimits, Readiness,
    };
    let host = Host::new("check-grants", "vfio-pci").with_iommufd_complete();
    let assess = |memlock, guest_memory| {
        let options = CheckOptions {
            guest_memory,
            limits: ProcessLimits {
                memlock,
                cap_ipc_lock: false,
            },
        };
        Readiness::assess(&host.fake.paths(), addr(NVME), &options)
            .unwrap()
            .item(CheckKind::Iommufd)
            .unwrap()
            .clone()
    };
    let cdev = host.fake.paths().vfio_device_cdev("vfio0");
    let iommu = host.fake.paths().iommufd_node();

    let item = assess(MemlockLimit::Unlimited, None);
    assert_eq!(item.status, CheckStatus::Ok, "{item:?}");
    assert!(
        item.finding.contains(&format!(
            "without privileges, a VMM needs from a launcher: {} and {} opened read-write and \
             handed in as fds, and RLIMIT_MEMLOCK of at least guest RAM",
            cdev.display(),
            iommu.display()
        )),
        "{item:?}"
    );
    assert!(
        item.finding
            .ends_with("this process has all three: it can open both nodes itself")
    );

    // A limit below the guest: the missing piece is named, with the fix.
    let item = assess(MemlockLimit::Bytes(64 << 20), Some(256 << 20));
    assert_eq!(item.status, CheckStatus::Warn, "{item:?}");
    assert!(
        item.finding
            .ends_with("this process lacks: RLIMIT_MEMLOCK 64 MiB below the guest's 256 MiB"),
        "{item:?}"
    );
    // The fix is data naming the nodes and the memlock to grant; no message names a VMM.
    assert!(!item.finding.contains("refvmm"), "{item:?}");
    let fix = item.fix.unwrap();
    assert_eq!(
        fix,
        Fix::HandFdsIn {
            device: NVME.to_string(),
            cdev: cdev.clone(),
            iommufd: iommu.clone(),
            memlock: Some(256 << 20),
        }
    );
    assert!(
        fix.to_string().contains("raises RLIMIT_MEMLOCK to 256 MiB"),
        "{fix}"
    );

    // Without iommufd there is nothing to hand in: the item says only why iommufd is off.
    let host = Host::new("check-grants-none", "vfio-pci");
    let options = CheckOptions {
        guest_memory: None,
        limits: ProcessLimits {
            memlock: MemlockLimit::Bytes(64 << 10),
            cap_ipc_lock: false,
        },
    };
    let readiness = Readiness::assess(&host.fake.paths(), addr(NVME), &options).unwrap();
    let item = readiness.item(CheckKind::Iommufd).unwrap();
    assert_eq!(item.status, CheckStatus::Skip, "{item:?}");
    assert!(!item.finding.contains("launcher"), "{item:?}");
}
