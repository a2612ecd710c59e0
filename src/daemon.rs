//! The long-running scheduler.

use crate::cli::{CliError, Global};

pub fn run(_g: &Global) -> Result<(), CliError> {
    Err(CliError::Usage("the daemon is not built yet".into()))
}
