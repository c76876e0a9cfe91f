//! Going to the background, and serving a mount until it goes away.
//!
//! `spawn` goes to the background the classic way: it makes a pipe and forks while
//! the process still has one thread (nothing before it may start one: no logger
//! thread, no volume, no worker), so the child may run any code. The child becomes
//! the daemon (new session, stdio on /dev/null and the log file, never closed:
//! fuser wants its /dev/fuse descriptor above 2), opens the store, mounts, and
//! writes "ready" or its error to the pipe; the parent returns that. A daemon that
//! dies before a word leaves the pipe empty, which the parent reports too.
//!
//! One daemon serves every mount of its store (`clonefs::fs::Sessions`): the one
//! it was started for, and any that join later through the API's `POST /mounts`.
//! It unmounts them all on SIGTERM, SIGINT or SIGHUP (detaching a busy mount
//! rather than leaving it), and exits once the last is gone, after closing the
//! store (the final commit).
//!
//! The daemon serves the API (`clonefs::api`) beside the mount, on the store's
//! unix socket and, when `--listen` asks, on TCP with the console; the API's files
//! beside the store go when the mount does.

use crate::cli::init_logger;
use clonefs::fs::{MountConfig, Sessions};
use clonefs::store::addr::{StoreAddr, StoreOptions};
use clonefs::volume::Volume;
use log::{error, info, warn};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid, ForkResult};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// The store a daemon serves: where it is, how to reach it, and the local path
/// its socket, token and log sit beside (the store file, or a RADOS store's anchor).
pub struct Served {
    pub addr: StoreAddr,
    pub opts: StoreOptions,
    pub local: std::path::PathBuf,
}

/// Serves `store` at `mnt` from this process until the mount goes away.
pub fn foreground(
    store: &Served,
    mnt: &Path,
    mc: &MountConfig,
    listen: Option<SocketAddr>,
) -> Result<(), String> {
    let signals = block_signals();
    serve(store, mnt, mc, listen, signals, &mut None)
}

/// Forks the daemon for `store` at `mnt`, logging to `log`; returns once the mount
/// is ready, or with the daemon's reason why it is not.
pub fn spawn(
    store: &Served,
    mnt: &Path,
    log: &Path,
    mc: &MountConfig,
    listen: Option<SocketAddr>,
) -> Result<(), String> {
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {}", io::Error::from(e)))?;
    // SAFETY: the process has one thread here (no logger, no volume, no worker
    // started yet), so the child may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork: {}", io::Error::from(e))),
        Ok(ForkResult::Child) => {
            drop(rd);
            let code = daemon(store, mnt, log, mc, listen, File::from(wr));
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(wr);
            let mut msg = String::new();
            let _ = File::from(rd).read_to_string(&mut msg);
            let msg = msg.trim();
            if msg == "ready" {
                return Ok(());
            }
            let _ = waitpid(child, None);
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

/// Unmounts `mnt` (lazily: detached now, gone when no longer busy). As root with
/// umount2(2); otherwise through the setuid helper fusermount3.
pub fn unmount(mnt: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    match umount2(mnt, flags) {
        Ok(()) => return Ok(()),
        Err(Errno::EPERM) => {}
        Err(e) => return Err(e.into()),
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
        Err(Errno::EBUSY.into())
    } else {
        Err(io::Error::other(msg))
    }
}

/// The forked child: becomes the daemon, serves until unmounted; returns the exit code.
fn daemon(
    store: &Served,
    mnt: &Path,
    log: &Path,
    mc: &MountConfig,
    listen: Option<SocketAddr>,
    ready: File,
) -> i32 {
    let mut ready = Some(ready);
    let fail = |ready: &mut Option<File>, msg: String| {
        if let Some(mut w) = ready.take() {
            let _ = writeln!(w, "{msg}");
        }
        1
    };
    // Fails only for a process group leader, which a child just forked is not.
    let _ = setsid();
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
    let _ = dup2_stdin(&null);
    let _ = dup2_stdout(&logf);
    let _ = dup2_stderr(&logf);
    drop((null, logf));
    let _ = std::env::set_current_dir("/");
    init_logger("info");
    let signals = block_signals();
    match serve(store, mnt, mc, listen, signals, &mut ready) {
        Ok(()) => 0,
        Err(msg) => {
            error!("{msg}");
            fail(&mut ready, msg)
        }
    }
}

/// Blocks the signals that ask for an unmount, in this thread and every thread it
/// starts later; a thread of its own takes them with sigwait. Blocked, they never
/// interrupt a worker: no store call sees EINTR, which the store would take for an
/// I/O error and refuse writes after.
fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        warn!("cannot block SIGTERM, SIGINT and SIGHUP: {e}");
    }
    set
}

fn spawn_signal_thread(set: SigSet, sessions: Arc<Sessions>) {
    let spawned = std::thread::Builder::new()
        .name("clonefs-signals".into())
        .spawn(move || loop {
            let Ok(sig) = set.wait() else {
                return;
            };
            let sig = sig as i32;
            for live in sessions.live() {
                let mnt = &live.point;
                info!("signal {sig}: unmounting {}", mnt.display());
                match unmount(mnt, false) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        warn!(
                            "{} is busy; detaching it now, its session ends when the last user leaves",
                            mnt.display()
                        );
                        if let Err(e) = unmount(mnt, true) {
                            error!("cannot detach {}: {e}", mnt.display());
                        }
                    }
                    Err(e) => error!("cannot unmount {}: {e}", mnt.display()),
                }
            }
        });
    if let Err(e) = spawned {
        warn!("no signal thread ({e}): SIGTERM will not unmount");
    }
}

/// Opens the store, mounts it, reports ready, and serves until the last of its
/// mounts (this one and any that join through the API) goes away; then closes the
/// store (the final commit).
fn serve(
    served: &Served,
    mnt: &Path,
    mc: &MountConfig,
    listen: Option<SocketAddr>,
    signals: SigSet,
    ready: &mut Option<File>,
) -> Result<(), String> {
    let store = served.local.as_path();
    let vol = Volume::open_store(&served.addr, &served.opts, false).map_err(|e| e.to_string())?;
    let sessions = Sessions::new(vol.clone(), mc.writeback_cache);
    let api = clonefs::api::Api::serve_store(vol.clone(), store, listen)
        .map_err(|e| format!("cannot serve the API of {}: {e}", store.display()))?;
    if let Some(addr) = api.tcp_addr() {
        info!(
            "API and console on {} (token in {})",
            clonefs::api::console_url(addr),
            clonefs::api::token_path(store).display()
        );
    }
    api.serve_mounts(sessions.clone());
    sessions.add(mnt, mc).map_err(|e| e.to_string())?;
    spawn_signal_thread(signals, sessions.clone());
    info!("daemon for {} (pid {})", served.addr, std::process::id());
    if let Some(mut w) = ready.take() {
        let _ = writeln!(w, "ready");
    }
    sessions.wait_all();
    drop(api);
    match vol.close() {
        Ok(()) => info!("last mount gone; {} committed and closed", served.addr),
        Err(e) => error!(
            "last mount gone, but the final commit of {} failed: {e}",
            served.addr
        ),
    }
    info!("daemon for {} exits", served.addr);
    Ok(())
}
