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
    assert!(r.stderr.contains("at least 4M"), "{}", r.all());
}

#[test]
fn an_image_that_is_not_an_elf_guest_is_refused_with_the_rules() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let not_elf = std::env::temp_dir().join(format!("refvmm-not-elf-{}", std::process::id()));
    std::fs::write(&not_elf, b"#!/bin/sh\necho hello\n").unwrap();
    let r = refvmm_run(&["--guest", not_elf.to_str().unwrap()]);
    std::fs::remove_file(&not_elf).ok();
    assert_eq!(r.code, 125, "{}", r.all());
    assert!(r.stderr.contains("as a 64-bit ELF guest"), "{}", r.all());
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
    // One conf1 read of the IDs per device number, one more of the class per function found.
    assert_eq!(r.range_counts("pci-conf1"), (32 + 3, 32 + 3), "{}", r.all());
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
