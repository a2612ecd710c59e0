//! `rsync:` settings of a job (or of `defaults:`) and what `check` tests
//! of them on this machine (the `rsync` binary, the password file).
//!
//! Invariant: a password file is accepted only as a regular file of mode
//! 0600 or stricter owned by the running user.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `rsync:` settings of a job (or of `defaults:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncOptions {
    pub password_file: Option<PathBuf>,
    /// For targets without a port of their own.
    pub port: u16,
    /// Connection timeout (`--contimeout`) and I/O timeout (`--timeout`).
    pub timeout: Duration,
}

impl Default for RsyncOptions {
    fn default() -> Self {
        RsyncOptions {
            password_file: None,
            port: 873,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A password file rsync may use: a regular file, mode 0600 or stricter,
/// owned by the user running syncjob.
pub fn check_password_file(p: &Path) -> Result<(), String> {
    let md =
        std::fs::metadata(p).map_err(|e| format!("rsync.password_file {}: {e}", p.display()))?;
    if !md.is_file() {
        return Err(format!("rsync.password_file {} is not a file", p.display()));
    }
    if md.mode() & 0o077 != 0 {
        return Err(format!(
            "rsync.password_file {} must be mode 0600 (it is {:04o}); chmod 600 it",
            p.display(),
            md.mode() & 0o7777
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me {
        return Err(format!(
            "rsync.password_file {} must be owned by the user running syncjob (uid {me}), not uid {}",
            p.display(),
            md.uid()
        ));
    }
    Ok(())
}

/// What keeps a job with rsync daemon targets from running (for `check`).
pub fn check(opts: &RsyncOptions) -> Vec<String> {
    let mut out = Vec::new();
    if find_rsync().is_none() {
        out.push(
            "rsync daemon targets need the `rsync` binary, not found in PATH (apt-get install rsync)"
                .to_string(),
        );
    }
    if let Some(p) = &opts.password_file
        && let Err(e) = check_password_file(p)
    {
        out.push(e);
    }
    out
}

/// Find `rsync` in `PATH`.
pub fn find_rsync() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("rsync"))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
