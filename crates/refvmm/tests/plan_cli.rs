//! `refvmm plan` on realistic `lspci -vv` samples (tests/data/plan_*), and on bad input.

mod common;

use std::path::PathBuf;

use common::{Run, refvmm};

fn data(name: &str) -> String {
    let mut p = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    p.push("tests/data");
    p.push(name);
    p.to_string_lossy().into_owned()
}

fn plan(args: &[&str], stdin: Option<&str>) -> Run {
    refvmm(&[&["plan"], args].concat(), stdin, |_| {})
}

fn ok(args: &[&str]) -> String {
    let r = plan(args, None);
    assert!(r.ok(), "refvmm plan {args:?} failed:\n{}", r.stderr);
    r.stdout
}

fn fails(args: &[&str], stdin: Option<&str>, expect: &str) {
    let r = plan(args, stdin);
    assert!(!r.ok(), "refvmm plan {args:?} succeeded:\n{}", r.stdout);
    assert!(
        r.stderr.contains(expect),
        "stderr of {args:?} lacks {expect:?}:\n{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn qemu_nvme_maps_doorbells_and_traps_the_table_page() {
    let out = ok(&[&data("plan_qemu_nvme.lspci")]);
    for line in [
        "Device 0000:00:04.0: Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller [1b36:0010]\n",
        "every memory BAR is mmappable",
        "MSI-X: 65 vectors; guest sees the table in BAR0 at 0x2000, the PBA in BAR0 at 0x3000",
        "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n",
        "  00000000c0000000-00000000c0001fff (prio 0, ramd): 0000:00:04.0 BAR0 mmap +0x0\n",
        "  00000000c0002000-00000000c000240f (prio 0, i/o): 0000:00:04.0 BAR0 msix-table\n",
        "  00000000c0002410-00000000c0002fff (prio 0, i/o): 0000:00:04.0 BAR0 +0x2410 (shares a host page with MSI-X structures)\n",
        "  00000000c0003000-00000000c0003fff (prio 0, ramd): 0000:00:04.0 BAR0 mmap +0x3000\n",
        "BAR0 (mem64, 16 KiB): mapped 12 KiB in 2 ranges (3 pages of 4 KiB), trapped 4 KiB in 2 ranges",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let traps: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Trapped ranges:"))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(traps.len(), 2, "{out}");
    assert!(
        traps[0].starts_with("0    0x2000-0x240f") && traps[0].ends_with("MSI-X table (emulated)")
    );
    assert!(
        traps[1].ends_with("shares a host page with MSI-X structures"),
        "{out}"
    );
    assert!(!out.contains("FlatView #1"), "no I/O BARs: {out}");
}

#[test]
fn stdin_gives_the_same_plan_as_a_file() {
    let text = std::fs::read_to_string(data("plan_qemu_nvme.lspci")).unwrap();
    let file = ok(&[&data("plan_qemu_nvme.lspci")]);
    for args in [&["-"][..], &[][..]] {
        let r = plan(args, Some(&text));
        assert!(r.ok(), "{}", r.stderr);
        assert_eq!(r.stdout, file);
    }
}

#[test]
fn sixty_four_k_pages_trap_the_whole_16k_bar() {
    let out = ok(&[&data("plan_qemu_nvme.lspci"), "--page-size", "64K"]);
    assert!(out.contains("Host page size 64 KiB"), "{out}");
    assert!(!out.contains("ramd"), "nothing can be mapped: {out}");
    assert!(
        out.contains("(prio 0, i/o): 0000:00:04.0 BAR0 msix-pba\n"),
        "the PBA shares the page: {out}"
    );
    assert!(
        out.contains("mapped 0 B in 0 ranges (0 pages of 64 KiB), trapped 16 KiB"),
        "{out}"
    );
}

#[test]
fn intel_nic_msix_in_bar3() {
    let out = ok(&[&data("plan_intel_82574l.lspci"), "--at", "0=f7cc0000"]);
    for line in [
        "Device 0000:02:00.0: Ethernet controller: Intel Corporation 82574L Gigabit Network Connection [8086:10d3]\n",
        "  00000000f7cc0000-00000000f7cdffff (prio 0, ramd): 0000:02:00.0 BAR0 mmap +0x0\n",
        "(prio 0, ramd): 0000:02:00.0 BAR1 mmap +0x0\n",
        "FlatView #1\n AS \"I/O\", root: io\n Root memory region: io\n",
        "  000000000000c000-000000000000c01f (prio 0, i/o): 0000:02:00.0 BAR2 +0x0 (I/O port BAR)\n",
        "BAR3 msix-table\n",
        "Expansion ROM (256 KiB): not part of the plan",
        "BAR0 (mem32, 128 KiB): mapped 128 KiB in 1 range (32 pages of 4 KiB), trapped 0 B in 0 ranges",
        "BAR2 (I/O, 32 B): trapped 32 B in 1 range",
        // Table page trapped; the rest of BAR 3, PBA page included, mapped.
        "BAR3 (mem32, 16 KiB): mapped 12 KiB in 1 range (3 pages of 4 KiB), trapped 4 KiB in 2 ranges",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let bar3 = out
        .lines()
        .find(|l| l.contains("0000:02:00.0 BAR3 mmap +0x1000"))
        .expect("BAR 3 mapping");
    assert!(
        bar3.contains("1000-") && bar3.contains("3fff (prio 0, ramd)"),
        "{bar3}"
    );
}

#[test]
fn table_sharing_a_page_with_registers() {
    let out = ok(&[&data("plan_shared_page.lspci")]);
    assert!(
        out.contains(
            "(prio 0, i/o): 0000:03:00.0 BAR0 +0x3000 (shares a host page with MSI-X structures)\n"
        ),
        "{out}"
    );
    assert!(out.contains("BAR0 msix-table\n"), "{out}");
    assert!(out.contains("mapped 60 KiB in 2 ranges"), "{out}");

    // Relocation moves the structures to a new BAR and maps all of BAR 0.
    let out = ok(&[&data("plan_shared_page.lspci"), "--msix-relocation", "auto"]);
    assert!(
        out.contains("MSI-X relocated into a new mem64 BAR2"),
        "{out}"
    );
    assert!(
        out.contains("BAR0 (mem64 prefetchable, 64 KiB): mapped 64 KiB in 1 range"),
        "{out}"
    );
    assert!(
        out.contains("BAR2 +0x88 (added for MSI-X relocation, no device behind it)"),
        "{out}"
    );

    // Unless the host will not mmap the table page anyway.
    let out = ok(&[
        &data("plan_shared_page.lspci"),
        "--msix-relocation",
        "auto",
        "--no-msix-mappable",
    ]);
    assert!(out.contains("MSI-X relocation (auto): not done"), "{out}");
    assert!(
        out.contains("the host refuses to mmap MSI-X table pages"),
        "{out}"
    );
}

#[test]
fn policy_knobs_change_the_plan() {
    let out = ok(&[&data("plan_qemu_nvme.lspci"), "--policy", "trap-all"]);
    assert!(!out.contains("ramd"), "{out}");
    assert!(out.contains("trap-all policy"), "{out}");

    let out = ok(&[&data("plan_qemu_nvme.lspci"), "--policy", "trap-pba"]);
    assert!(
        out.contains("(prio 0, i/o): 0000:00:04.0 BAR0 msix-pba\n"),
        "{out}"
    );
    assert!(out.contains("MSI-X PBA (emulated)"), "{out}");

    let out = ok(&[&data("plan_qemu_nvme.lspci"), "--not-mmappable", "bar0"]);
    assert!(!out.contains("ramd"), "{out}");
    assert!(out.contains("host does not allow mmap"), "{out}");
    assert!(out.contains("memory BARs except 0 are mmappable"), "{out}");

    let out = ok(&[
        &data("plan_qemu_nvme.lspci"),
        "--msix-relocation",
        "bar2",
        "--at",
        "bar2=0xfe000000",
    ]);
    assert!(
        out.contains(
            "  00000000fe000000-00000000fe00040f (prio 0, i/o): 0000:00:04.0 BAR2 msix-table\n"
        ),
        "{out}"
    );
}

#[test]
fn picks_one_device_of_several() {
    let all = data("plan_three_devices.lspci");
    let out = ok(&[&all, "--device", "02:00.0"]);
    assert!(out.contains("Device 0000:02:00.0"), "{out}");
    let out = ok(&[&all, "--device", "0000:03:00.0"]);
    assert!(out.contains("Device 0000:03:00.0"), "{out}");
    fails(
        &[&all],
        None,
        "the input lists 3 devices (0000:00:04.0, 0000:02:00.0, 0000:03:00.0): pick one with --device BDF",
    );
}

#[test]
fn bad_input_is_explained() {
    fails(&[&data("plan_garbage.txt")], None, "no PCI device found");
    fails(&["-"], Some(""), "no PCI device found");
    fails(&[&data("plan_does_not_exist.lspci")], None, "cannot read");
    fails(
        &[&data("plan_three_devices.lspci"), "--device", "05:00.0"],
        None,
        "device 0000:05:00.0 is not in the lspci text; it lists: 0000:00:04.0",
    );
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--device", "zz"],
        None,
        "is not a PCI address",
    );
    fails(&[&data("plan_not_root.lspci")], None, "run lspci as root");
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--at", "0=12345"],
        None,
        "not aligned to its size 0x4000",
    );
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--at", "0"],
        None,
        "is not BAR=ADDR",
    );
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--at", "4=0xfe000000"],
        None,
        "has no BAR 4 (it has: 0)",
    );
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--not-mmappable", "5"],
        None,
        "has no BAR 5",
    );
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--page-size", "8K"],
        None,
        "use 4K, 16K or 64K",
    );
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--msix-relocation", "bar9"],
        None,
        "bar0 to bar5",
    );
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--msix-relocation", "bar1"],
        None,
        "cannot relocate MSI-X into BAR 1: it is the upper half of 64-bit BAR 0",
    );
}

