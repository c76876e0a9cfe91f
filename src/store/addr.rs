//! Where a store lives, parsed in one place: a host file (`PATH`) or a RADOS
//! store (`rados://POOL/STORE`), and the options that reach one that is not a
//! file (`--ceph-conf`, `--host`, `--take-over`).
//!
//! A RADOS store has a local side too: the daemon serving it locks an anchor file
//! `RUN/rados/POOL/STORE@HOST` and keeps its API socket, token and log beside it,
//! as a file store's daemon does beside the store file; RUN is `$CLONEFS_RUN_DIR`,
//! else `/run/clonefs` for root, else `$TMPDIR/clonefs-UID`. The host is part of the
//! name, so two writers named differently on one machine are two hosts to the lease.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAddr {
    File(PathBuf),
    Rados { pool: String, name: String },
}

/// What reaching a RADOS store takes (ignored for a store file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// The cluster's ceph.conf [default: /etc/ceph/ceph.conf].
    pub ceph_conf: Option<PathBuf>,
    /// The Ceph user the client connects as (`client.USER`) [default: admin].
    pub ceph_user: Option<String>,
    /// The keyring holding that user's key [default: the configuration's `keyring`].
    pub ceph_keyring: Option<PathBuf>,
    /// This writer's name in the lease [default: the host name].
    pub host: Option<String>,
    /// Fence the lease's holder first and take the store over.
    pub take_over: bool,
    /// Where a daemon keeps its local page cache (`--cache`) [default: see `cache_dir`].
    pub cache: Option<PathBuf>,
    /// The page cache's size in bytes (`--cache-size`); 0 turns it off.
    pub cache_size: u64,
}

pub const DEFAULT_CEPH_CONF: &str = "/etc/ceph/ceph.conf";
/// Where root's daemons keep their page caches unless `--cache` says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/clonefs";

impl StoreOptions {
    pub fn ceph_conf(&self) -> PathBuf {
        self.ceph_conf
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CEPH_CONF))
    }

    /// The daemon's page cache file for `pool`/`store` as `host`: `DIR/POOL/STORE@HOST`.
    pub fn cache_file(&self, pool: &str, store: &str, host: &str) -> PathBuf {
        let dir = self.cache.clone().unwrap_or_else(|| {
            let uid = nix::unistd::geteuid();
            if uid.is_root() {
                PathBuf::from(DEFAULT_CACHE_DIR)
            } else {
                std::env::temp_dir().join(format!("clonefs-{uid}-cache"))
            }
        });
        dir.join(pool).join(format!("{store}@{host}"))
    }

    pub fn host(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}

impl StoreAddr {
    /// `rados://POOL/STORE`, or else a path.
    pub fn parse(s: &str) -> Result<StoreAddr, String> {
        let Some(rest) = s.strip_prefix("rados://") else {
            return Ok(StoreAddr::File(PathBuf::from(s)));
        };
        let shape = || {
            format!(
                "'{s}' is not a RADOS store address: write rados://POOL/STORE (STORE: 1-64 \
                 letters, digits, '.', '_' or '-', not starting with '.')"
            )
        };
        let (pool, name) = rest.split_once('/').ok_or_else(shape)?;
        let pool_ok = !pool.is_empty() && pool.len() <= 128 && !pool.contains(['@', '\0']);
        let name_ok = (1..=64).contains(&name.len())
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if pool_ok && name_ok {
            Ok(StoreAddr::Rados {
                pool: pool.into(),
                name: name.into(),
            })
        } else {
            Err(shape())
        }
    }

    pub fn is_rados(&self) -> bool {
        matches!(self, StoreAddr::Rados { .. })
    }

    /// The local file that names this store to the tools: the store file itself,
    /// or a RADOS store's anchor for `host` (see the module doc).
    pub fn local_path(&self, host: &str) -> PathBuf {
        match self {
            StoreAddr::File(p) => p.clone(),
            StoreAddr::Rados { pool, name } => anchor_path(pool, name, host),
        }
    }
}

impl fmt::Display for StoreAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreAddr::File(p) => write!(f, "{}", p.display()),
            StoreAddr::Rados { pool, name } => write!(f, "rados://{pool}/{name}"),
        }
    }
}

/// `RUN/rados/POOL/STORE@HOST` (see the module doc).
pub fn anchor_path(pool: &str, store: &str, host: &str) -> PathBuf {
    let uid = nix::unistd::geteuid();
    let run = match std::env::var_os("CLONEFS_RUN_DIR") {
        Some(d) => PathBuf::from(d),
        None if uid.is_root() => PathBuf::from("/run/clonefs"),
        None => std::env::temp_dir().join(format!("clonefs-{uid}")),
    };
    run.join("rados").join(pool).join(format!("{store}@{host}"))
}

/// Is `p` a RADOS store's anchor (so its store is not the file itself)?
pub fn is_anchor(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains('@'))
        && p.parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "rados")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_what_is_wrong() {
        assert_eq!(
            StoreAddr::parse("rados://clonefs/prod-store").unwrap(),
            StoreAddr::Rados {
                pool: "clonefs".into(),
                name: "prod-store".into()
            }
        );
        assert_eq!(
            StoreAddr::parse("./s.clonefs").unwrap(),
            StoreAddr::File("./s.clonefs".into())
        );
        for bad in [
            "rados://",
            "rados://pool",
            "rados://pool/",
            "rados:///name",
            "rados://pool/a/b",
            "rados://pool/.hidden",
            "rados://pool/a@b",
        ] {
            let e = StoreAddr::parse(bad).unwrap_err();
            assert!(e.contains("rados://POOL/STORE"), "{bad}: {e}");
        }
        let a = StoreAddr::parse("rados://p/s").unwrap();
        assert_eq!(a.to_string(), "rados://p/s");
        let anchor = a.local_path("h1");
        assert!(anchor.ends_with("rados/p/s@h1"), "{}", anchor.display());
        assert!(is_anchor(&anchor));
        assert!(!is_anchor(Path::new("/srv/store.clonefs")));
    }
}
