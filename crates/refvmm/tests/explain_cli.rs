//! `refvmm explain` on the NVMe fixture and on a NIC whose MSI-X table and PBA sit in a BAR of
//! their own (golden outputs in tests/data/explain_*.txt; `UPDATE_GOLDEN=1` rewrites them), live
//! on a fake host tree, and on bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{Run, refvmm};
use vfio_pci::host::fake::{FakeDevice, FakeHost};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Runs `refvmm explain` from the crate directory, so the file names in the output are the
/// relative ones the golden files hold.
fn explain(args: &[&str]) -> Run {
    refvmm(&[&["explain"], args].concat(), None, |cmd| {
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("REFVMM_HOST_ROOT");
    })
}

fn golden(args: &[&str], file: &str) {
    let r = explain(args);
    assert!(r.ok(), "refvmm explain {args:?} failed:\n{}", r.stderr);
    let path = data(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &r.stdout).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        r.stdout, want,
        "{file} differs; UPDATE_GOLDEN=1 rewrites it"
    );
}

const NVME: &str = "tests/data/plan_qemu_nvme.lspci";
const NIC: &str = "tests/data/explain_intel_82574l.lspci";

#[test]
fn nvme_doorbell_by_offset() {
    golden(
        &[NVME, "bar0+0x1018", "--value", "8"],
        "explain_nvme_bar0_1018.txt",
    );
}

#[test]
fn nvme_doorbell_by_name_under_trap_all() {
    golden(
        &[NVME, "nvme:SQ3TDBL", "--policy", "trap-all"],
        "explain_nvme_sq3tdbl_trap_all.txt",
    );
}

#[test]
fn nvme_config_command_register() {
    golden(
        &[NVME, "COMMAND", "--value", "0x0503"],
        "explain_nvme_command.txt",
    );
}

