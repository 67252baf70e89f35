//! The contract between a PCI bus and the functions on it.

/// A PCI function as a bus sees it: configuration-space accesses by offset.
///
/// A host bridge (configuration mechanism #1 or ECAM) decodes an access to a bus, device and
/// function, then hands the function the register offset and the bytes. Everything else a
/// function does (claiming BAR ranges, mapping memory, raising interrupts) follows from the
/// writes it sees here, so this is all the bus needs to know.
///
/// Accesses are 1, 2 or 4 bytes wide and do not cross a dword boundary (both mechanisms
/// guarantee that); `offset` is below 256 for conventional and below 4096 for PCIe functions.
/// Neither method can fail: a function answers what it cannot serve with all-ones and drops
/// writes it cannot take, as hardware does, and reports the trouble through its own log.
pub trait PciFunction: Send {
    /// Fills `data` with the bytes at `offset`.
    fn config_read(&mut self, offset: u16, data: &mut [u8]);

    /// Writes `data` at `offset`.
    fn config_write(&mut self, offset: u16, data: &[u8]);

    /// A 4-byte read at `offset`, by value: the bytes [`config_read`](Self::config_read) would
    /// give, as a little-endian number. A bus that knows an access's width calls this (or
    /// [`config_read_u16`](Self::config_read_u16)) instead of passing a buffer, as
    /// cloud-hypervisor's and crosvm's buses read whole registers by value.
    ///
    /// The default reads through `config_read`. Override it (and `config_read_u16`) when the
    /// function has a by-value path, forwarding to [`ConfigSpace::read_u32`] or
    /// [`VirtualizedConfig::read_u32`](crate::VirtualizedConfig::read_u32) and answering
    /// all-ones where they refuse: through a `dyn` call that saves the buffer, a store and a
    /// width check (word reads 1.8-2.0 to 1.7 ns, dword reads 1.5-1.6 to 1.4 ns through `ConfigSpace` in
    /// `benches/benches/config_access.rs`).
    ///
    /// [`ConfigSpace::read_u32`]: crate::ConfigSpace::read_u32
    fn config_read_u32(&mut self, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        self.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A 2-byte read at `offset`, by value; see [`config_read_u32`](Self::config_read_u32).
    fn config_read_u16(&mut self, offset: u16) -> u16 {
        let mut b = [0u8; 2];
        self.config_read(offset, &mut b);
        u16::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function with only the required methods: config space bytes 0, 1, 2, ...
    struct Counting;

    impl PciFunction for Counting {
        fn config_read(&mut self, offset: u16, data: &mut [u8]) {
            for (i, d) in data.iter_mut().enumerate() {
                *d = (offset as usize + i) as u8;
            }
        }
        fn config_write(&mut self, _: u16, _: &[u8]) {}
    }

    #[test]
    fn reads_by_value_default_to_config_read_little_endian() {
        let f: &mut dyn PciFunction = &mut Counting;
        assert_eq!(f.config_read_u32(0x10), 0x1312_1110);
        assert_eq!(f.config_read_u16(0x06), 0x0706);
    }
}
