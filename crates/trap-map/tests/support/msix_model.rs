//! A model of what a VMM learns from [`MsixEvent`]s, checked against the table after every
//! operation. Shared by the property tests and the `msix_table` fuzz target.
//!
//! The point: a VMM that only follows the events (never peeks into the table) always has every
//! unmasked vector routed to the message the guest programmed, and delivers pending messages
//! exactly once.

#![allow(dead_code)]

use trap_map::{FireOutcome, MsixEvent, MsixTable};

/// One thing that can happen to a table.
#[derive(Clone, Debug)]
pub enum Op {
    /// A guest table write of `len` bytes (any size, any offset).
    WriteTable { offset: u64, len: usize, value: u64 },
    /// A guest table read.
    ReadTable { offset: u64, len: usize },
    /// A guest PBA read.
    ReadPba { offset: u64, len: usize },
    /// A guest PBA write.
    WritePba { offset: u64, len: usize, value: u64 },
    /// A guest write of Message Control.
    WriteControl(u16),
    /// The device signals a vector (possibly out of range).
    Fire(u16),
    /// Function reset.
    Reset,
}

/// What the VMM knows.
pub struct Model {
    unmasked: Vec<bool>,
    routes: Vec<Option<(u64, u32)>>,
    enabled: bool,
}

impl Model {
    pub fn new(entries: u16) -> Model {
        Model {
            unmasked: vec![false; usize::from(entries)],
            routes: vec![None; usize::from(entries)],
            enabled: false,
        }
    }

    fn follow(
        &mut self,
        table: &MsixTable,
        events: &[MsixEvent],
        pending_before: &[bool],
    ) -> Result<(), String> {
        for e in events {
            match *e {
                MsixEvent::Enabled => {
                    if self.enabled {
                        return Err("Enabled twice".into());
                    }
                    self.enabled = true;
                }
                MsixEvent::Disabled => {
                    if !self.enabled {
                        return Err("Disabled twice".into());
                    }
                    self.enabled = false;
                    self.routes.fill(None);
                }
                MsixEvent::Route {
                    vector,
                    address,
                    data,
                } => {
                    *self
                        .routes
                        .get_mut(usize::from(vector))
                        .ok_or("Route past the table")? = Some((address, data));
                }
                MsixEvent::Mask { vector } => {
                    let u = self
                        .unmasked
                        .get_mut(usize::from(vector))
                        .ok_or("Mask past the table")?;
                    if !*u {
                        return Err(format!("Mask of masked vector {vector}"));
                    }
                    *u = false;
                }
                MsixEvent::Unmask { vector } => {
                    let u = self
                        .unmasked
                        .get_mut(usize::from(vector))
                        .ok_or("Unmask past the table")?;
                    if *u {
                        return Err(format!("Unmask of unmasked vector {vector}"));
                    }
                    *u = true;
                }
                MsixEvent::DeliverPending {
                    vector,
                    address,
                    data,
                } => {
                    let v = usize::from(vector);
                    if !pending_before.get(v).copied().unwrap_or(false) {
                        return Err(format!(
                            "DeliverPending for vector {vector} that was not pending"
                        ));
                    }
                    if self.routes[v] != Some((address, data)) || !self.unmasked[v] {
                        return Err(format!(
                            "DeliverPending for vector {vector} before its route/unmask"
                        ));
                    }
                }
            }
        }
        self.check(table)
    }

    /// The model agrees with the table.
    pub fn check(&self, table: &MsixTable) -> Result<(), String> {
        if self.enabled != table.is_enabled() {
            return Err("enable state diverged".into());
        }
        for v in 0..table.len() {
            let i = usize::from(v);
            if self.unmasked[i] == table.is_masked(v) {
                return Err(format!(
                    "vector {v}: model unmasked={} but table masked={}",
                    self.unmasked[i],
                    table.is_masked(v)
                ));
            }
            let e = table.entry(v).unwrap();
            if self.unmasked[i] && self.routes[i] != Some((e.address(), e.data)) {
                return Err(format!(
                    "vector {v}: unmasked with a stale route {:?}",
                    self.routes[i]
                ));
            }
            if self.unmasked[i] && table.is_pending(v) {
                return Err(format!("vector {v}: unmasked but still pending"));
            }
        }
        Ok(())
    }

