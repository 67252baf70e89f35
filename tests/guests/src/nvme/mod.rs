//! A small NVMe driver (NVM Express Base Specification 1.4): controller registers, commands and
//! completions, queues in guest RAM, and the controller bring-up with interrupt accounting.
//!
//! It keeps one command in flight per queue, and reports for every completion whether its MSI-X
//! interrupt arrived or the driver found it by polling (the interrupt path is what the test bed
//! asserts).

mod cmd;
mod controller;
mod error;
mod identify;
mod queue;
mod regs;

#[cfg(test)]
mod fake;

pub use cmd::{Completion, Sqe, StatusField, opcode};
pub use controller::{Controller, Delivery, Done, ShutdownDone, Stats, Timeouts};
pub use error::NvmeError;
pub use identify::{IdentifyController, IdentifyNamespace, ascii_field};
pub use queue::{CompletionQueue, SubmissionQueue};
pub use regs::{Cap, cc, csts, doorbell_offset, reg};
