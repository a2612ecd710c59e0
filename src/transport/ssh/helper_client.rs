//! The client of the remote helper (`syncjob helper` on the target, see
//! `crate::helper`): starts it over an exec channel and checks its greeting
//! (a helper that cannot start is a permanent error), then sends batches of
//! files as one stream of records in the wire format of
//! `proto::proto` and reads one reply per file.
//!
//! Big changed files (>= 8 MiB) that exist on the target go as rolling
//! deltas: see `super::helper_delta`.

use super::Ssh;
use super::helper_delta::{Basis, ask_hashes, send_rolling};
use super::openssh::Pipe;
use super::session::shell_quote;
use crate::helper::proto;
use crate::transport::{
    CopyCtx, OpenError, open_source, read_source_piece, temp_name, verify_unchanged,
};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// How long a starting helper may take to greet.
const GREETING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Start `CMD helper --root ROOT` on the remote and check its greeting
/// (the helper is confined to the target root; paths sent are relative to
/// it). A helper that cannot start is a permanent error (it is configured,
/// and would be missing on every retry).
pub(super) fn start_helper(
    conn: &super::Conn,
    cmd: &str,
    root: &[u8],
    label: &str,
) -> Result<Box<dyn Pipe>, OpenError> {
    let mut line = b"exec ".to_vec();
    line.extend_from_slice(&shell_quote(cmd.as_bytes()));
    line.extend_from_slice(b" helper --root ");
    line.extend_from_slice(&shell_quote(root));
    let mut ch = conn.stream(&line, false)?;
    let mut greeting = vec![0u8; proto::GREETING.len()];
    let got = if ch.readable_within(GREETING_WAIT) {
        ch.read_exact(&mut greeting)
    } else {
        Err(io::Error::new(io::ErrorKind::TimedOut, "no greeting"))
    };
    if got.is_ok() && greeting == proto::GREETING {
        return Ok(Box::new(super::buffered::Buffered::new(ch)));
    }
    let (status, err) = ch.finish();
    let said = String::from_utf8_lossy(&err).trim().to_string();
    let why = match (status, said.is_empty()) {
        (127, _) => format!("`{cmd}` not found there (exit 127)"),
        (_, false) if said.contains("'--root'") => format!(
            "the syncjob there is older than this one (its helper has no --root): update it ({said})"
        ),
        (_, false) => said,
        _ if got.is_ok() => format!(
            "`{cmd} helper` answered {:?}, not a syncjob helper of this version",
            String::from_utf8_lossy(&greeting)
        ),
        _ => format!("`{cmd} helper` exited with status {status}"),
    };
    Err(OpenError::permanent(
        io::ErrorKind::NotFound,
        format!(
            "remote helper on {label}: {why} (set ssh.remote_helper to syncjob's path there, to auto, or to none to use SFTP)"
        ),
    ))
}

/// Files at least this big that exist on the target go through the remote
/// helper as deltas.
pub(super) const DELTA_MIN: u64 = 8 << 20;

/// Streamed records are written out past this size.
pub(super) const FLUSH: usize = 256 << 10;

/// An error of the helper's stream: the connection is lost for copying.
pub(super) fn helper_lost(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("remote helper: {e}"))
}

/// A source opened for copying, with its state then.
pub(super) type Opened = (std::fs::File, std::fs::Metadata);
impl Ssh {
    /// Copy files through the remote helper: all records of the batch go
    /// out as one stream, then the replies are read (one per file sent).
    /// A big file that exists on the target goes as a rolling delta: the
    /// helper first gives the signature of its version there (see the
    /// module's comment).
    /// `Err`: the helper's stream broke (every file with it).
    pub(super) fn put_batch_helper(
        &mut self,
        items: &[(&Path, PathBuf)],
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<Vec<io::Result<u64>>> {
        use std::io::Write;
        let mut results: Vec<Option<io::Result<u64>>> = items.iter().map(|_| None).collect();
        let mut out: Vec<u8> = Vec::with_capacity(FLUSH + (64 << 10));
        // relative to the root the helper was started with
        let paths: Vec<(Vec<u8>, Vec<u8>)> = items
            .iter()
            .map(|(rel, _)| {
                let b = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
                (b(&temp_name(rel)), b(rel))
            })
            .collect();
        let ch = self.helper.as_mut().expect("helper started");
        let mut opened = open_big(items, &mut results, ctx);
        let (mut hashes, first) = ask_hashes(ch, &paths, &opened, &mut out)?;
        let mut buf = vec![0u8; 128 << 10];
        let mut sent: Vec<(usize, u64)> = Vec::with_capacity(items.len());
        // the file whose signature is still coming goes first
        let order = first
            .into_iter()
            .chain((0..items.len()).filter(|&k| Some(k) != first));
        for k in order {
            let (o, src) = (opened[k].take(), &items[k].1);
            if results[k].is_some() {
                continue;
            }
            let (input, before) = match o.map_or_else(|| open_source(src, ctx.source), Ok) {
                Ok(x) => x,
                Err(e) => {
                    results[k] = Some(Err(e));
                    continue;
                }
            };
            let file = FileOut {
                input,
                before,
                tmp: &paths[k].0,
                fin: &paths[k].1,
                preserve_owner,
            };
            let (n, fail) = file.send(ch, &mut out, &mut buf, hashes[k].take(), ctx)?;
            if let Some(e) = fail {
                results[k] = Some(Err(e));
            }
            sent.push((k, n));
        }
        // (no `flush`: libssh2's channel flush discards unread incoming
        // data, i.e. replies that already came)
        ch.write_all(&out).map_err(helper_lost)?;
        for (k, literal) in sent {
            let r = proto::read_reply(ch).map_err(helper_lost)?;
            if results[k].is_none() {
                results[k] = Some(r.map(|()| literal));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("not attempted"))))
            .collect())
    }
}

