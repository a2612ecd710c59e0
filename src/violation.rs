//! A remote (server, `find`, SFTP server, helper) that broke a bound the
//! client sets on what it reads: more entries than allowed, a record or a
//! count larger than asked for, a reply to a request never sent.
//!
//! Invariant: such an error fails that target's run with its reason and
//! is not retried (the same remote would break it again); it never ends
//! the process or touches another target.

use std::io;

/// What the remote did.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

/// An `io::Error` carrying a [`Violation`].
pub fn violation(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Violation(msg.into()))
}

pub fn is_violation(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Violation>())
}
