#![no_main]
//! Fuzzes the MSI-X table emulation with guest access sequences (any size, any offset), Message
//! Control writes, device interrupts and resets. After every step a model that only follows the
//! emitted events must agree with the table: every unmasked vector routed to what the guest
//! programmed, pending messages delivered exactly once, bad accesses changing nothing.

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/trap-map/tests/support/msix_model.rs"]
mod msix_model;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let entries = u16::from_le_bytes(*head) % 2050;
    let Ok(mut table) = trap_map::MsixTable::new(entries) else {
        assert!(entries == 0 || entries > 2048);
        return;
    };
    let mut model = msix_model::Model::new(entries);
    for op in msix_model::ops_from_bytes(rest) {
        if let Err(e) = model.apply(&mut table, &op) {
            panic!("after {op:?}: {e}");
        }
    }
});
