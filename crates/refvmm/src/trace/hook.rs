//! Where the trace meets the run: a [`TrapPort`] that wraps every trapped-range handler of a
//! traced device with one that records the access, and a [`PciFunction`] wrapper for config
//! space. Devices the trace does not cover get neither, so tracing costs nothing when off.
//!
//! refvmm runs one vCPU, so every access is vCPU 0's.

use std::io;
use std::sync::{Arc, Mutex};

use kvm_runloop::reexports::vm_device::bus::{
    MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset,
};
use kvm_runloop::reexports::vm_device::{DeviceMmio, DevicePio};
use pci_config::{Bdf, PciFunction};
use pci_regnames::{Location, Region};
use vfio_pci::ports::{BarRange, ROM_INDEX, TrapAddress, TrapHandler, TrapPort};

use super::Tracer;
use super::line::AccessKind;

/// The run's tracer, shared by every wrapped handler.
pub type SharedTracer = Arc<Mutex<Tracer>>;

fn record(tracer: &SharedTracer, device: Bdf, at: Location, kind: AccessKind, data: &[u8]) {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    let value = u64::from_le_bytes(bytes);
    let mut t = tracer.lock().unwrap_or_else(|p| p.into_inner());
    t.record(current_vcpu(), device, at, n as u8, kind, value);
}

/// The vCPU whose exit is being handled: refvmm names each vCPU thread `vcpuN` (run.rs), and
/// trapped handlers run on the thread of the vCPU that exited. 0 on any other thread (tests).
fn current_vcpu() -> u32 {
    std::thread::current()
        .name()
        .and_then(|n| n.strip_prefix("vcpu"))
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

/// A [`TrapPort`] that registers tracing handlers on the port it wraps.
pub struct TracingTraps {
    inner: Arc<dyn TrapPort>,
    tracer: SharedTracer,
}

impl TracingTraps {
    /// Wraps `inner`'s handlers with ones recording into `tracer`.
    pub fn new(inner: Arc<dyn TrapPort>, tracer: SharedTracer) -> Self {
        TracingTraps { inner, tracer }
    }
}

/// One trapped range's handler, recording each access before or after passing it on.
struct Traced<H: ?Sized> {
    inner: Arc<H>,
    tracer: SharedTracer,
    device: Bdf,
    region: Region,
    /// Offset of the range in its BAR: handlers see offsets from the range's start.
    base: u64,
}

impl<H: ?Sized> Traced<H> {
    fn at(&self, offset: u64) -> Location {
        Location::new(self.region, self.base.saturating_add(offset))
    }
}

impl DeviceMmio for Traced<dyn DeviceMmio + Send + Sync> {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.inner.mmio_read(base, offset, data);
        record(
            &self.tracer,
            self.device,
            self.at(offset),
            AccessKind::Read,
            data,
        );
    }

    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        record(
            &self.tracer,
            self.device,
            self.at(offset),
            AccessKind::Write,
            data,
        );
        self.inner.mmio_write(base, offset, data);
    }
}

impl DevicePio for Traced<dyn DevicePio + Send + Sync> {
    fn pio_read(&self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.inner.pio_read(base, offset, data);
        let at = self.at(u64::from(offset));
        record(&self.tracer, self.device, at, AccessKind::Read, data);
    }

    fn pio_write(&self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let at = self.at(u64::from(offset));
        record(&self.tracer, self.device, at, AccessKind::Write, data);
        self.inner.pio_write(base, offset, data);
    }
}

impl TrapPort for TracingTraps {
    fn add_trap(&self, range: &BarRange, at: TrapAddress, handler: TrapHandler) -> io::Result<()> {
        // The device's name is its guest BDF (refvmm names devices so); a name that is not
        // one leaves the range untraced.
        let Ok(device) = range.device.parse::<Bdf>() else {
            return self.inner.add_trap(range, at, handler);
        };
        let region = if range.bar == ROM_INDEX {
            Region::Rom
        } else {
            Region::Bar(range.bar)
        };
        let tracer = self.tracer.clone();
        let base = range.offset;
        let handler = match handler {
            TrapHandler::Mmio(inner) => TrapHandler::Mmio(Arc::new(Traced {
                inner,
                tracer,
                device,
                region,
                base,
            })),
            TrapHandler::Pio(inner) => TrapHandler::Pio(Arc::new(Traced {
                inner,
                tracer,
                device,
                region,
                base,
            })),
        };
        self.inner.add_trap(range, at, handler)
    }

    fn move_trap(&self, range: &BarRange, from: TrapAddress, to: TrapAddress) -> io::Result<()> {
        self.inner.move_trap(range, from, to)
    }

    fn remove_trap(&self, range: &BarRange, at: TrapAddress) -> io::Result<()> {
        self.inner.remove_trap(range, at)
    }
}

/// A PCI function whose configuration accesses are recorded.
pub struct TracedFunction {
    inner: Box<dyn PciFunction>,
    tracer: SharedTracer,
    device: Bdf,
}

