//! `clonefs mount` and `clonefs umount`: the checks before a mount, and the wait
//! after an unmount.
//!
//! `mount` checks all it can (the store is a file, the mount point an empty
//! directory that is not already a mount) while it is still in the foreground, so
//! a mistake is an error at the prompt, not a line in a log. `umount` returns only
//! once the daemon has exited, which is after its last commit: a store is safe to
//! copy or check as soon as umount returns.

use super::{
    absolute, clonefs_mount, init_logger, mount_at, read_status, status::parse_status, CliResult,
};
use crate::daemon::{self, Served};
use clonefs::api::{client, socket_path, ErrorBody, MountsDoc, NewMount};
use clonefs::fs::MountConfig;
use clonefs::store::addr::{StoreAddr, StoreOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where a mount's store is, and how to reach it.
pub struct StoreArgs {
    pub addr: StoreAddr,
    pub opts: StoreOptions,
}

impl StoreArgs {
    /// The same store, served with a page cache of `size` bytes in `dir` (RADOS).
    pub fn with_cache(mut self, dir: Option<PathBuf>, size: u64) -> StoreArgs {
        self.opts.cache = dir;
        self.opts.cache_size = size;
        self
    }
}

pub fn mount(
    store: &StoreArgs,
    mountpoint: &Path,
    foreground: bool,
    log: Option<PathBuf>,
    mc: &MountConfig,
    listen: Option<SocketAddr>,
) -> CliResult {
    mount_store(store, mountpoint, foreground, log, mc, listen, false)
}

/// [`mount`]; `quiet` says nothing on success (mount(8)'s helper, unless -v).
pub fn mount_quietly(
    store: &StoreArgs,
    mountpoint: &Path,
    foreground: bool,
    log: Option<PathBuf>,
    mc: &MountConfig,
    listen: Option<SocketAddr>,
    quiet: bool,
) -> CliResult {
    mount_store(store, mountpoint, foreground, log, mc, listen, quiet)
}

/// Checks a RADOS store's options before the fork; returns its local anchor.
fn check_rados(args: &StoreArgs) -> Result<Served, String> {
    let conf = absolute(&args.opts.ceph_conf())?;
    if !conf.is_file() {
        return Err(format!(
            "no Ceph configuration at {} (pass --ceph-conf FILE)",
            conf.display()
        ));
    }
    let host = args.opts.host();
    if host.is_empty() || host.contains(['/', '@', '\0']) {
        return Err(format!("--host '{host}': a name without '/' or '@'"));
    }
    let local = args.addr.local_path(&host);
    if let Some(dir) = local.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot make the run directory {}: {e}", dir.display()))?;
    }
    Ok(Served {
        local,
        addr: args.addr.clone(),
        opts: StoreOptions {
            ceph_conf: Some(conf),
            ceph_user: args.opts.ceph_user.clone(),
            ceph_keyring: args
                .opts
                .ceph_keyring
                .as_deref()
                .map(absolute)
                .transpose()?,
            host: Some(host),
            take_over: args.opts.take_over,
            cache: args.opts.cache.as_deref().map(absolute).transpose()?,
            cache_size: args.opts.cache_size,
        },
    })
}

