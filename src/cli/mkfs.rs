//! `clonefs mkfs`: makes a store file, never over an existing one.
//!
//! It refuses any path that exists (a symlink included, dangling or not): a store
//! holds every cluster, and overwriting one by a mistyped path loses them all.

use super::{human, init_logger, CliResult};
use clonefs::volume::Volume;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(store: &Path, size: u64, page_size: u64, retention: Duration) -> CliResult {
    init_logger("warn");
    if store.symlink_metadata().is_ok() {
        return Err(format!(
            "{} already exists; mkfs never overwrites a file (remove it first if you mean to)",
            store.display()
        ));
    }
    Volume::mkfs(store, size, page_size as usize).map_err(|e| e.to_string())?;
    let set = Volume::open_path(store).and_then(|v| {
        v.set_store_retention(retention)?;
        v.close()
    });
    if let Err(e) = set {
        let _ = std::fs::remove_file(store);
        return Err(format!(
            "{}: setting the retention failed: {e}",
            store.display()
        ));
    }
    println!(
        "made clonefs store {}: capacity {}, page size {}, restore points kept {}",
        store.display(),
        human(size / page_size * page_size),
        human(page_size),
        humantime::format_duration(retention)
    );
    Ok(ExitCode::SUCCESS)
}
