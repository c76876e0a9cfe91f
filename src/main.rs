//! The `clonefs` command: mkfs, mount, umount, clone, status, fsck.
//!
//! `mount` goes to the background the classic way: it checks what it can, makes a
//! pipe and forks while the process still has one thread; the child becomes the
//! daemon (new session, stdio on /dev/null and the log file), opens the store,
//! mounts, and writes "ready" or its error to the pipe; the parent prints that and
//! exits. The daemon unmounts itself on SIGTERM, SIGINT or SIGHUP, and exits once
//! the mount is gone and the store is committed.

use clap::{Parser, Subcommand};
use clonefs::fs::{mounts, MountConfig, MountEntry, CONTROL_NAME, STATUS_NAME};
use clonefs::status::StatusDoc;
use clonefs::volume::{catalog, Volume};
use log::{error, info, warn};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

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

type CliResult = Result<ExitCode, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Mkfs {
            store,
            size,
            page_size,
        } => cmd_mkfs(&store, size, page_size),
        Cmd::Mount {
            store,
            mountpoint,
            foreground,
            threads,
            allow_other,
            writeback_cache,
            log,
        } => cmd_mount(
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
        Cmd::Umount { mountpoint } => cmd_umount(&mountpoint),
        Cmd::Clone {
            source_cluster,
            cluster,
            mountpoint,
        } => cmd_clone(&mountpoint, &source_cluster, &cluster),
        Cmd::Status { mountpoint, json } => cmd_status(&mountpoint, json),
        Cmd::Fsck { store } => cmd_fsck(&store),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("clonefs: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (in the daemon, stderr is the log file); RUST_LOG overrides.
fn init_logger(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        // fuser warns on every unmount that it could not unmount again; say nothing.
        .filter_module("fuser::session", log::LevelFilter::Error)
        .format_timestamp_millis()
        .init();
}

fn os_err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

// ---- mkfs ---------------------------------------------------------------------

/// "64G" -> 64 GiB; K, M, G, T are powers of 1024; a trailing "B" or "iB" is allowed.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| t.strip_suffix('B'))
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 4096, 4K, 64G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// 67108864 -> "64.0M".
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

fn cmd_mkfs(store: &Path, size: u64, page_size: u64) -> CliResult {
    init_logger("warn");
    if store.symlink_metadata().is_ok() {
        return Err(format!(
            "{} already exists; mkfs never overwrites a file (remove it first if you mean to)",
            store.display()
        ));
    }
    Volume::mkfs(store, size, page_size as usize).map_err(|e| e.to_string())?;
    println!(
        "made clonefs store {}: capacity {}, page size {}",
        store.display(),
        human(size / page_size * page_size),
        human(page_size)
    );
    Ok(ExitCode::SUCCESS)
}

// ---- mounts -------------------------------------------------------------------

fn mount_at(p: &Path) -> Option<MountEntry> {
    // The last entry for a path is the one on top.
    mounts().into_iter().rev().find(|m| m.point == p)
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

/// Unmounts `mnt` (lazily: detached now, gone when no longer busy). As root with
/// umount2(2); otherwise through the setuid helper fusermount3.
fn unmount(mnt: &Path, lazy: bool) -> io::Result<()> {
    let c = CString::new(mnt.as_os_str().as_bytes()).map_err(|_| os_err(libc::EINVAL))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let out = Command::new("fusermount3")
        .arg(if lazy { "-uz" } else { "-u" })
        .arg(mnt)
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.contains("busy") {
        Err(os_err(libc::EBUSY))
    } else {
        Err(io::Error::other(msg))
    }
}

// ---- mount --------------------------------------------------------------------

fn cmd_mount(
    store: &Path,
    mountpoint: &Path,
    foreground: bool,
    log: Option<PathBuf>,
    mc: &MountConfig,
) -> CliResult {
    let store = absolute(store)?;
    match std::fs::metadata(&store) {
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
    let mnt = check_mountpoint(mountpoint)?;
    if foreground {
        init_logger("info");
        let signals = block_signals();
        return match serve(&store, &mnt, mc, signals, &mut None) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(msg) => Err(msg),
        };
    }
    let log = match log {
        Some(l) => absolute(&l)?,
        None => {
            let mut s = store.clone().into_os_string();
            s.push(".log");
            PathBuf::from(s)
        }
    };
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these descriptors; each is owned once.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process has one thread here (no logger, no volume, no worker
    // started yet), so the child may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", io::Error::last_os_error())),
        0 => {
            drop(rd);
            let code = daemon(&store, &mnt, &log, mc, File::from(wr));
            std::process::exit(code)
        }
        child => {
            drop(wr);
            let mut msg = String::new();
            let _ = File::from(rd).read_to_string(&mut msg);
            let msg = msg.trim();
            if msg == "ready" {
                println!(
                    "mounted {} at {} (log: {})",
                    store.display(),
                    mnt.display(),
                    log.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut status = 0;
            // SAFETY: waiting for our own child; `status` is a valid out pointer.
            unsafe { libc::waitpid(child, &mut status, 0) };
            if msg.is_empty() {
                Err(format!(
                    "the daemon exited before the mount was ready; see {}",
                    log.display()
                ))
            } else {
                Err(msg.to_string())
            }
        }
    }
}

/// The forked child: becomes the daemon, serves until unmounted; returns the exit code.
fn daemon(store: &Path, mnt: &Path, log: &Path, mc: &MountConfig, ready: File) -> i32 {
    let mut ready = Some(ready);
    let fail = |ready: &mut Option<File>, msg: String| {
        if let Some(mut w) = ready.take() {
            let _ = writeln!(w, "{msg}");
        }
        1
    };
    // SAFETY: setsid has no memory effects; it fails only if already a group leader.
    unsafe { libc::setsid() };
    let logf = match OpenOptions::new().create(true).append(true).open(log) {
        Ok(f) => f,
        Err(e) => {
            return fail(
                &mut ready,
                format!("cannot open the log {}: {e}", log.display()),
            )
        }
    };
    let null = match OpenOptions::new().read(true).write(true).open("/dev/null") {
        Ok(f) => f,
        Err(e) => return fail(&mut ready, format!("cannot open /dev/null: {e}")),
    };
    // Re-point stdio, never close it: fuser wants its /dev/fuse descriptor above 2.
    // SAFETY: dup2 onto the standard descriptors from descriptors we own.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(logf.as_raw_fd(), 1);
        libc::dup2(logf.as_raw_fd(), 2);
    }
    drop((null, logf));
    let _ = std::env::set_current_dir("/");
    init_logger("info");
    let signals = block_signals();
    match serve(store, mnt, mc, signals, &mut ready) {
        Ok(()) => 0,
        Err(msg) => {
            error!("{msg}");
            fail(&mut ready, msg)
        }
    }
}

/// Blocks the signals that ask for an unmount, in this thread and every thread it
/// starts later; a thread of its own takes them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the calls get
    // valid pointers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn spawn_signal_thread(set: libc::sigset_t, mnt: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("clonefs-signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` and `sig` are valid for the call.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            info!("signal {sig}: unmounting {}", mnt.display());
            match unmount(&mnt, false) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    warn!(
                        "{} is busy; detaching it now, the daemon exits when the last user leaves",
                        mnt.display()
                    );
                    if let Err(e) = unmount(&mnt, true) {
                        error!("cannot detach {}: {e}", mnt.display());
                    }
                }
                Err(e) => error!("cannot unmount {}: {e}", mnt.display()),
            }
        });
    if let Err(e) = spawned {
        warn!("no signal thread ({e}): SIGTERM will not unmount");
    }
}

