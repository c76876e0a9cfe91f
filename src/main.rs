//! The `clonefs` command: its arguments, and which command they name.
//!
//! Only parsing and dispatch live here. The commands are in `cli/`, one file per
//! command or family; the daemon a mount leaves behind is in `daemon.rs`. Nothing
//! here may start a thread: `mount` forks after it (see `daemon`).

mod cli;
mod daemon;

use clap::{Parser, Subcommand};
use cli::parse_size;
use clonefs::api::PatchCluster;
use clonefs::fs::MountConfig;
use clonefs::store::addr::{StoreAddr, StoreOptions};
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
    /// Create a new store: a file (sparse: it takes host space only as pages are
    /// used) or rados://POOL/STORE on a Ceph cluster
    Mkfs {
        /// Path of the store file to create, or rados://POOL/STORE; must not exist
        #[arg(value_parser = parse_store)]
        store: StoreAddr,
        #[command(flatten)]
        ceph: CephArgs,
        /// Capacity, with an optional K, M, G or T suffix (powers of 1024)
        #[arg(long, default_value = "64G", value_parser = parse_size)]
        size: u64,
        /// Page size: a power of two from 4K to 64K
        #[arg(long, default_value = "4K", value_parser = parse_size)]
        page_size: u64,
        /// How long restore points are kept (like 7d, 12h; 0 turns them off); each
        /// cluster can change it (clonefs modify --retention)
        #[arg(long, default_value = "7d", value_parser = parse_retention)]
        retention: std::time::Duration,
    },
    /// Mount a store, or one cluster of it; returns once the mount is ready (unless
    /// --foreground). A store already mounted is mounted again by its daemon
    Mount {
        /// The store file, or rados://POOL/STORE (made by clonefs mkfs)
        #[arg(value_parser = parse_store)]
        store: StoreAddr,
        #[command(flatten)]
        ceph: CephArgs,
        /// RADOS: fence the store's current writer (OSD blocklist) and take it over
        #[arg(long)]
        take_over: bool,
        /// RADOS: where the daemon keeps its local page cache (a file per store and
        /// host, emptied at mount, removed at unmount) [default: /var/cache/clonefs]
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// RADOS: the page cache's size (K, M, G, T suffixes; 0 turns it off)
        #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
        cache_size: u64,
        /// An existing, empty directory
        mountpoint: PathBuf,
        /// Show this cluster alone at the mount point (its files, and its .clone);
        /// while mounted it cannot be deleted or reset
        #[arg(long)]
        cluster: Option<String>,
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
        /// Serve requests through /dev/fuse alone. By default, on Linux 6.14+, they
        /// come over io_uring, one queue per CPU; as root, clonefs turns on the fuse
        /// module's enable_uring for that (it changes nothing for other FUSE servers)
        #[arg(long)]
        no_io_uring: bool,
        /// Log file of the background daemon [default: STORE.log]
        #[arg(long)]
        log: Option<PathBuf>,
        /// Serve the API and the web console on TCP too, at PORT on loopback or at
        /// ADDR:PORT; every API request there needs the token the mount writes to
        /// STORE.token (clonefs console prints the console's URL with it)
        #[arg(long, value_name = "[ADDR:]PORT", value_parser = cli::console::parse_listen)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Write /usr/sbin/mount.fuse.clonefs, the helper mount(8) and /etc/fstab use
    /// for -t fuse.clonefs (a script that runs this binary)
    Install {
        /// Directory to write the helper to
        #[arg(long, default_value = cli::helper::HELPER_DIR)]
        dir: PathBuf,
    },
    /// What mount.fuse.clonefs runs: mount(8)'s arguments (SOURCE DIR [-sfnv] [-o OPTS])
    #[command(hide = true)]
    MountHelper {
        #[arg(allow_hyphen_values = true, trailing_var_arg = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Unmount and wait until the daemon has committed the store (and exited, if
    /// this was the store's last mount)
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
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Print the API's reply as JSON
        #[arg(long)]
        json: bool,
        /// The clonefs mount
        mountpoint: PathBuf,
    },
    /// Make a new cluster from a cluster as it was at a time (a restore point)
    #[command(group = clap::ArgGroup::new("when").required(true).args(["restore_to_time", "use_latest_restorable_time"]))]
    RestoreToPointInTime {
        /// The cluster to restore
        #[arg(long)]
        source_cluster: String,
        /// Name of the new cluster
        #[arg(long)]
        cluster: String,
        /// RFC 3339 (2026-11-30T09:50:00Z) or relative (-10m): the newest restore
        /// point at or before it is used, and its exact time printed
        #[arg(long, allow_hyphen_values = true)]
        restore_to_time: Option<String>,
        /// The cluster's latest state (the same as clonefs clone)
        #[arg(long)]
        use_latest_restorable_time: bool,
        #[command(flatten)]
        expiry: ExpiryArgs,
        #[arg(long)]
        json: bool,
        mountpoint: PathBuf,
    },
    /// Show a cluster's restore window: earliest and latest restorable time
    Restorable {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        json: bool,
        mountpoint: PathBuf,
    },
    /// Replace a cluster's contents, at the same path, with its parent's latest
    /// (or an image at a time); refused with files open unless --force
    Reset {
        #[arg(long)]
        cluster: String,
        /// The parent's image at this time (the cluster's own if it has no parent)
        #[arg(long, conflicts_with = "from_parent", allow_hyphen_values = true)]
        restore_to_time: Option<String>,
        /// The parent's latest contents (the default)
        #[arg(long)]
        from_parent: bool,
        /// Reset even with files open; their open handles then fail
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
        mountpoint: PathBuf,
    },
    /// Protect a cluster: no delete, no reset, no file in it removed
    Protect {
        #[arg(long)]
        cluster: String,
        mountpoint: PathBuf,
    },
    /// Lift a cluster's protection
    Unprotect {
        #[arg(long)]
        cluster: String,
        mountpoint: PathBuf,
    },
    /// Change a cluster's expiry or how long its restore points are kept
    Modify {
        #[arg(long)]
        cluster: String,
        /// How long restore points are kept (like 7d; 0 turns them off and drops them)
        #[arg(long)]
        retention: Option<String>,
        /// Expire at this time (RFC 3339, or relative like +2h)
        #[arg(long, conflicts_with = "no_expiry")]
        expires_at: Option<String>,
        /// Never expire
        #[arg(long)]
        no_expiry: bool,
        #[arg(long)]
        json: bool,
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
    Fsck {
        /// The store file, or rados://POOL/STORE
        #[arg(value_parser = parse_store)]
        store: StoreAddr,
        #[command(flatten)]
        ceph: CephArgs,
        /// RADOS: fence a writer that still holds the lease (it crashed) and check
        #[arg(long)]
        take_over: bool,
        /// Print the report as JSON (clean, problems, notes, clusters, inodes, pages, seconds)
        #[arg(long)]
        json: bool,
    },
    /// Delete a store that is not mounted, with every cluster in it (a store file,
    /// or every object of a RADOS store); refused while a daemon serves it
    DeleteStore {
        /// The store file, or rados://POOL/STORE
        #[arg(value_parser = parse_store)]
        store: StoreAddr,
        #[command(flatten)]
        ceph: CephArgs,
        /// Yes: delete it and every cluster in it (nothing can bring them back)
        #[arg(long)]
        yes: bool,
    },
    /// Print the URL of a mount's web console, with its token (mount with --listen)
    Console { mountpoint: PathBuf },
}

/// How to reach a store on Ceph RADOS (ignored for a store file).
#[derive(clap::Args)]
struct CephArgs {
    /// The Ceph cluster's configuration file
    #[arg(long, value_name = "FILE", default_value = clonefs::store::addr::DEFAULT_CEPH_CONF)]
    ceph_conf: PathBuf,
    /// The Ceph user to connect as (client.NAME) [default: admin]
    #[arg(long, value_name = "NAME")]
    ceph_user: Option<String>,
    /// The keyring with that user's key [default: the 'keyring' setting of --ceph-conf]
    #[arg(long, value_name = "FILE")]
    ceph_keyring: Option<PathBuf>,
    /// This writer's name in the store's lease, shown to anyone refused [default: the host name]
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
}

impl CephArgs {
    fn store(self, addr: StoreAddr, take_over: bool) -> cli::mount::StoreArgs {
        cli::mount::StoreArgs {
            addr,
            opts: StoreOptions {
                ceph_conf: Some(self.ceph_conf),
                ceph_user: self.ceph_user,
                ceph_keyring: self.ceph_keyring,
                host: self.host,
                take_over,
                cache: None,
                cache_size: 0,
            },
        }
    }
}

fn parse_store(s: &str) -> Result<StoreAddr, String> {
    StoreAddr::parse(s)
}

/// When a new cluster expires.
#[derive(clap::Args)]
struct ExpiryArgs {
    /// Delete the new cluster after this long (like 30m, 2h, 7d)
    #[arg(long, conflicts_with = "expires_at")]
    expires_in: Option<String>,
    /// Delete the new cluster at this time (RFC 3339, or relative like +2h)
    #[arg(long)]
    expires_at: Option<String>,
}

impl ExpiryArgs {
    fn expiry(self) -> cli::restore::Expiry {
        cli::restore::Expiry {
            expires_in: self.expires_in,
            expires_at: self.expires_at,
        }
    }
}

fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    clonefs::volume::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Mkfs {
            store,
            ceph,
            size,
            page_size,
            retention,
        } => cli::mkfs::run(&ceph.store(store, false), size, page_size, retention),
        Cmd::Mount {
            store,
            ceph,
            take_over,
            cache,
            cache_size,
            mountpoint,
            cluster,
            foreground,
            threads,
            allow_other,
            writeback_cache,
            no_io_uring,
            log,
            listen,
        } => cli::mount::mount(
            &ceph.store(store, take_over).with_cache(cache, cache_size),
            &mountpoint,
            foreground,
            log,
            &MountConfig {
                threads: threads as usize,
                allow_other,
                writeback_cache,
                cluster,
                no_io_uring,
            },
            listen,
        ),
        Cmd::Install { dir } => cli::helper::install(&dir),
        Cmd::MountHelper { args } => cli::helper::run(&args),
        Cmd::Umount { mountpoint } => cli::mount::umount(&mountpoint),
        Cmd::Clone {
            source_cluster,
            cluster,
            expiry,
            json,
            mountpoint,
        } => cli::restore::restore(
            &mountpoint,
            &source_cluster,
            &cluster,
            None,
            &expiry.expiry(),
            json,
        ),
        Cmd::RestoreToPointInTime {
            source_cluster,
            cluster,
            restore_to_time,
            use_latest_restorable_time: _,
            expiry,
            json,
            mountpoint,
        } => cli::restore::restore(
            &mountpoint,
            &source_cluster,
            &cluster,
            restore_to_time.as_deref(),
            &expiry.expiry(),
            json,
        ),
        Cmd::Restorable {
            cluster,
            json,
            mountpoint,
        } => cli::restore::restorable(&mountpoint, &cluster, json),
        Cmd::Reset {
            cluster,
            restore_to_time,
            from_parent: _,
            force,
            json,
            mountpoint,
        } => cli::restore::reset(
            &mountpoint,
            &cluster,
            restore_to_time.as_deref(),
            force,
            json,
        ),
        Cmd::Protect {
            cluster,
            mountpoint,
        } => cli::restore::protect(&mountpoint, &cluster, true),
        Cmd::Unprotect {
            cluster,
            mountpoint,
        } => cli::restore::protect(&mountpoint, &cluster, false),
        Cmd::Modify {
            cluster,
            retention,
            expires_at,
            no_expiry,
            json,
            mountpoint,
        } => cli::restore::modify(
            &mountpoint,
            &cluster,
            &PatchCluster {
                protected: None,
                expires_at: if no_expiry {
                    Some(String::new())
                } else {
                    expires_at
                },
                retention,
            },
            json,
        ),
        Cmd::Status { mountpoint, json } => cli::status::run(&mountpoint, json),
        Cmd::Fsck {
            store,
            ceph,
            take_over,
            json,
        } => cli::fsck::run(&ceph.store(store, take_over), json),
        Cmd::DeleteStore { store, ceph, yes } => cli::mkfs::delete(&ceph.store(store, false), yes),
        Cmd::Console { mountpoint } => cli::console::run(&mountpoint),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("clonefs: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relative time like `-10m` is a value, not an unknown flag.
    #[test]
    fn relative_restore_times_parse_as_values() {
        for cmd in [
            &[
                "clonefs",
                "restore-to-point-in-time",
                "--source-cluster",
                "prod",
            ][..],
            &["clonefs", "reset"][..],
        ] {
            let args: Vec<&str> = cmd
                .iter()
                .copied()
                .chain(["--cluster", "test", "--restore-to-time", "-10m", "/mnt"])
                .collect();
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            match cli.cmd {
                Cmd::RestoreToPointInTime {
                    restore_to_time, ..
                }
                | Cmd::Reset {
                    restore_to_time, ..
                } => assert_eq!(restore_to_time.as_deref(), Some("-10m")),
                _ => panic!("{args:?} parsed as another command"),
            }
        }
    }
}
