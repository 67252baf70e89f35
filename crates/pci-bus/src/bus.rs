//! Bus 0: which function answers which configuration address.
//!
//! Functions are `Box<dyn PciFunction>` each behind its own `Mutex`, so configuration accesses to
//! different functions never wait for each other. The slot table is read under a short lock and
//! the function is called after it is released: a function may do slow work (a VFIO config
//! region read) or re-register its BARs on the device bus from inside `config_write` without
//! holding up the rest of the bus.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use pci_config::{Bdf, PciFunction};
use thiserror::Error;

/// A function as the bus holds it; the VMM keeps a clone to size its BARs or print its state.
pub type SharedFunction = Arc<Mutex<Box<dyn PciFunction>>>;

/// Device numbers on bus 0.
const DEVICES: u8 = 32;
/// Function numbers per device.
const FUNCTIONS: u8 = 8;

/// Why a function cannot be put on the bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// Every device number 1-31 is taken.
    #[error(
        "PCI bus 0 is full: all 31 device slots (00:01.0-00:1f.0) are taken; attach fewer devices"
    )]
    Full,
    /// The slot asked for holds a function already.
    #[error("{bdf} is already taken by \"{name}\"; pick another slot")]
    Taken {
        /// The address.
        bdf: String,
        /// Who has it.
        name: String,
    },
    /// The address is not on bus 0 or not a valid device/function.
    #[error("{bdf} is not a function of bus 0 (device 00-1f, function 0-7)")]
    BadAddress {
        /// The address.
        bdf: String,
    },
}

struct Slot {
    name: String,
    function: SharedFunction,
}

/// PCI bus 0 and its functions (the host bridge at 00:00.0 is one of them).
#[derive(Default)]
pub struct PciBus {
    /// Keyed by `device << 3 | function`.
    slots: RwLock<BTreeMap<u8, Slot>>,
}

impl fmt::Debug for PciBus {
    /// The occupied addresses and their names (the functions are trait objects).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        f.debug_map()
            .entries(
                slots
                    .iter()
                    .map(|(k, s)| (Bdf::new(0, k >> 3, k & 7).short(), &s.name)),
            )
            .finish()
    }
}

impl PciBus {
    /// An empty bus (no host bridge; see [`HostBridge`](crate::HostBridge)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `function` at `bdf` (bus 0).
    pub fn insert(
        &self,
        bdf: Bdf,
        name: &str,
        function: Box<dyn PciFunction>,
    ) -> Result<SharedFunction, BusError> {
        if bdf.bus != 0 || bdf.domain != 0 || bdf.device >= DEVICES || bdf.function >= FUNCTIONS {
            return Err(BusError::BadAddress {
                bdf: bdf.to_string(),
            });
        }
        let key = bdf.device << 3 | bdf.function;
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(&key) {
            return Err(BusError::Taken {
                bdf: bdf.short(),
                name: s.name.clone(),
            });
        }
        let function: SharedFunction = Arc::new(Mutex::new(function));
        slots.insert(
            key,
            Slot {
                name: name.to_string(),
                function: function.clone(),
            },
        );
        Ok(function)
    }