impl TracedFunction {
    /// Wraps `inner`, the function at `device`.
    pub fn new(inner: Box<dyn PciFunction>, device: Bdf, tracer: SharedTracer) -> Self {
        TracedFunction {
            inner,
            tracer,
            device,
        }
    }
}

impl TracedFunction {
    /// Records one config access of `data` at `offset`.
    fn record_config(&self, offset: u16, kind: AccessKind, data: &[u8]) {
        let at = Location::new(Region::Config, u64::from(offset));
        record(&self.tracer, self.device, at, kind, data);
    }
}

impl PciFunction for TracedFunction {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.inner.config_read(offset, data);
        self.record_config(offset, AccessKind::Read, data);
    }

    fn config_read_u32(&mut self, offset: u16) -> u32 {
        let value = self.inner.config_read_u32(offset);
        self.record_config(offset, AccessKind::Read, &value.to_le_bytes());
        value
    }

    fn config_read_u16(&mut self, offset: u16) -> u16 {
        let value = self.inner.config_read_u16(offset);
        self.record_config(offset, AccessKind::Read, &value.to_le_bytes());
        value
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.record_config(offset, AccessKind::Write, data);
        self.inner.config_write(offset, data);
    }
}

// InMemoryPorts is vfio-pci's `sim` test aid.
#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::trace::sink::TraceSink;
    use crate::trace::spec::TraceFilter;
    use pci_regnames::DeviceFacts;
    use vfio_pci::ports::{BarRangeKind, InMemoryPorts};

    use crate::trace::capture::Shared;

    /// A doorbell page: writes land in a cell the test reads back.
    struct Doorbells(Mutex<u64>);

    impl DeviceMmio for Doorbells {
        fn mmio_read(&self, _: MmioAddress, _: MmioAddressOffset, data: &mut [u8]) {
            data.fill(0);
        }
        fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, data: &[u8]) {
            *self.0.lock().unwrap() += data[0] as u64;
        }
    }

    /// A started tracer with one device, filtered to `filter`, writing into the returned buffer.
    fn started_tracer(filter: &str, dev: Bdf, facts: DeviceFacts) -> (Shared, SharedTracer) {
        let out = Shared::default();
        let filter = TraceFilter::new(vec![filter.parse().unwrap()]);
        let tracer: SharedTracer = Arc::new(Mutex::new(Tracer::new(
            filter,
            TraceSink::new(Box::new(out.clone()), 100),
        )));
        tracer.lock().unwrap().add_device(dev, facts);
        tracer.lock().unwrap().start();
        (out, tracer)
    }

    #[test]
    fn a_wrapped_handler_records_and_passes_on() {
        let nvme: Bdf = "00:01.0".parse().unwrap();
        let (out, tracer) = started_tracer("bar0", nvme, DeviceFacts::new().with_class(0x010802));
        let ports = Arc::new(InMemoryPorts::new());
        let traps = TracingTraps::new(ports.clone(), tracer.clone());
        let range = BarRange {
            device: "00:01.0".into(),
            bar: 0,
            offset: 0x1000,
            len: 0x1000,
            kind: BarRangeKind::Device,
            name: "00:01.0 BAR0 +0x1000".into(),
        };
        let doorbells = Arc::new(Doorbells(Mutex::new(0)));
        traps
            .add_trap(
                &range,
                TrapAddress::Mmio(vm_memory::GuestAddress(0xc000_1000)),
                TrapHandler::Mmio(doorbells.clone()),
            )
            .unwrap();
        assert!(ports.mmio_write(0xc000_1018, &8u32.to_le_bytes()));
        assert_eq!(
            *doorbells.0.lock().unwrap(),
            8,
            "the write reached the handler"
        );
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.ends_with("vcpu0 0000:00:01.0 bar0+0x1018 4 W 0x00000008 SQ3TDBL (tail 8)\n"),
            "{text}"
        );
    }

    /// A config space whose reads give their offset, so the trace shows which read it was.
    struct OffsetEcho;

    impl PciFunction for OffsetEcho {
        fn config_read(&mut self, offset: u16, data: &mut [u8]) {
            data.copy_from_slice(&u32::from(offset).to_le_bytes()[..data.len()]);
        }
        fn config_write(&mut self, _: u16, _: &[u8]) {}
    }

    /// The bus reads dwords and words by value (`config_read_u32`, `config_read_u16`): those
    /// reads are traced like buffer reads, with their width and value.
    #[test]
    fn reads_by_value_are_traced_with_their_width() {
        let dev: Bdf = "00:02.0".parse().unwrap();
        let (out, tracer) = started_tracer("config", dev, DeviceFacts::new());
        let mut f = TracedFunction::new(Box::new(OffsetEcho), dev, tracer);
        assert_eq!(f.config_read_u32(0x10), 0x10);
        assert_eq!(f.config_read_u16(0x06), 0x06);
        let mut byte = [0u8];
        f.config_read(0x3d, &mut byte);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("config+0x10 4 R 0x00000010"), "{text}");
        assert!(lines[1].contains("config+0x6 2 R 0x0006"), "{text}");
        assert!(lines[2].contains("config+0x3d 1 R 0x3d"), "{text}");
    }
}
