//! A dry run's output: the plan printed `rsync -i` style, one line per
//! change, between a header and a totals line (both left out with `-q`).
//! It only reads the plan; nothing is applied.

use crate::config::Job;
use crate::plan::{Action, Plan};
use crate::target::Target;
use crate::units::human_bytes;

/// Append the itemized plan for one target to `text`.
pub(super) fn print(text: &mut String, job: &Job, target: &Target, plan: &Plan, quiet: bool) {
    let mut transfers = 0u64;
    let mut bytes = 0u64;
    let mut deletes = 0u64;
    if !quiet {
        text.push_str(&format!("# {} -> {target} (dry run)\n", job.name));
    }
    for a in plan.actions() {
        match a {
            Action::Copy { size, .. } => {
                transfers += 1;
                bytes += size;
            }
            Action::Delete { counted: true, .. } => deletes += 1,
            _ => {}
        }
        let line = a.itemize();
        if !line.is_empty() {
            text.push_str(&line);
            text.push('\n');
        }
    }
    if !quiet {
        text.push_str(&format!(
            "# would transfer {transfers} files ({}), delete {deletes}\n",
            human_bytes(bytes)
        ));
    }
}
