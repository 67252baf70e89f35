//! `refvmm plan` (placeholder until its issue lands).

use clap::Args;

use crate::CmdResult;

/// Options of `refvmm plan`.
#[derive(Args)]
pub struct PlanArgs {}

/// Runs `refvmm plan`.
pub fn run(_args: PlanArgs) -> CmdResult {
    Err("refvmm plan is not implemented yet".into())
}
