//! Step-by-step verdicts on the serial port, in a fixed format the test scripts parse.
//!
//! ```text
//! GUEST: STEP <name> PASS|FAIL|SKIP (t=<ms>ms) <detail>
//! GUEST: NOTE <text>
//! GUEST: RESULT PASS|FAIL program=<name> pass=<n> fail=<n> skip=<n> t=<ms>ms
//! ```
//! Every marker starts a line. `t` is milliseconds since the guest started (local APIC timer
//! ticks; `t=?` when the timer does not run). A run passes when no step failed and at least one
//! passed.

use core::fmt;

use crate::exit::Status;
use crate::println;
use crate::time;

/// The verdict of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The step did what it should.
    Pass,
    /// It did not.
    Fail,
    /// It could not run (a missing feature, an option that turned it off).
    Skip,
}

impl Verdict {
    /// The word printed for it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// Counts verdicts and prints them.
#[derive(Debug)]
pub struct Report {
    program: &'static str,
    pass: u32,
    fail: u32,
    skip: u32,
}

/// Prints the time stamp of a marker line.
pub struct Stamp;

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match time::now_ms() {
            Some(ms) => write!(f, "t={ms}ms"),
            None => f.write_str("t=?"),
        }
    }
}

impl Report {
    /// A report for `program` with no steps yet.
    pub const fn new(program: &'static str) -> Self {
        Report {
            program,
            pass: 0,
            fail: 0,
            skip: 0,
        }
    }

    /// Records and prints one step.
    pub fn step(&mut self, name: &str, verdict: Verdict, detail: fmt::Arguments<'_>) {
        match verdict {
            Verdict::Pass => self.pass += 1,
            Verdict::Fail => self.fail += 1,
            Verdict::Skip => self.skip += 1,
        }
        println!("GUEST: STEP {name} {} ({Stamp}) {detail}", verdict.as_str());
    }

    /// A passing step.
    pub fn pass(&mut self, name: &str, detail: fmt::Arguments<'_>) {
        self.step(name, Verdict::Pass, detail);
    }

    /// A failing step.
    pub fn fail(&mut self, name: &str, detail: fmt::Arguments<'_>) {
        self.step(name, Verdict::Fail, detail);
    }

    /// A skipped step.
    pub fn skip(&mut self, name: &str, detail: fmt::Arguments<'_>) {
        self.step(name, Verdict::Skip, detail);
    }

    /// PASS if `ok`, else FAIL; returns `ok`.
    pub fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments<'_>) -> bool {
        self.step(name, if ok { Verdict::Pass } else { Verdict::Fail }, detail);
        ok
    }

    /// How many steps failed.
    pub fn failed(&self) -> u32 {
        self.fail
    }

    /// The final status: pass only if nothing failed and something passed.
    pub fn status(&self) -> Status {
        if self.fail == 0 && self.pass > 0 {
            Status::Pass
        } else {
            Status::Fail
        }
    }

    /// Prints the RESULT line and returns the status.
    pub fn finish(&self) -> Status {
        let status = self.status();
        println!(
            "GUEST: RESULT {} program={} pass={} fail={} skip={} {Stamp}",
            if status == Status::Pass {
                "PASS"
            } else {
                "FAIL"
            },
            self.program,
            self.pass,
            self.fail,
            self.skip
        );
        status
    }
}

/// Prints a `GUEST: NOTE` line.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => { $crate::println!("GUEST: NOTE {}", format_args!($($arg)*)) };
}
