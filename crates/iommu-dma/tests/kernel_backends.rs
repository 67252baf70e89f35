//! The VFIO type1 and iommufd backends against the running kernel.
//!
//! Here (no IOMMU) `/dev/vfio/vfio` and `/dev/iommu` are missing: opening them must fail with
//! a message that names the path and says what to do. Where they exist (the nested test
//! bed), the same tests check the real paths as far as they go without a device.

use std::path::Path;
use std::sync::Arc;

use iommu_dma::iommufd::{open_iommufd, open_iommufd_at};
use iommu_dma::vfio_type1::open_container;
use iommu_dma::{
    DmaError, DmaMapper, DmaMapping, DmaPerm, IOMMUFD_PATH, IommufdMapper, VFIO_CONTAINER_PATH,
    VfioType1Mapper,
};

#[test]
fn vfio_container_missing_or_without_group() {
    match open_container(None) {
        Err(err) => {
            assert!(
                Path::new(VFIO_CONTAINER_PATH).exists() || matches!(err, DmaError::Open { .. }),
                "{err}"
            );
            let msg = err.to_string();
            if !Path::new(VFIO_CONTAINER_PATH).exists() {
                assert!(msg.contains("cannot open /dev/vfio/vfio"), "{msg}");
                assert!(msg.contains("No such file or directory"), "{msg}");
                assert!(msg.contains("modprobe vfio-pci"), "{msg}");
                assert!(msg.contains("intel_iommu=on"), "{msg}");
            }
            println!("as expected here: {msg}");
        }
        Ok(container) => {
            // A real container, but no group attached yet: no IOMMU type, so no limits.
            let Err(err) = VfioType1Mapper::new(container) else {
                panic!("limits of a container without a group");
            };
            let msg = err.to_string();
            assert!(msg.contains("VFIO_IOMMU_GET_INFO"), "{msg}");
            assert!(msg.contains("attach a group first"), "{msg}");
        }
    }
}

#[test]
fn iommufd_missing_or_usable() {
    match open_iommufd() {
        Err(err) => {
            assert!(
                !Path::new(IOMMUFD_PATH).exists(),
                "exists but failed: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("cannot open /dev/iommu"), "{msg}");
            assert!(msg.contains("CONFIG_IOMMUFD"), "{msg}");
            assert!(msg.contains("/dev/vfio/vfio"), "{msg}");
            println!("as expected here: {msg}");
        }
        Ok(fd) => {
            // A fresh IOAS accepts any IOVA; map and unmap one page for real.
            let mapper = IommufdMapper::new_ioas(fd).unwrap();
            assert!(!mapper.limits().valid_ranges().is_empty());
            let page = mapper.limits().page_size() as usize;
            let mem = vm_memory::MmapRegion::<()>::new(page).unwrap();
            let m = DmaMapping {
                iova: 0x10_0000,
                size: page as u64,
                host_addr: mem.as_ptr() as u64,
                perm: DmaPerm::ReadWrite,
            };
            // SAFETY: `mem` outlives the mapping, which is removed below.
            unsafe { mapper.map(m) }.unwrap();
            assert_eq!(mapper.mappings(), vec![m]);
            mapper.unmap(m.iova, m.size).unwrap();
            assert!(mapper.mappings().is_empty());
        }
    }
}

#[test]
fn iommufd_at_a_missing_path_names_it() {
    let path = std::env::temp_dir().join("iommu-dma-test-no-such-node/iommu");
    let Err(err) = open_iommufd_at(&path) else {
        panic!("{} opened", path.display());
    };
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn iommufd_ioctls_on_a_wrong_node_fail_with_errno_text() {
    // /dev/null opens fine but is no iommufd: IOAS allocation must fail cleanly.
    let Ok(fd) = open_iommufd_at(Path::new("/dev/null")) else {
        panic!("cannot open /dev/null");
    };
    let Err(err) = IommufdMapper::new_ioas(Arc::clone(&fd)) else {
        panic!("an IOAS on /dev/null");
    };
    assert!(matches!(err, DmaError::Setup { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("IOMMU_IOAS_ALLOC"), "{msg}");
    assert!(msg.contains("Inappropriate ioctl for device"), "{msg}");
    assert!(msg.contains("/dev/iommu"), "{msg}");
    assert!(!msg.contains("Error("), "{msg}");
}
