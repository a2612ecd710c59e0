//! The option types of a job's targets and watch (`ssh:`, `rsync:`,
//! `watch:`), below config, transport, target and watch so that each of
//! them reads these types without importing the others.
//!
//! Invariant: plain data with defaults, plus the check-time tests of the
//! local machine (`rsync::check`); nothing here opens a connection.

pub mod rsync;
pub mod ssh;
pub mod watch;

pub use rsync::RsyncOptions;
pub use ssh::{HostKeyPolicy, SshClient, SshConfigFile, SshOptions};
pub use watch::WatchOptions;
