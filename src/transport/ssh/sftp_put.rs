//! Writes to an SSH target over SFTP (own v3 client, `sftp.rs`): each
//! file goes to a temporary name beside its final one, its data WRITEs
//! pipelined, mode and mtime set on the open handle (`fsetstat`), then it
//! is renamed over the final name with `posix-rename@openssh.com` (atomic).
//! A batch of files, and of other actions, is pipelined phase by phase
//! (open; data, attributes and close; rename), so small files do not pay a
//! round trip each. A failed file's temporary is removed; nothing is ever
//! left half-written at a final name.

use super::Ssh;
use super::sftp::{self, Attrs, FXF_CREAT, FXF_EXCL, FXF_WRITE, Reply, secs32};
use crate::plan::{Action, EntryKind};
use crate::transport::{
    CopyCtx, apply_one, open_source, read_source_piece, temp_name, verify_unchanged,
};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

impl Ssh {
    /// SFTP v3 reports a full disk (and quota) only as a generic "Failure".
    /// When a write or close fails so, ask the server how much room is left
    /// (`statvfs@openssh.com`) and say "no space" when the file cannot fit.
    pub(super) fn explain_failure(&mut self, e: io::Error, src: &Path) -> io::Error {
        let msg = e.to_string();
        let generic = e.kind() == io::ErrorKind::Other
            && (msg.ends_with(": Failure") || msg.ends_with(": failure"));
        if !generic {
            return e;
        }
        let need = std::fs::metadata(src).map(|m| m.len()).unwrap_or(0);
        let root = self.root.clone();
        match self.sftp.avail_bytes(&root) {
            Ok(Some(avail)) if avail < need.max(1) => io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{msg}: no space left on device on the target ({avail} bytes free, the file needs {need})"
                ),
            ),
            _ => e,
        }
    }

    fn wait_ok(&mut self, id: u32, what: &str) -> io::Result<()> {
        self.sftp.wait(id)?.ok(what)
    }

    /// Non-copy actions, pipelined (symlinks one by one), each only below
    /// checked parents (`sftp_guard`). Directories are made level by level
    /// (a directory made in this batch is a checked parent of the next).
    pub(super) fn apply_pipelined(&mut self, actions: &[&Action]) -> Vec<io::Result<()>> {
        self.sftp.verified.new_batch();
        let all: Vec<usize> = (0..actions.len()).collect();
        match actions.first() {
            Some(Action::Symlink { .. }) => actions.iter().map(|a| apply_one(self, a)).collect(),
            Some(Action::SetAttrs { .. }) => self.set_attrs_batch(actions),
            Some(Action::Mkdir { .. }) => {
                let mut out: Vec<io::Result<()>> = actions.iter().map(|_| Ok(())).collect();
                let depth = |a: &Action| a.path().components().count();
                let max = actions.iter().map(|a| depth(a)).max().unwrap_or(0);
                for level in 1..=max {
                    let these: Vec<usize> = all
                        .iter()
                        .copied()
                        .filter(|&k| depth(actions[k]) == level)
                        .collect();
                    for (k, r) in these.iter().zip(self.send_and_wait(actions, &these)) {
                        out[*k] = r;
                    }
                }
                out
            }
            _ => self.send_and_wait(actions, &all),
        }
    }

    /// Set attributes for a batch of SetAttrs actions.
    fn set_attrs_batch(&mut self, actions: &[&Action]) -> Vec<io::Result<()>> {
        let items: Vec<(&Path, EntryKind, Attrs)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::SetAttrs {
                    path,
                    kind,
                    mode,
                    mtime,
                    owner,
                    ..
                } => Some((
                    path.as_path(),
                    *kind,
                    attrs_for(*kind, *mode, *mtime, *owner),
                )),
                _ => None,
            })
            .collect();
        if items.len() != actions.len() {
            return actions.iter().map(|a| apply_one(self, a)).collect();
        }
        match self.set_attrs_many(&items) {
            Ok(r) => r,
            Err(e) => actions
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }

    /// Check the parents of `actions[which]`, send the requests of those
    /// below checked parents, and wait for the replies; one result each.
    fn send_and_wait(&mut self, actions: &[&Action], which: &[usize]) -> Vec<io::Result<()>> {
        let rels: Vec<&Path> = which.iter().map(|&k| actions[k].path()).collect();
        let checked = match self.check_parents(&rels) {
            Ok(c) => c,
            Err(e) => {
                return which
                    .iter()
                    .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                    .collect();
            }
        };
        let mut sent = Vec::with_capacity(which.len());
        let mut broken: Option<io::Error> = None;
        for (&k, c) in which.iter().zip(checked) {
            if let Some(e) = &broken {
                // nothing more can be sent on a broken channel
                sent.push(Err(io::Error::new(e.kind(), e.to_string())));
                continue;
            }
            match c.and_then(|()| self.send_action(actions[k])) {
                Ok(id) => sent.push(Ok(id)),
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                    broken = Some(io::Error::new(e.kind(), e.to_string()));
                    sent.push(Err(e));
                }
                Err(e) => sent.push(Err(e)),
            }
        }
        which
            .iter()
            .zip(sent)
            .map(|(&k, s)| self.action_reply(actions[k], s))
            .collect()
    }

    /// The outcome of one sent action; remembers made and removed
    /// directories.
    fn action_reply(&mut self, a: &Action, sent: io::Result<u32>) -> io::Result<()> {
        let reply = self.sftp.wait(sent?)?;
        let dir_delete = matches!(
            a,
            Action::Delete {
                kind: EntryKind::Dir,
                ..
            }
        );
        match reply {
            Reply::Status(0, _) => {
                match a {
                    Action::Mkdir { .. } => self.sftp.verified.add(a.path()),
                    Action::Delete { .. } => self.sftp.verified.forget(a.path()),
                    _ => {}
                }
                Ok(())
            }
            Reply::Status(4, _) if dir_delete => Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                "directory not empty",
            )),
            other => Err(other.into_err(match a {
                Action::Delete { .. } => "remove",
                _ => "mkdir",
            })),
        }
    }

    /// One operation alone (a batch of its own): fails when a parent of
    /// `rel` is not a real directory.
    fn check_one(&mut self, rel: &Path) -> io::Result<()> {
        self.sftp.verified.new_batch();
        self.check_parents(&[rel])?.pop().unwrap_or(Ok(()))
    }

    pub(super) fn sftp_mkdir(&mut self, rel: &Path) -> io::Result<()> {
        self.check_one(rel)?;
        let p = self.path(rel);
        let id = self.sftp.mkdir(
            &p,
            &Attrs {
                perm: Some(0o700),
                ..Default::default()
            },
        )?;
        self.wait_ok(id, "mkdir")?;
        self.sftp.verified.add(rel);
        Ok(())
    }

    /// One file, alone (a retry after it changed while being copied).
    pub(super) fn sftp_put_file(
        &mut self,
        rel: &Path,
        src: &Path,
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        self.check_one(rel)?;
        let (mut input, before) = open_source(src, ctx.source)?;
        let tmp = self.path(&temp_name(rel));
        let fin = self.path(rel);
        let id = self.sftp.open(
            &tmp,
            FXF_WRITE | FXF_CREAT | FXF_EXCL,
            &Attrs {
                perm: Some(0o600),
                ..Default::default()
            },
        )?;
        let handle = self.sftp.handle(id, "create temporary file")?;
        let result = (|| {
            let mut ids = Vec::new();
            let mut off = 0u64;
            let mut buf = vec![0u8; sftp::WRITE_CHUNK];
            loop {
                if ctx.cancelled() {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "aborted by shutdown",
                    ));
                }
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                ids.push(self.sftp.write(&handle, off, &buf[..n])?);
                off += n as u64;
                ctx.add_progress(n as u64);
            }
            let mut first_err = None;
            for id in ids {
                if let Err(e) = self.sftp.wait(id)?.ok("write") {
                    first_err.get_or_insert(e);
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            verify_unchanged(&input, &before, off)?;
            let attrs = Attrs {
                perm: Some(before.mode() & 0o7777),
                times: Some((secs32(before.atime()), secs32(before.mtime()))),
                uid_gid: preserve_owner.then_some((before.uid(), before.gid())),
                size: None,
            };
            let a = self.sftp.fsetstat(&handle, &attrs)?;
            let c = self.sftp.close(&handle)?;
            let ra = self.sftp.wait(a)?;
            let rc = self.sftp.wait(c)?;
            ra.ok("set mode and mtime")?;
            rc.ok("close")?;
            self.rename_over(&tmp, &fin)?;
            Ok(off)
        })();
        if result.is_err() {
            // best effort: the handle may still be open
            if let Ok(c) = self.sftp.close(&handle) {
                let _ = self.sftp.wait(c);
            }
            if let Ok(r) = self.sftp.remove(&tmp) {
                let _ = self.sftp.wait(r);
            }
        } else {
            // as in a batch: an mtime SFTP cannot carry is set by `touch`
            self.fix_old_times(std::iter::once((fin, before.mtime())));
        }
        result.map_err(|e| self.explain_failure(e, src))
    }

    pub(super) fn sftp_symlink(
        &mut self,
        rel: &Path,
        target: &Path,
        mtime: Option<(i64, u32)>,
    ) -> io::Result<()> {
        self.check_one(rel)?;
        let tmp = self.path(&temp_name(rel));
        let fin = self.path(rel);
        let id = self.sftp.symlink(&tmp, target.as_os_str().as_bytes())?;
        self.wait_ok(id, "symlink")?;
        if let Some((s, _)) = mtime
            && self.sftp.lsetstat
        {
            let id = self.sftp.lsetstat(
                &tmp,
                &Attrs {
                    times: Some((secs32(s), secs32(s))),
                    ..Default::default()
                },
            )?;
            let _ = self.sftp.wait(id)?;
        }
        self.rename_over(&tmp, &fin).inspect_err(|_| {
            if let Ok(r) = self.sftp.remove(&tmp) {
                let _ = self.sftp.wait(r);
            }
        })
    }

    pub(super) fn sftp_set_attrs(
        &mut self,
        rel: &Path,
        kind: EntryKind,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        let attrs = attrs_for(kind, mode, mtime, owner);
        self.sftp.verified.new_batch();
        self.set_attrs_many(&[(rel, kind, attrs)])?
            .pop()
            .unwrap_or(Ok(()))
    }

    pub(super) fn sftp_remove(&mut self, rel: &Path, kind: EntryKind) -> io::Result<()> {
        self.check_one(rel)?;
        let p = self.path(rel);
        if kind == EntryKind::Dir {
            let id = self.sftp.rmdir(&p)?;
            match self.sftp.wait(id)? {
                Reply::Status(0, _) => {
                    self.sftp.verified.forget(rel);
                    Ok(())
                }
                // OpenSSH answers a non-empty directory with a plain failure
                Reply::Status(4, _) => Err(io::Error::new(
                    io::ErrorKind::DirectoryNotEmpty,
                    "directory not empty",
                )),
                other => Err(other.into_err("rmdir")),
            }
        } else {
            let id = self.sftp.remove(&p)?;
            self.wait_ok(id, "remove")
        }
    }
}

