//! Shared by the CLI tests: running `refvmm` and reading what it printed, and, for the `run_*`
//! tests, building the bare-metal test guests once per test binary.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Builds `tests/guests` (its own workspace, so no lock on ours) into this test target's tmp dir
/// once per test binary; returns the directory holding `pci_probe.elf` and `nvme_e2e.elf`.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = tmp.join("guests");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/guests/build.sh");
        let status = Command::new(&script)
            .arg(&out)
            .env("GUESTS_TARGET_DIR", tmp.join("guests-target"))
            .output()
            .expect("run tests/guests/build.sh");
        assert!(
            status.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&status.stderr)
        );
        out
    })
}

/// What a `refvmm` command did.
pub struct Run {
    /// Exit status.
    pub code: i32,
    /// Guest serial output and the reports.
    pub stdout: String,
    /// refvmm's own messages.
    pub stderr: String,
}

impl Run {
    /// True when refvmm exited with status 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// Both streams, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit status {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The `GUEST: STEP <name> ...` line.
    pub fn step(&self, name: &str) -> &str {
        let prefix = format!("GUEST: STEP {name} ");
        self.stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no STEP {name} line:\n{}", self.all()))
    }

    /// Asserts the step passed.
    pub fn passed(&self, name: &str) {
        let l = self.step(name);
        assert!(l.contains(" PASS "), "{l}\n{}", self.all());
    }

    /// The counters line of the trapped range named `name`.
    pub fn range(&self, name: &str) -> &str {
        let quoted = format!("\"{name}\"");
        self.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(['M', 'P']) && l.ends_with(&quoted))
            .unwrap_or_else(|| panic!("no trapped range {quoted}:\n{}", self.all()))
    }

    /// `key=N` on `line`.
    pub fn field(line: &str, key: &str) -> u64 {
        let k = format!("{key}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k}N on {line:?}"))
    }

    /// Asserts refvmm's stdout (guest output and reports) holds `needle`.
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) {
        assert!(
            self.stdout.contains(needle),
            "no {needle:?} on stdout:\n{}",
            self.all()
        );
    }

    /// Asserts stdout does not hold `needle`.
    #[track_caller]
    pub fn stdout_lacks(&self, needle: &str) {
        assert!(
            !self.stdout.contains(needle),
            "{needle:?} on stdout:\n{}",
            self.all()
        );
    }

    /// Asserts refvmm's own messages hold `needle`.
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) {
        assert!(
            self.stderr.contains(needle),
            "no {needle:?} on stderr:\n{}",
            self.all()
        );
    }

    /// Asserts the exit status.
    #[track_caller]
    pub fn exited_with(&self, code: i32) {
        assert_eq!(self.code, code, "{}", self.all());
    }

    /// Asserts the step's line says FAIL.
    #[track_caller]
    pub fn failed(&self, name: &str) {
        let l = self.step(name);
        assert!(l.contains(" FAIL "), "{l}\n{}", self.all());
    }

    /// `(reads, writes)` of the trapped range named `name`.
    pub fn range_counts(&self, name: &str) -> (u64, u64) {
        let l = self.range(name);
        (Self::field(l, "reads"), Self::field(l, "writes"))
    }

    /// Asserts that every MMIO exit of a `pci_probe` run came from a trapped range: the MSI-X
    /// table range `msix` took the 4 reads and 5 writes of programming one entry (the guest README
    /// says so) and the register range `register` the one trapped store; so the store and load
    /// to the mapped page caused none, and no access missed every range.
    #[track_caller]
    pub fn only_trapped_ranges_exited(&self, msix: &str, register: &str) {
        assert_eq!(
            self.range_counts(register),
            (0, 1),
            "{register}:\n{}",
            self.all()
        );
        assert_eq!(self.range_counts(msix), (4, 5), "{msix}:\n{}", self.all());
        assert_eq!(self.exits("mmio-write"), 5 + 1, "{}", self.all());
        assert_eq!(self.exits("mmio-read"), 4, "{}", self.all());
        self.stdout_has("unhandled-mmio=0");
    }

    /// The `slot N ...` lines of `--show-counters` (memory slots: RAM and mapped BAR pages).
    pub fn slots(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("  slot "))
            .collect()
    }

    /// The `exit <kind> N` count (0 when absent).
    pub fn exits(&self, kind: &str) -> u64 {
        self.stdout
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("exit") && w.next() == Some(kind))
                    .then(|| w.next().unwrap().parse().unwrap())
            })
            .unwrap_or(0)
    }
}

/// Runs `refvmm` with `args` (its subcommand first), `stdin` as its standard input (none: an
/// empty one), once `setup` has set the command up further (working directory, environment).
pub fn refvmm(args: &[&str], stdin: Option<&str>, setup: impl FnOnce(&mut Command)) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_refvmm"));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    setup(&mut cmd);
    let mut child = cmd.spawn().expect("run refvmm");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("refvmm's standard input");
        pipe.write_all(text.as_bytes())
            .expect("write refvmm's standard input");
    }
    let out = child.wait_with_output().expect("wait for refvmm");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `refvmm run` with `args`.
pub fn refvmm_run(args: &[&str]) -> Run {
    refvmm(&[&["run"], args].concat(), None, |_| {})
}

/// Runs the `pci_probe` guest with `--device device`, then `extra`, under a 30 s limit.
pub fn probe(device: &str, extra: &[&str]) -> Run {
    let image = guest("pci_probe");
    let mut args = vec!["--guest", image.as_str(), "--device", device];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--timeout", "30"]);
    refvmm_run(&args)
}

/// The path of a built guest image.
pub fn guest(name: &str) -> String {
    guests()
        .join(format!("{name}.elf"))
        .to_string_lossy()
        .into_owned()
}
