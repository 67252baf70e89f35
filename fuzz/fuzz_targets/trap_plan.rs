#![no_main]
//! Fuzzes the trap-map planner: any input is either refused with an error or planned, and every
//! plan keeps the invariants of the property tests (segments tile each BAR, mappings are whole
//! pages the host allows and never touch the MSI-X table's pages, relocation lands on no other
//! BAR, the plan renders in the mtree format).

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/trap-map/tests/support/fuzz_input.rs"]
mod fuzz_input;
#[path = "../../crates/trap-map/tests/support/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    let (layout, page, policy) = fuzz_input::plan_input(data);
    match trap_map::DevicePlan::new(&layout, page, policy) {
        Ok(plan) => {
            if let Err(e) = invariants::check_plan(&layout, page, policy, &plan) {
                panic!(
                    "invariant broken: {e}\nlayout: {layout:#?}\npolicy: {policy:?}\nplan: {plan:#?}"
                );
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
