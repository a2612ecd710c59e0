//! `ssh.remote_helper: auto` (the default): use `syncjob` from the remote
//! PATH when it answers with this version's greeting, else SFTP.
//!
//! Invariants:
//! - Compatibility is decided by the helper's greeting alone (the protocol
//!   version handshake of `start_helper`): a missing `syncjob`, an old one
//!   without `helper`, or another protocol version all mean SFTP, never a
//!   failed run.
//! - The answer is cached per target (user, host, port) in
//!   `<state-dir>/remote-helper/`: "absent" is trusted for [`ABSENT_TTL`],
//!   then probed again; "present" is re-probed on every connection anyway
//!   (starting the helper is the probe), so a helper that stops answering
//!   turns the cache to "absent" at once.
//! - The cache only ever saves a probe: a missing or unreadable cache file
//!   means probing.

use super::Conn;
use super::helper_client::start_helper;
use super::openssh::Pipe;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long "no compatible syncjob there" is believed without probing.
pub const ABSENT_TTL: Duration = Duration::from_secs(3600);

/// The helper's command name on the remote PATH.
const COMMAND: &str = "syncjob";

fn cache_file(state_dir: &Path, key: &str) -> PathBuf {
    let h: String = Sha256::digest(key.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    state_dir.join("remote-helper").join(h)
}

/// Whether a recent probe found no helper for `key`.
fn recently_absent(file: &Path) -> bool {
    let Ok(md) = std::fs::symlink_metadata(file) else {
        return false;
    };
    let fresh = md
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age < ABSENT_TTL);
    md.is_file()
        && fresh
        && md.len() < 64
        && std::fs::read(file).is_ok_and(|b| b.starts_with(b"absent"))
}

fn remember(file: &Path, what: &str) {
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
        if let Ok(mut f) = tempfile::NamedTempFile::new_in(dir) {
            use std::io::Write;
            if f.write_all(what.as_bytes()).is_ok() {
                let _ = f.persist(file);
            }
        }
    }
}

/// Start `syncjob helper` from the remote PATH if a compatible one is
/// there (see the module's invariants); `None`: use SFTP. `key` names the
/// target (user@host:port).
pub(super) fn auto(
    conn: &Conn,
    root: &[u8],
    label: &str,
    state_dir: Option<&Path>,
    key: &str,
) -> Option<Box<dyn Pipe>> {
    let file = state_dir.map(|d| cache_file(d, key));
    if file.as_deref().is_some_and(recently_absent) {
        return None;
    }
    match start_helper(conn, COMMAND, root, label) {
        Ok(p) => {
            if let Some(f) = &file {
                remember(f, "present\n");
            }
            Some(p)
        }
        Err(_) => {
            if let Some(f) = &file {
                remember(f, "absent\n");
            }
            None
        }
    }
}