/// One file of a pipelined batch.
struct Put {
    tmp: Vec<u8>,
    fin: Vec<u8>,
    input: Option<(std::fs::File, std::fs::Metadata)>,
    handle: Option<Vec<u8>>,
    result: Option<io::Result<u64>>,
}

impl Ssh {
    /// Pipelined upload of several files: all OPENs, then all WRITEs, then
    /// all FSETSTAT+CLOSE, then all renames, each phase sent before its
    /// replies are read, so a batch costs a few round trips, not a few per file.
    /// `Err`: the session failed (every file with it).
    pub(super) fn put_batch(
        &mut self,
        items: &[(&Path, PathBuf)],
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<Vec<io::Result<u64>>> {
        self.sftp.verified.new_batch();
        let mut puts = self.open_all(items, ctx)?;
        let sizes = self.write_all(&mut puts, preserve_owner, ctx)?;
        self.rename_all(&mut puts, &sizes)?;
        // (the mtimes of the sources as they were read: no stat again)
        use std::os::unix::fs::MetadataExt;
        let written = puts
            .iter()
            .filter(|p| matches!(p.result, Some(Ok(_))))
            .filter_map(|p| Some((p.fin.clone(), p.input.as_ref()?.1.mtime())));
        self.fix_old_times(written);
        Ok(puts
            .into_iter()
            .map(|p| {
                p.result
                    .unwrap_or_else(|| Err(io::Error::other("not attempted")))
            })
            .collect())
    }

    /// Phase 1: check the parents (`sftp_guard`), open each source and
    /// create its temporary file (O_EXCL).
    fn open_all(&mut self, items: &[(&Path, PathBuf)], ctx: &CopyCtx) -> io::Result<Vec<Put>> {
        let mut puts: Vec<Put> = Vec::with_capacity(items.len());
        let mut open_ids = Vec::new();
        let rels: Vec<&Path> = items.iter().map(|(r, _)| *r).collect();
        let checked = self.check_parents(&rels)?;
        for ((rel, src), checked) in items.iter().zip(checked) {
            let mut p = Put {
                tmp: self.path(&temp_name(rel)),
                fin: self.path(rel),
                input: None,
                handle: None,
                result: None,
            };
            match checked.and_then(|()| open_source(src, ctx.source)) {
                Ok(x) => {
                    p.input = Some(x);
                    let id = self.sftp.open(
                        &p.tmp,
                        FXF_WRITE | FXF_CREAT | FXF_EXCL,
                        &Attrs {
                            perm: Some(0o600),
                            ..Default::default()
                        },
                    )?;
                    open_ids.push((puts.len(), id));
                }
                Err(e) => p.result = Some(Err(e)),
            }
            puts.push(p);
        }
        for (k, id) in open_ids {
            match self.sftp.wait(id)? {
                Reply::Handle(h) => puts[k].handle = Some(h),
                other => puts[k].result = Some(Err(other.into_err("create temporary file"))),
            }
        }
        Ok(puts)
    }

    /// Phase 2: the data, file after file, many requests in flight, each
    /// file's mode and mtime set on its handle and the handle closed right
    /// after its data (the server answers in order; nothing is renamed
    /// before all of it is answered); the bytes written per file.
    fn write_all(
        &mut self,
        puts: &mut [Put],
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<Vec<u64>> {
        let mut buf = vec![0u8; sftp::WRITE_CHUNK];
        let mut write_ids: Vec<(usize, u32)> = Vec::new();
        let mut tail_ids: Vec<(usize, Option<u32>, u32)> = Vec::new();
        let mut sizes = vec![0u64; puts.len()];
        for (k, p) in puts.iter_mut().enumerate() {
            let (Some(h), Some((input, before))) = (&p.handle, &mut p.input) else {
                continue;
            };
            loop {
                if ctx.cancelled() {
                    p.result = Some(Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "aborted by shutdown",
                    )));
                    break;
                }
                let n = match read_source_piece(input, before, sizes[k], &mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        p.result = Some(Err(e));
                        break;
                    }
                };
                write_ids.push((k, self.sftp.write(h, sizes[k], &buf[..n])?));
                sizes[k] += n as u64;
                ctx.add_progress(n as u64);
            }
            let (set, close) = self.finish_file(p, sizes[k], preserve_owner)?;
            tail_ids.push((k, set, close));
        }
        for (k, id) in write_ids {
            if let Err(e) = self.sftp.wait(id)?.ok("write")
                && puts[k].result.is_none()
            {
                puts[k].result = Some(Err(e));
            }
        }
        for (k, set, close) in tail_ids {
            if let Some(set) = set
                && let Err(e) = self.sftp.wait(set)?.ok("set mode and mtime")
            {
                puts[k].result.get_or_insert(Err(e));
            }
            if let Err(e) = self.sftp.wait(close)?.ok("close") {
                puts[k].result.get_or_insert(Err(e));
            }
        }
        Ok(sizes)
    }

    /// After a file's data: check its source did not change, set mode and
    /// mtime on the handle (not for a failed file), close it. The ids of
    /// the two requests.
    fn finish_file(
        &mut self,
        p: &mut Put,
        size: u64,
        preserve_owner: bool,
    ) -> io::Result<(Option<u32>, u32)> {
        use std::os::unix::fs::MetadataExt;
        let h = p.handle.take().expect("an open handle");
        let (input, before) = p.input.as_ref().expect("an open source");
        if p.result.is_none()
            && let Err(e) = verify_unchanged(input, before, size)
        {
            p.result = Some(Err(e));
        }
        let set = if p.result.is_none() {
            let attrs = Attrs {
                perm: Some(before.mode() & 0o7777),
                times: Some((secs32(before.atime()), secs32(before.mtime()))),
                uid_gid: preserve_owner.then_some((before.uid(), before.gid())),
                size: None,
            };
            Some(self.sftp.fsetstat(&h, &attrs)?)
        } else {
            None
        };
        Ok((set, self.sftp.close(&h)?))
    }

    /// Phase 3: rename the complete files into place; remove the
    /// temporaries of the others.
    fn rename_all(&mut self, puts: &mut [Put], sizes: &[u64]) -> io::Result<()> {
        let mut last_ids: Vec<(usize, u32, bool)> = Vec::new();
        for (k, p) in puts.iter().enumerate() {
            if p.input.is_none() {
                continue;
            }
            if p.result.is_none() {
                let id = if self.sftp.posix_rename {
                    self.sftp.posix_rename(&p.tmp, &p.fin)?
                } else {
                    let r = self.sftp.remove(&p.fin)?;
                    let _ = self.sftp.wait(r)?;
                    self.sftp.send_rename(&p.tmp, &p.fin)?
                };
                last_ids.push((k, id, true));
            } else {
                last_ids.push((k, self.sftp.remove(&p.tmp)?, false));
            }
        }
        let mut cleanup = Vec::new();
        for (k, id, is_rename) in last_ids {
            let r = self.sftp.wait(id)?;
            if is_rename {
                match r.ok("rename into place") {
                    Ok(()) => puts[k].result = Some(Ok(sizes[k])),
                    Err(e) => {
                        puts[k].result = Some(Err(e));
                        cleanup.push(self.sftp.remove(&puts[k].tmp)?);
                    }
                }
            }
        }
        for id in cleanup {
            let _ = self.sftp.wait(id)?;
        }
        Ok(())
    }

    /// Send the request for one non-copy action; the id of its reply.
    fn send_action(&mut self, a: &Action) -> io::Result<u32> {
        let p = self.path(a.path());
        Ok(match a {
            Action::Delete {
                kind: EntryKind::Dir,
                ..
            } => self.sftp.rmdir(&p)?,
            Action::Delete { .. } => self.sftp.remove(&p)?,
            Action::Mkdir { .. } => self.sftp.mkdir(
                &p,
                &Attrs {
                    perm: Some(0o700),
                    ..Default::default()
                },
            )?,
            Action::SetAttrs { .. } | Action::Symlink { .. } | Action::Copy { .. } => {
                return Err(io::Error::other("not pipelined"));
            }
        })
    }

    /// Rename `tmp` over `fin` atomically (posix-rename); without that
    /// extension, remove then rename (a short window without the file).
    fn rename_over(&mut self, tmp: &[u8], fin: &[u8]) -> io::Result<()> {
        if self.sftp.posix_rename {
            let id = self.sftp.posix_rename(tmp, fin)?;
            return self.wait_ok(id, "rename into place");
        }
        let r = self.sftp.remove(fin)?;
        let _ = self.sftp.wait(r)?;
        let id = self.sftp.send_rename(tmp, fin)?;
        self.wait_ok(id, "rename into place")
    }
}

/// The attributes SFTP sets for an entry (a symlink has no mode of its own).
fn attrs_for(
    kind: EntryKind,
    mode: Option<u32>,
    mtime: Option<(i64, u32)>,
    owner: Option<(u32, u32)>,
) -> Attrs {
    Attrs {
        perm: if kind == EntryKind::Symlink {
            None
        } else {
            mode
        },
        times: mtime.map(|(s, _)| (secs32(s), secs32(s))),
        uid_gid: owner,
        size: None,
    }
}
