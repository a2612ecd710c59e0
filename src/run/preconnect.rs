//! Connecting while the source is scanned. A target that will certainly be
//! listed (no manifest for it yet, `--verify`, or a job that keeps none) is
//! connected to in a thread started before the scan, so the connection's
//! setup (ssh config, TCP, key exchange, login, the remote helper's start)
//! overlaps the walk of the source instead of following it.
//!
//! Invariants:
//! - No connection is opened that the run would not open: a target whose
//!   manifest may spare it the connection is not pre-connected, nor is a
//!   local one (nothing to set up).
//! - At most `parallel` targets, the first ones (they start first).
//! - A connection opened here is its target's first attempt (its failure
//!   is that attempt's failure), or is dropped with the run.

use super::Opener;
use super::target::{keeps_manifest, transport_settings};
use crate::config::Job;
use crate::run::{Env, Options};
use crate::target::Target;
use crate::transport::{OpenError, Transport};
use std::sync::Mutex;
use std::thread::{Scope, ScopedJoinHandle};

/// A connection being opened, by target index.
pub(super) type Opening<'s> = ScopedJoinHandle<'s, Result<Box<dyn Transport>, OpenError>>;

/// The connections being opened, one slot per target (taken once).
pub(super) struct Pending<'s>(Mutex<Vec<Option<Opening<'s>>>>);

impl<'s> Pending<'s> {
    /// Start connecting to the targets that will certainly need it.
    pub(super) fn start<'e: 's>(
        sc: &'s Scope<'s, 'e>,
        job: &'e Job,
        env: &'e Env,
        opts: &'e Options,
        open: &'e Opener<'e>,
    ) -> Pending<'s> {
        let slots = job
            .targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                (i < job.parallel.max(1) && wanted(job, target, env, opts)).then(|| {
                    let settings = transport_settings(job, &env.state_dir);
                    sc.spawn(move || open(target, &settings))
                })
            })
            .collect();
        Pending(Mutex::new(slots))
    }

    /// The connection opened for target `i`, if one was (waits for it).
    pub(super) fn take(&self, i: usize) -> Option<Result<Box<dyn Transport>, OpenError>> {
        let h = self.0.lock().unwrap().get_mut(i)?.take()?;
        Some(h.join().unwrap_or_else(|_| {
            Err(OpenError::from(std::io::Error::other(
                "the connecting thread panicked",
            )))
        }))
    }
}

/// Whether the run will certainly connect to `target` and list it.
fn wanted(job: &Job, target: &Target, env: &Env, opts: &Options) -> bool {
    if matches!(target, Target::Local(_)) {
        return false;
    }
    !keeps_manifest(job, opts)
        || opts.verify
        || !crate::manifest::path_for(&env.state_dir, job, target).exists()
}
