//! The management API: JSON over HTTP/1.1, served by the daemon on a unix socket
//! beside the store (`STORE.sock`, mode 0600: whoever may read the store may manage
//! it), and on TCP with a bearer token when the mount asks (`--listen`), where the
//! console's page is served too.
//!
//! [`handle`] is the whole API as one function from a request to a reply, so it is
//! tested without a socket; [`Api`] only moves requests from the listeners to it
//! (and streams events, which are no single reply).
//! Every reply is JSON; an error is `{"error": {"code", "message"}}` with a status
//! code that says which kind, and a message that says what to do. Nothing here
//! reads or writes file contents, and the FUSE service never waits on a client: a
//! request is served on the API's own threads, and a body is read to at most
//! [`MAX_BODY`] bytes.
//!
//! Routes (all under `/api/v1`):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/clusters` | the store and every cluster ([`StatusDoc`](crate::status::StatusDoc)) |
//! | POST | `/clusters` | `{"name"}`: a new, empty cluster |
//! | GET | `/clusters/NAME` | one cluster |
//! | PATCH | `/clusters/NAME` | `{"protected"?, "expires_at"?, "retention"?}` |
//! | DELETE | `/clusters/NAME` | delete it |
//! | POST | `/clusters/SRC/clones` | `{"name", "restore_to_time"?, "expires_in"?, "expires_at"?}` |
//! | POST | `/clusters/NAME/reset` | `{"restore_to_time"?, "force"?}` (default: from its parent) |
//! | GET | `/clusters/NAME/restorable` | its restore window |
//! | GET | `/mounts` | the daemon's mounts ([`MountsDoc`]) |
//! | POST | `/mounts` | `{"mountpoint", "cluster"?, ...}`: another mount (unix socket only) |
//! | GET | `/events` | server-sent events: `data: {"type", "cluster"}` ([`EventDoc`]) |
//! | GET | `/openapi.json` | the OpenAPI 3 description of these routes |
//!
//! The listeners (the unix socket, TCP with a token) and the console's page are
//! in `server` and `console`.

pub mod client;
mod console;
mod mounts;
pub mod openapi;
mod server;

pub use mounts::{MountCtx, MountDoc, MountsDoc, NewMount};
pub use server::{
    console_path, console_url, token_path, Api, Token, MAX_STREAMS, REQUEST_TIME, WORKERS,
};

use crate::error::Error;
use crate::status::{rfc3339, ClusterStatus, ClusterView, StatusSnapshot};
use crate::volume::{parse_duration, parse_time, CloneOptions, Event, ResetTo, Volume};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The largest request body read.
pub const MAX_BODY: u64 = 64 * 1024;

/// The socket beside a store.
pub fn socket_path(store: &Path) -> PathBuf {
    server::beside(store, ".sock")
}

/// Every route: method and path (`{name}` stands for a cluster's name). The
/// OpenAPI document describes exactly these (a test holds them together).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/clusters"),
    ("POST", "/api/v1/clusters"),
    ("GET", "/api/v1/clusters/{name}"),
    ("PATCH", "/api/v1/clusters/{name}"),
    ("DELETE", "/api/v1/clusters/{name}"),
    ("POST", "/api/v1/clusters/{name}/clones"),
    ("POST", "/api/v1/clusters/{name}/reset"),
    ("GET", "/api/v1/clusters/{name}/restorable"),
    ("GET", "/api/v1/mounts"),
    ("POST", "/api/v1/mounts"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/openapi.json"),
];

/// One server-sent event of `GET /api/v1/events`: `{"type": "created", "cluster": NAME}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDoc {
    /// `created`, `deleted`, `reset`, `expired` or `modified` (protection, expiry or
    /// retention).
    #[serde(rename = "type")]
    pub kind: String,
    pub cluster: String,
}

impl From<&Event> for EventDoc {
    fn from(e: &Event) -> EventDoc {
        let (kind, name) = match e {
            Event::Created(n) => ("created", n),
            Event::Deleted(n) => ("deleted", n),
            Event::Reset(n) => ("reset", n),
            Event::Expired(n) => ("expired", n),
            Event::Modified(n) => ("modified", n),
        };
        EventDoc {
            kind: kind.into(),
            cluster: name.clone(),
        }
    }
}

/// An API reply: a status code and a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// The body of every error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable word for programs: `InvalidName`, `AlreadyExists`, `NotFound`, ...
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClone {
    pub name: String,
    /// RFC 3339, or relative to now like `-10m` (None: the latest state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_to_time: Option<String>,
    /// A duration like `2h` or `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetCluster {
    /// The parent's image at this time (the cluster's own, if it has no parent);
    /// None: the parent's latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_to_time: Option<String>,
    /// Reset even with files open (their handles then fail).
    #[serde(default)]
    pub force: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchCluster {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// RFC 3339 or relative (`+2h`); an empty string clears the expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// How long restore points are kept, like `7d`; `0` turns them off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

/// A new cluster, and the time of the image it holds (a clone: now).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub cluster: ClusterStatus,
    pub image_time: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorableDoc {
    pub cluster: String,
    pub earliest: Option<String>,
    pub latest: String,
    pub points: usize,
    /// Bytes only the restore points hold: what dropping them would free.
    pub restore_only: u64,
}

fn reply<T: Serialize>(status: u16, v: &T) -> Reply {
    Reply {
        status,
        body: serde_json::to_string_pretty(v).expect("API types always serialize") + "\n",
    }
}

pub(crate) fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
    reply(
        status,
        &ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        },
    )
}