    /// Applies `op` to the table and checks the events and the resulting state.
    pub fn apply(&mut self, table: &mut MsixTable, op: &Op) -> Result<(), String> {
        let pending_before: Vec<bool> = (0..table.len()).map(|v| table.is_pending(v)).collect();
        let events = match *op {
            Op::WriteTable { offset, len, value } => {
                let bytes = value.to_le_bytes();
                let mut data = vec![0u8; len];
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes[i % 8];
                }
                table.write_table(offset, &data)
            }
            Op::ReadTable { offset, len } => {
                let mut data = vec![0u8; len];
                table.read_table(offset, &mut data);
                if matches!(len, 4 | 8)
                    && offset % len as u64 == 0
                    && offset.saturating_add(len as u64) <= table.table_len()
                {
                    let e = table.entry((offset / 16) as u16).unwrap();
                    let dwords = [e.address_lo, e.address_hi, e.data, e.vector_control];
                    let first = ((offset % 16) / 4) as usize;
                    if data[..4] != dwords[first].to_le_bytes() {
                        return Err(format!(
                            "table read at {offset:#x} disagrees with the entry"
                        ));
                    }
                } else if data.iter().any(|&b| b != 0xff) {
                    return Err(format!(
                        "bad table read {len}@{offset:#x} did not return ones"
                    ));
                }
                Vec::new()
            }
            Op::ReadPba { offset, len } => {
                let mut data = vec![0u8; len];
                table.read_pba(offset, &mut data);
                if matches!(len, 4 | 8)
                    && offset % len as u64 == 0
                    && offset.saturating_add(len as u64) <= table.pba_len()
                {
                    for (byte, &got) in data.iter().enumerate() {
                        for bit in 0..8 {
                            let v = (offset as usize + byte) * 8 + bit;
                            let expect = v < usize::from(table.len()) && table.is_pending(v as u16);
                            if (got >> bit) & 1 != u8::from(expect) {
                                return Err(format!("PBA bit of vector {v} wrong"));
                            }
                        }
                    }
                }
                Vec::new()
            }
            Op::WritePba { offset, len, value } => {
                table.write_pba(offset, &value.to_le_bytes()[..len.min(8)]);
                let now: Vec<bool> = (0..table.len()).map(|v| table.is_pending(v)).collect();
                if now != pending_before {
                    return Err("a PBA write changed pending bits".into());
                }
                Vec::new()
            }
            Op::WriteControl(value) => table.write_message_control(value),
            Op::Fire(vector) => {
                match table.fire(vector) {
                    Err(_) if vector >= table.len() => {}
                    Err(e) => return Err(format!("fire({vector}) failed: {e}")),
                    Ok(FireOutcome::Deliver { address, data }) => {
                        let i = usize::from(vector);
                        if !self.unmasked[i] || self.routes[i] != Some((address, data)) {
                            return Err(format!(
                                "fire({vector}) delivered outside the VMM's route"
                            ));
                        }
                    }
                    Ok(FireOutcome::Pending) => {
                        if self.unmasked[usize::from(vector)] || !table.is_pending(vector) {
                            return Err(format!("fire({vector}) pending on an unmasked vector"));
                        }
                    }
                    Ok(FireOutcome::Dropped) => {
                        if table.is_enabled() {
                            return Err(format!("fire({vector}) dropped while enabled"));
                        }
                    }
                }
                Vec::new()
            }
            Op::Reset => table.reset(),
        };
        self.follow(table, &events, &pending_before)
    }
}

/// Decodes operations from raw bytes (for the fuzzer): 12 bytes an operation.
pub fn ops_from_bytes(data: &[u8]) -> Vec<Op> {
    data.chunks_exact(12)
        .map(|c| {
            let offset = u64::from(u16::from_le_bytes([c[1], c[2]]));
            let len = usize::from(c[3] % 10);
            let value = u64::from_le_bytes(c[4..12].try_into().unwrap());
            match c[0] % 16 {
                0..=5 => Op::WriteTable {
                    offset,
                    len: [4, 8, 4, 8, 1, 2, 3, 4, 8, 16][len],
                    value,
                },
                6 | 7 => Op::ReadTable {
                    offset,
                    len: [4, 8, 1, 2, 3, 4, 8, 0, 4, 16][len],
                },
                8 => Op::ReadPba {
                    offset: offset % 512,
                    len: [4, 8, 1, 2, 4, 8, 0, 3, 4, 8][len],
                },
                9 => Op::WritePba {
                    offset: offset % 512,
                    len: len % 9,
                    value,
                },
                10 | 11 => Op::WriteControl(value as u16),
                12..=14 => Op::Fire(offset as u16 % 2100),
                _ => Op::Reset,
            }
        })
        .collect()
}
