//! Mounting: the session's options, and what the kernel is asked to change about
//! the mount once it exists (dirty page limits under the writeback cache).
//!
//! `mount` returns only once the kernel has answered INIT, so a caller that reports
//! "ready" after it never reports a mount that is not there. The notifier is set
//! before any request but INIT is served; a clone that needs it can count on it.
//!
//! A mount of one cluster names its source `STORE#CLUSTER` (as mount(8) and
//! fstab write it); `mounts()` reads the store back from before the `#`.

use super::CloneFs;
use crate::error::Error;
use crate::volume::Volume;
use fuser::{Config, InitFlags, KernelConfig, MountOption, Notifier, Session, SessionACL};
use log::{info, warn};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How to mount: the choices the command line offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountConfig {
    pub threads: usize,
    pub allow_other: bool,
    /// FUSE_WRITEBACK_CACHE: writes fill the kernel's page cache and reach the
    /// daemon in writeback; a write's ENOSPC shows at fsync or close instead.
    pub writeback_cache: bool,
    /// Show this cluster alone at the mount's root; None: the whole store.
    pub cluster: Option<String>,
    /// Serve requests through /dev/fuse alone, never over io_uring.
    pub no_io_uring: bool,
}

/// The notifiers of every live mount of one volume, by mount point: a clone under
/// the writeback cache has each kernel mount write back the cluster's dirty pages.
#[derive(Default)]
pub struct Notifiers(Mutex<Vec<(PathBuf, Notifier)>>);

impl Notifiers {
    pub fn all(&self) -> Vec<Notifier> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    fn add(&self, point: &Path, n: Notifier) {
        self.0.lock().unwrap().push((point.to_owned(), n));
    }

    /// Forgets the notifier of the mount at `point`, once its session has ended.
    pub fn remove(&self, point: &Path) {
        self.0.lock().unwrap().retain(|(p, _)| p != point);
    }
}

