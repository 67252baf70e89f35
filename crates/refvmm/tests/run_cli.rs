//! `refvmm run` errors a user can hit: each names the problem and what to do, and exits 125.

mod common;

use common::{guest, refvmm_run};

#[test]
fn a_host_device_that_cannot_be_opened_says_why() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // No such device on this host (or no VFIO): vfio-pci's host layer explains.
    let r = refvmm_run(&["--guest", &guest("pci_probe"), "--device", "0000:7f:1f.7"]);
    assert_eq!(r.code, 125, "{}", r.all());
    assert!(r.stderr.contains("--device 0000:7f:1f.7"), "{}", r.all());
    assert!(r.stderr.starts_with("refvmm: error:"), "{}", r.all());
    r.stderr_has("\n  caused by: ");
}

#[test]
fn bad_arguments_are_refused_before_anything_runs() {
    let r = refvmm_run(&["--guest", "/nonexistent", "--device", "nvme0"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("`test`"), "{}", r.all());
    let r = refvmm_run(&["--guest", "/nonexistent", "--memory", "1M"]);
    assert!(r.stderr.contains("too small"), "{}", r.all());
    for large in ["18446744073709551615", "99999999999999999999", "999T"] {
        let r = refvmm_run(&["--memory", large]);
        assert_eq!(r.code, 2, "{}", r.all());
        assert!(r.stderr.contains("too large"), "{large}: {}", r.all());
    }
    // QEMU's and cloud-hypervisor's spellings get a pointer to refvmm's.
    let r = refvmm_run(&["--device", "vfio-pci,host=0000:01:00.0"]);
    assert!(
        r.stderr.contains("takes the host address alone"),
        "{}",
        r.all()
    );
    let r = refvmm_run(&["--memory", "size=1G"]);
    assert!(r.stderr.contains("give the size alone"), "{}", r.all());
    let r = refvmm_run(&["--iommu", "vfio"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("use auto, type1 or iommufd"),
        "{}",
        r.all()
    );
}

#[test]
fn an_image_that_is_not_an_elf_guest_is_refused_with_the_rules() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let not_elf = std::env::temp_dir().join(format!("refvmm-not-elf-{}", std::process::id()));
    // Longer than an ELF header, so the loader reads one and finds no magic number.
    std::fs::write(&not_elf, "#!/bin/sh\necho hello\n".repeat(8)).unwrap();
    let r = refvmm_run(&["--guest", not_elf.to_str().unwrap()]);
    std::fs::remove_file(&not_elf).ok();
    assert_eq!(r.code, 125, "{}", r.all());
    assert!(
        r.stderr
            .contains("as a 64-bit ELF guest (Invalid Elf magic number)"),
        "{}",
        r.all()
    );
    // linux-loader's message repeats its cause; refvmm says it once.
    assert_eq!(r.stderr.matches("magic number").count(), 1, "{}", r.all());
    // A directory is named as one, not as a bad ELF header.
    let r = refvmm_run(&["--guest", env!("CARGO_MANIFEST_DIR")]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has("caused by: Is a directory");
    // A real guest with a command line that is too long.
    let long = "x".repeat(1024);
    let r = refvmm_run(&["--guest", &guest("pci_probe"), "--cmdline", &long]);
    assert_eq!(r.code, 125, "{}", r.all());
    assert!(r.stderr.contains("at most 1023 bytes"), "{}", r.all());
}

#[test]
fn without_a_guest_the_built_in_one_lists_the_bus() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&["--device", "sim", "--device", "test", "--show-counters"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let listing = "  00:00.0 1b36:0008 class 060000\n  00:01.0 1b36:0010 class 010802\n  00:02.0 1b36:0005 class ff0000\n";
    assert!(r.stdout.contains(listing), "{}", r.all());
    // refvmm names them, as lspci would.
    r.stderr_has(
        "refvmm: the same bus by name (PCI ID database):\n  00:00.0 Host bridge: Red Hat, Inc. \
         QEMU PCIe Host bridge [1b36:0008] (host bridge)\n  00:01.0 Non-Volatile memory \
         controller: Red Hat, Inc. QEMU NVM Express Controller [1b36:0010] (sim:nvme)\n  00:02.0 \
         Unassigned class: Red Hat, Inc. QEMU PCI Test Device [1b36:0005] (test)\n",
    );
    // One conf1 read of the IDs per device number, one more of the class per function found.
    assert_eq!(r.range_counts("pci-conf1"), (32 + 3, 32 + 3), "{}", r.all());
}

#[test]
fn the_default_run_says_what_to_try_next() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    r.stderr_has(
        "the bus held only the host bridge; next, put a device on it: `refvmm run --device sim",
    );
    // With a device on the bus, no such hint.
    let r = refvmm_run(&["--device", "test"]);
    assert!(!r.stderr.contains("next, put a device"), "{}", r.all());
}

#[test]
fn nvme_e2e_on_the_simulated_device_says_there_is_no_controller() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = refvmm_run(&[
        "--guest",
        &guest("nvme_e2e"),
        "--device",
        "sim",
        "--timeout",
        "30",
    ]);
    assert_eq!(r.code, 1, "{}", r.all());
    r.stdout_has("no NVMe controller answers behind BAR0 (refvmm's `--device sim` simulates only the PCI side");
}

