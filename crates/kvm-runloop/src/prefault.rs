//! Faulting guest RAM in before a device pins it: in threads the VM's creation waits for
//! ([`GuestRamBacking::prefault_threads`](crate::GuestRamBacking::prefault_threads)), or in
//! threads that run alongside the VMM's own start-up ([`PrefaultJob`]).
//!
//! Each thread takes one share of RAM, cut at huge page boundaries so that no huge page is
//! split between threads, and faults it in with `MADV_POPULATE_WRITE` (Linux 5.14), which
//! changes no byte. A [`PrefaultJob`]'s threads walk their shares from the top down, because
//! the DMA pin they run alongside walks RAM from the bottom up (see [`top_down`]).

use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::ram::{RamBacking, RamBackingError, os_error};

/// One thread's part of guest RAM: host address, length, guest physical base.
#[derive(Clone, Copy)]
struct Share {
    host: usize,
    len: usize,
    gpa: u64,
}

/// The page size no share or step may cut: the hugetlb page, or a transparent huge page.
fn huge_page_bytes(backing: RamBacking) -> usize {
    match backing {
        RamBacking::Hugetlb { page_size } => page_size.bytes() as usize,
        RamBacking::Anonymous | RamBacking::Thp => 2 << 20,
    }
}

/// `memory` cut into at most `threads` lists of shares, each about the same size and made of
/// whole huge pages.
fn split(memory: &GuestMemoryMmap, backing: RamBacking, threads: usize) -> Vec<Vec<Share>> {
    let threads = threads.max(1);
    let granule = huge_page_bytes(backing);
    let total: usize = memory.iter().map(|r| r.len() as usize).sum();
    let per_thread = total
        .div_ceil(threads)
        .next_multiple_of(granule)
        .max(granule);
    let mut shares = Vec::new();
    for region in memory.iter() {
        let mmap = region.get_mmap();
        let (host, len) = (mmap.as_ptr() as usize, mmap.size());
        let mut at = 0;
        while at < len {
            let n = per_thread.min(len - at);
            shares.push(Share {
                host: host + at,
                len: n,
                gpa: region.start_addr().0 + at as u64,
            });
            at += n;
        }
    }
    shares
        .chunks(shares.len().div_ceil(threads).max(1))
        .map(<[Share]>::to_vec)
        .collect()
}

/// How much one `MADV_POPULATE_WRITE` call of a [`PrefaultJob`] covers (at least one huge
/// page): small enough that a pin walking up meets the thread walking down within a few
/// milliseconds of work, large enough that the calls cost nothing next to zeroing the pages.
const TOP_DOWN_STEP: usize = 16 << 20;

/// `shares` cut into steps of `step` bytes (a multiple of the huge page size, so no huge page
/// is cut), highest guest address first.
///
/// A device's DMA map (VFIO type1, iommufd) pins and faults in RAM from the lowest address up
/// while the job runs. A thread walking its share upwards would have the pin trail it over the
/// same pages, both waiting on the same page-table locks; walking down, the thread and the pin
/// each fault in pages the other has not reached, and meet in the middle.
fn top_down(shares: &[Share], step: usize) -> Vec<Share> {
    let mut steps: Vec<Share> = shares
        .iter()
        .flat_map(|s| {
            (0..s.len).step_by(step).map(move |at| Share {
                host: s.host + at,
                len: step.min(s.len - at),
                gpa: s.gpa + at as u64,
            })
        })
        .collect();
    steps.sort_by_key(|s| std::cmp::Reverse(s.gpa));
    steps
}

