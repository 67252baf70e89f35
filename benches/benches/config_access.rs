//! pci-config: cost of one guest config access (ns), every access through a `dyn PciFunction`
//! call as a VMM's bus makes it (refvmm's `PciBus` holds `Box<dyn PciFunction>` and reads
//! dwords and words by value: `config_read_u32`, `config_read_u16`), for the
//! register model (`ConfigSpace`) and for the passthrough view (`VirtualizedConfig`) over an
//! in-memory device that costs next to nothing ([`BenchDevice`]: a load or a store per access),
//! so the numbers are the crate's own cost, not a VFIO pread's nor a test double's.
//!
//! The rows are the operations of issue 15 §1, the ones cloud-hypervisor's `PciConfiguration`
//! was measured on; `crates/pci-config/README.md` has the figures. The `floor` group runs the
//! same rows on a function that does nothing ([`Floor`]): the part of each figure that is the
//! harness's.
//!
//! The clock is the benchmark thread's CPU time ([`ThreadCpuTime`]), so the figures hold on a
//! machine shared with other work; `BENCH_WALL_CLOCK=1` measures wall time instead (the two
//! agree on an idle machine).
//!
//! Run: `cargo bench -p passthrough-benches --bench config_access`
//! (briefly: add `-- --warm-up-time 1 --measurement-time 2`). Where a function falls against
//! 64-byte lines moves a row by 0.3-1 ns between builds on the development machine;
//! pci-config's README figures pin it with `RUSTFLAGS="-C llvm-args=-align-all-functions=6"` (and a
//! `CARGO_TARGET_DIR` of their own, so the default build is not redone).

use std::cell::Cell;
use std::hint::black_box;
use std::io;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkGroup, Criterion};
use pci_config::capability::PowerManagement;
use pci_config::{
    BarDef, CapabilityId, ConfigBackend, ConfigSize, ConfigSpace, DeviceIds, HeaderType,
    PciFunction, VirtualizedConfig,
};

// The MSI-X layout the pci-config tests use.
#[path = "../../crates/pci-config/tests/common/mod.rs"]
mod common;
use common::msix_in_bar0;

/// The device behind the view: its config bytes, each access one load or store of its width.
/// The tests' `MockDevice` also checks alignment, can fail and records accesses (a `RefCell`
/// borrow, a run-time-length copy): about 9 ns of its own per access, which would hide the
/// view's cost. Accesses come naturally aligned and in range (the view guarantees it).
struct BenchDevice {
    bytes: Box<[Cell<u8>]>,
}

impl BenchDevice {
    fn new(bytes: &[u8]) -> Self {
        BenchDevice {
            bytes: bytes.iter().copied().map(Cell::new).collect(),
        }
    }
}

impl ConfigBackend for BenchDevice {
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        let cells = &self.bytes[offset as usize..offset as usize + data.len()];
        for (d, c) in data.iter_mut().zip(cells) {
            *d = c.get();
        }
        Ok(())
    }

    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        let cells = &self.bytes[offset as usize..offset as usize + data.len()];
        for (d, c) in data.iter().zip(cells) {
            c.set(*d);
        }
        Ok(())
    }
}

fn nvme() -> ConfigSpace {
    let ids = DeviceIds {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        class_code: 0x010802,
        ..Default::default()
    };
    let mut c = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
    c.set_bar(0, BarDef::memory64(0x4000).at(0xfebd_0000))
        .unwrap();
    c.add_capability(msix_in_bar0(65)).unwrap();
    c.add_capability(PowerManagement::new(true)).unwrap();
    c
}

/// A function on a VMM's bus: the config model plus what the VMM does with the write events
/// (here: looks at each one).
struct OnBus<T>(T);

impl PciFunction for OnBus<ConfigSpace> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        // A refused access has already filled `data` with all-ones.
        let _ = self.0.read(offset, data);
    }
    fn config_read_u32(&mut self, offset: u16) -> u32 {
        self.0.read_u32(offset).unwrap_or(!0)
    }
    fn config_read_u16(&mut self, offset: u16) -> u16 {
        self.0.read_u16(offset).unwrap_or(!0)
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let _ = self.0.write_with(offset, data, |e| {
            black_box(e);
        });
    }
}

impl PciFunction for OnBus<VirtualizedConfig<BenchDevice>> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let _ = self.0.read(offset, data);
    }
    fn config_read_u32(&mut self, offset: u16) -> u32 {
        self.0.read_u32(offset).unwrap_or(!0)
    }
    fn config_read_u16(&mut self, offset: u16) -> u16 {
        self.0.read_u16(offset).unwrap_or(!0)
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let _ = self.0.write_with(offset, data, |e| {
            black_box(e);
        });
    }
}

// Reads as `pci_bus::PciBus` makes them: dword and word reads by value.
fn read32(f: &mut dyn PciFunction, offset: u16) -> u32 {
    f.config_read_u32(offset)
}

fn read16(f: &mut dyn PciFunction, offset: u16) -> u16 {
    f.config_read_u16(offset)
}

fn write32(f: &mut dyn PciFunction, offset: u16, v: u32) {
    f.config_write(offset, &v.to_le_bytes());
}

fn write16(f: &mut dyn PciFunction, offset: u16, v: u16) {
    f.config_write(offset, &v.to_le_bytes());
}

