//! `clonefs console`: the URL of a mount's web console, with its token.
//!
//! The daemon of a mount made with `--listen` writes two files beside the store,
//! both mode 0600 and both removed at unmount: `STORE.token` (the bearer token)
//! and `STORE.console` (the listener's URL). They are files rather than an API
//! reply so that finding the console needs no running request, and reading them
//! needs what reading the store needs: the same owner.

use super::{absolute, clonefs_mount, init_logger, CliResult};
use clonefs::api::{console_path, token_path};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

/// `--listen`: `PORT` (on loopback) or `ADDR:PORT`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse().map_err(|_| {
        format!("'{s}' is not PORT or ADDR:PORT (examples: 8080, 127.0.0.1:8080, [::1]:8080)")
    })
}

pub fn run(mountpoint: &Path) -> CliResult {
    init_logger("warn");
    let abs = absolute(mountpoint)?;
    let mnt = abs.canonicalize().unwrap_or(abs);
    let m =
        clonefs_mount(&mnt).map_err(|e| format!("{e}: give the mount point of a clonefs store"))?;
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    };
    let (url, token) = (
        read(&console_path(&m.source))?,
        read(&token_path(&m.source))?,
    );
    match (url, token) {
        (Some(url), Some(token)) => {
            println!("{url}#token={token}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!(
            "{} serves its API on the unix socket only, with no console; to have one, mount \
             it with --listen: clonefs umount {0} && clonefs mount {} {0} --listen 127.0.0.1:8080",
            mnt.display(),
            m.source.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_a_port_on_loopback_or_an_address() {
        assert_eq!(parse_listen("8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(
            parse_listen("0.0.0.0:9000").unwrap().to_string(),
            "0.0.0.0:9000"
        );
        assert_eq!(parse_listen("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("70000").is_err());
    }
}
