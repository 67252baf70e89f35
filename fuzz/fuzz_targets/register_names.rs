#![no_main]
//! Register naming of arbitrary devices and accesses: decoding never panics, every part lies
//! inside the access, and every name found is found again by name at the same place.
use libfuzzer_sys::fuzz_target;
use pci_regnames::{DeviceFacts, Location, Region, Registry};

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let (head, config) = data.split_at(20);
    let region = match head[0] % 8 {
        0 => Region::Config,
        7 => Region::Rom,
        n => Region::Bar(n - 1),
    };
    let offset = u64::from_le_bytes(head[1..9].try_into().unwrap()) >> (head[9] % 64);
    let width = head[10];
    let cap = u64::from_le_bytes(head[11..19].try_into().unwrap());
    let mut facts = DeviceFacts::from_config(config);
    if head[19] & 1 == 1 {
        facts = facts.with_class(0x010802);
    }
    if head[19] & 2 == 2 {
        facts = facts.with_value(Location::new(Region::Bar(0), 0), cap);
    }
    let registry = Registry::builtin();
    let at = Location::new(region, offset);
    let decoded = registry.decode(&facts, at, width, Some(cap));
    let end = offset.saturating_add(decoded.width as u64);
    for p in &decoded.parts {
        assert!(p.field.location.offset < end && p.field.end() > offset);
        let query = format!("{}:{}", p.field.decoder, p.field.name);
        let found = registry.find(&facts, &query).expect("a decoded name is found again");
        assert_eq!(found.location, p.field.location);
    }
    let _ = decoded.to_string();
});