/// The rows, on one function. `msix` is the offset of its MSI-X capability.
fn rows<M: Measurement>(g: &mut BenchmarkGroup<M>, f: &mut dyn PciFunction, msix: u16) {
    let f = black_box(f);
    g.bench_function("read32 vendor/device", |b| {
        b.iter(|| read32(f, black_box(0x00)))
    });
    g.bench_function("read32 BAR0", |b| b.iter(|| read32(f, black_box(0x10))));
    g.bench_function("write32 BAR0 (low dword of a 64-bit BAR)", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            write32(
                f,
                black_box(0x10),
                if flip { 0xc000_0000 } else { 0xd000_0000 },
            )
        })
    });
    g.bench_function("64-bit BAR move, low + high dword", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            let (lo, hi) = if flip {
                (0xc000_0000, 1)
            } else {
                (0xd000_0000, 2)
            };
            write32(f, black_box(0x10), lo);
            write32(f, black_box(0x14), hi);
        })
    });
    g.bench_function("BAR sizing: write ~0, read back, restore", |b| {
        b.iter(|| {
            let old = read32(f, black_box(0x10));
            write32(f, black_box(0x10), !0);
            let mask = read32(f, black_box(0x10));
            write32(f, black_box(0x10), old);
            mask
        })
    });
    g.bench_function("write16 Command", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            write16(f, black_box(0x04), if flip { 0x0006 } else { 0x0002 })
        })
    });
    g.bench_function("read16 Status", |b| b.iter(|| read16(f, black_box(0x06))));
    g.bench_function("read16 MSI-X Message Control", |b| {
        b.iter(|| read16(f, black_box(msix + 2)))
    });
    g.bench_function("256-byte dump as 64 dword reads", |b| {
        let mut dump = [0u32; 64];
        b.iter(|| {
            for (i, d) in dump.iter_mut().enumerate() {
                *d = read32(f, black_box(4 * i as u16));
            }
            black_box(&dump);
        })
    });
}

/// The floor under every row: a function that answers reads with all-ones and drops writes.
/// What it costs is the harness's own: the `dyn` call and the loop (and for writes the buffer).
///
/// Reads answer with one load of `ones`, as a model answers from its registers. A constant would
/// make the word read `mov ax, 0xffff`: an operand-size prefix on a 16-bit immediate, which the
/// decoders take slowly (a length-changing prefix), and which measured 2.4-2.6 ns on one of the
/// two word rows, against 1.36-1.40 ns for the same value loaded.
struct Floor {
    ones: u32,
}

impl PciFunction for Floor {
    fn config_read_u32(&mut self, _offset: u16) -> u32 {
        self.ones
    }
    fn config_read_u16(&mut self, _offset: u16) -> u16 {
        self.ones as u16
    }
    fn config_read(&mut self, _offset: u16, data: &mut [u8]) {
        if let Ok(b) = <&mut [u8; 4]>::try_from(&mut *data) {
            *b = [0xff; 4];
        } else if let Ok(b) = <&mut [u8; 2]>::try_from(&mut *data) {
            *b = [0xff; 2];
        } else if let [b] = data {
            *b = 0xff;
        }
    }
    fn config_write(&mut self, _offset: u16, _data: &[u8]) {}
}

fn floor<M: Measurement>(c: &mut Criterion<M>) {
    let mut g = c.benchmark_group("floor");
    rows(&mut g, &mut Floor { ones: !0 }, 0x40);
    g.finish();
}

fn config_space<M: Measurement>(c: &mut Criterion<M>) {
    let space = nvme();
    let msix = space.find_capability(CapabilityId::MSIX).unwrap().offset;
    let mut g = c.benchmark_group("config_space");
    rows(&mut g, &mut OnBus(space), msix);
    g.finish();
}

fn virtualized<M: Measurement>(c: &mut Criterion<M>) {
    // What a VMM puts in front of the device: a model from a snapshot of its config space, BAR 0
    // sized from the region info, the passthrough defaults.
    let device = nvme();
    let msix = device.find_capability(CapabilityId::MSIX).unwrap().offset;
    let mut model = ConfigSpace::from_bytes(device.bytes()).unwrap();
    model.set_bar(0, BarDef::memory64(0x4000)).unwrap();
    let view = VirtualizedConfig::passthrough(model, BenchDevice::new(device.bytes()));
    let mut g = c.benchmark_group("virtualized");
    rows(&mut g, &mut OnBus(view), msix);
    g.finish();
}

/// Criterion's clock for these rows: CPU time of the benchmark thread
/// (`CLOCK_THREAD_CPUTIME_ID`). Wall time also counts the time slices the scheduler gives to
/// other processes, which on a 2-core machine shared with builds is most of it; CPU time counts
/// only this thread's.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which is valid and ours.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as wall time's are.
        WallTime.formatter()
    }
}

fn main() {
    if std::env::var_os("BENCH_WALL_CLOCK").is_some() {
        let mut c = Criterion::default().configure_from_args();
        config_space(&mut c);
        virtualized(&mut c);
        floor(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpuTime)
            .configure_from_args();
        config_space(&mut c);
        virtualized(&mut c);
        floor(&mut c);
        c.final_summary();
    }
}
