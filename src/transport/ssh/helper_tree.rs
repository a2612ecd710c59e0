//! The whole job through the remote helper (protocol 3, records in
//! `helper::proto_tree`): when `syncjob helper` carries a target, its
//! listing, mkdir, symlinks, attributes, removals, the root's creation and
//! checksum comparisons go to the helper too, so that no remote `find`,
//! shell command or SFTP channel is needed (a key whose forced command is
//! the helper carries a whole job).
//!
//! Invariants:
//! - The helper's listing is read as a stream and checked like `find`'s
//!   (the same parser: every name safe, its parent a listed directory,
//!   at most `ssh.max_listing_entries` entries, every length bounded by
//!   the reader); error items are kept up to [`MAX_ERRORS`], then counted.
//! - Actions are pipelined in groups of at most [`GROUP`] records, so that
//!   unread replies never fill the channel while records are still sent.
//! - A broken helper stream fails every remaining action of the call.

use super::Ssh;
use super::listing::FindParser;
use super::openssh::Pipe;
use crate::helper::proto;
use crate::helper::proto_tree::{self as pt, Item};
use crate::journal::PathError;
use crate::plan::{Action, EntryKind};
use crate::transport::{Listing, temp_name};
use crate::violation::violation;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Listing error items kept; the rest are counted.
const MAX_ERRORS: usize = 1000;
/// Records sent before their replies are read.
const GROUP: usize = 256;

fn b(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn lost(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("remote helper: {e}"))
}

impl Ssh {
    fn helper_pipe(&mut self) -> &mut Box<dyn Pipe> {
        self.helper
            .as_mut()
            .expect("the remote helper carries this target")
    }

    /// The target's listing, walked by the helper.
    pub(super) fn helper_list(&mut self) -> io::Result<Listing> {
        let max = self.max_entries;
        let label = self.label.clone();
        let ch = self.helper_pipe();
        let mut out = Vec::new();
        pt::list_request(&mut out);
        ch.write_all(&out).map_err(lost)?;
        match pt::read_list_head(ch).map_err(lost)? {
            Ok(true) => {}
            Ok(false) => return Ok(Listing::default()),
            Err(e) => return Err(e),
        }
        let mut r = io::BufReader::with_capacity(256 << 10, ch);
        let mut p = FindParser::new(max);
        let mut errors = Vec::new();
        let mut unreadable = 0u64;
        loop {
            match pt::read_item(&mut r).map_err(lost)? {
                Item::End => break,
                Item::Entry { name, entry } => p
                    .entry(&name, entry, &mut errors)
                    .map_err(|why| violation(format!("remote listing of {label}: {why}")))?,
                Item::Error { path, message } => {
                    unreadable += 1;
                    if errors.len() < MAX_ERRORS {
                        let path = crate::escape::bytes(&path);
                        errors.push(PathError { path, message });
                    }
                }
            }
        }
        // (the helper writes nothing unasked: the buffer holds no more)
        if !r.buffer().is_empty() {
            return Err(violation("remote helper: data after its listing; refused"));
        }
        if unreadable > MAX_ERRORS as u64 {
            errors.push(PathError {
                path: String::new(),
                message: format!("... {unreadable} unreadable entries on the target in all"),
            });
        }
        let tree = p.finish(&mut errors);
        if tree.is_empty() {
            return Err(violation(
                "remote helper: a listing without its root; refused",
            ));
        }
        Ok(Listing {
            tree: Some(tree),
            stream: None,
            errors,
        })
    }

    /// Records (each one reply: done or failed), sent in groups.
    fn helper_records(&mut self, records: &[Vec<u8>]) -> Vec<io::Result<()>> {
        let mut results: Vec<io::Result<()>> = Vec::with_capacity(records.len());
        let ch = self.helper_pipe();
        for group in records.chunks(GROUP) {
            let r = (|| {
                ch.write_all(&group.concat())?;
                let mut got = Vec::with_capacity(group.len());
                for _ in group {
                    got.push(proto::read_reply(ch)?);
                }
                Ok::<_, io::Error>(got)
            })();
            match r {
                Ok(got) => results.extend(got),
                Err(e) => {
                    while results.len() < records.len() {
                        results.push(Err(lost(io::Error::new(e.kind(), e.to_string()))));
                    }
                    break;
                }
            }
        }
        results
    }

