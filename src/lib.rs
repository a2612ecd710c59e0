//! syncjob: keep a directory identical on many servers.
//!
//! Data flows one way, each module importing only those below it:
//! `cli` → `daemon` → `run` → `executor` → `transport`, `manifest` →
//! `plan` → `config` → `schedule`; at the bottom `units`, `clock`, `yaml`,
//! `target`, `filter`, `journal`, `lock`, `hooks`, `helper`. `cli` maps
//! arguments to these and every outcome to an exit code. The user-facing
//! contract is `docs/CONTRACT.md`.

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
