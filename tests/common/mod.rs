//! Real mounts for integration tests: a [`Mounted`] guard makes a store in a
//! temporary directory, mounts it with the `clonefs` binary, and unmounts it on
//! drop, so no test leaves a mount or a daemon behind, whatever it panics on.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_clonefs");

/// Runs `cmd` under `timeout 60`; returns its output, whatever its exit status.
pub fn run(cmd: &[&str]) -> Output {
    run_for(60, cmd)
}

/// Runs `cmd` under `timeout SECS`.
pub fn run_for(secs: u32, cmd: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` under `timeout 60` and panics, showing its output, unless it succeeds.
pub fn run_ok(cmd: &[&str]) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why real mounts cannot run here, if they cannot.
pub fn no_fuse() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// A mounted store in a temporary directory.
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
    /// The daemon's pid, killed on drop if unmounting did not end it.
    pid: Option<u32>,
    mounted: bool,
    /// Extra arguments for `clonefs mount` (e.g. `--allow-other`).
    opts: Vec<String>,
    /// A cluster mounted alone beside the store mount: its name and mount point.
    /// `path("NAME/...")` then leads through that mount.
    alone: Option<(String, PathBuf)>,
}

impl Mounted {
    /// A 1 GiB store, mounted; `None` (with a message) where FUSE is unavailable.
    pub fn new() -> Option<Mounted> {
        Self::with_size("1G")
    }

    pub fn with_size(size: &str) -> Option<Mounted> {
        Self::with_options(size, &[])
    }

    /// A store of `size`, mounted with extra `clonefs mount` arguments, here and
    /// on every `mount_again`.
    pub fn with_options(size: &str, opts: &[&str]) -> Option<Mounted> {
        if let Some(why) = no_fuse() {
            eprintln!("SKIPPED: real-mount test needs FUSE: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("clonefs-test.")
            .tempdir()
            .expect("temporary directory");
        let store = dir.path().join("store.clonefs");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run_ok(&[BIN, "mkfs", s(&store), "--size", size]);
        let mut m = Mounted {
            dir,
            store,
            mnt,
            pid: None,
            mounted: false,
            opts: opts.iter().map(|o| o.to_string()).collect(),
            alone: None,
        };
        m.mount_again();
        Some(m)
    }

    /// `rel` under the mount point; under the cluster's own mount if its cluster
    /// is mounted alone (see [`Mounted::mount_alone`]).
    pub fn path(&self, rel: &str) -> PathBuf {
        if let Some((c, at)) = &self.alone {
            match rel.strip_prefix(c.as_str()) {
                Some("") => return at.clone(),
                Some(rest) if rest.starts_with('/') => return at.join(&rest[1..]),
                _ => {}
            }
        }
        self.mnt.join(rel)
    }

    /// Mounts cluster `c` (which must exist) alone beside the store mount, with
    /// the store mount's options; the store's daemon serves it. From then on
    /// `path("c/...")` goes through it, and unmounts and remounts take it along.
    pub fn mount_alone(&mut self, c: &str) {
        let at = self.dir.path().join(format!("{c}.alone"));
        std::fs::create_dir_all(&at).unwrap();
        self.alone = Some((c.to_string(), at));
        self.mount_cluster();
    }

    fn mount_cluster(&self) {
        let Some((c, at)) = &self.alone else {
            return;
        };
        let mut cmd = vec![BIN, "mount", s(&self.store), s(at), "--cluster", c];
        cmd.extend(self.opts.iter().map(String::as_str));
        run_ok(&cmd);
    }

    fn umount_cluster(&self) {
        if let Some((_, at)) = &self.alone {
            if is_mounted(at) {
                run_ok(&[BIN, "umount", s(at)]);
            }
        }
    }

    pub fn mnt_str(&self) -> &str {
        s(&self.mnt)
    }

    pub fn store_str(&self) -> &str {
        s(&self.store)
    }

    /// Mounts the store again after an unmount.
    pub fn mount_again(&mut self) {
        assert!(!self.mounted, "already mounted");
        let mut cmd = vec![BIN, "mount", s(&self.store), s(&self.mnt)];
        cmd.extend(self.opts.iter().map(String::as_str));
        run_ok(&cmd);
        self.mounted = true;
        self.pid = self.daemon_pid();
        assert!(self.pid.is_some(), "no daemon pid in the status file");
        self.mount_cluster();
    }

    /// Kills the daemon with SIGKILL and detaches the dead mount, as an admin
    /// cleaning up after a crash would; the store can then be mounted again.
    pub fn kill_daemon(&mut self) {
        // SAFETY: kill has no memory effects; the pid is this guard's own daemon.
        unsafe { libc::kill(self.pid() as i32, libc::SIGKILL) };
        assert!(self.wait_daemon_exit(20), "the daemon survived SIGKILL");
        if let Some((_, at)) = &self.alone {
            run_for(20, &["fusermount3", "-uz", s(at)]);
        }
        run_for(20, &["fusermount3", "-uz", s(&self.mnt)]);
        self.mounted = is_mounted(&self.mnt);
        assert!(!self.mounted, "the dead mount is still attached");
    }

    /// The daemon's pid, as its status file gives it.
    pub fn pid(&self) -> u32 {
        self.pid.expect("a mounted guard knows its daemon")
    }

    /// Waits up to `secs` for the daemon to exit; true if it did.
    pub fn wait_daemon_exit(&mut self, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while alive(self.pid()) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.mounted = is_mounted(&self.mnt);
        true
    }

    fn daemon_pid(&self) -> Option<u32> {
        let doc = std::fs::read_to_string(self.path(".clonefs-status")).ok()?;
        let at = doc.find("\"pid\":")? + 6;
        let digits: String = doc[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    }

    /// Unmounts with `clonefs umount` (which waits for the daemon to commit and
    /// exit) and panics if that fails; the guard then has nothing left to do.
    pub fn umount(&mut self) {
        self.umount_cluster();
        run_ok(&[BIN, "umount", s(&self.mnt)]);
        self.mounted = false;
        assert!(
            !is_mounted(&self.mnt),
            "{} still mounted after clonefs umount",
            self.mnt.display()
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some((_, at)) = &self.alone {
            if is_mounted(at) && !run(&[BIN, "umount", s(at)]).status.success() {
                run_for(20, &["fusermount3", "-uz", s(at)]);
            }
        }
        if self.mounted {
            let out = run(&[BIN, "umount", s(&self.mnt)]);
            if !out.status.success() {
                eprintln!(
                    "clonefs umount failed: {}; detaching",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                run_for(20, &["fusermount3", "-uz", s(&self.mnt)]);
            }
        }
        // Only our own daemon, by its pid.
        if let Some(pid) = self.pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                eprintln!("daemon {pid} still running; killing it");
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(st) => st
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
    }
}

/// Is `p` a mount point in /proc/mounts?
pub fn is_mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let needle = format!(" {} ", p.display());
    mounts.lines().any(|l| l.contains(&needle))
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Puts this binary's mount.fuse.clonefs in /usr/sbin for the test's life, and
/// puts back whatever was there before.
pub struct Helper {
    path: PathBuf,
    before: Option<Vec<u8>>,
}

impl Helper {
    pub fn install() -> Helper {
        let path = PathBuf::from("/usr/sbin/mount.fuse.clonefs");
        let before = std::fs::read(&path).ok();
        run_ok(&[BIN, "install"]);
        let script = std::fs::read_to_string(&path).unwrap();
        assert!(script.contains("mount-helper"), "{script}");
        Helper { path, before }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        match &self.before {
            Some(b) => {
                let _ = std::fs::write(&self.path, b);
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
