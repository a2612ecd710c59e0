//! Several daemons sharing one jobs file through etcd (`cluster:`).
//!
//! Each daemon holds one etcd lease of `ttl` seconds, renewed every `ttl/3`,
//! and announces itself under `PREFIX/members/ID` (ID = `host:pid`). A job
//! is owned by the daemon whose key `PREFIX/jobs/JOB` exists, created
//! with a `create_revision == 0` transaction and bound to its lease; only
//! the owner starts the job's firings. Jobs spread by rendezvous hashing of
//! (job, member): the preferred live member takes a free job, an owner hands
//! a job it is not preferred for back between runs, and a job left free for
//! 2 × ttl is taken by anyone. A dead daemon's lease expires after `ttl` and
//! its keys go with it, so its jobs move within about `ttl` plus a tick.
//!
//! Invariants (why no job runs twice at once while etcd works):
//! - a run starts only when this daemon owns the job under its current
//!   lease, the lease is valid by the local clock (renewal *sent* + TTL −
//!   margin: etcd counts from when it *received* it, which is later), and
//!   etcd answered within the last `FRESH`; otherwise the firing is not
//!   started and the log, `syncjob_cluster_etcd_up` and `/healthz` say so;
//! - a run under way is aborted (as a shutdown aborts: between chunks, no
//!   partial file at a final name) when the lease can no longer be shown
//!   valid, before another daemon could take the job;
//! - a job is marked not owned here *before* its key is deleted, so no run
//!   starts on a lock being handed over, and a running job is never handed
//!   over.
//!
//! The local per-job file locks are still taken by every run.

pub mod etcd;
pub mod report;
mod ticket;

pub use ticket::Ticket;

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use etcd::{Etcd, EtcdError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the ownership is looked at.
const TICK: Duration = Duration::from_millis(250);
/// A run starts only if etcd answered this recently.
const FRESH: Duration = Duration::from_millis(2000);
/// Taken off the lease's TTL for the local validity.
const MARGIN: Duration = Duration::from_millis(500);
/// Logs of refused firings: at most one per this.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a run under a cluster lock carries into its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owning daemon, `host:pid`.
    pub owner: String,
    /// The etcd revision at which its lock key was created.
    pub revision: i64,
}

/// Why a firing is not started here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another daemon owns the job (or nobody yet).
    NotOwner,
    /// etcd cannot be reached or the lease cannot be shown valid.
    Unreachable(String),
}

#[derive(Default)]
struct State {
    jobs: Vec<String>,
    lease: Option<i64>,
    /// The lease is valid until then (local clock, conservative).
    valid_until: Option<Instant>,
    last_keepalive: Option<Instant>,
    /// The last complete exchange with etcd.
    last_ok: Option<Instant>,
    /// Jobs owned here under the current lease: their lock's revision.
    owned: HashMap<String, i64>,
    /// Runs of each job going here (a job's targets may run apart).
    running: HashMap<String, usize>,
    unowned_since: HashMap<String, Instant>,
    /// Why etcd is not usable now.
    problem: Option<String>,
    refusal_logged: Option<Instant>,
}

struct Shared {
    id: String,
    cfg: ClusterConfig,
    etcd: Etcd,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    stop: AtomicBool,
    log: fn(bool, &str),
    started: Instant,
}

/// The cluster membership of this daemon.
pub struct Cluster {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// This daemon's identity in the cluster.
pub fn identity() -> String {
    format!("{}:{}", crate::journal::hostname(), std::process::id())
}

fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(2))
}

/// Rendezvous hashing: the member preferred for `job`.
fn preferred<'a>(job: &str, members: &'a [String]) -> Option<&'a String> {
    use sha2::Digest;
    members.iter().max_by_key(|m| {
        let h = sha2::Sha256::digest(format!("{job}\n{m}").as_bytes());
        u64::from_be_bytes(h[..8].try_into().unwrap_or_default())
    })
}

/// A value read from etcd, fit for a terminal: control characters replaced,
/// at most 256 characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(256)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The owner of each job (`owner`, lock revision), read from etcd: for
/// `syncjob status` and `list`.
pub fn owners(cfg: &ClusterConfig) -> Result<BTreeMap<String, Owner>, EtcdError> {
    let etcd = Etcd::new(&cfg.etcd, Duration::from_secs(2));
    let dir = format!("{}/jobs/", cfg.prefix);
    Ok(etcd
        .range_prefix(&dir)?
        .into_iter()
        .filter_map(|kv| {
            let job = kv.key.strip_prefix(&dir)?.to_string();
            Some((
                job,
                Owner {
                    owner: printable(&kv.value),
                    revision: kv.create_revision,
                },
            ))
        })
        .collect())
}

