//! `ssh:` settings of a job (or of `defaults:`) and their parts.
//!
//! Invariant: plain data; defaults are those of the contract (30 s
//! timeout, 10 000 000 listing entries at most).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    Strict,
    AcceptNew,
    /// OpenSSH's `no`: unknown keys are added without asking; only when the
    /// job says so itself (a changed key is still refused)
    No,
}

/// Which OpenSSH client configuration resolves a target's host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SshConfigFile {
    /// `~/.ssh/config` then `/etc/ssh/ssh_config`, as `ssh` reads them
    #[default]
    Default,
    /// `ssh.config: FILE` (as `ssh -F FILE`)
    File(PathBuf),
    /// `ssh.config: none`: only the target and the job's `ssh:` keys
    None,
}

/// The SSH implementation a target is reached with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SshClient {
    /// embedded (libssh2 through the `ssh2` crate)
    #[default]
    Libssh2,
    /// the system's `ssh` binary, as rsync runs it
    OpenSsh,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// the system-wide known_hosts, read too (default
    /// /etc/ssh/ssh_known_hosts)
    pub global_known_hosts: Option<PathBuf>,
    /// `None`: from the OpenSSH config (`StrictHostKeyChecking`), else strict
    pub strict_host_key_checking: Option<HostKeyPolicy>,
    pub password_file: Option<PathBuf>,
    /// `None`: the target's, else the OpenSSH config's (`Port`), else 22
    pub port: Option<u16>,
    /// `None`: 30 s (connecting: the OpenSSH config's `ConnectTimeout` first)
    pub timeout: Option<Duration>,
    /// `syncjob` on the remote host (a path or a command name): files go
    /// through `syncjob helper` there instead of SFTP; `None`: `auto`
    /// (`syncjob` on the remote PATH when it answers, else SFTP);
    /// `Some("none")`: SFTP only
    pub remote_helper: Option<String>,
    pub config: SshConfigFile,
    pub client: SshClient,
    /// `ssh.proxy_jump`: hops as OpenSSH's `ProxyJump` (`none`: no jump
    /// even if the OpenSSH config names one)
    pub proxy_jump: Option<String>,
    /// The most entries a remote listing may have (`find` or SFTP): a
    /// longer one fails the target's run (a hostile or broken remote
    /// cannot exhaust memory)
    pub max_listing_entries: u64,
}

impl SshOptions {
    /// The I/O timeout of a session (`ssh.timeout`, default 30 s).
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(30))
    }
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            identity: None,
            known_hosts: None,
            strict_host_key_checking: None,
            global_known_hosts: None,
            password_file: None,
            port: None,
            timeout: None,
            remote_helper: None,
            config: SshConfigFile::Default,
            client: SshClient::Libssh2,
            proxy_jump: None,
            max_listing_entries: 10_000_000,
        }
    }
}