/// The reply for a volume error about cluster `name`.
fn failed(name: &str, e: Error) -> Reply {
    let message = e.to_string();
    match e {
        Error::InvalidName { .. } => error(400, "InvalidName", message),
        Error::AlreadyExists(_) => error(
            409,
            "AlreadyExists",
            format!("cluster {name} already exists: choose another name"),
        ),
        Error::NotFound => error(
            404,
            "NotFound",
            format!("no cluster {name}: `clonefs status` or GET /api/v1/clusters lists them"),
        ),
        Error::BadTime(_) => error(400, "InvalidTime", message),
        Error::Protected(_) => error(403, "Protected", message),
        Error::Busy(_) => error(409, "Busy", message),
        Error::InvalidArgument(_) => error(400, "InvalidArgument", message),
        Error::NoSpace => error(
            507,
            "NoSpace",
            "the store is full: delete clusters or restore points to free space",
        ),
        _ => error(500, "Internal", message),
    }
}

fn bad_request(code: &str, message: String) -> Reply {
    error(400, code, message)
}

fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Reply> {
    serde_json::from_slice(bytes).map_err(|e| {
        bad_request(
            "InvalidRequest",
            format!("the request body is not the JSON this route takes: {e}"),
        )
    })
}

fn time_field(field: &str, s: &str) -> Result<SystemTime, Reply> {
    parse_time(s).map_err(|e| bad_request("InvalidTime", format!("{field}: {e}")))
}

fn cluster_doc(vol: &Volume, name: &str) -> Result<ClusterStatus, Reply> {
    let cl = vol.cluster_summary(name).map_err(|e| failed(name, e))?;
    let report = vol.space_report(crate::status::SPACE_WAIT);
    let space = report.as_ref().and_then(|r| r.of_cluster(name));
    Ok(ClusterView::of(&cl, space).to_status())
}

/// A cluster's entry in the reply to a change (create, clone, reset, patch): its
/// lineage and settings, its space figures zero (the change is not yet in any
/// commit the space walker has measured). GET of the cluster gives them.
fn changed_doc(vol: &Volume, name: &str) -> Result<ClusterStatus, Reply> {
    let cl = vol.cluster_summary(name).map_err(|e| failed(name, e))?;
    Ok(ClusterView::of(&cl, None).to_status())
}

/// Serves one request: `url` is the path (with any query), `body` the bytes read.
pub fn handle(vol: &Volume, method: &str, url: &str, body_bytes: &[u8]) -> Reply {
    handle_with(vol, None, method, url, body_bytes)
}

