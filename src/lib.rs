//! syncjob: keep a directory identical on many servers.
//!
//! A run flows through `config` (YAML → validated jobs) → `schedule` (specs →
//! next instants) → `daemon` (timer loop) → `lock` → `plan` (walk, list, diff)
//! → `transport` (local, ssh) → `executor` (apply) → `journal` (run log).
//! `cli` maps arguments to these and outcomes to exit codes.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod executor;
pub mod filter;
pub mod helper;
pub mod hooks;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod plan;
pub mod run;
pub mod schedule;
pub mod target;
pub mod transport;
pub mod units;
pub mod watch;
pub mod yaml;