/// Big sources (delta candidates) opened first, the others as their turn
/// comes: their state then (`before`) is what the copy is checked against
/// at the end, whatever is read in between.
fn open_big(
    items: &[(&Path, PathBuf)],
    results: &mut [Option<io::Result<u64>>],
    ctx: &CopyCtx,
) -> Vec<Option<Opened>> {
    let mut opened = Vec::with_capacity(items.len());
    for (k, (rel, src)) in items.iter().enumerate() {
        // what the plan knows spares a stat (a new file has no basis)
        let big = match ctx.planned.and_then(|p| p.get(rel)) {
            Some(p) => p.on_target && p.size >= DELTA_MIN,
            None => std::fs::metadata(src).is_ok_and(|m| m.len() >= DELTA_MIN),
        };
        opened.push(None);
        if big {
            match open_source(src, ctx.source) {
                Ok(x) => opened[k] = Some(x),
                Err(e) => results[k] = Some(Err(e)),
            }
        }
    }
    opened
}

/// One file's record being sent.
struct FileOut<'p> {
    input: std::fs::File,
    before: std::fs::Metadata,
    tmp: &'p [u8],
    fin: &'p [u8],
    preserve_owner: bool,
}

impl FileOut<'_> {
    /// Header, data (whole, or a delta against `basis`), end. Returns the
    /// bytes sent and the file's own failure (a read error, a change, a
    /// shutdown: the helper then drops its temporary file); `Err`: the
    /// stream broke.
    fn send(
        mut self,
        ch: &mut Box<dyn Pipe>,
        out: &mut Vec<u8>,
        buf: &mut [u8],
        basis: Option<Basis>,
        ctx: &CopyCtx,
    ) -> io::Result<(u64, Option<io::Error>)> {
        use std::os::unix::fs::MetadataExt;
        let before = &self.before;
        proto::header(
            &proto::FileHeader {
                basis: basis.is_some(),
                tmp: self.tmp,
                fin: self.fin,
                mode: before.mode() & 0o7777,
                mtime: before.mtime(),
                mtime_ns: before.mtime_nsec() as u32,
                owner: self.preserve_owner.then(|| (before.uid(), before.gid())),
            },
            out,
        );
        let is_delta = basis.is_some();
        let (n, mut fail) = match basis {
            // a delta: copies of the blocks found, literal data between
            Some(basis) => send_rolling(ch, out, &self.input, basis, ctx)?,
            None => self.send_whole(ch, out, buf, ctx)?,
        };
        // (a delta reads the whole source)
        let read = if is_delta { self.before.len() } else { n };
        if fail.is_none()
            && let Err(e) = verify_unchanged(&self.input, &self.before, read)
        {
            fail = Some(e);
        }
        // an aborted file is removed by the helper; our reason stands
        proto::end(fail.is_none(), out);
        Ok((n, fail))
    }

    /// The whole file as data chunks.
    fn send_whole(
        &mut self,
        ch: &mut Box<dyn Pipe>,
        out: &mut Vec<u8>,
        buf: &mut [u8],
        ctx: &CopyCtx,
    ) -> io::Result<(u64, Option<io::Error>)> {
        use std::io::Write;
        let mut size = 0u64;
        loop {
            if ctx.cancelled() {
                let e = io::Error::new(io::ErrorKind::Interrupted, "aborted by shutdown");
                return Ok((size, Some(e)));
            }
            let n = match read_source_piece(&mut self.input, &self.before, size, buf) {
                Ok(0) => return Ok((size, None)),
                Ok(n) => n,
                Err(e) => return Ok((size, Some(e))),
            };
            for c in buf[..n].chunks(proto::MAX_CHUNK as usize) {
                proto::chunk(c, out);
            }
            size += n as u64;
            if out.len() >= FLUSH {
                ch.write_all(out).map_err(helper_lost)?;
                out.clear();
            }
            ctx.add_progress(n as u64);
        }
    }
}
