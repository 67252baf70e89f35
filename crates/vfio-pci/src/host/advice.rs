//! What to do about a finding, as data: the library says *what* has to change, and each VMM
//! renders it as its own commands (refvmm as `refvmm bind ...`, another VMM as its own tool or
//! API). [`Fix`]'s `Display` is a neutral rendering for callers that have no commands of their
//! own.
//!
//! The IOMMU advice depends on where the IOMMU would come from: the firmware of a physical
//! machine (VT-d, AMD-Vi), or, inside a virtual machine, the hypervisor, which must give the VM
//! a virtual IOMMU. [`Platform`] tells the two apart from the CPUID hypervisor bit (the
//! `hypervisor` flag of `/proc/cpuinfo`) and the DMI system vendor and product.

use std::fmt;
use std::path::PathBuf;

use super::PciAddress;
use super::limits::format_bytes;
use super::sysfs::CpuVendor;

/// A change that makes a failed or warned check pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Bind these functions to vfio-pci (a VMM's bind command, `driverctl`, or the sysfs
    /// `driver_override` writes of [`crate::host::Binder`]).
    BindToVfio {
        /// The functions, in sysfs form (`0000:01:00.0`).
        devices: Vec<String>,
        /// vfio-pci is not loaded: `modprobe vfio-pci` first.
        load_module: bool,
        /// They are the other members of the device's IOMMU group: all of them go to vfio-pci
        /// (and to the same VM) or stay unused; moving the device to a slot with its own group
        /// is the other way out.
        whole_group: bool,
    },
    /// Turn the IOMMU on.
    EnableIommu(IommuAdvice),
    /// Run the VMM without privileges from a launcher that opens the device's VFIO cdev and an
    /// iommufd as root, raises `RLIMIT_MEMLOCK` and hands the fds in (as QEMU's
    /// `-device vfio-pci,fd=N` with `-object iommufd,fd=M`); or give this user the nodes.
    HandFdsIn {
        /// The device, in sysfs form (`0000:01:00.0`).
        device: String,
        /// Its VFIO cdev, `/dev/vfio/devices/vfioN`.
        cdev: PathBuf,
        /// The iommufd node, `/dev/iommu`.
        iommufd: PathBuf,
        /// The `RLIMIT_MEMLOCK` to grant in bytes, when the guest's size is known.
        memlock: Option<u64>,
    },
    /// A change on the host that is no VMM's business (permissions, modules, limits, firmware
    /// diagnostics), said in words and shell commands.
    Host(String),
}

impl Fix {
    /// Bind one function to vfio-pci.
    pub fn bind(address: PciAddress, load_module: bool) -> Self {
        Fix::BindToVfio {
            devices: vec![address.to_string()],
            load_module,
            whole_group: false,
        }
    }
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fix::BindToVfio {
                devices,
                load_module,
                whole_group,
            } => {
                if *load_module {
                    write!(f, "`modprobe vfio-pci` (the driver is not loaded), then ")?;
                }
                if *whole_group {
                    write!(
                        f,
                        "the IOMMU cannot isolate devices of one group, so all of them go to \
                         vfio-pci (and to this VM) or stay unused: bind {} to vfio-pci; or move \
                         the device to a slot with its own group",
                        devices.join(", ")
                    )
                } else {
                    write!(f, "bind {} to vfio-pci", devices.join(", "))
                }
            }
            Fix::EnableIommu(advice) => advice.fmt(f),
            Fix::HandFdsIn {
                cdev,
                iommufd,
                memlock,
                ..
            } => write!(
                f,
                "run the VMM from a launcher that opens {} and {} read-write as root, raises \
                 RLIMIT_MEMLOCK to {} (`prlimit --memlock=BYTES`) and hands the fds in; or \
                 `chown` the nodes to this user",
                cdev.display(),
                iommufd.display(),
                memlock.map_or_else(|| "the guest's RAM".to_string(), format_bytes)
            ),
            Fix::Host(text) => f.write_str(text),
        }
    }
}

/// The machine `check` runs on, as far as the IOMMU is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platform {
    /// A physical machine: the IOMMU is a firmware setting.
    BareMetal {
        /// The CPU vendor, which names the IOMMU (VT-d, AMD-Vi) and its kernel parameter.
        cpu: CpuVendor,
    },
    /// A virtual machine: the IOMMU, if any, is emulated by the hypervisor.
    VirtualMachine {
        /// What DMI says the machine is (`QEMU Standard PC (Q35 + ICH9, 2009)`), when it says.
        product: Option<String>,
    },
}

/// DMI system vendors of virtual machines (`/sys/class/dmi/id/sys_vendor`).
const VM_VENDORS: [&str; 9] = [
    "QEMU",
    "Red Hat",
    "VMware, Inc.",
    "innotek GmbH",
    "Xen",
    "Amazon EC2",
    "Google",
    "Parallels",
    "Cloud Hypervisor",
];

/// DMI product names of virtual machines whose vendor is a general one (Hyper-V's is
/// `Microsoft Corporation`, KVM guests of some builds say `KVM`).
const VM_PRODUCTS: [&str; 3] = ["Virtual Machine", "KVM", "VirtualBox"];

