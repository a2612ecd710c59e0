//! `watch:` settings of a job.
//!
//! Invariant: plain data; defaults 100 ms quiet, 2 s at most.

use std::time::Duration;

/// `watch:` settings of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// quiet time before a batch is sent
    pub delay: Duration,
    /// a batch is sent at the latest this long after its first change
    pub max_delay: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}