#[test]
fn plain_lspci_output_is_refused() {
    // Plain `lspci` prints one line per device: no regions, no capabilities, nothing to plan.
    fails(
        &[&data("plan_plain_lspci.txt")],
        None,
        "the input has only its one-line summary, no regions or capabilities (plain `lspci` \
         output); run `sudo lspci -vv -s 00:04.0`",
    );
}

#[test]
fn a_device_without_bars_has_nothing_to_map() {
    let out = ok(&[&data("plan_host_bridge.lspci")]);
    assert!(
        out.contains("Nothing to map or trap: the device has no BARs"),
        "{out}"
    );
    assert!(!out.contains("FlatView"), "{out}");
    assert!(!out.contains("Summary:"), "{out}");
}

#[test]
fn a_device_listed_twice_is_flagged() {
    let one = std::fs::read_to_string(data("plan_qemu_nvme.lspci")).unwrap();
    let twice = format!("{one}\n{one}");
    let expect = "the input lists 0000:00:04.0 2 times (devices 1, 2 of the input";
    let r = plan(&[], Some(&twice));
    assert!(!r.ok() && r.stderr.contains(expect), "{}", r.stderr);
    let r = plan(&["--device", "00:04.0"], Some(&twice));
    assert!(!r.ok() && r.stderr.contains(expect), "{}", r.stderr);
}

