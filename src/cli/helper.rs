//! mount(8) and /etc/fstab: `mount.fuse.clonefs`, the helper mount(8) runs for
//! `-t fuse.clonefs`, and `clonefs install`, which puts it in /usr/sbin.
//!
//! The helper is a two-line sh script that execs this binary, by its absolute
//! path, as `clonefs mount-helper ARGS`: mount(8) finds helpers only at fixed
//! paths, and runs them with whatever PATH it has (little, for `mount -a` at boot),
//! so the script names the binary outright; a script also shows at a glance which
//! clonefs it runs, and leaves the binary free of argv[0] tricks.
//!
//! mount(8) calls `mount.fuse.clonefs SOURCE DIR [-sfnv] [-N NS] [-o OPTIONS]
//! [-t fuse.clonefs]`. SOURCE is `STORE` (the whole store) or `STORE#CLUSTER` (one
//! cluster at DIR); STORE is a store file or `rados://POOL/STORE`. The clonefs
//! options are `cluster=NAME`, `threads=N`, `allow_other`, `writeback_cache`, `no_io_uring`,
//! `listen=[ADDR:]PORT` and `log=FILE`, and for a RADOS store `ceph_conf=FILE`,
//! `ceph_user=NAME`, `ceph_keyring=FILE`, `host=NAME`, `cache=DIR` and
//! `cache_size=SIZE` (as the mount command's flags; no take-over at boot); the
//! generic ones fstab and mount(8) pass along (`rw`, `defaults`, `noauto`, ...) are
//! accepted and mean nothing here. Anything else is refused by name, before
//! anything is mounted.

use super::{console::parse_listen, mount, parse_size, CliResult};
use clonefs::fs::MountConfig;
use clonefs::store::addr::{StoreAddr, StoreOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where `clonefs install` puts the helper by default.
pub const HELPER_DIR: &str = "/usr/sbin";
pub const HELPER_NAME: &str = "mount.fuse.clonefs";

/// Options that mount(8), fstab and systemd pass along and that change nothing
/// for clonefs (the kernel mount is always nosuid, nodev and noatime).
const GENERIC: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "noatime",
    "nodiratime",
    "relatime",
    "nosuid",
    "nodev",
    "exec",
    "noexec",
    "async",
    "sync",
    "dev",
    "suid",
    "atime",
    "loud",
    "silent",
];

/// The options of a store on Ceph (`-o KEY=VALUE`), as the mount command's flags.
const RADOS_OPTIONS: &[&str] = &[
    "ceph_conf",
    "ceph_user",
    "ceph_keyring",
    "host",
    "cache",
    "cache_size",
];

/// What the helper was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub struct HelperArgs {
    pub store: StoreAddr,
    /// How to reach a RADOS store (default for a store file).
    pub opts: StoreOptions,
    pub mountpoint: PathBuf,
    pub config: MountConfig,
    pub listen: Option<SocketAddr>,
    pub log: Option<PathBuf>,
    /// -f: do everything but the mount.
    pub fake: bool,
    /// -v: say what was mounted.
    pub verbose: bool,
}

