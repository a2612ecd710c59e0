//! A run under the cluster lock of its job: while the ticket lives the job
//! counts as running here (it is never handed over), and a watchdog thread
//! sets the run's cancel flag when the daemon stops or when the lease can
//! no longer be shown valid by the local clock, which is before etcd could
//! let another daemon take the job.

use super::{Owner, Shared};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A run under the cluster lock of its job.
pub struct Ticket {
    shared: Arc<Shared>,
    job: String,
    pub owner: Owner,
    /// Set when the run must stop: shutdown, or the lease in doubt.
    pub cancel: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl Ticket {
    pub(super) fn new(
        shared: Arc<Shared>,
        job: &str,
        revision: i64,
        global: Arc<AtomicBool>,
    ) -> Ticket {
        let cancel = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (sh, c, d, j) = (
            shared.clone(),
            cancel.clone(),
            done.clone(),
            job.to_string(),
        );
        let _ = std::thread::Builder::new()
            .name("cluster-watch".into())
            .spawn(move || {
                while !d.load(Ordering::SeqCst) {
                    let expired = sh.lock().valid_until.is_none_or(|t| t <= Instant::now());
                    if global.load(Ordering::SeqCst) {
                        c.store(true, Ordering::SeqCst);
                    } else if expired && !c.swap(true, Ordering::SeqCst) {
                        (sh.log)(
                            true,
                            &format!("cluster: job {j}: the lease cannot be renewed; aborting the run before another daemon may take the job"),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        Ticket {
            owner: Owner {
                owner: shared.id.clone(),
                revision,
            },
            shared,
            job: job.to_string(),
            cancel,
            done,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let mut st = self.shared.lock();
        if let Some(n) = st.running.get_mut(&self.job) {
            *n -= 1;
            if *n == 0 {
                st.running.remove(&self.job);
            }
        }
    }
}
