//! One run of the system `rsync` binary, its output read as a stream.
//!
//! Invariants: the password never appears in arguments (only the path of
//! the password file, `--password-file`, or, for a sender running as the
//! source's owner, `RSYNC_PASSWORD`; an inherited one is removed); stdout is read line by line with
//! each line bounded ([`MAX_LINE`]) and stderr keeps at most [`MAX_STDERR`]
//! bytes, because both carry text from the remote daemon; the child is
//! killed when the caller's `cancel` flag is set or a line is refused; the
//! child never outlives [`run`].

use super::sender::Sender;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The longest stdout line accepted (a listing line: 4096-byte names and
/// link targets, each byte possibly escaped as `\#ooo`, fit easily).
pub const MAX_LINE: usize = 64 * 1024;
/// The stderr kept for messages.
pub const MAX_STDERR: usize = 16 * 1024;

/// How an rsync run ended.
#[derive(Debug)]
pub struct Ended {
    /// rsync's exit code (-1 when killed by a signal)
    pub code: i32,
    pub stderr: String,
}

/// rsync refused to start the transfer for a reason retrying cannot fix
/// (auth failed, unknown module, access denied), with rsync's message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The error for a [`Refused`] run.
pub fn permanent(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused(msg))
}

/// Whether `e` is a [`Refused`] run.
pub fn is_permanent(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Refused>())
}

/// Run `rsync ARGS`, feeding `stdin` and calling `on_line` for each stdout
/// line (without its newline). An error from `on_line` kills the child and
/// is returned.
pub fn run(
    rsync: &Path,
    args: &[OsString],
    stdin: Vec<u8>,
    cancel: &AtomicBool,
    on_line: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Ended> {
    run_as(rsync, args, stdin, cancel, on_line, None)
}

/// [`run`], as `sender` when given (see [`super::sender`]).
pub fn run_as(
    rsync: &Path,
    args: &[OsString],
    stdin: Vec<u8>,
    cancel: &AtomicBool,
    on_line: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    sender: Option<&Sender>,
) -> io::Result<Ended> {
    let mut cmd = Command::new(rsync);
    cmd.args(args)
        // times in listings in UTC; names escaped byte by byte (`\#ooo`)
        .env("TZ", "UTC0")
        .env("LC_ALL", "C")
        .env_remove("RSYNC_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = sender {
        s.apply(&mut cmd);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", rsync.display())))?;
    let pid = child.id() as libc::pid_t;
    let mut input = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let done = AtomicBool::new(false);
    let (result, err_text) = std::thread::scope(|sc| {
        sc.spawn(move || {
            // a daemon that stops reading ends the run with an error below
            let _ = input.write_all(&stdin);
        });
        let err_reader = sc.spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = MAX_STDERR.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            String::from_utf8_lossy(&kept).into_owned()
        });
        let done = &done;
        sc.spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if cancel.load(Ordering::Relaxed) {
                    // SAFETY: pid is our child, not yet reaped (waited below)
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let r = read_lines(stdout, on_line);
        if r.is_err() {
            // SAFETY: as above
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let status = child.wait();
        done.store(true, Ordering::Relaxed);
        (r.and(status), err_reader.join().unwrap_or_default())
    });
    let status = result?;
    if cancel.load(Ordering::Relaxed) {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "aborted by shutdown",
        ));
    }
    Ok(Ended {
        code: status.code().unwrap_or(-1),
        stderr: err_text,
    })
}

fn read_lines(out: impl Read, on_line: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let mut r = BufReader::with_capacity(64 * 1024, out);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("rsync printed a line longer than {MAX_LINE} bytes"),
            ));
        }
        on_line(&line)?;
    }
}

/// The error for an rsync run that failed as a whole (connection, auth,
/// module, timeout), or `None` when rsync ran and only some files failed
/// (exit 23/24) or nothing failed.
pub fn whole_run_error(end: &Ended, target: &str) -> Option<io::Error> {
    let first_err = end
        .stderr
        .lines()
        .find(|l| l.starts_with("@ERROR"))
        .or_else(|| end.stderr.lines().find(|l| l.starts_with("rsync: ")))
        .or_else(|| end.stderr.lines().next())
        .unwrap_or("")
        .trim();
    let msg = format!(
        "rsync daemon {target}: {first_err} (rsync exit {})",
        end.code
    );
    match end.code {
        0 | 23 | 24 => None,
        // "max connections (N) reached -- try again later" is the one
        // start-up refusal that passes
        5 if first_err.contains("max connections") => {
            Some(io::Error::new(io::ErrorKind::ConnectionAborted, msg))
        }
        // @ERROR: auth failed, Unknown module, access denied, chdir failed
        5 => Some(permanent(msg)),
        30 | 35 => Some(io::Error::new(io::ErrorKind::TimedOut, msg)),
        // socket I/O, protocol stream, IPC, killed: the daemon or the link went away
        10 | 12 | 14 | 20 | -1 => Some(io::Error::new(io::ErrorKind::ConnectionAborted, msg)),
        _ => Some(io::Error::other(msg)),
    }
}

/// Undo rsync's escaping of names in its output (`\#ooo` for a byte that
/// is not printable, and for a `\` before `#`).
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && s.get(i + 1) == Some(&b'#')
            && s.len() >= i + 5
            && s[i + 2..i + 5].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (s[i + 2] - b'0') as u32 * 64
                + (s[i + 3] - b'0') as u32 * 8
                + (s[i + 4] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 5;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_rsync_names() {
        assert_eq!(unescape(b"new\\#012line"), b"new\nline");
        assert_eq!(unescape(b"a\\#134#b"), b"a\\#b");
        assert_eq!(unescape(b"we ird\\n"), b"we ird\\n");
        assert_eq!(unescape(b"x\\#9"), b"x\\#9");
        assert_eq!(unescape(b"\\#303\\#251t\\#303\\#251"), "été".as_bytes());
    }

    #[test]
    fn classifies_whole_run_failures() {
        let e = |code, stderr: &str| {
            whole_run_error(
                &Ended {
                    code,
                    stderr: stderr.into(),
                },
                "h",
            )
        };
        assert!(e(0, "").is_none());
        assert!(e(23, "rsync: x failed").is_none());
        let auth = e(5, "@ERROR: auth failed on module m\nrsync error: ...").unwrap();
        assert!(is_permanent(&auth));
        assert!(auth.to_string().contains("@ERROR: auth failed on module m"));
        let busy = e(5, "@ERROR: max connections (3) reached -- try again later").unwrap();
        assert!(!is_permanent(&busy));
        let down = e(10, "rsync: [Receiver] failed to connect to 127.0.0.1 (127.0.0.1): Connection refused (111)").unwrap();
        assert_eq!(down.kind(), io::ErrorKind::ConnectionAborted);
        assert!(down.to_string().contains("Connection refused"));
        assert_eq!(e(30, "timeout").unwrap().kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn long_lines_are_refused() {
        let mut n = 0;
        let big = vec![b'a'; MAX_LINE + 10];
        let r = read_lines(&big[..], &mut |_| {
            n += 1;
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(n, 0);
        let ok = read_lines(&b"a\nb\nc"[..], &mut |_| {
            n += 1;
            Ok(())
        });
        assert!(ok.is_ok());
        assert_eq!(n, 3);
    }
}
