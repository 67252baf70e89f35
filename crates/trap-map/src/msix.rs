//! MSI-X table and PBA emulation (PCI Local Bus 3.0 §6.8.2): see [`MsixTable`].

use log::debug;
use pci_config::capability::MsixCapability;

use crate::layout::{MSIX_ENTRY_SIZE, MSIX_MAX_ENTRIES, pba_len};

// The register bits are pci-config's: Vector Control bit 0 masks the vector (the other bits are
// reserved, read as zero); Message Control bits 15 and 14 are MSI-X Enable and Function Mask.
const VECTOR_CONTROL_MASK: u32 = MsixCapability::VECTOR_MASKED;
const CONTROL_ENABLE: u16 = MsixCapability::ENABLE;
const CONTROL_FUNCTION_MASK: u16 = MsixCapability::FUNCTION_MASK;

/// One table entry as the guest programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsixEntry {
    /// Message Address, low DWORD (bits 1:0 always zero).
    pub address_lo: u32,
    /// Message Upper Address.
    pub address_hi: u32,
    /// Message Data.
    pub data: u32,
    /// Vector Control (bit 0: mask).
    pub vector_control: u32,
}

impl Default for MsixEntry {
    /// The reset state: zero message, vector masked (§6.8.2.9).
    fn default() -> Self {
        MsixEntry {
            address_lo: 0,
            address_hi: 0,
            data: 0,
            vector_control: VECTOR_CONTROL_MASK,
        }
    }
}

impl MsixEntry {
    /// The 64-bit message address.
    pub fn address(&self) -> u64 {
        u64::from(self.address_hi) << 32 | u64::from(self.address_lo)
    }

    /// Whether the per-vector mask bit is set.
    pub fn is_masked(&self) -> bool {
        self.vector_control & VECTOR_CONTROL_MASK != 0
    }

    fn dword(&self, i: usize) -> u32 {
        [
            self.address_lo,
            self.address_hi,
            self.data,
            self.vector_control,
        ][i]
    }

    fn set_dword(&mut self, i: usize, value: u32) {
        match i {
            0 => self.address_lo = value & !3,
            1 => self.address_hi = value,
            2 => self.data = value,
            _ => self.vector_control = value & VECTOR_CONTROL_MASK,
        }
    }
}

/// Something the VMM must act on after a guest access or a capability write.
///
/// The address and data are guest values: see [`MsixTable`] for how to use them without
/// letting the guest steer host interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsixEvent {
    /// MSI-X Enable went from 0 to 1: set up the device's MSI-X interrupts (VFIO eventfds).
    Enabled,
    /// MSI-X Enable went from 1 to 0: tear them down and fall back to INTx/MSI.
    Disabled,
    /// Vector `vector` now sends this message: (re)install its KVM MSI route. Emitted before
    /// [`Unmask`](Self::Unmask) when the message differs from the last one routed for the vector
    /// since MSI-X was enabled, and when the guest rewrites the message of an unmasked vector.
    Route {
        /// Vector number.
        vector: u16,
        /// Message address (guest value).
        address: u64,
        /// Message data (guest value).
        data: u32,
    },
    /// The vector became masked: stop injecting it directly; when it fires, call
    /// [`MsixTable::fire`] so its pending bit is set.
    Mask {
        /// Vector number.
        vector: u16,
    },
    /// The vector became unmasked: inject it directly again (attach the irqfd).
    Unmask {
        /// Vector number.
        vector: u16,
    },
    /// The vector was pending when it became unmasked: inject this message once now.
    DeliverPending {
        /// Vector number.
        vector: u16,
        /// Message address (guest value).
        address: u64,
        /// Message data (guest value).
        data: u32,
    },
}

/// What [`MsixTable::fire`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FireOutcome {
    /// Inject this message now.
    Deliver {
        /// Message address (guest value).
        address: u64,
        /// Message data (guest value).
        data: u32,
    },
    /// The vector is masked: its pending bit is now set.
    Pending,
    /// MSI-X is disabled: the interrupt is dropped, as a function with MSI-X disabled sends
    /// no MSI-X message.
    Dropped,
}

