//! Mounting: the session's options, and what the kernel is asked to change about
//! the mount once it exists (dirty page limits under the writeback cache).
//!
//! `mount` returns only once the kernel has answered INIT, so a caller that reports
//! "ready" after it never reports a mount that is not there. The notifier is set
//! before any request but INIT is served; a clone that needs it can count on it.

use super::CloneFs;
use crate::volume::Volume;
use fuser::{Config, MountOption, Session, SessionACL};
use log::warn;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

/// How to mount: the choices the command line offers.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub threads: usize,
    pub allow_other: bool,
    /// FUSE_WRITEBACK_CACHE: writes fill the kernel's page cache and reach the
    /// daemon in writeback; a write's ENOSPC shows at fsync or close instead.
    pub writeback_cache: bool,
}

/// Mounts `vol` at `mountpoint`; the mount is live (INIT answered) when this returns.
/// `run()` the session to serve it; it returns when the mount goes away, after the
/// volume is closed (committed).
pub fn mount(
    vol: Arc<Volume>,
    mountpoint: &Path,
    mc: &MountConfig,
) -> std::io::Result<Session<CloneFs>> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(vol.path().display().to_string()),
        MountOption::CUSTOM("subtype=clonefs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if mc.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(mc.threads.max(1));
    config.clone_fd = mc.threads > 1;
    let mut fs = CloneFs::new(vol);
    fs.writeback = mc.writeback_cache;
    let notifier = fs.notifier.clone();
    let session = Session::new(fs, mountpoint, &config)?;
    // Before any request but INIT is served: `run()` serves them.
    let _ = notifier.set(session.notifier());
    if mc.writeback_cache {
        lift_dirty_limits(mountpoint);
    }
    Ok(session)
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

/// The device number (`MAJOR:MINOR`) of the mount at `mountpoint`, the topmost one
/// there, read from /proc/self/mountinfo: a stat of the mount would ask the daemon.
fn mount_device(mountpoint: &Path) -> Option<String> {
    let want = std::fs::canonicalize(mountpoint).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let at = unescape_mountinfo(fields.nth(1)?);
        (Path::new(OsStr::from_bytes(&at)) == want).then(|| dev.to_owned())
    })
}

/// A mountinfo path field: space, tab, newline and backslash are written `\ooo`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
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
        let dev = mount_device(Path::new("/")).expect("/ in /proc/self/mountinfo");
        let (major, minor) = dev.split_once(':').expect(&dev);
        assert!(
            major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok(),
            "{dev}"
        );
    }
}