/// Mounts `vol` at `mountpoint`, the whole store or cluster `mc.cluster` alone; the
/// mount is live (INIT answered) when this returns, and its notifier is among
/// `notifiers`. `run()` the session to serve it; it returns when the mount goes
/// away, after a commit. The volume stays open: closing it is the caller's, once
/// its last mount has gone.
pub fn mount(
    vol: Arc<Volume>,
    mountpoint: &Path,
    mc: &MountConfig,
    notifiers: &Arc<Notifiers>,
) -> Result<Session<CloneFs>, Error> {
    let mut config = Config::default();
    let mut fsname = vol.path().display().to_string();
    if let Some(c) = &mc.cluster {
        fsname = format!("{fsname}#{c}");
    }
    config.mount_options = vec![
        MountOption::FSName(fsname),
        MountOption::CUSTOM("subtype=clonefs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if mc.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(mc.threads.max(1));
    config.clone_fd = mc.threads > 1;
    let mut fs = match &mc.cluster {
        None => CloneFs::new(vol),
        Some(name) => {
            let c = vol.cluster_by_name(name)?.id;
            CloneFs::of_cluster(vol, c)
        }
    };
    fs.writeback = mc.writeback_cache;
    fs.io_uring = !mc.no_io_uring && offer_io_uring();
    fs.notifiers = notifiers.clone();
    let session = Session::new(fs, mountpoint, &config)?;
    // Before any request but INIT is served: `run()` serves them.
    notifiers.add(mountpoint, session.notifier());
    if mc.writeback_cache {
        lift_dirty_limits(mountpoint);
    }
    Ok(session)
}

/// The fuse module's switch for FUSE over io_uring (Linux 6.14+), off by default.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the kernel will offer FUSE over io_uring at INIT, turning its switch on
/// if need be (root only). The switch only lets a FUSE server ask for io_uring:
/// servers that do not ask, as libfuse's do not unless told to, are unchanged.
fn offer_io_uring() -> bool {
    match std::fs::read_to_string(ENABLE_URING) {
        Ok(v) if v.trim() == "Y" => true,
        Ok(_) => match std::fs::write(ENABLE_URING, "Y") {
            Ok(()) => {
                info!("turned on FUSE over io_uring in the kernel ({ENABLE_URING})");
                true
            }
            Err(e) => {
                info!("FUSE over io_uring is off in the kernel and stays off ({ENABLE_URING}: {e}): requests go through /dev/fuse");
                false
            }
        },
        // A kernel without it (before 6.14, or built without FUSE_IO_URING).
        Err(_) => false,
    }
}

/// PR_SET_IO_FLUSHER, from linux/prctl.h (the libc crate has it for Android only).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// The kernel holds a FUSE mount's dirty pages to 1% of the dirty limit, strictly,
/// in case its daemon cannot be trusted with more; with the writeback cache, a
/// writer then goes at the daemon's pace (one request at a time) instead of the
/// page cache's. clonefs gives its own mount what a local file system has, and
/// makes this thread, and so the workers `run()` starts from it, I/O flushers:
/// their writes to the store are throttled against the store's disk alone, never
/// against the mount's dirty pages, which only they can clean. Failing either is
/// only slower, and is logged.
fn lift_dirty_limits(mountpoint: &Path) {
    // SAFETY: prctl with integer arguments changes only this thread's flags.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } != 0 {
        warn!(
            "cannot make the workers I/O flushers: {}",
            std::io::Error::last_os_error()
        );
    }
    let Some(dev) = mount_device(mountpoint) else {
        warn!(
            "{} is not in /proc/self/mountinfo: its dirty page limits stay the kernel's",
            mountpoint.display()
        );
        return;
    };
    let bdi = Path::new("/sys/class/bdi").join(&dev);
    for (knob, value) in [("strict_limit", "0"), ("max_ratio", "100")] {
        if let Err(e) = std::fs::write(bdi.join(knob), value) {
            warn!("cannot set {}/{knob} to {value}: {e}", bdi.display());
        }
    }
}

/// The processes using cluster `cluster` of `store` through any of its mounts: a
/// file open, a working or root directory inside it, as `(pid, command)`. This is
/// what `fuser -m` reads (/proc), so it holds whether or not the kernel tells the
/// daemon about opens; it sees the processes this daemon's user may inspect.
pub fn cluster_users(store: &Path, cluster: &str) -> Vec<(u32, String)> {
    let dirs: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|m| m.fstype == "fuse.clonefs" && m.source == store)
        .filter_map(|m| match &m.cluster {
            None => Some(m.point.join(cluster)),
            Some(c) if c == cluster => Some(m.point),
            Some(_) => None,
        })
        .collect();
    if dirs.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let mut users = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let proc = entry.path();
        let mut links: Vec<PathBuf> = ["cwd", "root"]
            .iter()
            .filter_map(|l| std::fs::read_link(proc.join(l)).ok())
            .collect();
        if let Ok(fds) = std::fs::read_dir(proc.join("fd")) {
            links.extend(
                fds.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok()),
            );
        }
        if links.iter().any(|l| dirs.iter().any(|d| l.starts_with(d))) {
            let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
            users.push((pid, comm.trim().to_string()));
        }
    }
    users
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The device number, `MAJOR:MINOR`.
    pub dev: String,
    pub point: PathBuf,
    pub fstype: String,
    /// For clonefs: the store file.
    pub source: PathBuf,
    /// For clonefs: the cluster a mount shows alone (its source is `STORE#CLUSTER`).
    pub cluster: Option<String>,
}

/// The mounts this process sees, in mountinfo order: of the entries for one path,
/// the last is the one on top. Read from the kernel's table, not by a stat of the
/// mount point, which would ask the daemon (and hang on one that is gone).
pub fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// "36 35 98:0 /mnt1 /mnt/a\040b rw,noatime - fuse.clonefs /store rw,..."
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let dev = left.nth(2)?;
    let point = left.nth(1)?;
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let source = right.next()?;
    let path = |s: &[u8]| PathBuf::from(OsStr::from_bytes(s));
    let source = unescape_mountinfo(source);
    let (source, cluster) = match split_source(&source) {
        Some((store, c)) if fstype == "fuse.clonefs" => (store, Some(c.to_owned())),
        _ => (&source[..], None),
    };
    Some(MountEntry {
        dev: dev.to_owned(),
        point: path(&unescape_mountinfo(point)),
        fstype: fstype.to_owned(),
        source: path(source),
        cluster,
    })
}

/// `STORE#CLUSTER` -> (STORE, CLUSTER), when what follows the last `#` can be a
/// cluster's name (so a store path with a `#` in a directory name is no cluster).
fn split_source(source: &[u8]) -> Option<(&[u8], &str)> {
    let at = source.iter().rposition(|&b| b == b'#')?;
    let name = std::str::from_utf8(&source[at + 1..]).ok()?;
    let plausible =
        !name.is_empty() && at > 0 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    plausible.then(|| (&source[..at], name))
}