#[test]
fn many_devices_are_listed_briefly() {
    let many: String = (0..20_000u32)
        .map(|i| {
            format!(
                "{:02x}:{:02x}.{} Non-Volatile memory controller: Red Hat, Inc. Device\n",
                (i >> 8) & 0xff,
                (i >> 3) & 0x1f,
                i & 7
            )
        })
        .collect();
    let r = plan(&[], Some(&many));
    assert!(!r.ok(), "{}", r.stdout);
    assert!(
        r.stderr.contains("the input lists 20000 devices (") && r.stderr.contains("and 19992 more"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.len() < 2000, "{} bytes of error", r.stderr.len());
    let r = plan(&["--device", "7f:00.0"], Some(&many));
    assert!(r.stderr.contains("and 19992 more"), "{}", r.stderr);
    assert!(r.stderr.len() < 2000, "{} bytes of error", r.stderr.len());
}

#[test]
fn an_msix_pba_outside_its_bar_suggests_the_option() {
    let text = std::fs::read_to_string(data("plan_qemu_nvme.lspci"))
        .unwrap()
        .replace("PBA: BAR=0 offset=00003000", "PBA: BAR=0 offset=00005000");
    let r = plan(&[], Some(&text));
    assert!(!r.ok(), "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "pass --msix-relocation barN with N a BAR the device does not use (it uses: 0)"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("MsixRelocation"), "{}", r.stderr);
    let r = plan(&["--msix-relocation", "bar2"], Some(&text));
    assert!(r.ok(), "{}", r.stderr);
}

#[test]
fn plan_takes_the_options_of_run() {
    // `--policy` as `refvmm run` takes it, several at once.
    let out = ok(&[
        &data("plan_qemu_nvme.lspci"),
        "--policy",
        "trap-all,trap-pba",
    ]);
    assert!(!out.contains("ramd"), "{out}");
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--policy", "trap-everything"],
        None,
        "the policies are default, trap-all and trap-pba",
    );
    fails(
        &[&data("plan_qemu_nvme.lspci"), "--trap-all"],
        None,
        "--trap-all",
    );
}

#[test]
fn numbers_only_input_gets_names_from_the_pci_id_database() {
    // `lspci -n` prints only numbers: `00:04.0 0108: 1b36:0010 (rev 02) (prog-if 02)`.
    let text = std::fs::read_to_string(data("plan_qemu_nvme.lspci")).unwrap().replacen(
        "00:04.0 Non-Volatile memory controller [0108]: Red Hat, Inc. QEMU NVM Express Controller [1b36:0010] (rev 02) (prog-if 02 [NVM Express])",
        "00:04.0 0108: 1b36:0010 (rev 02) (prog-if 02)",
        1,
    );
    let r = plan(&[], Some(&text));
    assert!(r.ok(), "{}", r.stderr);
    assert!(
        r.stdout.starts_with(
            "Device 0000:00:04.0: Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller [1b36:0010]\n"
        ),
        "{}",
        r.stdout
    );
}
