//! The console's input side: bytes from refvmm's standard input go to COM1's receive FIFO, so a
//! person can type into the guest's shell (or a script can pipe commands in).
//!
//! Only a terminal or a pipe is read (a file or /dev/null on stdin is left alone). A terminal
//! is put in non-canonical mode without echo, so every key reaches the guest at once and the
//! guest does the echoing; signal keys stay on, so Ctrl-C ends refvmm cleanly (see run.rs). The
//! terminal's settings are restored when the [`ConsoleInput`] is dropped.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::serial::{Com1, ConsoleOut};

/// Reads stdin into COM1 while it lives; restores the terminal when dropped.
pub struct ConsoleInput {
    saved_termios: Option<libc::termios>,
}

impl ConsoleInput {
    /// Starts feeding stdin to `com1` if stdin is a terminal or a pipe.
    pub fn start(com1: Arc<Mutex<Com1<ConsoleOut>>>) -> ConsoleInput {
        let mut input = ConsoleInput {
            saved_termios: None,
        };
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        if !tty && !stdin_is_pipe() {
            return input;
        }
        if tty {
            input.saved_termios = enter_raw_mode();
        }
        let spawned = std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || feed(com1));
        if let Err(e) = spawned {
            log::warn!("console input unavailable: {e}");
        }
        input
    }
}

impl Drop for ConsoleInput {
    fn drop(&mut self) {
        if let Some(t) = self.saved_termios {
            // SAFETY: restores settings read from the same descriptor by tcgetattr.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}

fn stdin_is_pipe() -> bool {
    // SAFETY: fstat writes into the zeroed struct we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(libc::STDIN_FILENO, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

/// Non-canonical, no echo, no CR-to-NL or flow-control translation; signals kept. The old
/// settings, to restore.
fn enter_raw_mode() -> Option<libc::termios> {
    // SAFETY: tcgetattr fills the zeroed struct we own; tcsetattr reads a copy of it.
    unsafe {
        let mut saved: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
            return None;
        }
        Some(saved)
    }
}

/// Copies stdin to the UART until end of file, waiting while the guest has not drained the
/// 64-byte FIFO (a real UART would drop the bytes; a pipe of commands should not lose any).
fn feed(com1: Arc<Mutex<Com1<ConsoleOut>>>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            // A signal for the process (SIGUSR1 asks for the reports) may land on this thread.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("console input ends: reading stdin: {e}");
                return;
            }
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let taken = com1
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue_input(rest);
            rest = &rest[taken..];
            if !rest.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}
