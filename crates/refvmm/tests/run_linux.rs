//! `refvmm run --kernel`: the Linux machine's set-up and how a run ends, with stand-in kernels
//! (this host's KVM interprets ring-0 code, so a real Linux cannot boot here in test time; the
//! test bed boots one, tests/testbed/l3linux). A stand-in is a tiny ELF "vmlinux" whose 64-bit
//! entry checks what the boot protocol promises and then powers off or resets the machine the
//! way Linux does; the bad-input cases use files that are not kernels or do not fit.

mod common;

use std::path::PathBuf;

use common::refvmm_run;

/// Where the stand-ins load and start: Linux's own `LOAD_PHYSICAL_ADDR`.
const LOAD_ADDR: u64 = 0x100_0000;

/// A file in the test target's tmp dir, named after the test.
fn tmp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// An x86-64 ELF executable with one `PT_LOAD` of `code` at [`LOAD_ADDR`], entry at its start.
fn tiny_vmlinux(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"); // 64-bit, little endian
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]); // no sections
    let offset = (EHDR + PHDR) as u64;
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&offset.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// `out %al, %dx` of `value` to `port`, then `hlt`.
fn out_then_hlt(port: u16, value: u8) -> Vec<u8> {
    let mut c = vec![0x66, 0xba];
    c.extend_from_slice(&port.to_le_bytes()); // mov $port, %dx
    c.extend_from_slice(&[0xb0, value, 0xee, 0xf4]); // mov $value, %al; out %al, %dx; hlt
    c
}

/// Checks RSI = the zero page at 0x7000 holding "HdrS" at 0x202, the RSDP at the address the
/// zero page names, and a 64-bit code segment; powers off (ACPI S5) if all hold, else resets.
fn boot_protocol_checker() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(&[0x48, 0x81, 0xfe, 0x00, 0x70, 0x00, 0x00]); // cmp $0x7000, %rsi
    c.extend_from_slice(&[0x75, 0]); // jne fail
    let jne1 = c.len() - 1;
    c.extend_from_slice(&[0x81, 0xbe, 0x02, 0x02, 0, 0]); // cmpl $"HdrS", 0x202(%rsi)
    c.extend_from_slice(b"HdrS");
    c.extend_from_slice(&[0x75, 0]);
    let jne2 = c.len() - 1;
    c.extend_from_slice(&[0x48, 0x8b, 0x46, 0x70]); // mov 0x70(%rsi), %rax (acpi_rsdp_addr)
    c.extend_from_slice(&[0x48, 0xbb]); // movabs $"RSD PTR ", %rbx
    c.extend_from_slice(b"RSD PTR ");
    c.extend_from_slice(&[0x48, 0x39, 0x18]); // cmp %rbx, (%rax)
    c.extend_from_slice(&[0x75, 0]);
    let jne3 = c.len() - 1;
    c.extend(out_then_hlt(0x600, 0x34)); // SLP_TYP=5 | SLP_EN
    let fail = c.len();
    c.extend(out_then_hlt(0x602, 1)); // the reset register
    for at in [jne1, jne2, jne3] {
        c[at] = (fail - (at + 1)) as u8;
    }
    c
}

/// What Linux does to the legacy ports before its drivers run, checked: writes the warm-reset
/// shutdown byte to CMOS 0x0F (its index with the NMI-disable bit set, as firmware writes it), reads it
/// back, reads register D (0x80), probes the i8237 page register 0x87 and both Super I/O ID ports
/// (0xff: absent); powers off if every answer is right, else resets.
fn legacy_port_prober() -> Vec<u8> {
    let mut c = Vec::new();
    let mut fails = Vec::new();
    let mut expect = |c: &mut Vec<u8>, value: u8| {
        c.extend_from_slice(&[0x3c, value, 0x75, 0]); // cmp $value, %al; jne fail
        fails.push(c.len() - 1);
    };
    c.extend_from_slice(&[0xb0, 0x8f, 0xe6, 0x70]); // mov $0x8f, %al; out %al, $0x70
    c.extend_from_slice(&[0xb0, 0x0a, 0xe6, 0x71]); // mov $0x0a, %al; out %al, $0x71
    c.extend_from_slice(&[0xb0, 0x0f, 0xe6, 0x70, 0xe4, 0x71]); // index 0x0f; in $0x71, %al
    expect(&mut c, 0x0a);
    c.extend_from_slice(&[0xb0, 0x0d, 0xe6, 0x70, 0xe4, 0x71]); // register D
    expect(&mut c, 0x80);
    for port in [0x87, 0x2f, 0x4f] {
        c.extend_from_slice(&[0xe4, port]); // in $port, %al
        expect(&mut c, 0xff);
    }
    c.extend(out_then_hlt(0x600, 0x34)); // SLP_TYP=5 | SLP_EN
    let fail = c.len();
    c.extend(out_then_hlt(0x602, 1)); // the reset register
    for at in fails {
        c[at] = (fail - (at + 1)) as u8;
    }
    c
}

