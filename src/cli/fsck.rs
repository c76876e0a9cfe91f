//! `clonefs fsck`: checks a store that is not mounted; exit status 1 unless clean.
//!
//! The store is opened for checking only, so a check never changes what it reports
//! on; it still takes the store's lock, so it refuses a store a daemon is serving.

use super::{init_logger, CliResult};
use clonefs::volume::Volume;
use std::path::Path;
use std::process::ExitCode;

pub fn run(store: &Path) -> CliResult {
    init_logger("warn");
    let vol = Volume::open_path_mode(store, true)
        .map_err(|e| format!("cannot check {}: {e}", store.display()))?;
    let report = vol
        .fsck()
        .map_err(|e| format!("fsck of {} stopped: {e}", store.display()))?;
    println!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
