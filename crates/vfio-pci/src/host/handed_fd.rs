//! File descriptors handed in by a privileged launcher: claiming them and checking what they are.
//!
//! An unprivileged VMM cannot open `/dev/vfio/devices/vfioN` or `/dev/iommu`; a launcher (a
//! device plugin, libvirt, a test script) opens them and starts the VMM with the numbers, as
//! QEMU's `-device vfio-pci,fd=N` with `-object iommufd,fd=M` and cloud-hypervisor's
//! `--device fd=` do. A wrong number is an easy mistake (the launcher closed it, or passed the
//! fds of another device, or in the wrong order), and the ioctls it would fail on say only
//! `ENOTTY` or `EBADF`. So every handed-in fd is identified first, from `fstat` and sysfs:
//! a character device's `st_rdev` names it in `/sys/dev/char/MAJ:MIN` (whose `uevent` has
//! `DEVNAME=iommu` or `DEVNAME=vfio/devices/vfioN`, and whose link leads to the PCI device the
//! cdev belongs to), and `/proc/self/fd/N` says what anything else is (`pipe:[1234]`, a file).

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use thiserror::Error;

use super::{HostPaths, PciAddress};

/// What a handed-in fd is meant to be, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdRole {
    /// A VFIO device cdev (`/dev/vfio/devices/vfioN`).
    DeviceCdev,
    /// An iommufd (`/dev/iommu`).
    Iommufd,
}

impl fmt::Display for FdRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FdRole::DeviceCdev => "the VFIO device cdev (/dev/vfio/devices/vfioN)",
            FdRole::Iommufd => "the iommufd (/dev/iommu)",
        })
    }
}

/// What an open fd refers to, as far as `fstat`, sysfs and procfs tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdIdentity {
    /// The fd number.
    pub fd: RawFd,
    /// `(major, minor)` when it is a character device.
    pub char_device: Option<(u32, u32)>,
    /// The character device's `DEVNAME` from sysfs (`iommu`, `vfio/devices/vfio0`, `null`).
    pub devname: Option<String>,
    /// The PCI device a VFIO cdev belongs to (from the `/sys/dev/char/MAJ:MIN` link).
    pub pci_device: Option<PciAddress>,
    /// The `/proc/self/fd/N` link (`/dev/null`, `pipe:[1234]`), if readable.
    pub link: Option<String>,
    /// The `O_ACCMODE` bits it was opened with.
    pub access_mode: i32,
}

impl FdIdentity {
    /// Whether it is the iommufd character device.
    pub fn is_iommufd(&self) -> bool {
        self.devname.as_deref() == Some("iommu")
    }

    /// Whether it is a VFIO device cdev.
    pub fn is_vfio_cdev(&self) -> bool {
        self.devname
            .as_deref()
            .is_some_and(|n| n.starts_with("vfio/devices/"))
    }

    /// Whether it was opened for reading and writing (VFIO and iommufd ioctls need both).
    pub fn is_read_write(&self) -> bool {
        self.access_mode == libc::O_RDWR
    }
}

impl fmt::Display for FdIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.devname, self.char_device, &self.link) {
            (Some(name), Some((major, minor)), _) => {
                write!(f, "/dev/{name} (character device {major}:{minor}")?;
                if let Some(pci) = self.pci_device {
                    write!(f, ", the VFIO cdev of {pci}")?;
                }
                f.write_str(")")
            }
            (None, Some((major, minor)), link) => write!(
                f,
                "{} (character device {major}:{minor}, unknown to sysfs)",
                link.as_deref().unwrap_or("an unnamed file")
            ),
            (_, None, Some(link)) => write!(f, "{link}, not a character device"),
            (_, None, None) => f.write_str("not a character device"),
        }
    }
}