/// Parses mount(8)'s call of the helper (the arguments after the program name).
pub fn parse_helper_args(args: &[String]) -> Result<HelperArgs, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut fake, mut verbose) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(
                it.next()
                    .ok_or("-o needs a list of options (like -o cluster=prod,allow_other)")?
                    .clone(),
            ),
            "-t" => {
                let t = it.next().ok_or("-t needs a type (fuse.clonefs)")?;
                if t != "fuse.clonefs" && t != "clonefs" {
                    return Err(format!(
                        "this is the helper for -t fuse.clonefs, not -t {t}"
                    ));
                }
            }
            // A mount namespace to mount in: mount(8) has entered it already.
            "-N" => {
                it.next().ok_or("-N needs a namespace")?;
            }
            o if o.starts_with("-o") => options.push(o[2..].to_string()),
            f if f.starts_with('-') && f.len() > 1 => {
                for c in f[1..].chars() {
                    match c {
                        'f' => fake = true,
                        'v' => verbose = true,
                        // -s: tolerate sloppy options; -n: no /etc/mtab (there is none).
                        's' | 'n' => {}
                        _ => {
                            return Err(format!(
                                "unknown flag -{c} (mount(8) passes -s, -f, -n, -v)"
                            ))
                        }
                    }
                }
            }
            p => positional.push(p.to_string()),
        }
    }
    let [source, dir] = positional.as_slice() else {
        return Err(format!(
            "usage: {HELPER_NAME} STORE[#CLUSTER] MOUNTPOINT [-sfnv] [-o OPTIONS] (got {} \
             arguments besides the flags)",
            positional.len()
        ));
    };
    let (store, mut cluster) = parse_source(source)?;
    let store = StoreAddr::parse(&store.to_string_lossy())?;
    let mut opts = StoreOptions {
        cache_size: 1 << 30,
        ..StoreOptions::default()
    };
    let rados = matches!(store, StoreAddr::Rados { .. });
    let mut config = MountConfig {
        threads: 4,
        ..MountConfig::default()
    };
    let (mut listen, mut log) = (None, None);
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("cluster", Some(c)) => {
                if cluster.as_deref().is_some_and(|s| s != c) {
                    return Err(format!(
                        "the source names cluster {} and -o cluster={c}: give one",
                        cluster.unwrap_or_default()
                    ));
                }
                cluster = Some(c.to_string());
            }
            ("threads", Some(n)) => {
                config.threads = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| format!("threads={n}: give a number from 1 to 256"))?
            }
            ("listen", Some(a)) => {
                listen = Some(parse_listen(a).map_err(|e| format!("listen={a}: {e}"))?)
            }
            ("log", Some(f)) => log = Some(PathBuf::from(f)),
            (k, Some(_)) if !rados && RADOS_OPTIONS.contains(&k) => {
                return Err(format!(
                    "option {k} is for a store on Ceph (rados://POOL/STORE), not a store file"
                ))
            }
            ("ceph_conf", Some(f)) => opts.ceph_conf = Some(PathBuf::from(f)),
            ("ceph_user", Some(u)) => opts.ceph_user = Some(u.to_string()),
            ("ceph_keyring", Some(f)) => opts.ceph_keyring = Some(PathBuf::from(f)),
            ("host", Some(h)) => opts.host = Some(h.to_string()),
            ("cache", Some(d)) => opts.cache = Some(PathBuf::from(d)),
            ("cache_size", Some(n)) => {
                opts.cache_size = parse_size(n).map_err(|e| format!("cache_size={n}: {e}"))?
            }
            ("allow_other", None) => config.allow_other = true,
            ("writeback_cache", None) => config.writeback_cache = true,
            ("no_io_uring", None) => config.no_io_uring = true,
            ("ro", None) => {
                return Err(
                    "clonefs mounts read-write only: drop 'ro' (protect a cluster \
                            with clonefs protect, or mount a clone of it)"
                        .into(),
                )
            }
            (k, None) if GENERIC.contains(&k) => {}
            // comment=, x-systemd.*, x-gvfs-* and the like: for other programs.
            (k, _) if k.starts_with("x-") || k == "comment" => {}
            (k, None)
                if ["cluster", "threads", "listen", "log"].contains(&k)
                    || RADOS_OPTIONS.contains(&k) =>
            {
                return Err(format!("option {k} needs a value ({k}=...)"))
            }
            _ => {
                return Err(format!(
                    "unknown option '{opt}': clonefs takes cluster=NAME, threads=N, \
                     allow_other, writeback_cache, no_io_uring, listen=[ADDR:]PORT, log=FILE, for Ceph \
                     ceph_conf=FILE, ceph_user=NAME, ceph_keyring=FILE, host=NAME, cache=DIR, \
                     cache_size=SIZE (and the generic rw, defaults, noauto, nofail, _netdev, \
                     user, users, noatime)"
                ))
            }
        }
    }
    if let Some(c) = &cluster {
        clonefs::volume::catalog::validate_name(c).map_err(|e| format!("cluster: {e}"))?;
    }
    config.cluster = cluster;
    Ok(HelperArgs {
        store,
        opts,
        mountpoint: PathBuf::from(dir),
        config,
        listen,
        log,
        fake,
        verbose,
    })
}

/// `STORE` or `STORE#CLUSTER`: the last `#` starts the cluster's name unless a
/// `/` follows it (then it belongs to the store's path).
fn parse_source(source: &str) -> Result<(PathBuf, Option<String>), String> {
    if source.is_empty() {
        return Err("no store given: the source is STORE or STORE#CLUSTER".into());
    }
    match source.rsplit_once('#') {
        Some((store, "")) => Err(format!(
            "'{source}' names no cluster after '#': write {store}#CLUSTER, or {store} for the \
             whole store"
        )),
        Some(("", _)) => Err(format!(
            "'{source}' names no store before '#': write /path/to/STORE#CLUSTER"
        )),
        Some((store, cluster)) if !cluster.contains('/') => {
            Ok((PathBuf::from(store), Some(cluster.to_string())))
        }
        _ => Ok((PathBuf::from(source), None)),
    }
}

/// `clonefs mount-helper ARGS`: what mount.fuse.clonefs runs.
pub fn run(args: &[String]) -> CliResult {
    let a = parse_helper_args(args)?;
    if a.fake {
        return Ok(ExitCode::SUCCESS);
    }
    mount::mount_quietly(
        &mount::StoreArgs {
            addr: a.store,
            opts: a.opts,
        },
        &a.mountpoint,
        false,
        a.log,
        &a.config,
        a.listen,
        !a.verbose,
    )
}

