//! What `check` can know locally, beyond the jobs file's syntax: a source
//! that is missing or not a directory, a local target (or one of its
//! parents) that is not a directory, SSH key, password and known_hosts
//! files that are missing or unusable. Nothing is created or changed.
//!
//! Invariant: only local facts are checked (no connection is made), so a
//! problem found here fails every run the same way until it is fixed.

use crate::config::Job;
use crate::settings::{HostKeyPolicy, SshOptions};
use crate::target::Target;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The problems of one job, each a sentence.
pub fn problems(job: &Job) -> Vec<String> {
    let mut out = Vec::new();
    match std::fs::metadata(&job.source) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => out.push(format!(
            "source {} is not a directory",
            job.source.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(format!("source {} does not exist", job.source.display()))
        }
        Err(e) => out.push(format!("source {}: {e}", job.source.display())),
    }
    for t in &job.targets {
        match t {
            Target::Local(root) => out.extend(local_target(root)),
            Target::Ssh(st) => {
                for p in ssh_files(st.ssh.as_deref().unwrap_or(&job.ssh)) {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
            // the password file and the rsync binary are checked with the config
            Target::Rsync(_) => {}
        }
    }
    out
}

/// A local target must be a directory, or not exist below a directory.
fn local_target(root: &Path) -> Option<String> {
    let mut p = root;
    loop {
        match std::fs::metadata(p) {
            Ok(md) if md.is_dir() => return None,
            Ok(_) if p == root => {
                return Some(format!("target {} is not a directory", root.display()));
            }
            Ok(_) => {
                return Some(format!(
                    "target {}: {} is not a directory",
                    root.display(),
                    p.display()
                ));
            }
            Err(_) => match p.parent() {
                Some(up) => p = up,
                None => return None,
            },
        }
    }
}

/// The key, password and known_hosts files an SSH target needs.
fn ssh_files(o: &SshOptions) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(id) = &o.identity
        && let Err(e) = std::fs::File::open(id)
    {
        out.push(format!("ssh.identity {}: {e}", id.display()));
    }
    if let Some(pw) = &o.password_file {
        match std::fs::metadata(pw) {
            Ok(md) if md.permissions().mode() & 0o077 != 0 => out.push(format!(
                "ssh.password_file {} is readable by group or others; chmod 600 it",
                pw.display()
            )),
            Ok(_) => {}
            Err(e) => out.push(format!("ssh.password_file {}: {e}", pw.display())),
        }
    }
    if let Some(kh) = &o.known_hosts
        && matches!(
            o.strict_host_key_checking,
            None | Some(HostKeyPolicy::Strict)
        )
        && !kh.exists()
    {
        out.push(format!(
            "ssh.known_hosts {} does not exist: with strict host key checking every host is refused",
            kh.display()
        ));
    }
    out
}
