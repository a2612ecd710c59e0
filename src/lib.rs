//! syncjob: keep a directory identical on many servers.
//!
//! Data flows one way, each module importing only those below it:
//! `cli` → `daemon` → `run` → `executor` → `transport`, `manifest` →
//! `plan` → `config` → `schedule`; at the bottom `units`, `clock`, `yaml`,
//! `target`, `filter`, `journal`, `lock`, `hooks`, `helper`. `cli` maps
//! arguments to these and every outcome to an exit code. The user-facing
//! contract is `docs/CONTRACT.md`.

pub mod beneath;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod escape;
pub mod executor;
pub mod filter;
pub mod guards;
pub mod helper;
pub mod hooks;
pub mod import;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod out;
pub mod plan;
pub mod preflight;
pub mod relname;
pub mod rolling;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod statedir;
pub mod target;
pub mod target_state;
pub mod transport;
pub mod units;
pub mod violation;
pub mod watch;
pub mod yaml;