/// Why a handed-in fd cannot be used.
#[derive(Debug, Error)]
pub enum HandedFdError {
    /// The number is not an open fd in this process.
    #[error(
        "fd {fd}, handed in as {role}, is not open in this process: the launcher must keep it \
         open (without O_CLOEXEC) when it starts the VMM"
    )]
    NotOpen {
        /// The number.
        fd: RawFd,
        /// What it was meant to be.
        role: FdRole,
    },
    /// `fstat` or `fcntl` on it failed for another reason.
    #[error("fd {fd}, handed in as {role}: cannot inspect it: {source}")]
    Inspect {
        /// The number.
        fd: RawFd,
        /// What it was meant to be.
        role: FdRole,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// It is something else.
    #[error("fd {}, handed in as {role}, is {what}: the launcher passed the wrong fd", what.fd)]
    WrongKind {
        /// What it was meant to be.
        role: FdRole,
        /// What it is.
        what: FdIdentity,
    },
    /// It was opened read-only or write-only.
    #[error(
        "fd {}, handed in as {role}, is {what} but opened without O_RDWR: the launcher must \
         open it read-write",
        what.fd
    )]
    NotReadWrite {
        /// What it was meant to be.
        role: FdRole,
        /// What it is.
        what: FdIdentity,
    },
    /// It is a VFIO cdev, but not the named device's.
    #[error(
        "fd {}, handed in as the VFIO cdev of {address}, is {what}; {address}'s cdev is {expected}: \
         the launcher passed the fd of another device",
        what.fd
    )]
    OtherDevice {
        /// The device named on the command line.
        address: PciAddress,
        /// What the fd is.
        what: FdIdentity,
        /// The named device's cdev, from sysfs.
        expected: String,
    },
    /// The named device has no cdev in sysfs to compare with.
    #[error(
        "fd {}, handed in as the VFIO cdev of {address}, is {what}, but {} names no cdev: is \
         {address} bound to vfio-pci, on a kernel with CONFIG_VFIO_DEVICE_CDEV?",
        what.fd, dir.display()
    )]
    NoCdevToCompare {
        /// The device named on the command line.
        address: PciAddress,
        /// What the fd is.
        what: FdIdentity,
        /// `/sys/bus/pci/devices/BDF/vfio-dev`.
        dir: PathBuf,
    },
}

/// Takes ownership of an fd number inherited from a launcher, after checking it is open.
///
/// # Safety
///
/// Nothing else in the process may own `fd` (use it after this, or close it): the returned
/// [`OwnedFd`] closes it on drop. For a number read from the command line at startup, that
/// holds when each number is claimed once.
pub unsafe fn claim_inherited_fd(fd: RawFd, role: FdRole) -> Result<OwnedFd, HandedFdError> {
    if fd < 0 {
        return Err(HandedFdError::NotOpen { fd, role });
    }
    // SAFETY: F_GETFD only reads the fd's flags; an fd that is not open gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let source = io::Error::last_os_error();
        return Err(if source.raw_os_error() == Some(libc::EBADF) {
            HandedFdError::NotOpen { fd, role }
        } else {
            HandedFdError::Inspect { fd, role, source }
        });
    }
    // SAFETY: the fd is open (checked above) and the caller guarantees nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Identifies an open fd from `fstat`, `fcntl`, sysfs and procfs under `paths`.