/// Errors of the MSI-X emulation API (only the VMM can cause them; guest accesses never fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsixError {
    /// A table size outside 1..=2048.
    #[error("MSI-X table size {entries} is out of range: it must be 1 to 2048 vectors")]
    Entries {
        /// The size asked for.
        entries: u16,
    },
    /// A vector number past the table.
    #[error("MSI-X vector {vector} does not exist: the table has {entries} vectors")]
    Vector {
        /// The vector given.
        vector: u16,
        /// Table size.
        entries: u16,
    },
}

/// MSI-X table and PBA emulation (PCI Local Bus 3.0 §6.8.2).
///
/// The guest programs vectors into an emulated table; the real table is programmed by the host
/// kernel when the VMM sets up `VFIO_DEVICE_SET_IRQS` eventfds. The guest therefore never
/// reaches a host interrupt: the table only yields [`MsixEvent`]s carrying
/// `(vector, address, data)` for the VMM to validate and install as a KVM MSI route for *this*
/// VM (`KVM_SET_GSI_ROUTING` + `KVM_IRQFD`, or `KVM_SIGNAL_MSI`). KVM interprets the message as
/// a virtual interrupt to the VM's own vCPUs, so a hostile guest can at worst interrupt itself.
/// The VMM must never write these values into hardware.
///
/// Masking follows the spec: a vector is masked when its Vector Control mask bit is set, when
/// the Function Mask bit of Message Control is set, or while MSI-X is disabled. A vector that
/// fires while masked sets its pending bit, and the message is delivered once when it is
/// unmasked ([`MsixEvent::DeliverPending`]).
///
/// Access rules (§6.8.2): software must use aligned DWORD or aligned QWORD accesses. Anything
/// else is undefined by the spec; here it is a no-op (reads return all ones, like an
/// unsupported request) with a `debug` log line, never a panic. The level is `debug`, like
/// QEMU's `LOG_GUEST_ERROR` (off by default), so a guest cannot flood the host log. The PBA is
/// read-only.
///
/// A VMM wires it up like this: trapped accesses that [`crate::DevicePlan`] says are
/// [`crate::TrapHandling::MsixTable`] / [`MsixPba`](crate::TrapHandling::MsixPba) go to
/// [`read_table`](Self::read_table) / [`write_table`](Self::write_table) /
/// [`read_pba`](Self::read_pba); guest writes of the capability's Message Control go to
/// [`write_message_control`](Self::write_message_control); a vector's host eventfd that fires
/// while the vector is masked goes to [`fire`](Self::fire). The returned events are applied in
/// order.
#[derive(Clone, Debug)]
pub struct MsixTable {
    entries: Vec<MsixEntry>,
    /// The message last announced by [`MsixEvent::Route`] per vector.
    routed: Vec<Option<(u64, u32)>>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl MsixTable {
    /// A table of `entries` vectors in reset state: all masked, MSI-X disabled.
    pub fn new(entries: u16) -> Result<MsixTable, MsixError> {
        if entries == 0 || entries > MSIX_MAX_ENTRIES {
            return Err(MsixError::Entries { entries });
        }
        let n = usize::from(entries);
        Ok(MsixTable {
            entries: vec![MsixEntry::default(); n],
            routed: vec![None; n],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Always false: a table has at least one vector.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the table region (16 per vector).
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA region.
    pub fn pba_len(&self) -> u64 {
        pba_len(self.len())
    }

    /// Entry `vector`.
    pub fn entry(&self, vector: u16) -> Option<&MsixEntry> {
        self.entries.get(usize::from(vector))
    }

    /// Whether MSI-X Enable is set.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether Function Mask is set.
    pub fn is_function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` is masked for any reason (vector mask, function mask, MSI-X disabled).
    pub fn is_masked(&self, vector: u16) -> bool {
        self.entries
            .get(usize::from(vector))
            .is_none_or(|e| !self.enabled || self.function_masked || e.is_masked())
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        v < self.entries.len() && self.pending[v / 64] & (1 << (v % 64)) != 0
    }

    /// The Message Control value the guest reads: Enable, Function Mask, Table Size (N-1).
    pub fn message_control(&self) -> u16 {
        let mut value = self.len() - 1;
        if self.enabled {
            value |= CONTROL_ENABLE;
        }
        if self.function_masked {
            value |= CONTROL_FUNCTION_MASK;
        }
        value
    }

    /// Applies a guest write of the capability's Message Control register. Only Enable and
    /// Function Mask are writable; the events say what changed.
    #[must_use = "the events tell the VMM which routes and irqfds to change"]
    pub fn write_message_control(&mut self, value: u16) -> Vec<MsixEvent> {
        let enabled = value & CONTROL_ENABLE != 0;
        let function_masked = value & CONTROL_FUNCTION_MASK != 0;
        let mut events = Vec::new();
        if enabled == self.enabled && function_masked == self.function_masked {
            return events;
        }
        // Every vector was masked before if the function as a whole was; otherwise its own
        // mask bit says (entries do not change here).
        let all_masked_before = !self.enabled || self.function_masked;
        match (self.enabled, enabled) {
            (false, true) => events.push(MsixEvent::Enabled),
            (true, false) => {
                events.push(MsixEvent::Disabled);
                // The VMM drops every route with the interrupts; announce them again on enable.
                self.routed.fill(None);
            }
            _ => {}
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        for v in 0..self.len() {
            let was_masked = all_masked_before || self.entries[usize::from(v)].is_masked();
            self.announce_transition(v, was_masked, false, &mut events);
        }
        events
    }

    /// Resets the table and control state (function reset): all vectors masked, pending bits
    /// cleared, MSI-X disabled.
    #[must_use = "the events tell the VMM which routes and irqfds to change"]
    pub fn reset(&mut self) -> Vec<MsixEvent> {
        let events = self.write_message_control(0);
        self.entries.fill(MsixEntry::default());
        self.pending.fill(0);
        self.routed.fill(None);
        events
    }

    /// A guest read of the table at `offset` from its start. `data.len()` must be 4 or 8 and
    /// `offset` aligned to it; otherwise `data` is filled with ones and the access logged.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let Some((vector, dword)) = self.table_index(offset, data.len(), "read") else {
            data.fill(0xff);
            return;
        };
        let entry = &self.entries[vector];
        data[..4].copy_from_slice(&entry.dword(dword).to_le_bytes());
        if data.len() == 8 {
            data[4..].copy_from_slice(&entry.dword(dword + 1).to_le_bytes());
        }
    }

    /// A guest write of the table at `offset` from its start, with the same size rules as
    /// [`read_table`](Self::read_table); a bad access changes nothing.
    #[must_use = "the events tell the VMM which routes and irqfds to change"]
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<MsixEvent> {
        let mut events = Vec::new();
        let Some((vector, dword)) = self.table_index(offset, data.len(), "write") else {
            return events;
        };
        let v = vector as u16;
        let was_masked = self.is_masked(v);
        let before = self.entries[vector];
        let entry = &mut self.entries[vector];
        entry.set_dword(dword, u32::from_le_bytes(data[..4].try_into().unwrap()));
        if data.len() == 8 {
            entry.set_dword(dword + 1, u32::from_le_bytes(data[4..].try_into().unwrap()));
        }
        let message_changed = before.address() != entry.address() || before.data != entry.data;
        self.announce_transition(v, was_masked, message_changed, &mut events);
        events
    }

    /// A guest read of the PBA at `offset` from its start (4 or 8 bytes, aligned). Bits of
    /// vectors past the table read as zero.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        if !matches!(len, 4 | 8)
            || offset % len != 0
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.pba_len())
        {
            debug!(
                "MSI-X PBA: ignoring {len}-byte read at offset {offset:#x} (PBA is {:#x} bytes; \
                 only aligned 4- and 8-byte reads are defined)",
                self.pba_len()
            );
            data.fill(0xff);
            return;
        }
        let qword = self.pending[(offset / 8) as usize];
        let bytes = qword.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// A guest write of the PBA: the PBA is read-only (§6.8.2.10), so this only logs.
    pub fn write_pba(&self, offset: u64, data: &[u8]) {
        debug!(
            "MSI-X PBA: ignoring {}-byte guest write at offset {offset:#x}: the PBA is read-only",
            data.len()
        );
    }

    /// The device signalled `vector` (its VFIO eventfd fired while the VMM had it detached from
    /// KVM because it is masked, or the VMM delivers all interrupts itself).
    pub fn fire(&mut self, vector: u16) -> Result<FireOutcome, MsixError> {
        let v = usize::from(vector);
        let Some(entry) = self.entries.get(v) else {
            return Err(MsixError::Vector {
                vector,
                entries: self.len(),
            });
        };
        if !self.enabled {
            return Ok(FireOutcome::Dropped);
        }
        if self.function_masked || entry.is_masked() {
            self.pending[v / 64] |= 1 << (v % 64);
            return Ok(FireOutcome::Pending);
        }
        Ok(FireOutcome::Deliver {
            address: entry.address(),
            data: entry.data,
        })
    }

    /// Validates a table access and returns (vector, first dword).
    fn table_index(&self, offset: u64, len: usize, what: &str) -> Option<(usize, usize)> {
        let len64 = len as u64;
        if !matches!(len, 4 | 8)
            || offset % len64 != 0
            || offset
                .checked_add(len64)
                .is_none_or(|end| end > self.table_len())
        {
            debug!(
                "MSI-X table: ignoring {len}-byte {what} at offset {offset:#x} (table is {:#x} \
                 bytes; only aligned 4- and 8-byte accesses are defined)",
                self.table_len()
            );
            return None;
        }
        Some((
            (offset / MSIX_ENTRY_SIZE) as usize,
            ((offset % MSIX_ENTRY_SIZE) / 4) as usize,
        ))
    }

    /// Pushes the events for vector `v` going from `was_masked` to its current state.
    fn announce_transition(
        &mut self,
        v: u16,
        was_masked: bool,
        message_changed: bool,
        events: &mut Vec<MsixEvent>,
    ) {
        let masked = self.is_masked(v);
        let i = usize::from(v);
        let entry = self.entries[i];
        let message = (entry.address(), entry.data);
        match (was_masked, masked) {
            (true, false) => {
                if self.routed[i] != Some(message) {
                    self.routed[i] = Some(message);
                    events.push(MsixEvent::Route {
                        vector: v,
                        address: message.0,
                        data: message.1,
                    });
                }
                events.push(MsixEvent::Unmask { vector: v });
                if self.is_pending(v) {
                    self.pending[i / 64] &= !(1 << (i % 64));
                    events.push(MsixEvent::DeliverPending {
                        vector: v,
                        address: message.0,
                        data: message.1,
                    });
                }
            }
            (false, true) => events.push(MsixEvent::Mask { vector: v }),
            (false, false) if message_changed => {
                // §6.8.2: changing the message of an unmasked vector is undefined; following it
                // keeps the route what the guest last wrote.
                self.routed[i] = Some(message);
                events.push(MsixEvent::Route {
                    vector: v,
                    address: message.0,
                    data: message.1,
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(t: &mut MsixTable, offset: u64, v: u32) -> Vec<MsixEvent> {
        t.write_table(offset, &v.to_le_bytes())
    }

    fn r32(t: &MsixTable, offset: u64) -> u32 {
        let mut b = [0; 4];
        t.read_table(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn pba64(t: &MsixTable, offset: u64) -> u64 {
        let mut b = [0; 8];
        t.read_pba(offset, &mut b);
        u64::from_le_bytes(b)
    }

    /// A table with vector 1 programmed (masked) and MSI-X enabled.
    fn programmed() -> MsixTable {
        let mut t = MsixTable::new(4).unwrap();
        assert_eq!(w32(&mut t, 16, 0xfee0_0000), vec![]);
        assert_eq!(w32(&mut t, 20, 0), vec![]);
        assert_eq!(w32(&mut t, 24, 0x41), vec![]);
        assert_eq!(
            t.write_message_control(CONTROL_ENABLE),
            vec![MsixEvent::Enabled]
        );
        t
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(
            MsixTable::new(0).unwrap_err(),
            MsixError::Entries { entries: 0 }
        );
        assert!(MsixTable::new(2049).is_err());
        assert_eq!(MsixTable::new(2048).unwrap().pba_len(), 256);
    }

    #[test]
    fn reset_state_is_masked_and_disabled() {
        let t = MsixTable::new(3).unwrap();
        assert_eq!(t.message_control(), 2);
        assert_eq!(r32(&t, 12), 1, "vector control resets masked");
        assert!((0..3).all(|v| t.is_masked(v)));
        assert!(!t.is_enabled() && !t.is_function_masked());
    }

    #[test]
    fn unmask_routes_then_unmasks() {
        let mut t = programmed();
        assert_eq!(
            w32(&mut t, 28, 0),
            vec![
                MsixEvent::Route {
                    vector: 1,
                    address: 0xfee0_0000,
                    data: 0x41
                },
                MsixEvent::Unmask { vector: 1 }
            ]
        );
        assert_eq!(
            t.fire(1),
            Ok(FireOutcome::Deliver {
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        // Masking again, then unmasking with the same message: no new route needed.
        assert_eq!(w32(&mut t, 28, 1), vec![MsixEvent::Mask { vector: 1 }]);
        assert_eq!(w32(&mut t, 28, 0), vec![MsixEvent::Unmask { vector: 1 }]);
    }

    #[test]
    fn masked_fire_sets_pending_and_unmask_delivers_once() {
        let mut t = programmed();
        assert_eq!(t.fire(1), Ok(FireOutcome::Pending));
        assert!(t.is_pending(1));
        assert_eq!(pba64(&t, 0), 0b10);
        let events = w32(&mut t, 28, 0);
        assert_eq!(
            events.last(),
            Some(&MsixEvent::DeliverPending {
                vector: 1,
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        assert!(!t.is_pending(1));
        assert_eq!(pba64(&t, 0), 0);
        assert_eq!(w32(&mut t, 28, 1), vec![MsixEvent::Mask { vector: 1 }]);
        assert_eq!(w32(&mut t, 28, 0), vec![MsixEvent::Unmask { vector: 1 }]);
    }

    #[test]
    fn function_mask_masks_every_vector() {
        let mut t = programmed();
        let _ = w32(&mut t, 28, 0);
        let _ = w32(&mut t, 12, 0); // vector 0 unmasked too (zero message)
        let events = t.write_message_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert_eq!(
            events,
            vec![MsixEvent::Mask { vector: 0 }, MsixEvent::Mask { vector: 1 }]
        );
        assert_eq!(t.fire(1), Ok(FireOutcome::Pending));
        assert_eq!(t.message_control(), 0xc003);
        let events = t.write_message_control(CONTROL_ENABLE);
        assert_eq!(
            events,
            vec![
                MsixEvent::Unmask { vector: 0 },
                MsixEvent::Unmask { vector: 1 },
                MsixEvent::DeliverPending {
                    vector: 1,
                    address: 0xfee0_0000,
                    data: 0x41
                },
            ]
        );
    }

    #[test]
    fn disabled_drops_and_reenable_reroutes() {
        let mut t = programmed();
        let _ = w32(&mut t, 28, 0);
        assert_eq!(
            t.write_message_control(0),
            vec![MsixEvent::Disabled, MsixEvent::Mask { vector: 1 }]
        );
        assert_eq!(t.fire(1), Ok(FireOutcome::Dropped));
        assert!(!t.is_pending(1));
        assert_eq!(
            t.write_message_control(CONTROL_ENABLE),
            vec![
                MsixEvent::Enabled,
                MsixEvent::Route {
                    vector: 1,
                    address: 0xfee0_0000,
                    data: 0x41
                },
                MsixEvent::Unmask { vector: 1 }
            ]
        );
        assert_eq!(t.write_message_control(CONTROL_ENABLE), vec![]);
    }

    #[test]
    fn rewriting_unmasked_message_reroutes() {
        let mut t = programmed();
        let _ = w32(&mut t, 28, 0);
        assert_eq!(
            w32(&mut t, 24, 0x42),
            vec![MsixEvent::Route {
                vector: 1,
                address: 0xfee0_0000,
                data: 0x42
            }]
        );
        assert_eq!(w32(&mut t, 24, 0x42), vec![], "same value, no event");
    }

    #[test]
    fn qword_accesses() {
        let mut t = MsixTable::new(2).unwrap();
        let _ = t.write_message_control(CONTROL_ENABLE);
        let addr: u64 = 0x1_fee0_1000;
        assert_eq!(t.write_table(16, &addr.to_le_bytes()), vec![]);
        let mut b = [0u8; 8];
        t.read_table(16, &mut b);
        assert_eq!(u64::from_le_bytes(b), addr);
        // Data + vector control in one QWORD: unmask with the new message.
        let dc: u64 = 0x77; // data 0x77, control 0 (unmasked)
        assert_eq!(
            t.write_table(24, &dc.to_le_bytes()),
            vec![
                MsixEvent::Route {
                    vector: 1,
                    address: addr,
                    data: 0x77
                },
                MsixEvent::Unmask { vector: 1 }
            ]
        );
        assert_eq!(t.entry(1).unwrap().data, 0x77);
    }

    #[test]
    fn bad_accesses_are_harmless() {
        let mut t = programmed();
        let snapshot = t.entries.clone();
        for (offset, len) in [
            (16, 1),
            (16, 2),
            (17, 4),
            (20, 8),
            (64, 4),
            (60, 8),
            (u64::MAX - 3, 4),
        ] {
            assert_eq!(
                t.write_table(offset, &vec![0; len]),
                vec![],
                "{offset}/{len}"
            );
            let mut b = vec![0; len];
            t.read_table(offset, &mut b);
            assert!(b.iter().all(|&x| x == 0xff));
        }
        assert_eq!(t.write_table(0, &[0; 16]), vec![]);
        assert_eq!(t.entries, snapshot);
        let mut b = [0u8; 2];
        t.read_pba(0, &mut b);
        assert_eq!(b, [0xff; 2]);
        let mut b = [0u8; 4];
        t.read_pba(8, &mut b);
        assert_eq!(b, [0xff; 4]);
        t.write_pba(0, &[1; 8]);
        assert_eq!(pba64(&t, 0), 0);
        assert!(t.fire(4).is_err());
    }

    #[test]
    fn reserved_bits_read_zero() {
        let mut t = MsixTable::new(1).unwrap();
        let _ = w32(&mut t, 0, 0xfee0_0003);
        let _ = w32(&mut t, 12, 0xffff_fffe);
        assert_eq!(r32(&t, 0), 0xfee0_0000);
        assert_eq!(r32(&t, 12), 0);
    }

    #[test]
    fn reset_clears_everything() {
        let mut t = programmed();
        let _ = t.fire(1);
        assert_eq!(t.reset(), vec![MsixEvent::Disabled]);
        assert!(!t.is_pending(1));
        assert_eq!(*t.entry(1).unwrap(), MsixEntry::default());
    }

    #[test]
    fn pba_dword_reads_high_vectors() {
        let mut t = MsixTable::new(70).unwrap();
        let _ = t.write_message_control(CONTROL_ENABLE);
        assert_eq!(t.fire(69), Ok(FireOutcome::Pending));
        assert_eq!(t.fire(33), Ok(FireOutcome::Pending));
        let mut b = [0u8; 4];
        t.read_pba(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1 << 1);
        t.read_pba(8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1 << 5);
    }
}
