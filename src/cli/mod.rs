//! The commands, one file per command or family; this file has what they share:
//! sizes in and out, absolute paths, the logger, and how a command finds the
//! clonefs mount at a path and reads its status.
//!
//! Every command answers `Ok(exit code)` or `Err(message)`; `main` prints the
//! message after "clonefs: ". Messages name the path and say what to do, because
//! they are all a user sees. A mount whose daemon is gone answers every access with
//! ENOTCONN: the helpers here say so, and how to clear it, rather than pass on a
//! bare "Transport endpoint is not connected".

pub mod console;
pub mod fsck;
pub mod helper;
pub mod mkfs;
pub mod mount;
pub mod restore;
pub mod status;

use clonefs::fs::{mounts, MountEntry, STATUS_NAME};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub type CliResult = Result<ExitCode, String>;

/// Logs to stderr (in the daemon, stderr is the log file); RUST_LOG overrides.
pub fn init_logger(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        // fuser warns on every unmount that it could not unmount again; say nothing.
        .filter_module("fuser::session", log::LevelFilter::Error)
        .format_timestamp_millis()
        .init();
}

pub fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// "64G" -> 64 GiB; K, M, G, T are powers of 1024; a trailing "B" or "iB" is allowed.
pub fn parse_size(s: &str) -> Result<u64, String> {
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
pub fn human(bytes: u64) -> String {
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

pub fn mount_at(p: &Path) -> Option<MountEntry> {
    // The last entry for a path is the one on top.
    mounts().into_iter().rev().find(|m| m.point == p)
}

/// The clonefs mount at `mnt`, or why there is none.
pub fn clonefs_mount(mnt: &Path) -> Result<MountEntry, String> {
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

/// Prints `text` on stdout; a reader that went away early (`| head`) is no error.
pub fn print_out(text: &str) -> Result<(), String> {
    use std::io::Write;
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(format!("writing to stdout: {e}")),
        _ => Ok(()),
    }
}

/// Reads the mount's status document; errors say what the mount point is. A
/// mount of one cluster has no status file at its root (the root is the
/// cluster's): the daemon's API gives the same document.
pub fn read_status(mnt: &Path) -> Result<String, String> {
    let shown = mnt.display();
    if let Some(m) = mount_at(mnt).filter(|m| m.fstype == "fuse.clonefs" && m.cluster.is_some()) {
        let socket = clonefs::api::socket_path(&m.source);
        return match clonefs::api::client::call::<()>(&socket, "GET", "/api/v1/clusters", None) {
            Ok((200, body)) => String::from_utf8(body).map_err(|e| e.to_string()),
            Ok((status, _)) => Err(format!("the daemon of {shown} answered {status}")),
            Err(e) => Err(e),
        };
    }
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
}