impl Cluster {
    /// Join the cluster and keep the ownership of `jobs` up to date on a
    /// thread. `log(error, message)` writes the daemon's log.
    pub fn start(
        cfg: &ClusterConfig,
        jobs: Vec<String>,
        metrics: Arc<Metrics>,
        log: fn(bool, &str),
    ) -> Cluster {
        let shared = Arc::new(Shared {
            id: identity(),
            etcd: Etcd::new(&cfg.etcd, request_timeout(cfg.ttl)),
            cfg: cfg.clone(),
            metrics,
            state: Mutex::new(State {
                jobs,
                problem: Some("not connected to etcd yet".into()),
                ..Default::default()
            }),
            stop: AtomicBool::new(false),
            log,
            started: Instant::now(),
        });
        shared
            .metrics
            .cluster_state(false, Some("not connected to etcd yet".into()));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || s.run())
            .ok();
        Cluster {
            shared,
            thread: Mutex::new(thread),
        }
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The jobs of a reloaded jobs file.
    pub fn set_jobs(&self, jobs: Vec<String>) {
        self.shared.lock().jobs = jobs;
    }

    /// May this daemon start a firing of `job` now? On yes, the ticket
    /// marks the job running here until dropped, and its `cancel` flag is
    /// set when `global` is, or when the lease can no longer be shown valid.
    pub fn claim(&self, job: &str, global: &Arc<AtomicBool>) -> Result<Ticket, Refusal> {
        let sh = &self.shared;
        let mut st = sh.lock();
        let now = Instant::now();
        let why = if let Some(p) = &st.problem {
            Some(p.clone())
        } else if st.last_ok.is_none_or(|t| now - t > FRESH) {
            Some("etcd has not answered for over 2 s".to_string())
        } else if st.valid_until.is_none_or(|t| t <= now) {
            Some("the lease could not be renewed in time".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            // the first seconds, before etcd first answered, are not news
            let starting = st.last_ok.is_none() && sh.started.elapsed() < Duration::from_secs(5);
            if !starting
                && st
                    .refusal_logged
                    .is_none_or(|t| now - t > REFUSAL_LOG_EVERY)
            {
                st.refusal_logged = Some(now);
                (sh.log)(
                    true,
                    &format!(
                        "cluster: job {job} not started: {why} (further refusals for 10 s not logged)"
                    ),
                );
            }
            return Err(Refusal::Unreachable(why));
        }
        let Some(&revision) = st.owned.get(job) else {
            return Err(Refusal::NotOwner);
        };
        *st.running.entry(job.to_string()).or_insert(0) += 1;
        drop(st);
        Ok(Ticket::new(sh.clone(), job, revision, global.clone()))
    }

    /// Leave the cluster: stop the thread and revoke the lease, so the jobs
    /// owned here move at once instead of after `ttl`.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        let lease = self.shared.lock().lease.take();
        if let Some(l) = lease {
            let _ = self.shared.etcd.revoke(l);
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, job: &str) -> String {
        format!("{}/jobs/{job}", self.cfg.prefix)
    }

    fn run(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let r = self.step();
            self.report(r.err());
            if let Some(rest) = TICK.checked_sub(t.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }

    /// Log and publish a change of reachability.
    fn report(&self, err: Option<EtcdError>) {
        let mut st = self.lock();
        let now_problem = err.map(|e| e.to_string());
        if now_problem == st.problem {
            return;
        }
        match (&st.problem, &now_problem) {
            (_, Some(p)) => (self.log)(
                true,
                &format!("cluster: {p}; no cluster job starts here until etcd answers"),
            ),
            (_, None) => (self.log)(
                false,
                &format!(
                    "cluster: connected to etcd as {} (lease {:x}, prefix {})",
                    self.id,
                    st.lease.unwrap_or(0),
                    self.cfg.prefix
                ),
            ),
        }
        st.problem = now_problem.clone();
        drop(st);
        self.metrics
            .cluster_state(now_problem.is_none(), now_problem);
    }

    /// Make sure a lease is held and renewed; returns it.
    fn ensure_lease(&self) -> Result<Option<i64>, EtcdError> {
        let ttl = self.cfg.ttl;
        let (lease, last) = {
            let st = self.lock();
            (st.lease, st.last_keepalive)
        };
        let sent = Instant::now();
        match lease {
            None => {
                let id = self.etcd.grant(ttl.as_secs())?;
                let member = format!("{}/members/{}", self.cfg.prefix, self.id);
                self.etcd.put(&member, &self.id, id)?;
                let mut st = self.lock();
                st.lease = Some(id);
                st.last_keepalive = Some(sent);
                st.valid_until = Some(sent + ttl - MARGIN);
                Ok(Some(id))
            }
            Some(id) if last.is_none_or(|t| sent - t >= ttl / 3) => {
                let left = self.etcd.keepalive(id)?;
                let mut st = self.lock();
                if left <= 0 {
                    st.lease = None;
                    st.valid_until = None;
                    let gone: Vec<String> = st.owned.drain().map(|(j, _)| j).collect();
                    drop(st);
                    (self.log)(
                        true,
                        &format!("cluster: lease {id:x} expired; jobs given up: {gone:?}"),
                    );
                    return Ok(None);
                }
                let left = Duration::from_secs(left as u64).min(ttl);
                st.last_keepalive = Some(sent);
                st.valid_until = Some(sent + left.saturating_sub(MARGIN));
                Ok(Some(id))
            }
            Some(id) => Ok(Some(id)),
        }
    }

    /// One look at etcd: renew, read members and owners, take and hand back.
    fn step(&self) -> Result<(), EtcdError> {
        let Some(lease) = self.ensure_lease()? else {
            return Ok(());
        };
        let mdir = format!("{}/members/", self.cfg.prefix);
        let mut members: Vec<String> = self
            .etcd
            .range_prefix(&mdir)?
            .into_iter()
            .filter(|kv| kv.lease != 0)
            .map(|kv| kv.value)
            .collect();
        if !members.contains(&self.id) {
            members.push(self.id.clone());
        }
        let jdir = format!("{}/jobs/", self.cfg.prefix);
        let keys: HashMap<String, etcd::Kv> = self
            .etcd
            .range_prefix(&jdir)?
            .into_iter()
            .filter_map(|kv| Some((kv.key.strip_prefix(&jdir)?.to_string(), kv)))
            .collect();
        self.lock().last_ok = Some(Instant::now());
        let jobs = self.lock().jobs.clone();
        for job in &jobs {
            self.decide(job, keys.get(job), &members, lease)?;
        }
        // keys of jobs no longer in the file, held by this daemon
        for (job, kv) in &keys {
            if !jobs.contains(job) && kv.value == self.id {
                self.lock().owned.remove(job);
                self.etcd.delete_if(&self.key(job), kv.create_revision)?;
            }
        }
        Ok(())
    }

    fn decide(
        &self,
        job: &str,
        kv: Option<&etcd::Kv>,
        members: &[String],
        lease: i64,
    ) -> Result<(), EtcdError> {
        let pref = preferred(job, members).map(String::as_str);
        let me = self.id.as_str();
        let mine = kv.is_some_and(|kv| kv.value == me && kv.lease == lease);
        self.metrics.cluster_owner(job, mine);
        match kv {
            Some(kv) if mine => {
                let mut st = self.lock();
                st.unowned_since.remove(job);
                if pref != Some(me) && !st.running.contains_key(job) {
                    // hand it over: not owned here from now on, then delete
                    st.owned.remove(job);
                    drop(st);
                    if self.etcd.delete_if(&self.key(job), kv.create_revision)? {
                        (self.log)(
                            false,
                            &format!("cluster: job {job} handed over to {}", pref.unwrap_or("?")),
                        );
                    }
                } else if st
                    .owned
                    .insert(job.to_string(), kv.create_revision)
                    .is_none()
                {
                    drop(st);
                    (self.log)(false, &format!("cluster: job {job} owned here"));
                }
            }
            Some(kv) => {
                let mut st = self.lock();
                st.owned.remove(job);
                st.unowned_since.remove(job);
                drop(st);
                if kv.value == me {
                    // a key of an earlier lease of this daemon
                    self.etcd.delete_if(&self.key(job), kv.create_revision)?;
                }
            }
            None => self.take_free(job, pref == Some(me), lease)?,
        }
        Ok(())
    }
}

impl Shared {
    /// A job without an owner: take it when preferred here, or when it has
    /// been free for 2 × ttl (its preferred member does not take it).
    fn take_free(&self, job: &str, preferred: bool, lease: i64) -> Result<(), EtcdError> {
        let waited = {
            let mut st = self.lock();
            st.owned.remove(job);
            let since = *st
                .unowned_since
                .entry(job.to_string())
                .or_insert_with(Instant::now);
            since.elapsed()
        };
        if !preferred && waited <= self.cfg.ttl * 2 {
            return Ok(());
        }
        if let Some(rev) = self.etcd.create(&self.key(job), &self.id, lease)? {
            let mut st = self.lock();
            st.owned.insert(job.to_string(), rev);
            st.unowned_since.remove(job);
            drop(st);
            (self.log)(
                false,
                &format!("cluster: job {job} taken (lock revision {rev})"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_from_etcd_are_printable() {
        assert_eq!(printable("web1:12\u{1b}[2J"), "web1:12?[2J");
        assert_eq!(printable(&"x".repeat(1000)).len(), 256);
    }

    #[test]
    fn rendezvous_spreads_and_is_stable() {
        let members: Vec<String> = (0..3).map(|i| format!("h:{i}")).collect();
        let mut count = HashMap::new();
        for j in 0..300 {
            let p = preferred(&format!("job{j}"), &members).unwrap();
            *count.entry(p.clone()).or_insert(0) += 1;
        }
        assert_eq!(count.len(), 3);
        assert!(count.values().all(|c| *c > 60), "{count:?}");
        // removing a member moves only its jobs
        let two = &members[..2];
        for j in 0..300 {
            let job = format!("job{j}");
            let p = preferred(&job, &members).unwrap();
            if p != &members[2] {
                assert_eq!(preferred(&job, two).unwrap(), p);
            }
        }
    }
}