#[test]
fn memory_backing_errors_name_the_missing_piece() {
    // A page size x86-64 does not have: refused by the option parser.
    let r = refvmm_run(&["--memory-backing", "hugetlb:4M"]);
    assert_eq!(r.code, 2, "{}", r.all());
    r.stderr_has("\"4M\" is not one of 2M, 1G");
    let r = refvmm_run(&["--memory-backing", "huge"]);
    assert_eq!(r.code, 2, "{}", r.all());
    r.stderr_has("is not one of anon, thp, hugetlb, hugetlb:2M, hugetlb:1G");
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // The chosen backing reaches the VM, and the start-up line says what it cost.
    let r = refvmm_run(&["--memory-backing", "anon", "--prefault-threads", "2"]);
    assert_eq!(r.code, 0, "{}", r.all());
    r.stderr_has("start-up: guest RAM 64 MiB (anon, 2 prefault threads)");
    r.stderr_has("(DMA map 0.000 s), first instruction at");
    // The prefault threads ran alongside device set-up, and the guest started after them:
    // RAM ready no later than the first instruction.
    let line = r.stderr.lines().find(|l| l.contains("start-up:")).unwrap();
    let secs = |after: &str| -> f64 {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let ram = secs("prefault threads) ");
    let first = secs("first instruction at ");
    assert!(ram > 0.0 && ram <= first, "{line}");
    // 64 MiB is no whole number of 1 GiB pages (checked before the pool is looked at).
    let r = refvmm_run(&["--memory-backing", "hugetlb:1G", "--memory", "64M"]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has("not a whole number of 1 GiB huge pages");
    // 2 MiB pages: this host either has 32 free (the guest runs) or says how to reserve them.
    let pool = kvm_runloop::HugePagePool::read(
        std::path::Path::new(kvm_runloop::HUGEPAGES_SYSFS),
        kvm_runloop::HugePageSize::Size2MiB,
    );
    let r = refvmm_run(&["--memory-backing", "hugetlb:2M", "--memory", "64M"]);
    match pool {
        Ok(p) if p.available() >= 32 => assert_eq!(r.code, 0, "{}", r.all()),
        Ok(_) => {
            assert_eq!(r.code, 125, "{}", r.all());
            r.stderr_has("not enough free 2 MiB huge pages for guest RAM: 32 needed");
            r.stderr_has("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
        }
        Err(_) => r.stderr_has("this host has no 2 MiB huge pages"),
    }
}

#[test]
fn handed_in_fds_that_are_not_the_device_are_named() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // fd 0 is /dev/null, fd 1 the pipe the test reads: neither is a VFIO cdev nor an iommufd.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refvmm"))
        .args(["run", "--device", "0000:00:01.0,fd=0,iommufd-fd=1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("fd 0, handed in as the VFIO device cdev (/dev/vfio/devices/vfioN), is /dev/null (character device 1:3)"),
        "{stderr}"
    );
    // A number refvmm was not given at all.
    let r = refvmm_run(&["--device", "0000:00:01.0,fd=900,iommufd-fd=901"]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has(
        "fd 900, handed in as the VFIO device cdev (/dev/vfio/devices/vfioN), is not open",
    );
}
