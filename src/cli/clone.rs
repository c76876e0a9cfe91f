//! `clonefs clone`: the command-line form of `mkdir MNT/SRC/.clone/NAME`.
//!
//! It adds what a bare mkdir cannot: a syncfs first, so pages written through
//! shared mappings are in the clone, and an fsync of the new root after, so the
//! command returns only once the clone is durable.

use super::{absolute, clonefs_mount, init_logger, CliResult};
use clonefs::fs::CONTROL_NAME;
use clonefs::volume::catalog;
use nix::unistd::syncfs;
use std::fs::File;
use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

pub fn run(mountpoint: &Path, src: &str, name: &str) -> CliResult {
    init_logger("warn");
    let abs = absolute(mountpoint)?;
    let mnt = abs.canonicalize().unwrap_or(abs);
    let shown = mnt.display();
    catalog::validate_name(name).map_err(|e| e.to_string())?;
    clonefs_mount(&mnt).map_err(|e| format!("{e}: give the mount point of a clonefs store"))?;
    let src_root = mnt.join(src);
    if catalog::validate_name(src).is_err() || !src_root.is_dir() {
        return Err(format!("no cluster {src} in {shown}"));
    }
    let started = Instant::now();
    // Writes that completed are in the daemon already (no writeback cache); syncfs
    // sends the pages of shared writable mappings too.
    let dir = File::open(&mnt).map_err(|e| format!("{shown}: {e}"))?;
    syncfs(&dir).map_err(|e| format!("syncfs {shown}: {}", io::Error::from(e)))?;
    match std::fs::create_dir(src_root.join(CONTROL_NAME).join(name)) {
        Ok(()) => {
            let took = started.elapsed();
            // A clone is durable at the next commit; fsync of its root commits now,
            // so the command returns with the clone safe from a crash.
            File::open(mnt.join(name))
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    format!("cloned {src} as {name}, but making it durable failed: {e}")
                })?;
            println!(
                "cloned {src} as {name} in {} ms (durable)",
                took.as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::EEXIST) => format!("cluster {name} already exists"),
            Some(libc::EINVAL) => catalog::validate_name(name)
                .err()
                .map_or_else(|| format!("clone refused: {e}"), |e| e.to_string()),
            Some(libc::ENOENT) => format!("no cluster {src} in {shown}"),
            Some(libc::ENOSPC) => "no space left in the store for the clone".into(),
            _ => format!("clone of {src} as {name} failed: {e}"),
        }),
    }
}
