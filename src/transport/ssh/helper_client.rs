//! The client of the remote helper (`syncjob helper` on the target, see
//! `crate::helper`): starts it over an exec channel and checks its greeting
//! (a helper that cannot start is a permanent error), then sends batches of
//! files as one stream of records in the wire format of
//! `proto::proto` and reads one reply per file.
//!
//! Big changed files (>= 8 MiB) that exist on the target go as deltas: the
//! helper returns the SHA-256 of each block of its version while the
//! source's blocks are hashed here; only differing blocks are sent.

use super::Ssh;
use super::session::shell_quote;
use crate::helper::proto;
use crate::transport::{CopyCtx, OpenError, open_source, temp_name, verify_unchanged};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Start `CMD helper` on the remote and check its greeting. A helper that
/// cannot start is a permanent error (it is configured, and would be
/// missing on every retry).
pub(super) fn start_helper(
    sess: &ssh2::Session,
    cmd: &str,
    label: &str,
) -> Result<ssh2::Channel, OpenError> {
    let mut ch = sess.channel_session().map_err(io::Error::from)?;
    let mut line = b"exec ".to_vec();
    line.extend_from_slice(&shell_quote(cmd.as_bytes()));
    line.extend_from_slice(b" helper");
    ch.exec(&String::from_utf8_lossy(&line))
        .map_err(io::Error::from)?;
    let mut greeting = vec![0u8; proto::GREETING.len()];
    let got = ch.read_exact(&mut greeting);
    if got.is_ok() && greeting == proto::GREETING {
        return Ok(ch);
    }
    let mut err = Vec::new();
    let _ = ch.stderr().read_to_end(&mut err);
    let _ = ch.wait_close();
    let status = ch.exit_status().unwrap_or(-1);
    let said = String::from_utf8_lossy(&err).trim().to_string();
    let why = match (status, said.is_empty()) {
        (127, _) => format!("`{cmd}` not found there (exit 127)"),
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
            "remote helper on {label}: {why} (set ssh.remote_helper to syncjob's path there, or remove it to use SFTP)"
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

/// The SHA-256 of each `block` of the first `len` bytes of `f` (read at
/// offsets: the descriptor's position is left alone).
fn hash_source(f: &std::fs::File, len: u64, block: u32) -> io::Result<Vec<[u8; 32]>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; block as usize];
    let mut sums = Vec::with_capacity(len.div_ceil(block as u64) as usize);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(block as u64) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        sums.push(proto::block_sum(&buf[..n]));
        off += n as u64;
    }
    Ok(sums)
}

/// The data of a delta: runs of equal blocks as copies, the others read
/// (at their offsets) and sent. Returns the bytes sent and the file's own
/// failure (a read error, a shutdown), if any; `Err`: the stream broke.
#[allow(clippy::too_many_arguments)]
fn send_delta(
    ch: &mut ssh2::Channel,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    input: &std::fs::File,
    len: u64,
    theirs: &proto::Hashes,
    mine: &[[u8; 32]],
    ctx: &CopyCtx,
) -> io::Result<(u64, Option<io::Error>)> {
    use proto::{chunk, copy};
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let block = theirs.block as u64;
    if buf.len() < block as usize {
        buf.resize(block as usize, 0);
    }
    let mut pending: Option<(u64, u64)> = None;
    let mut literal = 0u64;
    let mut off = 0u64;
    for (i, sum) in mine.iter().enumerate() {
        if ctx.cancelled() {
            let e = io::Error::new(io::ErrorKind::Interrupted, "aborted by shutdown");
            return Ok((literal, Some(e)));
        }
        let n = (len - off).min(block);
        if theirs.sums.get(i) == Some(sum) {
            pending = match pending {
                Some((at, l)) if at + l == off && l < (1 << 30) => Some((at, l + n)),
                Some((at, l)) => {
                    copy(at, l as u32, out);
                    Some((off, n))
                }
                None => Some((off, n)),
            };
        } else {
            if let Some((at, l)) = pending.take() {
                copy(at, l as u32, out);
            }
            let data = &mut buf[..n as usize];
            if let Err(e) = input.read_exact_at(data, off) {
                return Ok((literal, Some(e)));
            }
            for c in data.chunks(proto::MAX_CHUNK as usize) {
                chunk(c, out);
            }
            literal += n;
        }
        off += n;
        if out.len() >= FLUSH {
            ch.write_all(out)?;
            out.clear();
        }
        ctx.add_progress(n);
    }
    if let Some((at, l)) = pending.take() {
        copy(at, l as u32, out);
    }
    Ok((literal, None))
}