fn run_kernel(name: &str, code: &[u8], extra: &[&str]) -> common::Run {
    let kernel = tmp_file(name, &tiny_vmlinux(code));
    let mut args = vec!["--kernel", kernel.to_str().unwrap(), "--memory", "64M"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--timeout", "30"]);
    refvmm_run(&args)
}

#[test]
fn the_entry_gets_the_zero_page_and_acpi_and_poweroff_ends_the_run_with_0() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let initramfs = tmp_file("initramfs-poweroff", &[0x5a; 10000]);
    let r = run_kernel(
        "vmlinux-checker",
        &boot_protocol_checker(),
        &[
            "--cpus",
            "3",
            "--initramfs",
            initramfs.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 panic=-1",
            "--show-counters",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    r.stderr_has("the guest powered off (ACPI S5)");
}

#[test]
fn reset_register_8042_and_triple_fault_end_the_run_with_123() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    for (name, code, says) in [
        (
            "vmlinux-acpi-reset",
            out_then_hlt(0x602, 1),
            "the ACPI reset register",
        ),
        (
            "vmlinux-8042-reset",
            out_then_hlt(0x64, 0xfe),
            "the 8042 reset line",
        ),
        // ud2 with no IDT entry present: #UD, #NP, #DF, shutdown (Linux's BOOT_TRIPLE).
        (
            "vmlinux-triple-fault",
            vec![0x0f, 0x0b],
            "a triple fault on vCPU 0",
        ),
    ] {
        let r = run_kernel(name, &code, &["--cpus", "2"]);
        assert_eq!(r.code, 123, "{name}: {}", r.all());
        r.stderr_has(says);
    }
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused_with_what_to_give() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let script = tmp_file("not-a-kernel", b"#!/bin/sh\necho hello\n");
    let r = refvmm_run(&["--kernel", script.to_str().unwrap()]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has("is neither a bzImage");
    r.stderr_has("not-a-kernel");
    let r = refvmm_run(&["--kernel", "/nonexistent/bzImage"]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has("cannot read the kernel /nonexistent/bzImage");
}

/// A bzImage setup header (boot protocol 2.15, 64-bit, relocatable to 16 MiB) that asks for
/// `init_size` bytes, followed by a 512-byte protected-mode part.
fn fake_bzimage(init_size: u32) -> Vec<u8> {
    let mut f = vec![0u8; 1024 + 512];
    f[0x1f1] = 1; // setup_sects: the setup is 2 sectors
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    f[0x211] = 1; // LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x234] = 1; // relocatable_kernel
    f[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    f
}

#[test]
fn a_kernel_or_initramfs_that_does_not_fit_asks_for_more_memory() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // Decompressing needs 16 MiB + 128 MiB, the VM has 64 MiB.
    let big = tmp_file("bzimage-128m", &fake_bzimage(128 << 20));
    let r = refvmm_run(&["--kernel", big.to_str().unwrap(), "--memory", "64M"]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has("needs guest RAM up to 0x9000000 (144 MiB)");
    r.stderr_has("raise --memory");

    // The kernel fits, a 100 MiB initramfs (sparse) does not.
    let small = tmp_file("bzimage-16m", &fake_bzimage(16 << 20));
    let initramfs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("initramfs-100m");
    std::fs::File::create(&initramfs)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let r = refvmm_run(&[
        "--kernel",
        small.to_str().unwrap(),
        "--initramfs",
        initramfs.to_str().unwrap(),
        "--memory",
        "64M",
    ]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has("--initramfs");
    r.stderr_has("is 104857600 bytes, but only");
    r.stderr_has("raise --memory");

    // A command line longer than the kernel's cmdline_size.
    let long = "x".repeat(2048);
    let r = refvmm_run(&["--kernel", small.to_str().unwrap(), "--cmdline", &long]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has("--cmdline is 2048 bytes; this kernel takes at most 2047 bytes");
}

#[test]
fn vcpu_counts_outside_what_kvm_allows_are_refused() {
    let r = refvmm_run(&["--kernel", "/nonexistent", "--cpus", "0"]);
    assert_eq!(r.code, 2, "{}", r.all());
    r.stderr_has("at least 1");
    let r = refvmm_run(&["--initramfs", "/nonexistent"]);
    assert_eq!(r.code, 2, "{}", r.all());
    r.stderr_has("--kernel");
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let kernel = tmp_file("vmlinux-cpus", &tiny_vmlinux(&out_then_hlt(0x600, 0x34)));
    let r = refvmm_run(&["--kernel", kernel.to_str().unwrap(), "--cpus", "100000"]);
    assert_eq!(r.code, 125, "{}", r.all());
    r.stderr_has("--cpus 100000: this host's KVM allows at most");
    r.stderr_has("KVM_CAP_MAX_VCPUS");
}

#[test]
fn a_bare_metal_guest_runs_with_extra_vcpus_that_stop_with_it() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // The built-in guest runs on vCPU 0; vCPUs 1-3 wait for a SIPI and are stopped when it ends.
    let r = refvmm_run(&["--device", "test", "--cpus", "4", "--timeout", "30"]);
    assert_eq!(r.code, 0, "{}", r.all());
    r.stdout_has("00:01.0");
}

#[test]
fn sigterm_stops_the_guest_and_says_so() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    // A kernel that spins (`jmp .`), on 2 vCPUs, with console input from a pipe.
    let kernel = tmp_file("vmlinux-spin", &tiny_vmlinux(&[0xeb, 0xfe]));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_refvmm"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            "2",
        ])
        .args(["--timeout", "30"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        stderr.contains("got signal 15; the guest was stopped"),
        "{stderr}"
    );
}

#[test]
fn legacy_ports_linux_probes_are_answered_and_named_not_warned_about() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let r = run_kernel(
        "vmlinux-legacy",
        &legacy_port_prober(),
        &["--show-counters"],
    );
    assert_eq!(r.code, 0, "the prober got a wrong answer: {}", r.all());
    assert_eq!(r.range_counts("cmos-rtc"), (2, 4), "{}", r.all());
    assert_eq!(
        r.range_counts("absent: i8237 DMA page (reads 0xff, no legacy DMA)"),
        (1, 0)
    );
    r.range("absent: Super I/O config at 0x2e (reads 0xff, no Super I/O chip)");
    r.range("absent: Super I/O config at 0x4e (reads 0xff, no Super I/O chip)");
    r.stdout_has("bus unhandled-pio=0 ");
    assert!(!r.stderr.contains("unhandled PIO"), "{}", r.all());
}
