//! Real-time watch (`watch:` jobs; `syncjob watch`, `syncjob daemon`): the
//! sersync / lsyncd replacement.
//!
//! Invariants:
//! - a watched job starts with one full sync per target, with the watches
//!   set up before it scans, so nothing changed during it is missed;
//! - then only changed paths are sent, in batches (`delay` of quiet, or
//!   `max_delay` after the first change), each target on its own: a dead
//!   target delays nobody, its pending paths are kept (also in the state
//!   dir) and sent when it is back;
//! - whatever makes the changed paths incomplete (queue overflow, a lost
//!   watch, too many paths at once, a failed batch) becomes a full sync
//!   whose record says why; the watch limit falls back to periodic full
//!   syncs with an error naming the sysctl to raise;
//! - every batch and full sync runs under the job's lock (shared by the
//!   job's targets in this process), so a scheduled or manual run never
//!   overlaps one.

pub mod batch;
pub mod cli;
pub mod daemon;
pub mod dirty;
pub mod job;
pub mod scan;
pub mod status;
pub mod watcher;

/// The options live in `settings` (config reads them without importing
/// watch).
pub use crate::settings::WatchOptions;

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn parse(watch: &str) -> Result<Option<super::WatchOptions>, String> {
        let y =
            format!("jobs:\n  w:\n    source: /srv/a\n    remote: /srv/b\n    watch: {watch}\n");
        crate::config::parse(Path::new("/etc/syncjob/jobs.yaml"), y.as_bytes())
            .map(|c| c.jobs[0].watch)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn watch_key_forms() {
        let d = super::WatchOptions::default();
        assert_eq!(d.delay.as_millis(), 100);
        assert_eq!(d.max_delay.as_secs(), 2);
        assert_eq!(parse("true").unwrap(), Some(d));
        assert_eq!(parse("false").unwrap(), None);
        let w = parse("{delay: 0, max_delay: 500ms}").unwrap().unwrap();
        assert_eq!((w.delay.as_millis(), w.max_delay.as_millis()), (0, 500));
        let w = parse("{max_delay: 10s}").unwrap().unwrap();
        assert_eq!(w.delay.as_millis(), 100);
        let e = parse("{dealy: 1s}").unwrap_err();
        assert!(e.contains("did you mean `delay`"), "{e}");
        let e = parse("{delay: 5s, max_delay: 1s}").unwrap_err();
        assert!(e.contains("must not be shorter"), "{e}");
        let e = parse("yes please").unwrap_err();
        assert!(
            e.contains("`watch` must be true, false or a mapping"),
            "{e}"
        );
        let e = parse("{delay: soon}").unwrap_err();
        assert!(e.contains("`watch.delay`"), "{e}");
    }
}