    /// One record, its reply.
    pub(super) fn helper_one(&mut self, record: Vec<u8>) -> io::Result<()> {
        self.helper_records(&[record]).pop().expect("one reply")
    }

    /// `N`: rename beneath the helper's root.
    pub(super) fn helper_rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let mut out = Vec::new();
        pt::rename_request(b(from), b(to), &mut out);
        self.helper_one(out)
    }

    /// Non-copy actions through the helper, pipelined.
    pub(super) fn helper_apply(&mut self, actions: &[&Action]) -> Vec<io::Result<()>> {
        let records: Vec<Vec<u8>> = actions.iter().filter_map(|a| record(a)).collect();
        let mut done = self.helper_records(&records).into_iter();
        actions
            .iter()
            .map(|a| match a {
                Action::Copy { .. } => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "copies go through put_files",
                )),
                _ => done
                    .next()
                    .unwrap_or_else(|| Err(io::Error::other("no reply"))),
            })
            .collect()
    }

    /// Whether the target file holds the same bytes as `src` (its SHA-256,
    /// computed by the helper).
    pub(super) fn helper_same_content(
        &mut self,
        rel: &Path,
        src: &Path,
        source: Option<&crate::plan::source::SourceTree>,
    ) -> io::Result<bool> {
        use sha2::Digest;
        let mut out = Vec::new();
        pt::path_request(b'C', b(rel), &mut out);
        let ch = self.helper_pipe();
        ch.write_all(&out).map_err(lost)?;
        let (mut f, _) = crate::transport::open_source(src, source)?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let local = loop {
            match f.read(&mut buf) {
                Ok(0) => break Ok(<[u8; 32]>::from(h.finalize())),
                Ok(n) => h.update(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        // the reply is read whatever happened here
        let theirs = pt::read_sum(ch).map_err(lost)?;
        Ok(local? == theirs?)
    }
}

/// The record of one non-copy action (`None` for a copy).
pub(super) fn record(a: &Action) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match a {
        Action::Delete { path, kind, .. } => {
            pt::remove_request(b(path), *kind == EntryKind::Dir, &mut out)
        }
        Action::Mkdir { path } => pt::path_request(b'M', b(path), &mut out),
        Action::Symlink {
            path,
            target,
            mtime,
            ..
        } => pt::symlink_request(b(path), b(&temp_name(path)), b(target), *mtime, &mut out),
        Action::SetAttrs {
            path,
            kind,
            mode,
            mtime,
            owner,
            ..
        } => {
            let a = pt::Attrs {
                kind: match kind {
                    EntryKind::File => 0,
                    EntryKind::Dir => 1,
                    EntryKind::Symlink | EntryKind::Special => 2,
                },
                mode: *mode,
                mtime: *mtime,
                owner: *owner,
            };
            pt::attrs_request(b(path), &a, &mut out)
        }
        Action::Copy { .. } => return None,
    }
    Some(out)
}

/// The SFTP client's place when the helper carries the target: a pipe that
/// answers SFTP's INIT (version 3, no extensions) and fails every request
/// after it, so that no SFTP channel is opened (a forced command allows
/// none) and any SFTP use would be an error, never a panic.
pub(super) struct NoSftp {
    version: Vec<u8>,
}

impl NoSftp {
    pub(super) fn new() -> NoSftp {
        // u32 length 5, type 2 (VERSION), u32 version 3
        NoSftp {
            version: vec![0, 0, 0, 5, 2, 0, 0, 0, 3],
        }
    }
}

fn no_sftp() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "no SFTP: the remote helper carries this target",
    )
}

impl Read for NoSftp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.version.is_empty() {
            return Err(no_sftp());
        }
        let n = buf.len().min(self.version.len());
        buf[..n].copy_from_slice(&self.version[..n]);
        self.version.drain(..n);
        Ok(n)
    }
}

impl Write for NoSftp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // INIT goes before the version is read; everything after fails
        if self.version.len() == 9 {
            Ok(buf.len())
        } else {
            Err(no_sftp())
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Pipe for NoSftp {
    fn finish(&mut self) -> (i32, Vec<u8>) {
        (0, Vec::new())
    }
}
