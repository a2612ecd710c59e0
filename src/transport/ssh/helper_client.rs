//! The client of the remote helper (`syncjob helper` on the target, see
//! `crate::helper`): starts it over an exec channel and checks its greeting
//! (a helper that cannot start is a permanent error), then sends batches of
//! files as one stream of records in the wire format of
//! `proto::proto` and reads one reply per file.
//!
//! Big changed files (>= 8 MiB) that exist on the target go as rolling
//! deltas (`crate::rolling`, rsync's algorithm): the helper returns a weak
//! rolling checksum and a BLAKE3 hash for each block of its version; the
//! source is scanned at every byte offset, and a window whose weak sum
//! and BLAKE3 hash match a block is sent as "copy that block", the rest as
//! literal data. An insertion or deletion costs about one block, not the
//! rest of the file. Each copy is verified by its block's strong hash
//! (found here on the source's window, given there for the target's
//! block) and the helper checks that the target's file is the one it
//! hashed (device, inode, size, mtime, ctime); the literal data is the
//! source's bytes.

use super::Ssh;
use super::openssh::Pipe;
use super::session::shell_quote;
use crate::helper::proto;
use crate::transport::{CopyCtx, OpenError, open_source, temp_name, verify_unchanged};
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
const DELTA_MIN: u64 = 8 << 20;

/// The block size of a delta: 128 KiB, more for files over 8 GiB (at most
/// 65536 blocks).
fn delta_block(size: u64) -> u32 {
    (128u64 << 10)
        .max(size.div_ceil(65536).next_power_of_two())
        .min(64 << 20) as u32
}

/// Streamed records are written out past this size.
const FLUSH: usize = 256 << 10;

/// The BLAKE3 of each full `block` of the first `len` bytes of `f` (read
/// at offsets: the descriptor's position is left alone). Computed while
/// the helper computes its signature.
fn hash_source(f: &std::fs::File, len: u64, block: u32) -> io::Result<Local> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; block as usize];
    let mut aligned = Vec::with_capacity((len / block as u64) as usize);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(block as u64) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        if n == block as usize {
            aligned.push(crate::rolling::strong(&buf[..n]));
        }
        off += n as u64;
    }
    Ok(aligned)
}

/// The source's aligned block sums.
type Local = Vec<[u8; 32]>;

/// Adjacent copies are merged up to this length, and a copy this long is
/// written out at once, so that the helper copies while the source is
/// still scanned here.
const COPY_EAGER: u64 = 16 << 20;

/// The data of a rolling delta against the target's `sig`: copies of its
/// blocks (adjacent ones merged) and literal data, written out as they
/// come. The leading blocks that are the target's own (by the BLAKE3 sums
/// `aligned`, taken on the source) are copied without reading the source
/// again; the scan starts after them. Returns the literal bytes and the
/// file's own failure (a read error, a shutdown), if any; `Err`: the
/// stream broke.
fn send_rolling(
    ch: &mut Box<dyn Pipe>,
    out: &mut Vec<u8>,
    input: &std::fs::File,
    (sig, aligned): (&crate::rolling::Signature, &[[u8; 32]]),
    ctx: &CopyCtx,
) -> io::Result<(u64, Option<io::Error>)> {
    use crate::rolling::Op;
    use std::io::{Seek, Write};
    let mut broke: Option<io::Error> = None;
    let mut pending: Option<(u64, u64)> = None;
    let mut emit = |op: Op| {
        if ctx.cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "aborted by shutdown",
            ));
        }
        let mut now = false;
        match op {
            Op::Copy { offset, len } => {
                ctx.add_progress(len);
                now = push_copy(&mut pending, (offset, len), out);
            }
            Op::Literal(d) => {
                if let Some((at, l)) = pending.take() {
                    proto::copy(at, l as u32, out);
                }
                for c in d.chunks(proto::MAX_CHUNK as usize) {
                    proto::chunk(c, out);
                }
                ctx.add_progress(d.len() as u64);
            }
        }
        if out.len() >= FLUSH || now {
            if let Err(e) = ch.write_all(out) {
                let failed = io::Error::new(e.kind(), e.to_string());
                broke = Some(e);
                return Err(failed);
            }
            out.clear();
        }
        Ok(())
    };
    let bl = sig.block as u64;
    let start = crate::rolling::leading_run(sig, aligned) as u64 * bl;
    let mut r = Ok(());
    let mut at = 0;
    while at < start && r.is_ok() {
        let len = (start - at).min(COPY_EAGER.max(bl) / bl * bl);
        r = emit(Op::Copy { offset: at, len });
        at += len;
    }
    let r = r
        .and_then(|()| (&*input).seek(io::SeekFrom::Start(start)))
        .and_then(|_| crate::rolling::delta_from(input, start, sig, aligned, &mut emit));
    if let Some(e) = broke {
        return Err(helper_lost(e));
    }
    if let Some((at, l)) = pending.take() {
        proto::copy(at, l as u32, out);
    }
    match r {
        Ok(literal) => Ok((literal, None)),
        Err(e) => Ok((0, Some(e))),
    }
}

