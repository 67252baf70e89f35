//! `refvmm run --trace`: a line per selected trapped access, named by `pci_regnames`, written
//! to a bounded sink, and a per-register summary for `--show-counters`.
//!
//! | file | concept |
//! |---|---|
//! | `spec.rs` | [`spec::TraceSpec`], [`TraceFilter`]: what `--trace WHAT` selects |
//! | `line.rs` | [`TraceEvent`] and its one-line format |
//! | `sink.rs` | [`TraceSink`]: at most N lines, then a count of what was dropped |
//! | `summary.rs` | [`RegisterSummary`]: reads, writes and last value per register |
//! | `hook.rs` | the wrappers the run installs: a tracing `TrapPort` and config-space function |
//!
//! [`Tracer`] ties them together for the run loop: the trapped-range handlers of a device are
//! wrapped by one that calls [`Tracer::record`] only when the filter covers the device, so
//! tracing costs nothing when off.

pub mod hook;
pub mod line;
pub mod sink;
pub mod spec;
pub mod summary;

use std::collections::HashMap;
use std::time::Instant;

use pci_config::Bdf;
use pci_regnames::{DeviceFacts, Location, Registry};

use line::{AccessKind, TraceEvent, format_line};
use sink::TraceSink;
use spec::{AccessSite, TraceFilter};
use summary::RegisterSummary;

/// The trace of one run.
#[derive(Debug)]
pub struct Tracer {
    filter: TraceFilter,
    registry: Registry,
    devices: HashMap<Bdf, DeviceFacts>,
    sink: TraceSink,
    summary: RegisterSummary,
    /// When the guest started; `None` until [`Tracer::start`]: accesses before (the VMM
    /// placing BARs, reading config space for the decoders) are not the guest's.
    start: Option<Instant>,
}

impl Tracer {
    /// A tracer writing what `filter` selects to `sink`, once [started](Self::start).
    pub fn new(filter: TraceFilter, sink: TraceSink) -> Self {
        Tracer {
            filter,
            registry: Registry::builtin(),
            devices: HashMap::new(),
            sink,
            summary: RegisterSummary::new(),
            start: None,
        }
    }

    /// Starts recording, timing from now: call it when the guest starts.
    pub fn start(&mut self) {
        self.start = Some(Instant::now());
    }

    /// What the decoders know about `device` (its config space, MSI-X, class).
    pub fn add_device(&mut self, device: Bdf, facts: DeviceFacts) {
        self.devices.insert(device, facts);
    }

    /// The filter, to decide which devices' handlers to wrap.
    pub fn filter(&self) -> &TraceFilter {
        &self.filter
    }

    /// Records one trapped access if the tracer is started and the filter selects it: a line in
    /// the sink, a count in the summary.
    pub fn record(
        &mut self,
        vcpu: u32,
        device: Bdf,
        at: Location,
        width: u8,
        kind: AccessKind,
        value: u64,
    ) {
        let Some(start) = self.start else {
            return;
        };
        let empty = DeviceFacts::new();
        let facts = self.devices.get(&device).unwrap_or(&empty);
        let decoded = self.registry.decode(facts, at, width, Some(value));
        let in_msix = decoded.parts.iter().any(|p| p.field.decoder == "msix");
        let site = AccessSite {
            device,
            region: at.region,
            offset: at.offset,
            width,
            in_msix,
        };
        if !self.filter.selects(&site) {
            return;
        }
        let event = TraceEvent {
            elapsed: start.elapsed(),
            vcpu,
            device,
            at,
            width,
            kind,
            value,
        };
        self.sink.line(&format_line(&event, &decoded));
        let register = decoded
            .parts
            .first()
            .map(|p| p.field.location)
            .unwrap_or(at);
        self.summary
            .count(device, register, &decoded.name(), kind, value);
    }

    /// Ends the trace: the dropped-lines line, if any, for the caller to show too.
    pub fn finish(&mut self) -> Option<String> {
        self.sink.finish()
    }

    /// The per-register summary.
    pub fn summary(&self) -> String {
        self.summary.render()
    }
}

/// A writer the trace tests read back.
#[cfg(test)]
pub(crate) mod capture {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Everything written, shared with the test.
    #[derive(Clone, Default)]
    pub(crate) struct Shared(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci_regnames::Region;

    use crate::trace::capture::Shared;

    #[test]
    fn the_doorbell_of_io_queue_3() {
        let nvme: Bdf = "00:01.0".parse().unwrap();
        let out = Shared::default();
        let filter = TraceFilter::new(vec!["bar0+0x1000..0x2000".parse().unwrap()]);
        let mut tracer = Tracer::new(filter, TraceSink::new(Box::new(out.clone()), 5));
        assert!(tracer.filter().covers_device(nvme));
        tracer.add_device(nvme, DeviceFacts::new().with_class(0x010802));
        let sq3 = Location::new(Region::Bar(0), 0x1018);
        // Before the guest starts: the VMM's own accesses, not recorded.
        tracer.record(0, nvme, sq3, 4, AccessKind::Write, 0);
        tracer.start();
        for tail in 1..=24u64 {
            tracer.record(0, nvme, sq3, 4, AccessKind::Write, tail % 9);
        }
        // Outside the range: not traced, not counted.
        tracer.record(
            0,
            nvme,
            Location::new(Region::Bar(0), 0x14),
            4,
            AccessKind::Write,
            1,
        );
        let dropped = tracer.finish().unwrap();
        assert!(dropped.contains("19 more line(s) dropped after the limit of 5"));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(
            lines[0].ends_with("vcpu0 0000:00:01.0 bar0+0x1018 4 W 0x00000001 SQ3TDBL (tail 1)"),
            "{}",
            lines[0]
        );
        assert_eq!(
            tracer.summary(),
            "  0000:00:01.0 bar0+0x1018 SQ3TDBL: written 24 time(s), last value 6\n"
        );
    }

    #[test]
    fn msix_selects_the_table_wherever_it_is() {
        let nic: Bdf = "00:02.0".parse().unwrap();
        let out = Shared::default();
        let filter = TraceFilter::new(vec!["msix".parse().unwrap()]);
        let mut tracer = Tracer::new(filter, TraceSink::new(Box::new(out.clone()), 100));
        let msix = pci_config::capability::MsixCapability::new(
            5,
            pci_config::capability::BarOffset { bir: 3, offset: 0 },
            pci_config::capability::BarOffset {
                bir: 3,
                offset: 0x2000,
            },
        );
        tracer.add_device(nic, DeviceFacts::new().with_msix(msix));
        tracer.start();
        tracer.record(
            0,
            nic,
            Location::new(Region::Bar(3), 0x2c),
            4,
            AccessKind::Write,
            0,
        );
        tracer.record(
            0,
            nic,
            Location::new(Region::Bar(0), 0x2c),
            4,
            AccessKind::Write,
            0,
        );
        assert_eq!(tracer.finish(), None);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.ends_with("bar3+0x2c 4 W 0x00000000 MSIX[2].CTRL (unmasked)\n"),
            "{text}"
        );
    }
}
