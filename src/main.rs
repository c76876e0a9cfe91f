//! The `clonefs` command: its arguments, and which command they name.
//!
//! Only parsing and dispatch live here. The commands are in `cli/`, one file per
//! command or family; the daemon a mount leaves behind is in `daemon.rs`. Nothing
//! here may start a thread: `mount` forks after it (see `daemon`).

mod cli;
mod daemon;

use clap::{Parser, Subcommand};
use cli::parse_size;
use clonefs::fs::MountConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "clonefs",
    version,
    about = "A FUSE file system of clusters that clone in an instant (copy-on-write)",
    long_about = "A FUSE file system of clusters that clone in an instant (copy-on-write).\n\n\
        The mount root holds one directory per cluster. mkdir MNT/NAME makes a cluster; \
        mkdir MNT/SRC/.clone/NAME clones SRC as NAME."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new store file (sparse: it takes host space only as pages are used)
    Mkfs {
        /// Path of the store file to create; must not exist
        store: PathBuf,
        /// Capacity, with an optional K, M, G or T suffix (powers of 1024)
        #[arg(long, default_value = "64G", value_parser = parse_size)]
        size: u64,
        /// Page size: a power of two from 4K to 64K
        #[arg(long, default_value = "4K", value_parser = parse_size)]
        page_size: u64,
    },
    /// Mount a store; returns once the mount is ready (unless --foreground)
    Mount {
        /// The store file (made by clonefs mkfs)
        store: PathBuf,
        /// An existing, empty directory
        mountpoint: PathBuf,
        /// Stay in the foreground and log to stderr
        #[arg(long)]
        foreground: bool,
        /// Threads serving requests
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        /// Let users other than the one mounting use the mount (allow_other)
        #[arg(long)]
        allow_other: bool,
        /// Let the kernel cache writes and send them in writeback: much faster
        /// streaming and small unsynced writes, slower fsync; a full store's ENOSPC
        /// then shows at fsync or close, not at write
        #[arg(long)]
        writeback_cache: bool,
        /// Log file of the background daemon [default: STORE.log]
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Unmount and wait until the daemon has committed the store and exited
    #[command(alias = "unmount")]
    Umount { mountpoint: PathBuf },
    /// Clone a cluster (same as mkdir MNT/SRC/.clone/NAME, after a syncfs)
    Clone {
        /// The cluster to clone
        #[arg(long)]
        source_cluster: String,
        /// Name of the new cluster
        #[arg(long)]
        cluster: String,
        /// The clonefs mount
        mountpoint: PathBuf,
    },
    /// Show the clusters of a mount, their lineage and space
    Status {
        mountpoint: PathBuf,
        /// Print the daemon's JSON document as is
        #[arg(long)]
        json: bool,
    },
    /// Check a store that is not mounted; exits 1 unless it is clean
    Fsck { store: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Mkfs {
            store,
            size,
            page_size,
        } => cli::mkfs::run(&store, size, page_size),
        Cmd::Mount {
            store,
            mountpoint,
            foreground,
            threads,
            allow_other,
            writeback_cache,
            log,
        } => cli::mount::mount(
            &store,
            &mountpoint,
            foreground,
            log,
            &MountConfig {
                threads: threads as usize,
                allow_other,
                writeback_cache,
            },
        ),
        Cmd::Umount { mountpoint } => cli::mount::umount(&mountpoint),
        Cmd::Clone {
            source_cluster,
            cluster,
            mountpoint,
        } => cli::clone::run(&mountpoint, &source_cluster, &cluster),
        Cmd::Status { mountpoint, json } => cli::status::run(&mountpoint, json),
        Cmd::Fsck { store } => cli::fsck::run(&store),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("clonefs: {msg}");
            ExitCode::FAILURE
        }
    }
}
