//! `refvmm bind`, `unbind` and `check`: host-side device preparation (placeholder until its issue lands).

use clap::Args;

use crate::CmdResult;

/// Options of `refvmm bind`.
#[derive(Args)]
pub struct BindArgs {}

/// Options of `refvmm unbind`.
#[derive(Args)]
pub struct UnbindArgs {}

/// Options of `refvmm check`.
#[derive(Args)]
pub struct CheckArgs {}

/// Runs `refvmm bind`.
pub fn bind(_args: BindArgs) -> CmdResult {
    Err("refvmm bind is not implemented yet".into())
}

/// Runs `refvmm unbind`.
pub fn unbind(_args: UnbindArgs) -> CmdResult {
    Err("refvmm unbind is not implemented yet".into())
}

/// Runs `refvmm check`.
pub fn check(_args: CheckArgs) -> CmdResult {
    Err("refvmm check is not implemented yet".into())
}