/// Faults in every page of `memory` with `threads` threads and returns when all are in.
pub(crate) fn prefault(
    memory: &GuestMemoryMmap,
    backing: RamBacking,
    threads: usize,
) -> Result<(), RamBackingError> {
    let lists = split(memory, backing, threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = lists
            .iter()
            .map(|mine| {
                scope.spawn(move || fault_in(mine, backing, Fallback::WritePages).map(drop))
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a prefault thread does not panic"))
    })
}

/// What to do on a kernel without `MADV_POPULATE_WRITE`.
#[derive(Clone, Copy)]
enum Fallback {
    /// Write each page's first byte back to itself: only while nothing else writes to RAM.
    WritePages,
    /// Nothing: pages fault in on first use.
    Skip,
}

/// Faults `shares` in, one after the other. False when the kernel has no
/// `MADV_POPULATE_WRITE` and `fallback` is [`Fallback::Skip`] (then nothing was faulted in).
fn fault_in(
    shares: &[Share],
    backing: RamBacking,
    fallback: Fallback,
) -> Result<bool, RamBackingError> {
    for s in shares {
        let done = match fallback {
            Fallback::WritePages => populate_write(s.host, s.len).map(|()| true),
            Fallback::Skip => populate_write_advice(s.host, s.len),
        };
        let done = done.map_err(|e| {
            os_error(
                "madvise(MADV_POPULATE_WRITE)",
                s.gpa,
                s.len as u64,
                backing,
                e,
            )
        })?;
        if !done {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Faults `[host, host + len)` in for writing; on a kernel without `MADV_POPULATE_WRITE`, by
/// writing each page's first byte back to itself, which is only safe while nothing else writes
/// to that memory (see [`PrefaultJob`]).
fn populate_write(host: usize, len: usize) -> io::Result<()> {
    if populate_write_advice(host, len)? {
        return Ok(());
    }
    for page in (host..host + len).step_by(4096) {
        let p = page as *mut u8;
        // SAFETY: `p` is inside a guest RAM mapping the VM owns, and nothing runs in it yet
        // (`prefault` returns before the VM does); a volatile read and write of the same value
        // faults the page in writable and leaves the contents as they were.
        unsafe { p.write_volatile(p.read_volatile()) };
    }
    Ok(())
}

/// `madvise(MADV_POPULATE_WRITE)` over `[host, host + len)`: true when the pages are in, false
/// when the kernel is older than 5.14 (EINVAL).
fn populate_write_advice(host: usize, len: usize) -> io::Result<bool> {
    // SAFETY: `[host, host + len)` lies inside a guest RAM mapping that the caller keeps mapped
    // (the VM, or the memory handle a `PrefaultJob` thread holds); MADV_POPULATE_WRITE faults
    // pages in as a write would, without changing any byte (Linux 5.14, mm/madvise.c), so it
    // is safe while the VMM or the guest writes to the same memory.
    let r = unsafe { libc::madvise(host as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) => Ok(false),
        _ => Err(e),
    }
}

/// What a finished [`PrefaultJob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefaultDone {
    /// From [`PrefaultJob::start`] to the end of its last thread.
    pub elapsed: Duration,
    /// False on a kernel older than 5.14 (no `MADV_POPULATE_WRITE`): the threads faulted
    /// nothing in, and pages fault in on first use (a DMA pin, the guest) as without a
    /// prefault. A job never falls back to writing pages, which would race the VMM's own
    /// writes.
    pub populated: bool,
}

/// Guest RAM being faulted in by threads that run while the VMM goes on with its start-up
/// (opening and resetting devices, mapping BARs), so that the zeroing of pages overlaps with
/// that work instead of coming before it.
///
/// Safe alongside anything the VMM does with guest RAM meanwhile, including loading the guest
/// and DMA-mapping RAM for a device (a pin faults in the pages no thread has reached yet): the
/// threads only ask the kernel to populate pages (`MADV_POPULATE_WRITE`), which changes no
/// byte. Each thread holds its own handle on the memory, so dropping the job without
/// [`wait`](Self::wait) lets the threads finish on their own, with nothing to report to.
///
/// ```no_run
/// # use kvm_runloop::{PrefaultJob, RamBacking, Vm, VmConfig};
/// let vm = Vm::new(&VmConfig::default())?;
/// let job = PrefaultJob::start(vm.memory(), RamBacking::Thp, 2);
/// // ... open and attach devices ...
/// let done = job.wait()?;
/// println!("RAM faulted in {:.3} s after the job started", done.elapsed.as_secs_f64());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "wait() says whether faulting RAM in failed"]
pub struct PrefaultJob {
    started: Instant,
    workers: Vec<JoinHandle<Result<(Instant, bool), RamBackingError>>>,
}

impl PrefaultJob {
    /// Starts `threads` threads (at least one) that fault in every page of `memory`, backed as
    /// `backing` says (its huge page size decides where the shares are cut).
    pub fn start(memory: &GuestMemoryMmap, backing: RamBacking, threads: usize) -> PrefaultJob {
        let started = Instant::now();
        let step = TOP_DOWN_STEP.max(huge_page_bytes(backing));
        let workers = split(memory, backing, threads)
            .into_iter()
            .map(|mine| {
                let mine = top_down(&mine, step);
                // The thread's own handle keeps the mappings alive while it works.
                let memory = memory.clone();
                std::thread::spawn(move || {
                    let _keep = memory;
                    let populated = fault_in(&mine, backing, Fallback::Skip)?;
                    Ok((Instant::now(), populated))
                })
            })
            .collect();
        PrefaultJob { started, workers }
    }

    /// True once every thread has finished (then [`wait`](Self::wait) does not block).
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every thread; the first error any of them met, or what the job did.
    pub fn wait(self) -> Result<PrefaultDone, RamBackingError> {
        let mut done = PrefaultDone {
            elapsed: Duration::ZERO,
            populated: true,
        };
        let mut first_error = None;
        for worker in self.workers {
            match worker.join().expect("a prefault thread does not panic") {
                Ok((end, populated)) => {
                    done.elapsed = done.elapsed.max(end - self.started);
                    done.populated &= populated;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::ram::{GuestRamBacking, create_guest_ram};

    fn resident_pages(memory: &GuestMemoryMmap) -> (usize, usize) {
        let (mut resident, mut total) = (0, 0);
        for region in memory.iter() {
            let mmap = region.get_mmap();
            let mut vec = vec![0u8; mmap.size() / 4096];
            // SAFETY: mincore over a whole mapping this test owns, into a vector of one byte
            // per page.
            let r = unsafe { libc::mincore(mmap.as_ptr().cast(), mmap.size(), vec.as_mut_ptr()) };
            assert_eq!(r, 0);
            resident += vec.iter().filter(|v| *v & 1 == 1).count();
            total += vec.len();
        }
        (resident, total)
    }

    fn two_regions(prefault_threads: usize) -> GuestMemoryMmap {
        create_guest_ram(
            &[(0, 8 << 20), (16 << 20, 6 << 20)],
            &GuestRamBacking {
                backing: RamBacking::Thp,
                prefault_threads,
            },
        )
        .unwrap()
    }

    #[test]
    fn shares_cover_ram_once_in_whole_huge_pages() {
        let memory = two_regions(0);
        for threads in [1, 2, 3, 7] {
            let lists = split(&memory, RamBacking::Thp, threads);
            assert!(
                lists.len() <= threads,
                "{threads} threads: {} lists",
                lists.len()
            );
            let mut shares: Vec<Share> = lists.concat();
            shares.sort_by_key(|s| s.gpa);
            let covered: usize = shares.iter().map(|s| s.len).sum();
            assert_eq!(covered, 14 << 20, "{threads} threads");
            for pair in shares.windows(2) {
                assert!(
                    pair[0].gpa + pair[0].len as u64 <= pair[1].gpa,
                    "no overlap"
                );
            }
            for s in &shares {
                assert_eq!(s.gpa % (2 << 20), 0, "a share starts on a huge page");
            }
        }
    }

    #[test]
    fn a_job_walks_each_share_top_down_in_whole_huge_pages() {
        let memory = two_regions(0);
        for threads in [1, 2, 3] {
            for list in split(&memory, RamBacking::Thp, threads) {
                let steps = top_down(&list, 4 << 20);
                let bytes = |v: &[Share]| v.iter().map(|s| s.len).sum::<usize>();
                assert_eq!(bytes(&steps), bytes(&list), "{threads} threads: same bytes");
                for pair in steps.windows(2) {
                    assert!(
                        pair[1].gpa + pair[1].len as u64 <= pair[0].gpa,
                        "{threads} threads: each step below the one before"
                    );
                }
                for s in &steps {
                    assert!(s.len <= 4 << 20 && s.gpa % (2 << 20) == 0 && s.len % (2 << 20) == 0);
                    let share = list
                        .iter()
                        .find(|l| l.gpa <= s.gpa && s.gpa < l.gpa + l.len as u64)
                        .expect("a step lies in one of the thread's shares");
                    assert_eq!(s.host - share.host, (s.gpa - share.gpa) as usize);
                }
            }
        }
    }

    #[test]
    fn ram_is_prefaulted_by_several_threads_before_the_vm_is_returned() {
        let memory = two_regions(3);
        assert_eq!(memory.iter().count(), 2);
        // Prefaulting leaves the contents as they were: zero.
        let mut b = [1u8; 16];
        memory
            .read_slice(&mut b, GuestAddress((16 << 20) + 4096))
            .unwrap();
        assert_eq!(b, [0; 16]);
        let (resident, total) = resident_pages(&memory);
        assert_eq!(resident, total, "every page resident");
    }

    #[test]
    fn without_prefault_pages_stay_unfaulted() {
        let memory = create_guest_ram(&[(0, 4 << 20)], &GuestRamBacking::default()).unwrap();
        assert_eq!(resident_pages(&memory).0, 0, "no page resident");
    }

    /// The job runs while the VMM writes to RAM (here: before the threads get there and while
    /// they run), and changes none of it.
    #[test]
    fn a_background_job_faults_everything_in_and_keeps_what_the_vmm_wrote() {
        let memory = two_regions(0);
        memory
            .write_slice(b"loaded early", GuestAddress(0x1000))
            .unwrap();
        let job = PrefaultJob::start(&memory, RamBacking::Thp, 2);
        memory
            .write_slice(b"loaded meanwhile", GuestAddress((16 << 20) + 0x2000))
            .unwrap();
        let done = job.wait().unwrap();
        let mut b = [0u8; 16];
        memory
            .read_slice(&mut b, GuestAddress((16 << 20) + 0x2000))
            .unwrap();
        assert_eq!(&b, b"loaded meanwhile");
        let mut b = [0u8; 12];
        memory.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(&b, b"loaded early");
        if done.populated {
            let (resident, total) = resident_pages(&memory);
            assert_eq!(resident, total, "every page resident");
        } else {
            eprintln!("NOTE: this kernel has no MADV_POPULATE_WRITE; the job faulted nothing in");
        }
    }

    /// A job's threads hold their own handle on the memory: the caller may drop its own
    /// before waiting (the threads would fault on unmapped memory otherwise).
    #[test]
    fn a_job_outlives_the_callers_memory_handle() {
        let memory = two_regions(0);
        let job = PrefaultJob::start(&memory, RamBacking::Thp, 2);
        drop(memory);
        let done = job.wait().unwrap();
        assert!(done.elapsed > Duration::ZERO);
    }
}