/// An error of the helper's stream: the connection is lost for copying.
fn helper_lost(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("remote helper: {e}"))
}

/// A source opened for copying, with its state then.
type Opened = (std::fs::File, std::fs::Metadata);
/// The target's block hashes of a file and the source's.
type Basis = (proto::Hashes, Vec<[u8; 32]>);

impl Ssh {
    /// Copy files through the remote helper: all records of the batch go
    /// out as one stream, then the replies are read (one per file sent).
    /// A big file that exists on the target goes as a delta: the helper
    /// first gives the SHA-256 of each block of its version there, and only
    /// the blocks that differ are sent (the others are copied there).
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
        let paths: Vec<(Vec<u8>, Vec<u8>)> = items
            .iter()
            .map(|(rel, _)| (self.path(&temp_name(rel)), self.path(rel)))
            .collect();
        let ch = self.helper.as_mut().expect("helper started");
        let opened = open_big(items, &mut results);
        let mut hashes = ask_hashes(ch, &paths, &opened, &mut out)?;
        let mut buf = vec![0u8; 128 << 10];
        let mut sent: Vec<(usize, u64)> = Vec::with_capacity(items.len());
        for (k, (o, (_, src))) in opened.into_iter().zip(items).enumerate() {
            if results[k].is_some() {
                continue;
            }
            let (input, before) = match o.map_or_else(|| open_source(src), Ok) {
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
) -> Vec<Option<Opened>> {
    let mut opened = Vec::with_capacity(items.len());
    for (k, (_, src)) in items.iter().enumerate() {
        let big = std::fs::metadata(src).is_ok_and(|m| m.len() >= DELTA_MIN);
        opened.push(None);
        if big {
            match open_source(src) {
                Ok(x) => opened[k] = Some(x),
                Err(e) => results[k] = Some(Err(e)),
            }
        }
    }
    opened
}

/// Big files: the block hashes of their versions on the target, asked for
/// while the source's blocks are hashed here. `None` for a file with no
/// hashes there (a new file, …) or here: it is sent whole.
fn ask_hashes(
    ch: &mut ssh2::Channel,
    paths: &[(Vec<u8>, Vec<u8>)],
    opened: &[Option<Opened>],
    out: &mut Vec<u8>,
) -> io::Result<Vec<Option<Basis>>> {
    use std::io::Write;
    let mut hashes: Vec<Option<Basis>> = opened.iter().map(|_| None).collect();
    let mut asked = Vec::new();
    for (k, o) in opened.iter().enumerate() {
        if let Some((_, md)) = o
            && md.len() >= DELTA_MIN
        {
            let block = delta_block(md.len());
            proto::hashes_request(&paths[k].1, block, out);
            asked.push((k, block));
        }
    }
    if asked.is_empty() {
        return Ok(hashes);
    }
    ch.write_all(out).map_err(helper_lost)?;
    out.clear();
    let (remote, local) = std::thread::scope(|sc| {
        let local: Vec<_> = asked
            .iter()
            .map(|&(k, block)| {
                let (f, md) = opened[k].as_ref().unwrap();
                sc.spawn(move || hash_source(f, md.len(), block))
            })
            .collect();
        let remote: Vec<_> = asked
            .iter()
            .map(|&(_, block)| proto::read_hashes(ch, block))
            .collect();
        (
            remote,
            local.into_iter().map(|t| t.join()).collect::<Vec<_>>(),
        )
    });
    for ((&(k, _), r), l) in asked.iter().zip(remote).zip(local) {
        if let (Ok(h), Ok(Ok(mine))) = (r.map_err(helper_lost)?, l) {
            hashes[k] = Some((h, mine));
        }
    }
    Ok(hashes)
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
        ch: &mut ssh2::Channel,
        out: &mut Vec<u8>,
        buf: &mut Vec<u8>,
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
            // a delta: blocks that differ are read and sent, the others
            // copied there from the old version
            Some((theirs, mine)) => {
                let len = before.len();
                send_delta(ch, out, buf, &self.input, len, &theirs, &mine, ctx)
                    .map_err(helper_lost)?
            }
            None => self.send_whole(ch, out, buf, ctx)?,
        };
        // (a delta reads the whole source, at its blocks' offsets)
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
        ch: &mut ssh2::Channel,
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
            let n = match self.input.read(buf) {
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