/// Opens the store, mounts it, reports ready, and serves until the mount goes away.
fn serve(
    store: &Path,
    mnt: &Path,
    mc: &MountConfig,
    signals: libc::sigset_t,
    ready: &mut Option<File>,
) -> Result<(), String> {
    let vol = Volume::open_path(store).map_err(|e| e.to_string())?;
    let session = clonefs::fs::mount(vol, mnt, mc)
        .map_err(|e| format!("cannot mount {} at {}: {e}", store.display(), mnt.display()))?;
    spawn_signal_thread(signals, mnt.to_owned());
    info!(
        "mounted {} at {} with {} threads{} (pid {})",
        store.display(),
        mnt.display(),
        mc.threads,
        if mc.writeback_cache {
            ", writeback cache"
        } else {
            ""
        },
        std::process::id()
    );
    if let Some(mut w) = ready.take() {
        let _ = writeln!(w, "ready");
    }
    session
        .run()
        .map_err(|e| format!("serving {} ended with an error: {e}", mnt.display()))?;
    info!("daemon for {} exits", mnt.display());
    Ok(())
}

// ---- umount -------------------------------------------------------------------

/// Reads the mount's status document; errors say what the mount point is.
fn read_status(mnt: &Path) -> Result<String, String> {
    let shown = mnt.display();
    match std::fs::read_to_string(mnt.join(STATUS_NAME)) {
        Ok(s) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(format!(
            "{shown} is a disconnected clonefs mount (its daemon is gone); \
             clonefs umount {shown} detaches it"
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("{shown} is not a clonefs mount"))
        }
        Err(e) => Err(format!("cannot read the status of {shown}: {e}")),
    }
}