/// The helper script for the binary at `bin`.
pub fn helper_script(bin: &Path) -> String {
    let quoted = bin.display().to_string().replace('\'', r"'\''");
    format!(
        "#!/bin/sh\n\
         # mount(8)'s helper for -t fuse.clonefs (and fstab), written by `clonefs install`.\n\
         exec '{quoted}' mount-helper \"$@\"\n"
    )
}

/// `clonefs install [--dir DIR]`: writes DIR/mount.fuse.clonefs for this binary.
pub fn install(dir: &Path) -> CliResult {
    let bin = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| format!("cannot tell where this clonefs binary is: {e}"))?;
    let path = dir.join(HELPER_NAME);
    let tmp = dir.join(format!(".{HELPER_NAME}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(helper_script(&bin).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (run clonefs install as root)"
        } else {
            ""
        };
        return Err(format!("cannot write {}: {e}{hint}", path.display()));
    }
    println!(
        "installed {} (runs {}): mount -t fuse.clonefs STORE[#CLUSTER] DIR and fstab entries \
         of type fuse.clonefs work now",
        path.display(),
        bin.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<HelperArgs, String> {
        parse_helper_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn mount8_calls_parse() {
        let a = parse(&[
            "/s/store.clonefs#prod",
            "/mnt/p",
            "-o",
            "rw,noauto,threads=2,allow_other",
        ])
        .unwrap();
        assert_eq!(a.store, StoreAddr::File("/s/store.clonefs".into()));
        assert_eq!(a.mountpoint, Path::new("/mnt/p"));
        assert_eq!(a.config.cluster.as_deref(), Some("prod"));
        assert_eq!(a.config.threads, 2);
        assert!(a.config.allow_other && !a.config.writeback_cache);
        let a = parse(&[
            "-sv",
            "-o",
            "defaults,writeback_cache,cluster=test,x-systemd.automount",
            "/s/st",
            "/m",
            "-t",
            "fuse.clonefs",
            "-olisten=127.0.0.1:8080",
        ])
        .unwrap();
        assert_eq!(a.store, StoreAddr::File("/s/st".into()));
        assert_eq!(a.config.cluster.as_deref(), Some("test"));
        assert!(a.verbose && a.config.writeback_cache);
        assert_eq!(a.listen, Some("127.0.0.1:8080".parse().unwrap()));
        let a = parse(&["/a#b/store", "/m", "-n"]).unwrap();
        assert_eq!(
            (a.store, a.config.cluster),
            (StoreAddr::File("/a#b/store".into()), None)
        );
        let a = parse(&[
            "rados://clonefs/prod-store#db",
            "/srv/db",
            "-o",
            "_netdev,ceph_conf=/etc/ceph/c.conf,ceph_user=db,host=db1,cache_size=256M",
        ])
        .unwrap();
        assert_eq!(
            a.store,
            StoreAddr::Rados {
                pool: "clonefs".into(),
                name: "prod-store".into()
            }
        );
        assert_eq!(a.config.cluster.as_deref(), Some("db"));
        assert_eq!(
            a.opts.ceph_conf.as_deref(),
            Some(Path::new("/etc/ceph/c.conf"))
        );
        assert_eq!(
            (a.opts.ceph_user.as_deref(), a.opts.host.as_deref()),
            (Some("db"), Some("db1"))
        );
        assert_eq!(a.opts.cache_size, 256 << 20);
    }

    #[test]
    fn malformed_sources_and_options_are_named() {
        for (args, says) in [
            (&["/s/st#", "/m"][..], "names no cluster"),
            (&["#prod", "/m"][..], "names no store"),
            (&["/s/st#Bad_Name", "/m"][..], "invalid name"),
            (&["/s/st"][..], "usage"),
            (
                &["/s/st", "/m", "-o", "frobnicate"][..],
                "unknown option 'frobnicate'",
            ),
            (&["/s/st", "/m", "-o", "threads=0"][..], "threads=0"),
            (&["/s/st", "/m", "-o", "cluster"][..], "needs a value"),
            (&["/s/st", "/m", "-o", "ro"][..], "read-write only"),
            (&["/s/st#a", "/m", "-o", "cluster=b"][..], "give one"),
            (&["/s/st", "/m", "-t", "ext4"][..], "not -t ext4"),
            (
                &["/s/st", "/m", "-o", "ceph_conf=/c"][..],
                "not a store file",
            ),
            (
                &["rados://p/s", "/m", "-o", "cache_size"][..],
                "needs a value",
            ),
            (
                &["rados://p/s", "/m", "-o", "cache_size=lots"][..],
                "cache_size=lots",
            ),
            (&["rados://p", "/m"][..], "rados://POOL/STORE"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn the_script_execs_this_binary_quoted() {
        let s = helper_script(Path::new("/opt/it's/clonefs"));
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(
            s.contains(r#"exec '/opt/it'\''s/clonefs' mount-helper "$@""#),
            "{s}"
        );
    }
}