/// Merge a copy into `pending` or write `pending` out to `out`; `true`
/// when a copy of [`COPY_EAGER`] was written (to be sent at once).
fn push_copy(
    pending: &mut Option<(u64, u64)>,
    (offset, len): (u64, u64),
    out: &mut Vec<u8>,
) -> bool {
    *pending = match *pending {
        Some((at, l)) if at + l == offset && l + len <= COPY_EAGER => Some((at, l + len)),
        Some((at, l)) => {
            proto::copy(at, l as u32, out);
            Some((offset, len))
        }
        None => Some((offset, len)),
    };
    match *pending {
        Some((at, l)) if l >= COPY_EAGER => {
            proto::copy(at, l as u32, out);
            *pending = None;
            true
        }
        _ => false,
    }
}

/// An error of the helper's stream: the connection is lost for copying.
fn helper_lost(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("remote helper: {e}"))
}

/// A source opened for copying, with its state then.
type Opened = (std::fs::File, std::fs::Metadata);
/// The target's rolling signature of a file, and the source's sums.
type Basis = (crate::rolling::Signature, Local);

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
        let opened = open_big(items, &mut results, ctx);
        let mut hashes = ask_hashes(ch, &paths, &opened, &mut out)?;
        let mut buf = vec![0u8; 128 << 10];
        let mut sent: Vec<(usize, u64)> = Vec::with_capacity(items.len());
        for (k, (o, (_, src))) in opened.into_iter().zip(items).enumerate() {
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

/// Big files: the rolling signatures of their versions on the target.
/// `None` for a file with none there (a new file, …): it is sent whole.
fn ask_hashes(
    ch: &mut Box<dyn Pipe>,
    paths: &[(Vec<u8>, Vec<u8>)],
    opened: &[Option<Opened>],
    out: &mut Vec<u8>,
) -> io::Result<Vec<Option<Basis>>> {
    use std::io::Write;
    let mut sigs: Vec<Option<Basis>> = opened.iter().map(|_| None).collect();
    let mut asked = Vec::new();
    for (k, o) in opened.iter().enumerate() {
        if let Some((_, md)) = o
            && md.len() >= DELTA_MIN
        {
            let block = delta_block(md.len());
            crate::helper::proto_tree::signature_request(&paths[k].1, block, out);
            asked.push((k, block));
        }
    }
    if asked.is_empty() {
        return Ok(sigs);
    }
    ch.write_all(out).map_err(helper_lost)?;
    out.clear();
    // the source is hashed here while the helper reads the target there
    let (remote, local) = std::thread::scope(|sc| {
        let local: Vec<_> = asked
            .iter()
            .map(|&(k, block)| {
                let (f, md) = opened[k].as_ref().expect("asked for opened files");
                sc.spawn(move || hash_source(f, md.len(), block))
            })
            .collect();
        let remote: Vec<_> = asked
            .iter()
            .map(|&(_, block)| crate::helper::proto_tree::read_signature(ch, block))
            .collect();
        (
            remote,
            local.into_iter().map(|t| t.join()).collect::<Vec<_>>(),
        )
    });
    for ((&(k, _), r), l) in asked.iter().zip(remote).zip(local) {
        if let (Ok((_, sig)), Ok(Ok(mine))) = (r.map_err(helper_lost)?, l) {
            sigs[k] = Some((sig, mine));
        }
    }
    Ok(sigs)
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
            Some((sig, aligned)) => send_rolling(ch, out, &self.input, (&sig, &aligned), ctx)?,
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
        // the size it had when opened: a file that grew since is caught by
        // `verify_unchanged` (size, mtime, ctime), without one more read to
        // see the end
        let want = self.before.len();
        loop {
            if ctx.cancelled() {
                let e = io::Error::new(io::ErrorKind::Interrupted, "aborted by shutdown");
                return Ok((size, Some(e)));
            }
            let room = (want - size.min(want)).min(buf.len() as u64) as usize;
            if room == 0 {
                return Ok((size, None));
            }
            let n = match self.input.read(&mut buf[..room]) {
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
