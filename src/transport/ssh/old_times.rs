//! Modification times SFTP v3 cannot carry: its times are unsigned 32-bit
//! seconds, so a time before 1970 (or after 2106) would land clamped and
//! the file would look changed on every listing. Such times are set
//! afterwards with one remote `touch -h -m -d @SECONDS` per file, chained
//! in commands of at most 64 KiB.
//!
//! Invariant: only paths syncjob has just written are touched; a remote
//! without GNU touch leaves the clamped time (the failure is returned).

use super::Ssh;
use super::session::shell_quote;
use std::io;

/// Whether SFTP v3 can carry these seconds.
pub(super) fn fits_sftp(secs: i64) -> bool {
    (0..=u32::MAX as i64).contains(&secs)
}

impl Ssh {
    /// Of the files just written (absolute remote paths, and the source's
    /// seconds as the file was read), those whose mtime SFTP could not
    /// carry get it by `touch`; a failure is reported on stderr (the file
    /// keeps the clamped time).
    pub(super) fn fix_old_times(&self, written: impl Iterator<Item = (Vec<u8>, i64)>) {
        let old: Vec<(Vec<u8>, i64)> = written.filter(|(_, s)| !fits_sftp(*s)).collect();
        if !old.is_empty()
            && let Err(e) = self.touch_times(&old)
        {
            crate::errln!("syncjob: {e}");
        }
    }

    /// Set the mtimes of `items` (absolute remote paths) with `touch`.
    pub(super) fn touch_times(&self, items: &[(Vec<u8>, i64)]) -> io::Result<()> {
        let mut cmd: Vec<u8> = Vec::new();
        for (k, (path, secs)) in items.iter().enumerate() {
            if !cmd.is_empty() {
                cmd.extend_from_slice(b" && ");
            }
            cmd.extend_from_slice(format!("touch -h -m -d @{secs} -- ").as_bytes());
            cmd.extend_from_slice(&shell_quote(path));
            if cmd.len() > 64 * 1024 || k + 1 == items.len() {
                let (code, _, err) = self.conn.exec(&cmd, false)?;
                if code != 0 {
                    return Err(io::Error::other(format!(
                        "cannot set a modification time outside 1970-2106 on {}: {}",
                        self.label,
                        String::from_utf8_lossy(&err).trim()
                    )));
                }
                cmd.clear();
            }
        }
        Ok(())
    }
}