    /// Function 0 of the lowest device number from 1 up with no function (00:00.0 is the host
    /// bridge's): where the next device goes.
    pub fn next_free(&self) -> Result<Bdf, BusError> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        (1..DEVICES)
            .find(|d| !(0..FUNCTIONS).any(|f| slots.contains_key(&(d << 3 | f))))
            .map(|d| Bdf::new(0, d, 0))
            .ok_or(BusError::Full)
    }

    /// Every function on the bus with its name, in address order.
    pub fn functions(&self) -> Vec<(Bdf, String, SharedFunction)> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|(k, s)| {
                (
                    Bdf::new(0, k >> 3, k & 7),
                    s.name.clone(),
                    s.function.clone(),
                )
            })
            .collect()
    }

    /// The function at `bus:device.function`, if any. Functions 1-7 of a device exist only
    /// when its function 0 does (PCI 3.0 §3.2.2.3.4: software scans function 0 first).
    fn lookup(&self, bus: u8, device: u8, function: u8) -> Option<SharedFunction> {
        if bus != 0 || device >= DEVICES || function >= FUNCTIONS {
            return None;
        }
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        if !slots.contains_key(&(device << 3)) {
            return None;
        }
        slots
            .get(&(device << 3 | function))
            .map(|s| s.function.clone())
    }

    /// A configuration read. An address with no function reads all-ones, which is how software
    /// learns the slot is empty (vendor ID 0xFFFF). Dword and word reads go to the function's
    /// by-value reads ([`PciFunction::config_read_u32`], [`PciFunction::config_read_u16`]).
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: u16, data: &mut [u8]) {
        let Some(f) = self.lookup(bus, device, function) else {
            data.fill(0xff);
            return;
        };
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(d) = <&mut [u8; 4]>::try_from(&mut *data) {
            *d = f.config_read_u32(offset).to_le_bytes();
        } else if let Ok(d) = <&mut [u8; 2]>::try_from(&mut *data) {
            *d = f.config_read_u16(offset).to_le_bytes();
        } else {
            f.config_read(offset, data);
        }
    }

    /// A configuration write. Writes to an address with no function are dropped.
    pub fn config_write(&self, bus: u8, device: u8, function: u8, offset: u16, data: &[u8]) {
        if let Some(f) = self.lookup(bus, device, function) {
            f.lock()
                .unwrap_or_else(|p| p.into_inner())
                .config_write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostBridge;

    #[test]
    fn empty_slots_read_all_ones_and_drop_writes() {
        let bus = PciBus::new();
        bus.insert(
            Bdf::new(0, 0, 0),
            "host bridge",
            Box::new(HostBridge::new()),
        )
        .unwrap();
        let mut id = [0u8; 4];
        bus.config_read(0, 0, 0, 0, &mut id);
        assert_eq!(u32::from_le_bytes(id), HostBridge::ID);
        for (b, d, f) in [(0, 1, 0), (0, 31, 7), (0, 0, 1), (1, 0, 0), (255, 31, 7)] {
            bus.config_write(b, d, f, 4, &[0xff, 0xff]);
            bus.config_read(b, d, f, 0, &mut id);
            assert_eq!(id, [0xff; 4], "{b:02x}:{d:02x}.{f}");
        }
    }

    /// Says which of its read methods the bus called, by answering each with its own value.
    struct ReadMethods;

    impl PciFunction for ReadMethods {
        fn config_read(&mut self, _: u16, data: &mut [u8]) {
            data.fill(0xb1);
        }
        fn config_read_u32(&mut self, _: u16) -> u32 {
            0xd4d4_d4d4
        }
        fn config_read_u16(&mut self, _: u16) -> u16 {
            0xd2d2
        }
        fn config_write(&mut self, _: u16, _: &[u8]) {}
    }

    #[test]
    fn dword_and_word_reads_go_to_the_reads_by_value() {
        let bus = PciBus::new();
        bus.insert(Bdf::new(0, 1, 0), "probe", Box::new(ReadMethods))
            .unwrap();
        let (mut d, mut w, mut b) = ([0u8; 4], [0u8; 2], [0u8; 1]);
        bus.config_read(0, 1, 0, 0x10, &mut d);
        bus.config_read(0, 1, 0, 0x06, &mut w);
        bus.config_read(0, 1, 0, 0x3d, &mut b);
        assert_eq!((d, w, b), ([0xd4; 4], [0xd2; 2], [0xb1]));
    }

    fn add(bus: &PciBus, name: &str) -> Bdf {
        let bdf = bus.next_free().unwrap();
        bus.insert(bdf, name, Box::new(HostBridge::new())).unwrap();
        bdf
    }

    #[test]
    fn add_takes_the_lowest_free_device_and_refuses_duplicates() {
        let bus = PciBus::new();
        bus.insert(Bdf::new(0, 0, 0), "hb", Box::new(HostBridge::new()))
            .unwrap();
        let a = add(&bus, "a");
        let b = add(&bus, "b");
        assert_eq!((a.short(), b.short()), ("00:01.0".into(), "00:02.0".into()));
        let err = bus
            .insert(Bdf::new(0, 1, 0), "c", Box::new(HostBridge::new()))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "00:01.0 is already taken by \"a\"; pick another slot"
        );
        assert!(matches!(
            bus.insert(Bdf::new(1, 0, 0), "d", Box::new(HostBridge::new())),
            Err(BusError::BadAddress { .. })
        ));
        for _ in 3..32 {
            add(&bus, "x");
        }
        assert_eq!(bus.next_free(), Err(BusError::Full));
        assert_eq!(bus.functions().len(), 32);
        assert_eq!(bus.functions()[1].1, "a");
    }

    #[test]
    fn function_1_is_hidden_without_function_0() {
        let bus = PciBus::new();
        bus.insert(Bdf::new(0, 3, 1), "f1", Box::new(HostBridge::new()))
            .unwrap();
        let mut id = [0u8; 4];
        bus.config_read(0, 3, 1, 0, &mut id);
        assert_eq!(id, [0xff; 4]);
        bus.insert(Bdf::new(0, 3, 0), "f0", Box::new(HostBridge::new()))
            .unwrap();
        bus.config_read(0, 3, 1, 0, &mut id);
        assert_eq!(u32::from_le_bytes(id), HostBridge::ID);
    }
}
