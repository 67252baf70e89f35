//! Side effects of guest writes, reported to the VMM so it can move memory slots, enable DMA or
//! reprogram interrupt routing without diffing registers itself.

/// Which bridge forwarding window changed (type 1 headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BridgeWindow {
    /// I/O base/limit (0x1c, 0x1d, 0x30..0x33).
    Io,
    /// Non-prefetchable memory base/limit (0x20..0x23).
    Memory,
    /// Prefetchable memory base/limit (0x24..0x2f).
    Prefetchable,
}

/// One side effect of a configuration write.
///
/// See [`ConfigSpace::write`](crate::ConfigSpace::write) for exactly when each is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigEvent {
    /// A BAR was reprogrammed: its committed base address changed from `old` to `new`.
    /// Sizing probes and their restores never produce this event.
    BarMoved {
        /// BAR index (the lower index of a 64-bit BAR).
        bar: u8,
        /// Previous base address.
        old: u64,
        /// New base address.
        new: u64,
    },
    /// The expansion ROM base address changed.
    RomMoved {
        /// Previous base address.
        old: u32,
        /// New base address.
        new: u32,
    },
    /// The ROM address decode enable bit (ROM BAR bit 0) changed. The ROM is decoded only when
    /// this bit and Command.Memory are both set.
    RomEnableChanged {
        /// New state of the enable bit.
        enabled: bool,
    },
    /// Command memory and/or I/O decode enable changed; carries the new state of both.
    DecodeChanged {
        /// Memory space decode now on.
        memory: bool,
        /// I/O space decode now on.
        io: bool,
    },
    /// Command bus-master enable changed (DMA on or off).
    BusMasterChanged {
        /// Bus mastering now on.
        enabled: bool,
    },
    /// Command INTx disable changed.
    IntxDisableChanged {
        /// INTx now disabled.
        disabled: bool,
    },
    /// A register of the MSI capability changed (control, address, data or mask bits). The VMM
    /// re-reads [`ConfigSpace::msi`](crate::ConfigSpace::msi) to update routing.
    MsiChanged {
        /// MSI enable bit after the write.
        enabled: bool,
    },
    /// The MSI-X Message Control enable or function-mask bit changed.
    MsixChanged {
        /// MSI-X enable after the write.
        enabled: bool,
        /// Function mask after the write.
        function_masked: bool,
    },
    /// A bridge forwarding window changed.
    BridgeWindowChanged {
        /// Which window.
        window: BridgeWindow,
    },
}

/// Up to [`ConfigEvents::CAPACITY`] events produced by one write, without heap allocation.
///
/// One access of at most 4 bytes can touch at most two registers with side effects, each giving
/// at most three events, so the capacity is never exceeded in practice; if it were, further
/// events would be dropped with a log warning rather than a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigEvents {
    len: usize,
    items: [ConfigEvent; Self::CAPACITY],
}

impl Default for ConfigEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigEvents {
    /// Maximum number of events one write can report.
    pub const CAPACITY: usize = 6;

    /// No events.
    pub const fn new() -> Self {
        ConfigEvents {
            len: 0,
            items: [ConfigEvent::DecodeChanged {
                memory: false,
                io: false,
            }; Self::CAPACITY],
        }
    }

    pub(crate) fn push(&mut self, e: ConfigEvent) {
        if self.len < Self::CAPACITY {
            self.items[self.len] = e;
            self.len += 1;
        } else {
            log::warn!(
                "pci-config: dropping event {e:?}: more than {} events in one write",
                Self::CAPACITY
            );
        }
    }

    /// The events, in the order they happened.
    pub fn as_slice(&self) -> &[ConfigEvent] {
        &self.items[..self.len]
    }
}

impl std::ops::Deref for ConfigEvents {
    type Target = [ConfigEvent];
    fn deref(&self) -> &[ConfigEvent] {
        self.as_slice()
    }
}

impl IntoIterator for ConfigEvents {
    type Item = ConfigEvent;
    type IntoIter = std::iter::Take<std::array::IntoIter<ConfigEvent, { ConfigEvents::CAPACITY }>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().take(self.len)
    }
}

impl<'a> IntoIterator for &'a ConfigEvents {
    type Item = &'a ConfigEvent;
    type IntoIter = std::slice::Iter<'a, ConfigEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_drops_instead_of_panicking() {
        let mut e = ConfigEvents::new();
        for i in 0..10 {
            e.push(ConfigEvent::BusMasterChanged {
                enabled: i % 2 == 0,
            });
        }
        assert_eq!(e.len(), ConfigEvents::CAPACITY);
        assert_eq!(e.into_iter().count(), ConfigEvents::CAPACITY);
        assert!(ConfigEvents::new().is_empty());
    }
}
