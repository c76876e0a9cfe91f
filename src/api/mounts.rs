//! `/api/v1/mounts`: the mounts the daemon serves, and a new one joining them.
//!
//! This is how a second `clonefs mount` of a store (or `mount -t fuse.clonefs`)
//! becomes another mount of the daemon that already holds the store's lock: the
//! command checks the mount point, then posts it here on the unix socket; the
//! daemon mounts and serves it, and the reply comes once the mount is live. Only
//! the unix socket takes a new mount (see `server`): a mount is made with the
//! daemon's privileges at a path the caller names, which the TCP token is not
//! meant to grant.

use super::{error, reply, Reply};
use crate::fs::{MountConfig, MountError, Sessions};
use crate::volume::Volume;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The body of `POST /api/v1/mounts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMount {
    /// An absolute path: an existing, empty directory.
    pub mountpoint: String,
    /// Show this cluster alone at the mount point; absent: the whole store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Threads serving this mount (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(default)]
    pub allow_other: bool,
    /// Must be the daemon's: every mount of a store shares it.
    #[serde(default)]
    pub writeback_cache: bool,
    /// Serve this mount through /dev/fuse alone, never over io_uring.
    #[serde(default)]
    pub no_io_uring: bool,
    /// A TCP listener the new mount asks for: must be the daemon's, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// One mount the daemon serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountDoc {
    pub mountpoint: String,
    /// The cluster shown alone at the mount point; null: the whole store.
    pub cluster: Option<String>,
    pub threads: usize,
    pub allow_other: bool,
}

/// The reply of `GET /api/v1/mounts`: the daemon, its shared settings, its mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountsDoc {
    pub store: String,
    pub pid: u32,
    pub writeback_cache: bool,
    /// The API's TCP listener, if any.
    pub listen: Option<String>,
    pub mounts: Vec<MountDoc>,
}

/// What the mount routes need: the daemon's mounts and its TCP listener.
pub struct MountCtx {
    pub sessions: Arc<Sessions>,
    pub listen: Option<SocketAddr>,
}

pub(super) fn list(vol: &Volume, ctx: Option<&MountCtx>) -> Reply {
    let mounts = ctx.map_or_else(Vec::new, |c| {
        c.sessions
            .live()
            .into_iter()
            .map(|l| MountDoc {
                mountpoint: l.point.display().to_string(),
                cluster: l.config.cluster,
                threads: l.config.threads,
                allow_other: l.config.allow_other,
            })
            .collect()
    });
    reply(
        200,
        &MountsDoc {
            store: vol.path().display().to_string(),
            pid: std::process::id(),
            writeback_cache: ctx.is_some_and(|c| c.sessions.writeback_cache()),
            listen: ctx.and_then(|c| c.listen).map(|a| a.to_string()),
            mounts,
        },
    )
}

pub(super) fn add(ctx: Option<&MountCtx>, b: &[u8]) -> Result<Reply, Reply> {
    let req: NewMount = super::body(b)?;
    let Some(ctx) = ctx else {
        return Err(error(
            503,
            "NotMounting",
            "this API serves no mounts (it is not a mount's daemon)",
        ));
    };
    let point = Path::new(&req.mountpoint);
    if !point.is_absolute() {
        return Err(error(
            400,
            "InvalidRequest",
            format!(
                "mountpoint must be an absolute path, not '{}'",
                req.mountpoint
            ),
        ));
    }
    if let Some(l) = &req.listen {
        let asked: Result<SocketAddr, _> = l.parse();
        if ctx.listen.is_none() || asked.ok() != ctx.listen {
            let has = ctx
                .listen
                .map_or("no TCP listener".to_string(), |a| format!("the API on {a}"));
            return Err(error(
                409,
                "Incompatible",
                format!(
                    "this mount asks for the API on {l}, but the daemon serving {} has {has}, \
                     and one daemon has one listener: mount without --listen (or -o listen), \
                     or unmount the store's other mounts first",
                    ctx.sessions.volume().path().display()
                ),
            ));
        }
    }
    let mc = MountConfig {
        threads: req.threads.unwrap_or(4).clamp(1, 256),
        allow_other: req.allow_other,
        writeback_cache: req.writeback_cache,
        cluster: req.cluster.clone(),
        no_io_uring: req.no_io_uring,
    };
    match ctx.sessions.add(point, &mc) {
        Ok(()) => Ok(reply(
            201,
            &MountDoc {
                mountpoint: req.mountpoint,
                cluster: req.cluster,
                threads: mc.threads,
                allow_other: mc.allow_other,
            },
        )),
        Err(e @ MountError::Closing) => Err(error(503, "Closing", e.to_string())),
        Err(e @ MountError::Incompatible(_)) => Err(error(409, "Incompatible", e.to_string())),
        Err(MountError::Volume(e)) => Err(error(404, "NotFound", e.to_string())),
        Err(e @ MountError::Mount(_)) => Err(error(500, "MountFailed", e.to_string())),
    }
}