/// [`handle`] for a daemon that serves mounts: `mounts` answers `/mounts`.
pub fn handle_with(
    vol: &Volume,
    mounts: Option<&MountCtx>,
    method: &str,
    url: &str,
    body_bytes: &[u8],
) -> Reply {
    let path = url.split('?').next().unwrap_or("");
    let Some(rest) = path.strip_prefix("/api/v1") else {
        return error(
            404,
            "NoSuchRoute",
            format!("no route {path}: the API lives under /api/v1"),
        );
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let r = match (method, segs.as_slice()) {
        ("GET", ["clusters"]) => StatusSnapshot::take(vol)
            .map(|s| reply(200, &s.view()))
            .map_err(|e| failed("", e)),
        ("POST", ["clusters"]) => create(vol, body_bytes),
        ("GET", ["clusters", name]) => cluster_doc(vol, name).map(|c| reply(200, &c)),
        ("PATCH", ["clusters", name]) => patch(vol, name, body_bytes),
        ("DELETE", ["clusters", name]) => vol
            .delete_cluster(name)
            .map(|_| Reply {
                status: 204,
                body: String::new(),
            })
            .map_err(|e| failed(name, e)),
        ("POST", ["clusters", src, "clones"]) => clone(vol, src, body_bytes),
        ("POST", ["clusters", name, "reset"]) => reset(vol, name, body_bytes),
        ("GET", ["clusters", name, "restorable"]) => restorable(vol, name),
        ("GET", ["mounts"]) => Ok(mounts::list(vol, mounts)),
        ("POST", ["mounts"]) => mounts::add(mounts, body_bytes),
        ("GET", ["openapi.json"]) => Ok(Reply {
            status: 200,
            body: openapi::document(),
        }),
        ("GET", ["events"]) => Err(error(
            400,
            "InvalidRequest",
            "the event stream is served by the daemon's listeners only",
        )),
        (
            _,
            ["clusters"]
            | ["clusters", _]
            | ["clusters", _, "clones" | "reset" | "restorable"]
            | ["events" | "mounts" | "openapi.json"],
        ) => Err(error(
            405,
            "MethodNotAllowed",
            format!("{method} is not served on {path}"),
        )),
        _ => Err(error(404, "NoSuchRoute", format!("no route {path}"))),
    };
    r.unwrap_or_else(|e| e)
}

fn create(vol: &Volume, b: &[u8]) -> Result<Reply, Reply> {
    let req: CreateCluster = body(b)?;
    let who = crate::volume::NewInode::dir_of_this_process();
    vol.create_cluster(&req.name, who)
        .map_err(|e| failed(&req.name, e))?;
    vol.commit().map_err(|e| failed(&req.name, e))?;
    let cluster = changed_doc(vol, &req.name)?;
    Ok(reply(
        201,
        &Created {
            image_time: rfc3339(SystemTime::now()),
            cluster,
        },
    ))
}

fn clone(vol: &Volume, src: &str, b: &[u8]) -> Result<Reply, Reply> {
    let req: CreateClone = body(b)?;
    let at = req
        .restore_to_time
        .as_deref()
        .map(|t| time_field("restore_to_time", t))
        .transpose()?;
    let expires_at = match (&req.expires_in, &req.expires_at) {
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "InvalidRequest",
                "give expires_in or expires_at, not both".into(),
            ))
        }
        (Some(d), None) => Some(
            SystemTime::now()
                + parse_duration(d)
                    .map_err(|e| bad_request("InvalidTime", format!("expires_in: {e}")))?,
        ),
        (None, Some(t)) => Some(time_field("expires_at", t)?),
        (None, None) => None,
    };
    let (info, image) = vol
        .clone_with(src, &req.name, &CloneOptions { at, expires_at })
        .map_err(|e| match e {
            Error::NotFound => failed(src, e),
            e => failed(&req.name, e),
        })?;
    // Ready and durable when the reply comes.
    vol.commit().map_err(|e| failed(&req.name, e))?;
    let cluster = changed_doc(vol, &info.name)?;
    Ok(reply(
        201,
        &Created {
            cluster,
            image_time: rfc3339(image),
        },
    ))
}

fn reset(vol: &Volume, name: &str, b: &[u8]) -> Result<Reply, Reply> {
    let req: ResetCluster = if b.is_empty() {
        ResetCluster::default()
    } else {
        body(b)?
    };
    let to = match &req.restore_to_time {
        Some(t) => ResetTo::Time(time_field("restore_to_time", t)?),
        None => ResetTo::Parent,
    };
    let info = vol.cluster_by_name(name).map_err(|e| failed(name, e))?;
    if info.protected {
        return Err(failed(name, Error::Protected(name.into())));
    }
    if !req.force {
        let users = crate::fs::cluster_users(vol.path(), name);
        if !users.is_empty() {
            let who: Vec<String> = users
                .iter()
                .map(|(pid, comm)| format!("{pid} ({comm})"))
                .collect();
            return Err(failed(
                name,
                Error::Busy(format!(
                    "files of cluster '{name}' are in use by process {}: stop them, or reset \
                     with --force (their open files then fail)",
                    who.join(", ")
                )),
            ));
        }
    }
    vol.reset_cluster(name, to).map_err(|e| failed(name, e))?;
    changed_doc(vol, name).map(|c| reply(200, &c))
}

fn patch(vol: &Volume, name: &str, b: &[u8]) -> Result<Reply, Reply> {
    let req: PatchCluster = body(b)?;
    // Everything is checked before anything changes.
    let expiry = match req.expires_at.as_deref() {
        None => None,
        Some("") => Some(None),
        Some(t) => Some(Some(time_field("expires_at", t)?)),
    };
    let retention = req
        .retention
        .as_deref()
        .map(|r| {
            parse_duration(r).map_err(|e| bad_request("InvalidTime", format!("retention: {e}")))
        })
        .transpose()?;
    vol.cluster_by_name(name).map_err(|e| failed(name, e))?;
    if let Some(p) = req.protected {
        vol.set_protected(name, p).map_err(|e| failed(name, e))?;
    }
    if let Some(e) = expiry {
        vol.set_expiry(name, e).map_err(|e| failed(name, e))?;
    }
    if let Some(r) = retention {
        vol.set_retention(name, r).map_err(|e| failed(name, e))?;
    }
    changed_doc(vol, name).map(|c| reply(200, &c))
}

fn restorable(vol: &Volume, name: &str) -> Result<Reply, Reply> {
    let r = vol.restorable(name).map_err(|e| failed(name, e))?;
    Ok(reply(
        200,
        &RestorableDoc {
            cluster: name.into(),
            earliest: r.earliest.map(rfc3339),
            latest: rfc3339(r.latest),
            points: r.points,
            restore_only: r.restore_only,
        },
    ))
}

#[cfg(test)]
mod tests;
