//! Where trace lines go, bounded: at most `limit` lines are written, the rest are counted and
//! reported in one line at the end, so a guest writing a doorbell in a loop cannot fill the
//! disk. A sink whose writer fails (disk full, closed pipe) stops writing and says so once.

use std::io::Write;

/// The default `--trace-limit`: about 8 MiB of lines.
pub const DEFAULT_LIMIT: u64 = 100_000;

/// A bounded line writer.
pub struct TraceSink {
    out: Box<dyn Write + Send>,
    limit: u64,
    written: u64,
    dropped: u64,
    failed: Option<String>,
}

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSink")
            .field("limit", &self.limit)
            .field("written", &self.written)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl TraceSink {
    /// A sink writing at most `limit` lines to `out`.
    pub fn new(out: Box<dyn Write + Send>, limit: u64) -> Self {
        TraceSink {
            out,
            limit,
            written: 0,
            dropped: 0,
            failed: None,
        }
    }

    /// Writes `line` (without its newline), or counts it as dropped.
    pub fn line(&mut self, line: &str) {
        if self.written >= self.limit || self.failed.is_some() {
            self.dropped += 1;
            return;
        }
        match writeln!(self.out, "{line}") {
            Ok(()) => self.written += 1,
            Err(e) => {
                self.failed = Some(e.to_string());
                self.dropped += 1;
            }
        }
    }

    /// Lines written.
    #[cfg(test)]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Lines not written (over the limit, or after a write error).
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes the closing line when lines were dropped, flushes, and returns it too (for
    /// stderr when the trace goes to a file).
    pub fn finish(&mut self) -> Option<String> {
        let summary = match (&self.failed, self.dropped) {
            (_, 0) => None,
            (Some(e), n) => Some(format!(
                "trace: {n} line(s) not written: writing the trace failed after {} line(s): {e}",
                self.written
            )),
            (None, n) => Some(format!(
                "trace: {n} more line(s) dropped after the limit of {} (--trace-limit raises \
                 it; the per-register summary of --show-counters still counts them)",
                self.limit
            )),
        };
        if let Some(s) = &summary {
            if self.failed.is_none() {
                let _ = writeln!(self.out, "{s}");
            }
        }
        let _ = self.out.flush();
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::trace::capture::Shared;

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_looping_guest_is_cut_at_the_limit() {
        let out = Shared::default();
        let mut sink = TraceSink::new(Box::new(out.clone()), 3);
        for i in 0..1000 {
            sink.line(&format!("line {i}"));
        }
        assert_eq!((sink.written(), sink.dropped()), (3, 997));
        let summary = sink.finish().unwrap();
        assert!(summary.contains("997 more line(s) dropped after the limit of 3"));
        assert_eq!(out.text(), format!("line 0\nline 1\nline 2\n{summary}\n"));
    }

    #[test]
    fn nothing_dropped_nothing_said() {
        let out = Shared::default();
        let mut sink = TraceSink::new(Box::new(out.clone()), DEFAULT_LIMIT);
        sink.line("one");
        assert_eq!(sink.finish(), None);
        assert_eq!(out.text(), "one\n");
    }

    #[test]
    fn a_failing_writer_stops_the_trace_once() {
        let mut sink = TraceSink::new(Box::new(Broken), 10);
        sink.line("a");
        sink.line("b");
        assert_eq!((sink.written(), sink.dropped()), (0, 2));
        let summary = sink.finish().unwrap();
        assert!(summary.contains("writing the trace failed after 0 line(s): disk full"));
    }
}
