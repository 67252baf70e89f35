//! `refvmm demo` (placeholder until its issue lands).

use clap::Args;

use crate::CmdResult;

/// Options of `refvmm demo`.
#[derive(Args)]
pub struct DemoArgs {}

/// Runs `refvmm demo`.
pub fn run(_args: DemoArgs) -> CmdResult {
    Err("refvmm demo is not implemented yet".into())
}
