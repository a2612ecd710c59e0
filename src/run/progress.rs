//! A progress bar per target for an interactive `syncjob run`: bytes done
//! of the planned copies (counted chunk by chunk by the transports through
//! the executor's byte counter), files done, rate and ETA. Without a
//! terminal (or with `-q`, a dry run, the daemon) there is no bar and every
//! method does nothing.

use crate::config::Job;
use crate::plan::{Action, Plan};
use crate::target::Target;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// One target's bar, if any.
pub(super) struct TargetProgress {
    bar: Option<(indicatif::ProgressBar, u64)>,
    files_done: AtomicU64,
    /// bytes sent, counted by the transports as they go
    sent: Option<Arc<AtomicU64>>,
}

impl TargetProgress {
    pub fn new(
        multi: Option<&indicatif::MultiProgress>,
        job: &Job,
        target: &Target,
        plan: &Plan,
    ) -> TargetProgress {
        let bar = multi.map(|m| progress_bar(m, job, target, plan));
        TargetProgress {
            sent: bar.as_ref().map(|_| Arc::new(AtomicU64::new(0))),
            bar,
            files_done: AtomicU64::new(0),
        }
    }

    /// The counter the executor's copies add their bytes to.
    pub fn sent(&self) -> Option<Arc<AtomicU64>> {
        self.sent.clone()
    }

    fn show_sent(&self, bar: &indicatif::ProgressBar) {
        if let Some(c) = &self.sent {
            let total = bar.length().unwrap_or(0);
            bar.set_position(c.load(Ordering::Relaxed).min(total));
        }
    }

    /// An action was applied.
    pub fn done(&self, a: &Action) {
        if let (Some((bar, files)), Action::Copy { .. }) = (&self.bar, a) {
            let n = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
            self.show_sent(bar);
            bar.set_message(format!("{n}/{files} files"));
        }
    }

    /// Run `f` while a thread moves the bar every 100 ms (a big file moves
    /// it while it is being sent).
    pub fn while_copying<R>(&self, f: impl FnOnce() -> R) -> R {
        let copying = AtomicBool::new(true);
        std::thread::scope(|sc| {
            if let Some((b, _)) = &self.bar {
                let copying = &copying;
                sc.spawn(move || {
                    while copying.load(Ordering::Relaxed) {
                        self.show_sent(b);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
            let r = f();
            copying.store(false, Ordering::Relaxed);
            r
        })
    }

    pub fn finish(&self) {
        if let Some((bar, _)) = &self.bar {
            self.show_sent(bar);
            bar.finish();
        }
    }
}

/// A bar for one target: bytes done of the files to copy, files done,
/// rate and ETA.
fn progress_bar(
    m: &indicatif::MultiProgress,
    job: &Job,
    target: &Target,
    plan: &Plan,
) -> (indicatif::ProgressBar, u64) {
    let (files, bytes) = plan.copy_totals();
    let bar = m.add(indicatif::ProgressBar::new(bytes));
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:25}] {bytes}/{total_bytes} {msg} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{} -> {target}", job.name));
    bar.set_message(format!("0/{files} files"));
    (bar, files)
}