#[allow(clippy::too_many_arguments)]
fn mount_store(
    args: &StoreArgs,
    mountpoint: &Path,
    foreground: bool,
    log: Option<PathBuf>,
    mc: &MountConfig,
    listen: Option<SocketAddr>,
    quiet: bool,
) -> CliResult {
    let served = match &args.addr {
        StoreAddr::File(p) => {
            let p = absolute(p)?;
            Served {
                addr: StoreAddr::File(p.clone()),
                opts: StoreOptions::default(),
                local: p,
            }
        }
        StoreAddr::Rados { .. } => check_rados(args)?,
    };
    let store = served.local.clone();
    let shown = served.addr.to_string();
    match std::fs::metadata(&store) {
        _ if served.addr.is_rados() => {}
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{} is not a store file", store.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "store {} does not exist (make one with: clonefs mkfs {})",
                store.display(),
                store.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", store.display())),
    }
    if let Some(c) = &mc.cluster {
        clonefs::volume::catalog::validate_name(c).map_err(|e| format!("--cluster: {e}"))?;
    }
    let mnt = check_mountpoint(mountpoint)?;
    let what = match &mc.cluster {
        Some(c) => format!("cluster {c} of {shown}"),
        None => shown.clone(),
    };
    // A store held by a daemon is joined: that daemon mounts it again. Mounting
    // races a daemon on its way out (it refuses joins once its last mount has
    // gone, then lets go of the lock) by trying again for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = lock_holder(&store) {
            match join(&store, &mnt, mc, listen, foreground, pid)? {
                Joined::Yes => {
                    if !quiet {
                        println!(
                            "mounted {what} at {} (served by the store's daemon, pid {pid})",
                            mnt.display()
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Joined::Closing if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Joined::Closing => {
                    return Err(format!(
                        "the daemon of {shown} (pid {pid}) is still closing the store after 30 s; \
                         see its log"
                    ))
                }
            }
        }
        break;
    }
    if foreground {
        init_logger("info");
        return daemon::foreground(&served, &mnt, mc, listen).map(|()| ExitCode::SUCCESS);
    }
    let log = match log {
        Some(l) => absolute(&l)?,
        None => {
            let mut s = store.clone().into_os_string();
            s.push(".log");
            PathBuf::from(s)
        }
    };
    daemon::spawn(&served, &mnt, &log, mc, listen)?;
    if !quiet {
        println!(
            "mounted {what} at {} (log: {})",
            mnt.display(),
            log.display()
        );
        if listen.is_some() {
            println!(
                "API and console on TCP; open the console with the URL that `clonefs console {}` prints",
                mnt.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

enum Joined {
    Yes,
    /// The daemon is closing the store: mount again once it has let go.
    Closing,
}

/// Asks the daemon `pid`, which holds `store`, to serve one more mount at `mnt`.
fn join(
    store: &Path,
    mnt: &Path,
    mc: &MountConfig,
    listen: Option<SocketAddr>,
    foreground: bool,
    pid: u32,
) -> Result<Joined, String> {
    let shown = store.display();
    if foreground {
        return Err(format!(
            "{shown} is already served by its daemon (pid {pid}), which would serve this \
             mount too: a mount that joins it cannot stay in the foreground; drop --foreground"
        ));
    }
    let socket = socket_path(store);
    let req = NewMount {
        mountpoint: mnt.display().to_string(),
        cluster: mc.cluster.clone(),
        threads: Some(mc.threads),
        allow_other: mc.allow_other,
        writeback_cache: mc.writeback_cache,
        no_io_uring: mc.no_io_uring,
        listen: listen.map(|a| a.to_string()),
    };
    let (status, body) =
        client::call(&socket, "POST", "/api/v1/mounts", Some(&req)).map_err(|e| {
            format!(
            "{shown} is in use by process {pid}, whose API cannot be reached to join it ({e}); \
             if that is another user's daemon, only that user can mount this store"
        )
        })?;
    if status < 400 {
        return Ok(Joined::Yes);
    }
    let err = serde_json::from_slice::<ErrorBody>(&body).ok();
    match err {
        Some(e) if e.error.code == "Closing" => Ok(Joined::Closing),
        Some(e) if e.error.code == "MountFailed" => Err(e.error.message),
        Some(e) => Err(format!(
            "cannot mount at {}: {}",
            mnt.display(),
            e.error.message
        )),
        None => Err(format!(
            "cannot mount at {}: the daemon (pid {pid}) answered {status}",
            mnt.display()
        )),
    }
}

/// Checks that `p` can take a mount; returns it made absolute and canonical.
fn check_mountpoint(p: &Path) -> Result<PathBuf, String> {
    let abs = absolute(p)?;
    let shown = abs.display();
    let meta = match std::fs::metadata(&abs) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("mount point {shown} does not exist"))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
                "mount point {shown} is a disconnected mount (its daemon is gone); \
                 clear it with: fusermount3 -uz {shown}"
            ))
        }
        Err(e) => return Err(format!("cannot use mount point {shown}: {e}")),
    };
    if !meta.is_dir() {
        return Err(format!("mount point {shown} is not a directory"));
    }
    let canon = abs
        .canonicalize()
        .map_err(|e| format!("cannot use mount point {shown}: {e}"))?;
    if let Some(m) = mount_at(&canon) {
        return Err(format!(
            "mount point {} is already a mount ({}); unmount it first",
            canon.display(),
            m.fstype
        ));
    }
    if let Some(parent) = canon.parent() {
        let pm = std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        if pm.dev() != meta.dev() {
            return Err(format!(
                "mount point {} is already a mount; unmount it first",
                canon.display()
            ));
        }
    }
    let mut entries =
        std::fs::read_dir(&canon).map_err(|e| format!("cannot read {}: {e}", canon.display()))?;
    if entries.next().is_some() {
        return Err(format!("mount point {} is not empty", canon.display()));
    }
    Ok(canon)
}

