//! `clonefs mkfs`: makes a store file, never over an existing one; and
//! `clonefs delete-store`, its opposite.
//!
//! It refuses any path that exists (a symlink included, dangling or not): a store
//! holds every cluster, and overwriting one by a mistyped path loses them all.

use super::mount::StoreArgs;
use super::{human, init_logger, CliResult};
use clonefs::store::addr::StoreAddr;
use clonefs::volume::Volume;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(store: &StoreArgs, size: u64, page_size: u64, retention: Duration) -> CliResult {
    init_logger("warn");
    if let StoreAddr::File(p) = &store.addr {
        if p.symlink_metadata().is_ok() {
            return Err(format!(
                "{} already exists; mkfs never overwrites a file (remove it first if you mean to)",
                p.display()
            ));
        }
    }
    Volume::mkfs_store(
        &store.addr,
        &store.opts,
        size,
        page_size as usize,
        retention,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "made clonefs store {}: capacity {}, page size {}, restore points kept {}",
        store.addr,
        human(size / page_size * page_size),
        human(page_size),
        humantime::format_duration(retention)
    );
    Ok(ExitCode::SUCCESS)
}

/// `clonefs delete-store STORE --yes`: deletes a store nobody serves.
pub fn delete(store: &StoreArgs, yes: bool) -> CliResult {
    init_logger("warn");
    if !yes {
        return Err(format!(
            "this deletes {} and every cluster in it, for good; run it again with --yes",
            store.addr
        ));
    }
    let clusters = Volume::delete_store(&store.addr, &store.opts).map_err(|e| e.to_string())?;
    println!("deleted clonefs store {} ({clusters} clusters)", store.addr);
    Ok(ExitCode::SUCCESS)
}
