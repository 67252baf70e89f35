//! Properties of the registry on arbitrary bytes: decoding never panics, names only bytes of
//! the access in offset order, and a field found by name is the field at its location.

use pci_regnames::{DeviceFacts, Location, Region, Registry};
use proptest::prelude::*;

fn region() -> impl Strategy<Value = Region> {
    prop_oneof![
        Just(Region::Config),
        (0u8..6).prop_map(Region::Bar),
        Just(Region::Rom)
    ]
}

proptest! {
    #[test]
    fn decode_is_total_and_ordered(
        config in proptest::collection::vec(any::<u8>(), 0..600),
        class in prop_oneof![Just(None), Just(Some(0x010802u32)), any::<u32>().prop_map(Some)],
        cap in proptest::option::of(any::<u64>()),
        region in region(),
        offset in prop_oneof![0u64..0x4000, any::<u64>()],
        width in 0u8..12,
        value in proptest::option::of(any::<u64>()),
    ) {
        let mut facts = DeviceFacts::from_config(&config);
        if let Some(c) = class {
            facts = facts.with_class(c);
        }
        if let Some(cap) = cap {
            facts = facts.with_value(Location::new(Region::Bar(0), 0), cap);
        }
        let registry = Registry::builtin();
        let at = Location::new(region, offset);
        let d = registry.decode(&facts, at, width, value);
        let end = offset.saturating_add(d.width as u64);
        let mut last = None;
        for p in &d.parts {
            prop_assert!(p.field.location.offset < end);
            prop_assert!(p.field.end() > offset);
            prop_assert!(p.bytes.start < p.bytes.end && p.bytes.end <= p.field.size);
            if let Some(l) = last {
                prop_assert!(p.field.location.offset >= l);
            }
            last = Some(p.field.end());
        }
        let _ = d.to_string();
        for p in &d.parts {
            let q = format!("{}:{}", p.field.decoder, p.field.name);
            let found = registry.find(&facts, &q);
            prop_assert!(found.is_ok(), "{q} not found: {:?}", found.err());
            prop_assert_eq!(found.unwrap().location, p.field.location);
        }
    }
}