impl Platform {
    /// Decides from `/proc/cpuinfo` (the `hypervisor` flag, set when CPUID says a hypervisor
    /// runs us) and the DMI `sys_vendor` and `product_name` (empty when unreadable).
    pub fn detect(cpuinfo: &str, sys_vendor: &str, product_name: &str) -> Self {
        let (vendor, product) = (sys_vendor.trim(), product_name.trim());
        let hypervisor_flag = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == "hypervisor"));
        let dmi_says_vm = VM_VENDORS.iter().any(|v| vendor.starts_with(v))
            || VM_PRODUCTS.iter().any(|p| product.contains(p));
        if hypervisor_flag || dmi_says_vm {
            let name = [vendor, product]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            return Platform::VirtualMachine {
                product: (!name.is_empty()).then_some(name),
            };
        }
        Platform::BareMetal {
            cpu: CpuVendor::from_cpuinfo(cpuinfo),
        }
    }

    /// True inside a virtual machine.
    pub fn is_virtual(&self) -> bool {
        matches!(self, Platform::VirtualMachine { .. })
    }
}

/// How to turn the IOMMU on, for the platform found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuAdvice {
    /// Where the IOMMU comes from.
    pub platform: Platform,
    /// Kernel parameters that switch it off, as written on the command line: remove them.
    pub remove_params: Vec<String>,
}

impl fmt::Display for IommuAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.remove_params.is_empty() {
            write!(
                f,
                "remove {} from the kernel command line; ",
                self.remove_params.join(" ")
            )?;
        }
        // `iommu=pt` (identity-map host DMA) only speeds up host drivers; VFIO needs none of it,
        // so it is never part of the advice.
        match &self.platform {
            Platform::VirtualMachine { product } => write!(
                f,
                "this is a virtual machine{}: its IOMMU comes from the hypervisor, not from \
                 firmware. Give the VM a virtual IOMMU (QEMU: `-machine q35,kernel-irqchip=split \
                 -device intel-iommu,intremap=on,caching-mode=on` and `intel_iommu=on` on this \
                 kernel's command line, or `-device virtio-iommu-pci`; cloud-hypervisor: \
                 `--platform iommu_segments=0` with `iommu=on` on the device; other hypervisors: \
                 their virtual IOMMU setting), and restart the VM",
                product
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            ),
            Platform::BareMetal { cpu } => f.write_str(match cpu {
                CpuVendor::Intel => {
                    "enable VT-d in the firmware setup and add `intel_iommu=on` to the kernel \
                     command line, then reboot"
                }
                CpuVendor::Amd => {
                    "enable the IOMMU (AMD-Vi) in the firmware setup; the kernel turns it on by \
                     default (`amd_iommu=on` is often suggested but the kernel does not need it), \
                     then reboot"
                }
                CpuVendor::Unknown => {
                    "enable the IOMMU in the firmware setup (VT-d on Intel, AMD-Vi on AMD) and, \
                     on Intel, add `intel_iommu=on` to the kernel command line, then reboot"
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "vendor_id\t: GenuineIntel\nflags\t\t: fpu vme sse2\n";
    const INTEL_VM: &str = "vendor_id\t: GenuineIntel\nflags\t\t: fpu vme sse2 hypervisor\n";

    #[test]
    fn virtual_machines_are_told_apart() {
        assert_eq!(
            Platform::detect(INTEL, "Dell Inc.", "PowerEdge R650"),
            Platform::BareMetal {
                cpu: CpuVendor::Intel
            }
        );
        assert!(Platform::detect(INTEL_VM, "", "").is_virtual());
        assert_eq!(
            Platform::detect(INTEL, "QEMU\n", "Standard PC (Q35 + ICH9, 2009)\n"),
            Platform::VirtualMachine {
                product: Some("QEMU Standard PC (Q35 + ICH9, 2009)".into())
            }
        );
        assert!(Platform::detect(INTEL, "Microsoft Corporation", "Virtual Machine").is_virtual());
    }

    #[test]
    fn advice_fits_the_platform_and_never_asks_for_iommu_pt() {
        let vm = IommuAdvice {
            platform: Platform::detect(INTEL_VM, "QEMU", "Standard PC (i440FX + PIIX, 1996)"),
            remove_params: vec![],
        }
        .to_string();
        assert!(vm.contains("virtual IOMMU"), "{vm}");
        assert!(
            vm.contains("intel-iommu") && vm.contains("virtio-iommu"),
            "{vm}"
        );
        assert!(!vm.contains("firmware setup"), "{vm}");
        let metal = IommuAdvice {
            platform: Platform::BareMetal {
                cpu: CpuVendor::Amd,
            },
            remove_params: vec!["amd_iommu=off".into()],
        }
        .to_string();
        assert!(metal.starts_with("remove amd_iommu=off"), "{metal}");
        assert!(metal.contains("AMD-Vi"), "{metal}");
        for cpu in [CpuVendor::Intel, CpuVendor::Amd, CpuVendor::Unknown] {
            let text = IommuAdvice {
                platform: Platform::BareMetal { cpu },
                remove_params: vec![],
            }
            .to_string();
            assert!(!text.contains("iommu=pt"), "{text}");
        }
    }

    #[test]
    fn neutral_rendering_names_no_tool() {
        let a: PciAddress = "01:00.0".parse().unwrap();
        assert_eq!(
            Fix::bind(a, false).to_string(),
            "bind 0000:01:00.0 to vfio-pci"
        );
        assert!(
            Fix::bind(a, true)
                .to_string()
                .starts_with("`modprobe vfio-pci`")
        );
    }
}