pub fn identify_fd(paths: &HostPaths, fd: BorrowedFd<'_>) -> io::Result<FdIdentity> {
    let raw = fd.as_raw_fd();
    // SAFETY: an all-zero `stat` is a valid value; fstat fills it for the open fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the borrow's lifetime and `st` is a writable `stat`.
    if unsafe { libc::fstat(raw, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_GETFL only reads the open fd's status flags.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let link = fs::read_link(paths.proc.join("self/fd").join(raw.to_string()))
        .ok()
        .map(|p| p.display().to_string());
    let mut identity = FdIdentity {
        fd: raw,
        char_device: None,
        devname: None,
        pci_device: None,
        link,
        access_mode: flags & libc::O_ACCMODE,
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFCHR {
        let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        identity.char_device = Some((major, minor));
        let sys_entry = paths.sys.join(format!("dev/char/{major}:{minor}"));
        identity.devname = fs::read_to_string(sys_entry.join("uevent"))
            .ok()
            .and_then(|uevent| {
                uevent
                    .lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
            });
        // /sys/dev/char/M:m -> ../../devices/pci0000:00/0000:00:01.0/vfio-dev/vfio0
        identity.pci_device = fs::read_link(&sys_entry).ok().and_then(|target| {
            let parts: Vec<_> = target.iter().collect();
            let at = parts.iter().position(|p| *p == "vfio-dev")?;
            parts.get(at.checked_sub(1)?)?.to_str()?.parse().ok()
        });
    }
    Ok(identity)
}

fn identify_as(
    paths: &HostPaths,
    fd: BorrowedFd<'_>,
    role: FdRole,
) -> Result<FdIdentity, HandedFdError> {
    identify_fd(paths, fd).map_err(|source| HandedFdError::Inspect {
        fd: fd.as_raw_fd(),
        role,
        source,
    })
}

/// Checks that `fd` is an iommufd opened read-write.
pub fn check_iommufd_fd(paths: &HostPaths, fd: &impl AsFd) -> Result<FdIdentity, HandedFdError> {
    let role = FdRole::Iommufd;
    let what = identify_as(paths, fd.as_fd(), role)?;
    if !what.is_iommufd() {
        return Err(HandedFdError::WrongKind { role, what });
    }
    if !what.is_read_write() {
        return Err(HandedFdError::NotReadWrite { role, what });
    }
    Ok(what)
}

/// Checks that `fd` is the VFIO cdev of `address` (the `dev` numbers in
/// `BDF/vfio-dev/vfioN/dev`), opened read-write.
pub fn check_device_cdev_fd(
    paths: &HostPaths,
    address: PciAddress,
    fd: &impl AsFd,
) -> Result<FdIdentity, HandedFdError> {
    let role = FdRole::DeviceCdev;
    let what = identify_as(paths, fd.as_fd(), role)?;
    if !what.is_vfio_cdev() {
        return Err(HandedFdError::WrongKind { role, what });
    }
    let dir = paths.pci_device(address).join("vfio-dev");
    let expected = fs::read_dir(&dir).ok().and_then(|entries| {
        entries.flatten().find_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let dev = fs::read_to_string(e.path().join("dev")).ok()?;
            Some((name, dev.trim().to_string()))
        })
    });
    let Some((name, dev)) = expected else {
        return Err(HandedFdError::NoCdevToCompare { address, what, dir });
    };
    let actual = what
        .char_device
        .map(|(major, minor)| format!("{major}:{minor}"));
    if actual.as_deref() != Some(dev.as_str()) {
        return Err(HandedFdError::OtherDevice {
            address,
            what,
            expected: format!("/dev/vfio/devices/{name} (character device {dev})"),
        });
    }
    if !what.is_read_write() {
        return Err(HandedFdError::NotReadWrite { role, what });
    }
    Ok(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::IntoRawFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe(2) just created both fds and nothing else owns them.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn address() -> PciAddress {
        "0000:00:01.0".parse().unwrap()
    }

    /// A number no fd of this process can have: the soft `RLIMIT_NOFILE` (fds are below it).
    /// (Closing a number instead would race with other tests opening files meanwhile.)
    fn number_never_open() -> RawFd {
        // SAFETY: an all-zero rlimit is valid; getrlimit fills it.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: `limit` is a writable rlimit.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(rc, 0);
        RawFd::try_from(limit.rlim_cur).unwrap_or(RawFd::MAX)
    }

    #[test]
    fn a_number_that_is_not_open_is_named() {
        let number = number_never_open();
        // SAFETY: the number is not open, so nothing owns it; the call must refuse it.
        let err = unsafe { claim_inherited_fd(number, FdRole::DeviceCdev) }.unwrap_err();
        assert!(matches!(err, HandedFdError::NotOpen { fd, .. } if fd == number));
        let msg = err.to_string();
        assert!(msg.contains(&format!("fd {number}")), "{msg}");
        assert!(msg.contains("not open"), "{msg}");
        assert!(msg.contains("/dev/vfio/devices/vfioN"), "{msg}");
    }

    #[test]
    fn a_negative_number_is_not_open() {
        // SAFETY: -1 is never an fd; the call must refuse it without touching anything.
        let err = unsafe { claim_inherited_fd(-1, FdRole::Iommufd) }.unwrap_err();
        assert!(matches!(err, HandedFdError::NotOpen { fd: -1, .. }));
    }

    #[test]
    fn an_open_number_is_claimed() {
        let (r, _w) = pipe();
        let number = r.into_raw_fd();
        // SAFETY: this test gave up ownership of `number` with into_raw_fd just above.
        let owned = unsafe { claim_inherited_fd(number, FdRole::Iommufd) }.unwrap();
        assert_eq!(owned.as_raw_fd(), number);
    }

    #[test]
    fn a_pipe_is_not_an_iommufd_nor_a_device() {
        let (r, _w) = pipe();
        let paths = HostPaths::default();
        let err = check_iommufd_fd(&paths, &r).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HandedFdError::WrongKind { .. }), "{msg}");
        assert!(msg.contains(&format!("fd {}", r.as_raw_fd())), "{msg}");
        assert!(msg.contains("pipe:["), "{msg}");
        assert!(msg.contains("not a character device"), "{msg}");
        assert!(msg.contains("/dev/iommu"), "{msg}");

        let err = check_device_cdev_fd(&paths, address(), &r).unwrap_err();
        assert!(matches!(err, HandedFdError::WrongKind { .. }), "{err}");
        assert!(err.to_string().contains("VFIO device cdev"), "{err}");
    }

    #[test]
    fn dev_null_is_named_as_what_it_is() {
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let paths = HostPaths::default();
        let what = identify_fd(&paths, null.as_fd()).unwrap();
        assert_eq!(what.char_device, Some((1, 3)));
        assert!(what.is_read_write());
        assert!(!what.is_iommufd() && !what.is_vfio_cdev());

        let err = check_device_cdev_fd(&paths, address(), &null).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HandedFdError::WrongKind { .. }), "{msg}");
        assert!(msg.contains("/dev/null"), "{msg}");
        assert!(msg.contains("1:3"), "{msg}");
        let err = check_iommufd_fd(&paths, &null).unwrap_err();
        assert!(err.to_string().contains("/dev/null"), "{err}");
    }

    #[test]
    fn a_regular_file_is_not_a_character_device() {
        let file = File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
        let err = check_iommufd_fd(&HostPaths::default(), &file).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Cargo.toml, not a character device"), "{msg}");
    }

    /// A sysfs tree where character device 1:3 (what /dev/null is) is the VFIO cdev `vfio0`
    /// of `owner`, and 0000:00:01.0's cdev has the numbers `named_dev`.
    fn tree_with_cdev(name: &str, owner: &str, named_dev: &str) -> (PathBuf, HostPaths) {
        let root = std::env::temp_dir().join(format!("handed-fd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let paths = HostPaths::under(&root);
        let owner_cdev = paths
            .sys
            .join(format!("devices/pci0000:00/{owner}/vfio-dev/vfio0"));
        fs::create_dir_all(&owner_cdev).unwrap();
        fs::write(
            owner_cdev.join("uevent"),
            "MAJOR=1\nMINOR=3\nDEVNAME=vfio/devices/vfio0\n",
        )
        .unwrap();
        fs::create_dir_all(paths.sys.join("dev/char")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../devices/pci0000:00/{owner}/vfio-dev/vfio0"),
            paths.sys.join("dev/char/1:3"),
        )
        .unwrap();
        let named = paths.pci_device(address()).join("vfio-dev/vfio1");
        fs::create_dir_all(&named).unwrap();
        fs::write(named.join("dev"), format!("{named_dev}\n")).unwrap();
        (root, paths)
    }

    fn dev_null_rw() -> File {
        File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap()
    }

    #[test]
    fn the_named_devices_cdev_is_accepted() {
        let (root, paths) = tree_with_cdev("match", "0000:00:01.0", "1:3");
        let what = check_device_cdev_fd(&paths, address(), &dev_null_rw()).unwrap();
        assert_eq!(what.pci_device, Some(address()));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn another_devices_cdev_is_named_with_its_owner() {
        let (root, paths) = tree_with_cdev("other", "0000:00:02.0", "1:4");
        let err = check_device_cdev_fd(&paths, address(), &dev_null_rw()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HandedFdError::OtherDevice { .. }), "{msg}");
        assert!(msg.contains("the VFIO cdev of 0000:00:02.0"), "{msg}");
        assert!(
            msg.contains("0000:00:01.0's cdev is /dev/vfio/devices/vfio1 (character device 1:4)"),
            "{msg}"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_read_only_cdev_is_refused() {
        let (root, paths) = tree_with_cdev("ro", "0000:00:01.0", "1:3");
        let ro = File::open("/dev/null").unwrap();
        let err = check_device_cdev_fd(&paths, address(), &ro).unwrap_err();
        assert!(matches!(err, HandedFdError::NotReadWrite { .. }), "{err}");
        assert!(err.to_string().contains("O_RDWR"), "{err}");
        fs::remove_dir_all(root).unwrap();
    }
}
