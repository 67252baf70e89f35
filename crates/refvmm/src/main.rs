//! `refvmm`: the thin reference VMM that shows the workspace crates working together.
//!
//! Each subcommand lives in its own module; this file only parses the command line,
//! dispatches, and prints errors with their causes.

#![deny(clippy::undocumented_unsafe_blocks)]

mod builtin_guest;
mod cmos;
mod console_input;
mod demo;
mod devices;
mod exit_port;
mod explain;
mod guest_loader;
mod handed_in;
mod host;
mod launch;
mod linux;
mod pci;
mod pci_names;
mod plan;
mod recipes;
mod report;
mod run;
mod serial;
mod size;
mod test_function;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The reference VMM for PCI passthrough on KVM.
#[derive(Parser)]
#[command(name = "refvmm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the one-instruction machine (`mov $7, %rax`) and show trap-and-emulate at work.
    Demo(demo::DemoArgs),
    /// Show a device's trap/map plan from its `lspci -vv` output (no hardware, no KVM).
    Plan(plan::PlanArgs),
    /// Move a host PCI device from its driver to `vfio-pci` (KVM) or `xen-pciback` (Xen).
    Bind(host::BindArgs),
    /// Give a device bound to `vfio-pci` or `pciback` back to the driver it had.
    Unbind(host::UnbindArgs),
    /// Say whether a host device can be passed through, and if not, why and what to do.
    Check(host::CheckArgs),
    /// Name a device register (bar0+0x1018 or nvme:SQ3TDBL), say how the plan treats it and
    /// what to check when a write to it does nothing.
    Explain(explain::ExplainArgs),
    /// As root: open devices' VFIO cdevs and /dev/iommu, raise RLIMIT_MEMLOCK, drop to an
    /// unprivileged user and exec a command (e.g. `refvmm run`) with the fds handed in.
    Launch(launch::LaunchArgs),
    /// Boot Linux (--kernel) or a bare-metal ELF guest with a PCI bus (conf1 + ECAM), COM1 and
    /// devices; report how it ended.
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` keeps SIGPIPE ignored: a console reader that goes away must not kill a VMM that
    // holds a device (COM1 drops the guest's output instead; see serial.rs).
    if !matches!(cli.command, Command::Run(_)) {
        restore_default_sigpipe();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match cli.command {
        // `run` exits with the guest's status byte (see run.rs), not just success/failure.
        Command::Run(args) => return run::main(args),
        Command::Demo(args) => demo::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Bind(args) => host::bind(args),
        Command::Unbind(args) => host::unbind(args),
        Command::Check(args) => host::check(args),
        Command::Explain(args) => explain::run(args),
        Command::Launch(args) => launch::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report_error(err.as_ref());
            ExitCode::FAILURE
        }
    }
}

/// Lets `refvmm plan ... | head` end quietly instead of panicking in `println!`.
///
/// Rust ignores SIGPIPE, so a closed pipe turns every later `println!` into a panic; the
/// default action ends the process the way every other command-line tool does.
fn restore_default_sigpipe() {
    // SAFETY: called from main before any thread exists (only the command line has been parsed);
    // SIG_DFL is a valid disposition for SIGPIPE and no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Prints an error and every cause under it, one per line, so the user sees the whole story.
fn report_error(err: &dyn std::error::Error) {
    eprintln!("refvmm: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}

/// What every subcommand returns: a boxed error whose chain `report_error` prints.
pub type CmdResult = Result<(), Box<dyn std::error::Error>>;
