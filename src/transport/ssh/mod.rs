//! A target directory on a remote host, over SSH (libssh2 through `ssh2`).
//!
//! - Host keys are checked against `known_hosts`; an unknown or changed key
//!   is refused with its fingerprint and the `ssh-keyscan` line to add it,
//!   unless `strict_host_key_checking: accept-new` (unknown keys are then
//!   appended; a changed key is still refused).
//! - Auth: the `identity` file (or ssh-agent, then `~/.ssh/id_ed25519`,
//!   `~/.ssh/id_rsa`), with a passphrase or password from `password_file`
//!   (which must not be readable by group or others).
//! - Listing: one remote `find -printf` over an exec channel, NUL-separated;
//!   SFTP readdir when the remote has no GNU find. Names are validated: an
//!   entry that would resolve outside the target root is rejected.
//! - Writes: SFTP (own client, `sftp.rs`): a temporary name, pipelined
//!   WRITEs, mode/mtime set on the open handle, then `posix-rename` over the
//!   final name (atomic). With `ssh.remote_helper`, files go instead as
//!   one stream to `syncjob helper` on the remote (see `helper`): the same
//!   temporary name and rename there, one record and one reply per file.
//!
//! Room by room: `session` (connect, host keys, auth, remote commands),
//! `listing` (`find` and SFTP readdir), `sftp_put` (SFTP writes, pipelined),
//! `helper_client` (files through `syncjob helper`), `sftp` (the SFTP v3
//! client). This file holds the [`Ssh`] transport that ties them together.

mod helper_client;
mod listing;
mod session;
pub mod sftp;
mod sftp_put;

pub use listing::parse_find;
pub use session::{base64, shell_quote};

use self::sftp::Sftp;
use super::{CopyCtx, Listing, OpenError, Transport, TransportSettings};
use crate::filter::Filter;
use crate::plan::{Action, EntryKind};
use crate::target::SshTarget;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Ssh {
    sess: ssh2::Session,
    sftp: Sftp,
    /// `syncjob helper` running on the remote, when the job asks for it
    helper: Option<ssh2::Channel>,
    /// the target root as the remote sees it (bytes)
    root: Vec<u8>,
    label: String,
}

impl Ssh {
    /// Open a session (see `session`), start SFTP on it, and the remote
    /// helper when the job sets `ssh.remote_helper`.
    pub fn connect(t: &SshTarget, settings: &TransportSettings) -> Result<Ssh, OpenError> {
        let o = &settings.ssh;
        let (sess, label) = session::open(t, o)?;
        let chan = sess.channel_session().map_err(io::Error::from)?;
        let sftp = Sftp::start(chan)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start sftp on {label}: {e}")))?;
        let helper = match &o.remote_helper {
            Some(cmd) => Some(helper_client::start_helper(&sess, cmd, &label)?),
            None => None,
        };
        Ok(Ssh {
            sess,
            sftp,
            helper,
            root: t.path.as_bytes().to_vec(),
            label,
        })
    }

    fn path(&self, rel: &Path) -> Vec<u8> {
        let mut p = self.root.clone();
        let r = rel.as_os_str().as_bytes();
        if !r.is_empty() {
            if !p.ends_with(b"/") {
                p.push(b'/');
            }
            p.extend_from_slice(r);
        }
        p
    }
}

impl Transport for Ssh {
    fn put_files(
        &mut self,
        items: &[(&Path, PathBuf)],
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> Vec<io::Result<u64>> {
        let r = if self.helper.is_some() {
            self.put_batch_helper(items, preserve_owner, ctx)
        } else {
            self.put_batch(items, preserve_owner, ctx)
        };
        match r {
            Ok(r) => r
                .into_iter()
                .zip(items)
                .map(|(r, (_, src))| r.map_err(|e| self.explain_failure(e, src)))
                .collect(),
            // the session itself failed: every file of the batch failed with it
            Err(e) => items
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }

    fn apply(&mut self, actions: &[&Action]) -> Vec<io::Result<()>> {
        self.apply_pipelined(actions)
    }

    fn mtime_nanos(&self) -> bool {
        // SFTP v3 sets whole seconds
        false
    }

    fn symlink_times(&self) -> bool {
        self.sftp.lsetstat
    }

    fn list(&mut self, _filter: &Filter) -> io::Result<Listing> {
        self.list_remote()
    }

    fn ensure_root(&mut self) -> io::Result<()> {
        let mut cmd = b"mkdir -p -- ".to_vec();
        cmd.extend_from_slice(&shell_quote(&self.root));
        let (code, _, err) = session::exec(&self.sess, &cmd, false)?;
        if code != 0 {
            return Err(io::Error::other(format!(
                "mkdir -p on {}: {}",
                self.label,
                String::from_utf8_lossy(&err).trim()
            )));
        }
        Ok(())
    }

    fn same_content(&mut self, rel: &Path, src: &Path) -> io::Result<bool> {
        let mut f = std::fs::File::open(src)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let local: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = b"sha256sum < ".to_vec();
        cmd.extend_from_slice(&shell_quote(&self.path(rel)));
        let (code, out, err) = session::exec(&self.sess, &cmd, false)?;
        if code != 0 {
            return Err(io::Error::other(format!(
                "sha256sum on {}: {}",
                self.label,
                String::from_utf8_lossy(&err).trim()
            )));
        }
        Ok(out.starts_with(local.as_bytes()))
    }

    fn mkdir(&mut self, rel: &Path) -> io::Result<()> {
        self.sftp_mkdir(rel)
    }

    fn put_file(
        &mut self,
        rel: &Path,
        src: &Path,
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<u64> {
        self.sftp_put_file(rel, src, preserve_owner, ctx)
    }

    fn symlink(&mut self, rel: &Path, target: &Path, mtime: Option<(i64, u32)>) -> io::Result<()> {
        self.sftp_symlink(rel, target, mtime)
    }

    fn set_attrs(
        &mut self,
        rel: &Path,
        kind: EntryKind,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        self.sftp_set_attrs(rel, kind, mode, mtime, owner)
    }

    fn remove(&mut self, rel: &Path, kind: EntryKind) -> io::Result<()> {
        self.sftp_remove(rel, kind)
    }
}