/// The process holding the lock on `store`: the daemon serving it (/proc/locks).
fn lock_holder(store: &Path) -> Option<u32> {
    let meta = std::fs::metadata(store).ok()?;
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" (waiters have "->" after "1:")
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 6 && f[1] == "FLOCK" && f[5] == want)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

/// Has process `pid` exited (gone, or a zombie nobody reaped yet)?
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
    }
}

pub fn umount(mountpoint: &Path) -> CliResult {
    init_logger("warn");
    let abs = absolute(mountpoint)?;
    let mnt = abs.canonicalize().unwrap_or(abs);
    let shown = mnt.display();
    let m = clonefs_mount(&mnt)?;
    if let Err(e) = std::fs::metadata(&mnt) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            daemon::unmount(&mnt, true).map_err(|e| format!("cannot detach {shown}: {e}"))?;
            println!("{shown} was disconnected (its daemon had exited); detached it");
            return Ok(ExitCode::SUCCESS);
        }
    }
    // The daemon is the holder of the store's lock; the status document (which
    // walks every tree for its space figures) names it too, more slowly.
    let pid = match lock_holder(&m.source) {
        Some(pid) => pid,
        None => {
            parse_status(&read_status(&mnt)?)
                .map_err(|e| format!("{shown}: no daemon pid: {e}"))?
                .pid
        }
    };
    daemon::unmount(&mnt, false).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "mount point is busy: {shown} (a process has a file open or its working directory under it)"
        ),
        _ => format!("cannot unmount {shown}: {e}"),
    })?;
    // The last mount of a store takes its daemon with it (after the final
    // commit); any other is done once the daemon no longer lists it (its session
    // has ended, after a commit).
    let socket = socket_path(&m.source);
    let deadline = Instant::now() + Duration::from_secs(60);
    // A daemon whose main thread has exited shows as a zombie while its other
    // threads still wind down holding the store open: done once its lock is gone.
    while !exited(pid) || lock_holder(&m.source) == Some(pid) {
        if Instant::now() > deadline {
            return Err(format!(
                "unmounted {shown}, but its daemon (pid {pid}) still serves it after 60 s; see its log"
            ));
        }
        if let Ok(doc) = client::request::<(), MountsDoc>(&socket, "GET", "/api/v1/mounts", None) {
            if doc.pid == pid
                && !doc.mounts.is_empty()
                && !doc.mounts.iter().any(|x| Path::new(&x.mountpoint) == mnt)
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("unmounted {shown}");
    Ok(ExitCode::SUCCESS)
}