#[test]
fn nvme_offset_past_the_bar() {
    let r = explain(&[NVME, "bar0+0x4000"]);
    assert!(r.ok(), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("offset 0x4000 is past the end of BAR 0 (16 KiB)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("[FAIL] offset 0x4000 is outside BAR 0 (16384 bytes, 16 KiB)"),
        "{}",
        r.stdout
    );
}

#[test]
fn nic_msix_table_in_its_own_bar() {
    golden(&[NIC, "msix:MSIX[2].CTRL"], "explain_nic_msix2_ctrl.txt");
}

#[test]
fn nic_pba_on_a_page_of_its_own() {
    golden(&[NIC, "bar3+0x2000"], "explain_nic_pba.txt");
}

#[test]
fn bad_registers_are_named() {
    let r = explain(&[NVME, "nvme:SQ3TDBLX"]);
    assert!(!r.ok());
    assert!(
        r.stderr.contains("`nvme:SQ3TDBLX` is not REGION+OFFSET")
            && r.stderr.contains("no register called `SQ3TDBLX`"),
        "{}",
        r.stderr
    );
    let r = explain(&[NIC, "nvme:SQ3TDBL"]);
    assert!(!r.ok());
    assert!(
        r.stderr
            .contains("the nvme decoder does not describe this device (8086:10d3, class 020000)"),
        "{}",
        r.stderr
    );
    let r = explain(&[NVME, "virtio:QUEUE_NOTIFY"]);
    assert!(
        r.stderr
            .contains("`virtio` is not a decoder (known: msix, nvme, config)"),
        "{}",
        r.stderr
    );
    let r = explain(&["no-such-file", "bar0+0"]);
    assert!(!r.ok());
    assert!(
        r.stderr
            .contains("`no-such-file` is neither an lspci file nor a PCI address"),
        "{}",
        r.stderr
    );
}

/// The NVMe fixture's 256 config bytes, as sysfs `config` would give them to root.
fn nvme_config() -> Vec<u8> {
    let text = std::fs::read_to_string(data("plan_qemu_nvme.lspci")).unwrap();
    let dev = pci_config::lspci::parse_devices(&text).unwrap().remove(0);
    dev.config_bytes().unwrap().to_vec()
}

/// A fake host with the NVMe at 01:00.0: config, resource, and a 16 KiB `resource0` whose CAP
/// says DSTRD=1 (8-byte stride) and whose MSI-X entry 3 is masked.
fn live_nvme(label: &str, config: &[u8]) -> FakeHost {
    let host = FakeHost::intel_with_iommu(label).unwrap();
    host.add_device(&FakeDevice::new("0000:01:00.0", 0x1b36, 0x0010, 0x010802).driver("nvme"))
        .unwrap();
    let dir: PathBuf = host.root().join("sys/bus/pci/devices/0000:01:00.0");
    std::fs::write(dir.join("config"), config).unwrap();
    let resource = "0x00000000febf0000 0x00000000febf3fff 0x0000000000140204\n".to_string()
        + &"0x0000000000000000 0x0000000000000000 0x0000000000000000\n".repeat(6);
    std::fs::write(dir.join("resource"), resource).unwrap();
    let mut bar0 = vec![0u8; 16 * 1024];
    let cap: u64 = (1 << 32) | 0x3ff; // DSTRD=1, MQES=1023
    bar0[..8].copy_from_slice(&cap.to_le_bytes());
    bar0[0x2000 + 3 * 16 + 12] = 1; // MSIX[3].CTRL: masked
    std::fs::write(dir.join("resource0"), bar0).unwrap();
    host
}

fn explain_live(host: &FakeHost, args: &[&str]) -> Run {
    let mut all: Vec<&str> = args.to_vec();
    let root = host.root().to_str().unwrap().to_string();
    all.extend(["--host-root", &root]);
    explain(&all)
}

#[test]
fn live_reads_cap_for_the_stride_and_the_vector_mask() {
    let host = live_nvme("explain-live", &nvme_config());
    let r = explain_live(&host, &["01:00.0", "nvme:SQ3TDBL"]);
    assert!(r.ok(), "{}", r.stderr);
    let out = &r.stdout;
    assert!(
        out.contains("Register bar0+0x1030 (4 bytes): SQ3TDBL"),
        "{out}"
    );
    assert!(
        out.contains("assumed: CAP.DSTRD=1 read from the device (stride 8 bytes)"),
        "{out}"
    );
    assert!(out.contains("From: live host device"), "{out}");
    assert!(
        out.contains("[FAIL] MSIX[3].CTRL at bar0+0x203c is masked on the device (live 0x1)"),
        "{out}"
    );
    assert!(
        out.contains("[ok] BAR 0 programmed on the host at 0xfebf0000"),
        "{out}"
    );
    // Read-only: nothing under the device changed.
    let dir = Path::new(&host.root()).join("sys/bus/pci/devices/0000:01:00.0");
    assert_eq!(std::fs::read(dir.join("config")).unwrap(), nvme_config());
}

#[test]
fn live_without_memory_decode_reads_no_bar() {
    let mut config = nvme_config();
    config[4] &= !0x2; // COMMAND: Mem-
    let host = live_nvme("explain-live-nodecode", &config);
    let r = explain_live(&host, &["0000:01:00.0", "bar0+0x1018"]);
    assert!(r.ok(), "{}", r.stderr);
    let out = &r.stdout;
    assert!(out.contains("SQ3TDBL"), "{out}");
    assert!(out.contains("CAP.DSTRD=0 assumed"), "{out}");
    assert!(
        out.contains("[FAIL] COMMAND Mem-: memory decode is off"),
        "{out}"
    );
    assert!(
        out.contains("note: memory decode is off: BAR registers are not read"),
        "{out}"
    );
}

#[test]
fn live_as_a_user_sees_64_bytes() {
    let host = live_nvme("explain-live-user", &nvme_config()[..64]);
    let r = explain_live(&host, &["01:00.0", "bar0+0x1018"]);
    assert!(r.ok(), "{}", r.stderr);
    assert!(
        r.stdout.contains("capabilities (PM, MSI-X) need root"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("[??] power state unknown"),
        "{}",
        r.stdout
    );
}

#[test]
fn live_unknown_device() {
    let host = FakeHost::intel_with_iommu("explain-live-none").unwrap();
    let r = explain_live(&host, &["02:00.0", "bar0+0"]);
    assert!(!r.ok());
    assert!(r.stderr.contains("no PCI device at"), "{}", r.stderr);
}

#[test]
fn lspci_without_hex_uses_its_msix_and_pm_lines() {
    // plan_intel_82574l.lspci has no `-xxx` dump: MSI-X comes from `Vector table:`/`PBA:`, the
    // power state from the PM capability's `Status: D0` line.
    let r = explain(&["tests/data/plan_intel_82574l.lspci", "msix:MSIX[2].CTRL"]);
    assert!(r.ok(), "{}", r.stderr);
    let out = &r.stdout;
    assert!(
        out.contains("Register bar3+0x2c (4 bytes): MSIX[2].CTRL"),
        "{out}"
    );
    assert!(out.contains("TRAPPED (MSI-X table (emulated))"), "{out}");
    assert!(
        out.contains("[ok] power state D0 (PM capability at 0xc8)"),
        "{out}"
    );
    assert!(
        out.contains("[ok] MSI-X enabled, function not masked (capability at 0xa0)"),
        "{out}"
    );
}
