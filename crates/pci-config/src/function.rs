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
}