/// The device number (`MAJOR:MINOR`) of the topmost mount at `mountpoint`.
fn mount_device(mountpoint: &Path) -> Option<String> {
    let want = std::fs::canonicalize(mountpoint).ok()?;
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == want)
        .map(|m| m.dev)
}

/// A mountinfo path field: space, tab, newline and backslash are written `\ooo`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

impl CloneFs {
    /// FUSE_INIT: the request sizes and capabilities this file system asks of the
    /// kernel, and what follows from what it grants.
    pub(super) fn negotiate(&mut self, config: &mut KernelConfig) {
        if let Err(max) = config.set_max_write(1 << 20) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        // Without FUSE_WRITEBACK_CACHE (the default) a write is in the volume when
        // write(2) returns; with it, a clone first has the kernel write back the
        // dirty pages of the cluster's open files (see `clone_after_writeback`).
        let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
            // Always readdirplus, not only for the first batch of a directory
            // (READDIRPLUS_AUTO): `du`, `find -type`, `grep -r` then find names
            // with their attributes and send no LOOKUP per file.
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_CACHE_SYMLINKS
            // The volume drops setuid/setgid itself, so the kernel need not ask
            // for security.capability before every write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        // Per-CPU request queues over io_uring (fuser/src/uring.rs): each request is
        // served on the CPU that made it, with one system call instead of two.
        if self.io_uring {
            wanted |= InitFlags::FUSE_OVER_IO_URING;
        }
        if self.writeback {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let granted = wanted & config.capabilities();
        if config.add_capabilities(granted).is_err() {
            warn!("the kernel refused capabilities {granted:?}");
        }
        if self.writeback && !granted.contains(InitFlags::FUSE_WRITEBACK_CACHE) {
            warn!("the kernel offers no writeback cache: writes go through");
            self.writeback = false;
        }
        self.zero_open = !self.writeback;
        // fuser says whether the rings were made (fuser::uring in the log).
        let transport = match granted.contains(InitFlags::FUSE_OVER_IO_URING) {
            true => "FUSE over io_uring offered",
            false => "requests through /dev/fuse",
        };
        info!(
            "serving {} ({} clusters), kernel FUSE ABI {:?}, {transport}",
            self.vol.path().display(),
            self.vol.cluster_count(),
            config.kernel_abi()
        );
        // So that the first `status` finds figures.
        self.vol.request_space_walk();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_unescape_and_the_root_mount_has_a_device() {
        assert_eq!(
            unescape_mountinfo(r"/a\040b\011c\134d\\"),
            b"/a b\tc\\d\\\\"
        );
        assert_eq!(unescape_mountinfo(r"/x\09"), b"/x\\09");
        assert_eq!(unescape_mountinfo(r"/x\+12"), b"/x\\+12");
        assert_eq!(unescape_mountinfo(r"/x\777"), b"/x\\777");
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
        assert_eq!(unescape_mountinfo("/x\\"), b"/x\\");
        let m = parse_mountinfo_line(
            r"36 35 0:52 / /mnt/a\040b rw,nosuid - fuse.clonefs /s\040t rw,user_id=0",
        )
        .unwrap();
        assert_eq!(m.dev, "0:52");
        assert_eq!(m.point, Path::new("/mnt/a b"));
        assert_eq!(m.fstype, "fuse.clonefs");
        assert_eq!(m.source, Path::new("/s t"));
        assert_eq!(m.cluster, None);
        let m = parse_mountinfo_line(
            r"36 35 0:52 / /m rw - fuse.clonefs /a#b/s\040t#prod rw,user_id=0",
        )
        .unwrap();
        assert_eq!(m.source, Path::new("/a#b/s t"));
        assert_eq!(m.cluster.as_deref(), Some("prod"));
        assert_eq!(split_source(b"/a#b/store"), None);
        assert_eq!(split_source(b"/store#"), None);
        let dev = mount_device(Path::new("/")).expect("/ in /proc/self/mountinfo");
        let (major, minor) = dev.split_once(':').expect(&dev);
        assert!(
            major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok(),
            "{dev}"
        );
    }
}