/// The clonefs mount at `mnt`, or why there is none.
fn clonefs_mount(mnt: &Path) -> Result<MountEntry, String> {
    match mount_at(mnt) {
        None => Err(format!("{} is not a mount point", mnt.display())),
        Some(m) if m.fstype != "fuse.clonefs" => Err(format!(
            "{} is a {} mount, not clonefs",
            mnt.display(),
            m.fstype
        )),
        Some(m) => Ok(m),
    }
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

fn cmd_umount(mountpoint: &Path) -> CliResult {
    init_logger("warn");
    let abs = absolute(mountpoint)?;
    let mnt = abs.canonicalize().unwrap_or(abs);
    let shown = mnt.display();
    let m = clonefs_mount(&mnt)?;
    if let Err(e) = std::fs::metadata(&mnt) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            unmount(&mnt, true).map_err(|e| format!("cannot detach {shown}: {e}"))?;
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
    unmount(&mnt, false).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "mount point is busy: {shown} (a process has a file open or its working directory under it)"
        ),
        _ => format!("cannot unmount {shown}: {e}"),
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !exited(pid) {
        if Instant::now() > deadline {
            return Err(format!(
                "unmounted {shown}, but its daemon (pid {pid}) is still running after 60 s; see its log"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("unmounted {shown}");
    Ok(ExitCode::SUCCESS)
}

// ---- clone --------------------------------------------------------------------

fn cmd_clone(mountpoint: &Path, src: &str, name: &str) -> CliResult {
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
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(format!("syncfs {shown}: {}", io::Error::last_os_error()));
    }
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

// ---- status -------------------------------------------------------------------

fn local_time(secs: i64) -> String {
    // SAFETY: localtime_r reads `t` and fills `tm`, both valid for the call.
    let tm = unsafe {
        let t: libc::time_t = secs as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return secs.to_string();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The status document as a table.
fn status_table(doc: &StatusDoc) -> String {
    let mut rows =
        vec![["NAME", "PARENT", "CREATED", "LOGICAL", "SHARED", "UNIQUE"].map(String::from)];
    for c in &doc.clusters {
        rows.push([
            c.name.clone(),
            c.parent.clone().unwrap_or_else(|| "-".into()),
            local_time(c.created),
            human(c.logical),
            human(c.shared),
            human(c.unique),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i < 3 {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(&format!("{cell:>w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "store: capacity {}, used {}, free {}\n",
        human(doc.capacity),
        human(doc.used),
        human(doc.free)
    ));
    out
}

/// Reads the status document back; says whether the text is not JSON at all or
/// JSON of another shape.
fn parse_status(text: &str) -> Result<StatusDoc, String> {
    StatusDoc::from_json(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("the status document is malformed: {e}"),
        _ => format!("the status document is not JSON: {e}"),
    })
}

fn cmd_status(mountpoint: &Path, as_json: bool) -> CliResult {
    init_logger("warn");
    let mnt = absolute(mountpoint)?;
    let doc = read_status(&mnt)?;
    if as_json {
        print!("{doc}");
    } else {
        print!("{}", status_table(&parse_status(&doc)?));
    }
    Ok(ExitCode::SUCCESS)
}

// ---- fsck ---------------------------------------------------------------------

fn cmd_fsck(store: &Path) -> CliResult {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn sizes_print_for_humans() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(1023), "1023B");
        assert_eq!(human(4096), "4.0K");
        assert_eq!(human(64 << 20), "64.0M");
        assert_eq!(human(3 << 29), "1.5G");
    }

    #[test]
    fn json_reads_the_status_document() {
        let doc = r#"{"store": "/s \"q\"", "pid": 42, "page_size": 4096,
            "capacity": 1048576, "used": 8192, "free": 1040384,
            "clusters": [{"name": "prod", "id": 1, "parent": null, "created": 1700000000,
                          "logical": 67108864, "shared": 0, "unique": 67108864},
                         {"name": "test", "id": 2, "parent": "prod", "created": 1700000001,
                          "logical": 67108864, "shared": 67108864, "unique": 4096}]}"#;
        let v = parse_status(doc).unwrap();
        assert_eq!(v.pid, 42);
        assert_eq!(v.store, "/s \"q\"");
        let table = status_table(&v);
        assert!(table.starts_with("NAME"), "{table}");
        assert!(table.contains("prod"), "{table}");
        assert!(table.contains("64.0M"), "{table}");
        assert!(table.contains("4.0K"), "{table}");
        assert!(table
            .lines()
            .last()
            .unwrap()
            .starts_with("store: capacity 1.0M, used 8.0K, free"));
        assert!(parse_status("{\"a\": }").unwrap_err().contains("not JSON"));
        assert!(parse_status("[1, 2] x").is_err());
        assert!(parse_status("{\"pid\": 1}")
            .unwrap_err()
            .contains("malformed"));
        let escaped = doc.replace("\"prod\"", "\"\\u00e9\"");
        assert_eq!(parse_status(&escaped).unwrap().clusters[0].name, "é");
    }
}
