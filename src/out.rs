//! Printing that never panics: `outln!`/`out!` write to stdout and
//! `errln!` to stderr, ignoring write errors; `say` writes one daemon
//! line (escaped, with journald's `<N>` priority under systemd).
//!
//! Invariant: a closed stdout or stderr (`syncjob next JOB | head -1`, a
//! daemon whose stderr pipe or journal went away) never ends the process:
//! output stops, the work (a run, the daemon) goes on and its exit code is
//! what it would have been. std's `print!` family panics on such errors
//! (exit 101); these macros are used instead everywhere in the crate.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Write to stdout; on error (EPIPE, ...) remember that stdout is gone.
pub fn stdout(args: std::fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if o.write_fmt(args).and_then(|_| o.flush()).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Write to stderr, ignoring errors.
pub fn stderr(args: std::fmt::Arguments) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Whether a write to stdout has failed (its reader went away): commands
/// that only print may stop early.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `print!` that ignores a closed stdout.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*)) };
}

/// `crate::outln!` that ignores a closed stdout.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `crate::errln!` that ignores a closed stderr.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

/// How bad a daemon line is (journald's priorities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Info = 6,
}

/// One line to stderr, escaped (`escape::text`); with the `<N>` priority
/// prefix journald understands when stderr goes to the journal.
pub fn say(level: Level, msg: &str) {
    // names from the trees or the remote: never a raw newline (a forged
    // `<0>` line) or terminal sequence
    let msg = crate::escape::text(msg);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        crate::errln!("<{}>{msg}", level as u8);
    } else {
        let tag = match level {
            Level::Error => "ERROR",
            Level::Warning => "WARN",
            Level::Info => "INFO",
        };
        crate::errln!("{} {tag} {msg}", crate::journal::now_rfc3339());
    }
}
