//! The commands of a cluster's life that go through the daemon's API: clone and
//! restore to a point in time, restorable, reset, protect and unprotect, modify.
//!
//! Each finds the store behind the mount point (mountinfo's source), speaks JSON to
//! `STORE.sock` with the API's own types, and prints what happened in a line, or the
//! API's reply as is with `--json`. A clone or restore first syncs the mount, so
//! pages written through shared mappings (or held by the writeback cache) are in it.

use super::{absolute, clonefs_mount, init_logger, CliResult};
use clonefs::api::{client, CreateClone, Created, PatchCluster, ResetCluster, RestorableDoc};
use clonefs::status::ClusterStatus;
use clonefs::volume::{catalog, parse_duration, parse_time};
use nix::unistd::syncfs;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The mount point, made absolute, and the API socket of the store behind it.
fn api_of(mountpoint: &Path) -> Result<(PathBuf, PathBuf), String> {
    init_logger("warn");
    let abs = absolute(mountpoint)?;
    let mnt = abs.canonicalize().unwrap_or(abs);
    let m =
        clonefs_mount(&mnt).map_err(|e| format!("{e}: give the mount point of a clonefs store"))?;
    Ok((mnt, clonefs::api::socket_path(&m.source)))
}

fn path_of(name: &str) -> Result<String, String> {
    catalog::validate_name(name).map_err(|e| e.to_string())?;
    Ok(format!("/api/v1/clusters/{name}"))
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("API types serialize")
    );
}

/// When a clone or restore expires: `--expires-in` or `--expires-at`, checked here
/// so a bad one fails before anything is made.
pub struct Expiry {
    pub expires_in: Option<String>,
    pub expires_at: Option<String>,
}

impl Expiry {
    fn check(&self) -> Result<(), String> {
        if let Some(d) = &self.expires_in {
            parse_duration(d).map_err(|e| format!("--expires-in: {e}"))?;
        }
        if let Some(t) = &self.expires_at {
            parse_time(t).map_err(|e| format!("--expires-at: {e}"))?;
        }
        Ok(())
    }
}

/// `clonefs clone` (`at` None) and `clonefs restore-to-point-in-time`.
pub fn restore(
    mountpoint: &Path,
    src: &str,
    name: &str,
    at: Option<&str>,
    expiry: &Expiry,
    json: bool,
) -> CliResult {
    let (mnt, sock) = api_of(mountpoint)?;
    catalog::validate_name(name).map_err(|e| e.to_string())?;
    let path = format!("{}/clones", path_of(src)?);
    // Resolved here, so a relative time means "before I ran the command".
    let at = at
        .map(|t| parse_time(t).map_err(|e| format!("--restore-to-time: {e}")))
        .transpose()?;
    expiry.check()?;
    let started = Instant::now();
    // Writes that completed are in the daemon already (no writeback cache); syncfs
    // sends the pages of shared writable mappings and of the cache too.
    let dir = File::open(&mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
    syncfs(&dir).map_err(|e| format!("syncfs {}: {}", mnt.display(), io::Error::from(e)))?;
    let req = CreateClone {
        name: name.into(),
        restore_to_time: at.map(clonefs::status::rfc3339),
        expires_in: expiry.expires_in.clone(),
        expires_at: expiry
            .expires_at
            .as_deref()
            .map(|t| parse_time(t).map(clonefs::status::rfc3339))
            .transpose()?,
    };
    let made: Created = client::request(&sock, "POST", &path, Some(&req))?;
    if json {
        print_json(&made);
        return Ok(ExitCode::SUCCESS);
    }
    let expires = made
        .cluster
        .expires_at
        .as_deref()
        .map_or(String::new(), |t| format!(", expires at {t}"));
    match at {
        None => println!(
            "cloned {src} as {name} in {} ms (durable){expires}",
            started.elapsed().as_millis()
        ),
        Some(_) => println!(
            "restored {src} as {name} from its restore point at {} in {} ms (durable){expires}",
            made.image_time,
            started.elapsed().as_millis()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `clonefs restorable`: the cluster's restore window.
pub fn restorable(mountpoint: &Path, name: &str, json: bool) -> CliResult {
    let (_, sock) = api_of(mountpoint)?;
    let path = format!("{}/restorable", path_of(name)?);
    let r: RestorableDoc = client::request::<(), _>(&sock, "GET", &path, None)?;
    if json {
        print_json(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{name}: earliest restorable time {}, latest {}; {} restore points, holding {} only they hold",
        r.earliest.as_deref().unwrap_or("none (no restore points yet)"),
        r.latest,
        r.points,
        super::human(r.restore_only)
    );
    Ok(ExitCode::SUCCESS)
}

/// `clonefs reset`: the cluster's contents replaced at the same path.
pub fn reset(
    mountpoint: &Path,
    name: &str,
    at: Option<&str>,
    force: bool,
    json: bool,
) -> CliResult {
    let (_, sock) = api_of(mountpoint)?;
    let path = format!("{}/reset", path_of(name)?);
    let at = at
        .map(|t| parse_time(t).map_err(|e| format!("--restore-to-time: {e}")))
        .transpose()?;
    let req = ResetCluster {
        restore_to_time: at.map(clonefs::status::rfc3339),
        force,
    };
    let c: ClusterStatus = client::request(&sock, "POST", &path, Some(&req))?;
    if json {
        print_json(&c);
    } else {
        match &req.restore_to_time {
            Some(t) => println!("reset {name} to its restore image at or before {t}"),
            None => println!(
                "reset {name} to the latest contents of {}",
                c.parent.as_deref().unwrap_or("its parent")
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `clonefs protect` and `unprotect`.
pub fn protect(mountpoint: &Path, name: &str, protected: bool) -> CliResult {
    let patch = PatchCluster {
        protected: Some(protected),
        ..Default::default()
    };
    modify(mountpoint, name, &patch, false)
}

/// `clonefs protect`, `unprotect` and `modify`: a PATCH of the cluster's settings.
pub fn modify(mountpoint: &Path, name: &str, patch: &PatchCluster, json: bool) -> CliResult {
    let (_, sock) = api_of(mountpoint)?;
    let path = path_of(name)?;
    if let Some(r) = &patch.retention {
        parse_duration(r).map_err(|e| format!("--retention: {e}"))?;
    }
    let c: ClusterStatus = client::request(&sock, "PATCH", &path, Some(patch))?;
    if json {
        print_json(&c);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{name}: {}, expires {}, restore points kept {}",
        if c.protected {
            "protected"
        } else {
            "not protected"
        },
        c.expires_at.as_deref().unwrap_or("never"),
        humantime::format_duration(std::time::Duration::from_secs(c.retention_secs))
    );
    Ok(ExitCode::SUCCESS)
}
