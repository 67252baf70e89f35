//! The `passthrough_device` fuzz target's operations and invariants (tests/support/guest_ops.rs)
//! over random inputs, on stable, in every `cargo test`: two devices on one KVM-free map, a
//! hostile guest, the invariants after every step. The fuzz target runs the same for longer.

use proptest::prelude::*;

#[path = "support/guest_ops.rs"]
mod guest_ops;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn invariants_hold_after_every_guest_step(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        guest_ops::run(&data);
    }
}
