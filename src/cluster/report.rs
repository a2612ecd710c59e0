//! The owner of each job, for `syncjob list` and `syncjob status` (which run
//! outside the daemon: they ask etcd themselves, with a 2 s timeout).
//!
//! Invariants: without `cluster:` nothing is asked or shown; an unreachable
//! etcd is shown as such, never as "no owner".

use super::{Owner, owners};
use crate::config::Config;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub type Owners = Result<BTreeMap<String, Owner>, String>;

/// The owners, when the jobs file has `cluster:`.
pub fn lookup(cfg: &Config) -> Option<Owners> {
    let c = cfg.observe.cluster.as_ref()?;
    Some(owners(c).map_err(|e| e.to_string()))
}

/// One job's owner as JSON: `{"owner": ID, "lock_revision": N}`, `null`
/// when free, `{"error": ...}` when etcd cannot be asked.
pub fn job_json(o: &Owners, job: &str) -> Value {
    match o {
        Ok(m) => m
            .get(job)
            .map(|o| json!({"owner": o.owner, "lock_revision": o.revision}))
            .unwrap_or(Value::Null),
        Err(e) => json!({ "error": e }),
    }
}

/// All owners as JSON, keyed by job.
pub fn all_json(cfg: &Config, o: &Owners) -> Value {
    let jobs: serde_json::Map<String, Value> = cfg
        .jobs
        .iter()
        .map(|j| (j.name.clone(), job_json(o, &j.name)))
        .collect();
    Value::Object(jobs)
}

/// A table: job, owning daemon, lock revision.
pub fn print(cfg: &Config, o: &Owners) {
    let c = cfg.observe.cluster.as_ref();
    println!(
        "cluster: etcd {} prefix {}",
        c.map(|c| c.etcd.join(" ")).unwrap_or_default(),
        c.map(|c| c.prefix.as_str()).unwrap_or("")
    );
    match o {
        Err(e) => println!("  owners unknown: {e}"),
        Ok(m) => {
            println!("{:<16} {:<32} LOCK REVISION", "JOB", "OWNER");
            for j in &cfg.jobs {
                match m.get(&j.name) {
                    Some(o) => println!("{:<16} {:<32} {}", j.name, o.owner, o.revision),
                    None => println!("{:<16} {:<32} -", j.name, "(none)"),
                }
            }
        }
    }
}
