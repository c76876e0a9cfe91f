//! Mounts that fit the system: one cluster at a mount point of its own beside the
//! whole-store mount (one daemon for all), mount(8) with a temporary fstab through
//! `mount.fuse.clonefs`, and a user without root mounting a store of their own.
//!
//! Each test unmounts what it mounted (a guard does it on a panic too) and kills,
//! by pid, only the daemon of its own store (the holder of that store's lock).

mod common;

use common::{is_mounted, run, run_for, run_ok, s, Helper, BIN};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn skip(why: &str) -> bool {
    eprintln!("SKIPPED: {why}");
    true
}

fn unusable() -> bool {
    if let Some(why) = common::no_fuse() {
        return skip(&why);
    }
    !root() && skip("needs root (mount(8), other users)")
}

/// The process holding `store`'s lock: its daemon (/proc/locks).
fn daemon_of(store: &Path) -> Option<u32> {
    let m = fs::metadata(store).ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(m.dev()),
        libc::minor(m.dev()),
        m.ino()
    );
    fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[1] == "FLOCK" && f[5] == want).then(|| f[4].parse().ok())?
        })
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| st.rsplit_once(") ").map(|(_, r)| r.chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn gone_within(pid: u32, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Processes whose command line names `store`.
fn holding(store: &Path) -> usize {
    let needle = s(store);
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .count()
}

/// What a test mounted: unmounted (newest first) and its store's daemon killed
/// by pid, if still there, on drop.
struct Cleanup {
    store: PathBuf,
    points: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let pid = daemon_of(&self.store);
        for p in self.points.iter().rev() {
            if is_mounted(p) && !run_for(30, &[BIN, "umount", s(p)]).status.success() {
                run_for(20, &["umount", "-l", s(p)]);
            }
        }
        if let Some(pid) = pid {
            if !gone_within(pid, 10) {
                eprintln!(
                    "daemon {pid} of {} still running; killing it",
                    self.store.display()
                );
                // SAFETY: kill has no memory effects; the pid holds this test's store.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// A new 1 GiB store in a temporary directory (named from `prefix`) with empty
/// mount points `all`, `m1`, `m2` and `m3`, mounted whole at `all`; the cleanup
/// holds that mount and whatever the test adds.
fn store_mounted_at_all(prefix: &str) -> (tempfile::TempDir, PathBuf, Cleanup) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let store = d("s.clonefs");
    for m in ["all", "m1", "m2", "m3"] {
        fs::create_dir(d(m)).unwrap();
    }
    run_ok(&[BIN, "mkfs", s(&store), "--size", "1G"]);
    run_ok(&[BIN, "mount", s(&store), s(&d("all"))]);
    let c = Cleanup {
        store: store.clone(),
        points: vec![d("all")],
    };
    (dir, store, c)
}

fn failed_with(cmd: &[&str], says: &str) {
    let out = run(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{cmd:?} succeeded");
    assert!(err.contains(says), "{cmd:?}: wanted '{says}' in: {err}");
}

#[test]
fn clusters_mounted_alone_beside_the_store_mount_share_one_daemon() {
    if unusable() {
        return;
    }
    let (dir, store, mut c) = store_mounted_at_all("clonefs-points.");
    let d = |n: &str| dir.path().join(n);
    fs::create_dir(d("all/prod")).unwrap();
    fs::write(d("all/prod/f"), "p").unwrap();

    // A cluster that does not exist, and options the daemon cannot share: errors,
    // nothing mounted.
    failed_with(
        &[BIN, "mount", s(&store), s(&d("m1")), "--cluster", "nope"],
        "no cluster 'nope'",
    );
    failed_with(
        &[
            BIN,
            "mount",
            s(&store),
            s(&d("m1")),
            "--cluster",
            "prod",
            "--writeback-cache",
        ],
        "writeback cache",
    );
    failed_with(
        &[
            BIN,
            "mount",
            s(&store),
            s(&d("m1")),
            "--cluster",
            "Bad_Name",
        ],
        "--cluster",
    );
    assert!(!is_mounted(&d("m1")));

    run_ok(&[BIN, "mount", s(&store), s(&d("m1")), "--cluster", "prod"]);
    c.points.push(d("m1"));
    // A mount point in use.
    failed_with(
        &[BIN, "mount", s(&store), s(&d("m1")), "--cluster", "prod"],
        "already a mount",
    );
    assert_eq!(fs::read_to_string(d("m1/f")).unwrap(), "p");
    fs::write(d("m1/g"), "t").unwrap();
    assert_eq!(fs::read_to_string(d("all/prod/g")).unwrap(), "t");
    // .clone at the cluster mount's root clones prod; the clone shows in the store mount.
    fs::create_dir(d("m1/.clone/test")).unwrap();
    assert_eq!(fs::read_to_string(d("all/test/g")).unwrap(), "t");
    let listed: Vec<String> = fs::read_dir(d("m1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!listed.contains(&".clone".to_string()), "{listed:?}");

    run_ok(&[BIN, "mount", s(&store), s(&d("m2")), "--cluster", "test"]);
    c.points.push(d("m2"));
    assert_eq!(holding(&store), 1, "one daemon serves the three mounts");
    let pid = daemon_of(&store).expect("a daemon holds the store");

    // A cluster mounted alone cannot be deleted or reset; the message names its mount.
    let out = run(&["rm", "-rf", s(&d("all/test"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("busy"));
    assert_eq!(fs::read_to_string(d("m2/f")).unwrap(), "p");
    failed_with(
        &[BIN, "reset", "--cluster", "test", s(&d("all"))],
        &format!("mounted at {}", s(&d("m2"))),
    );
    let sock = format!("{}.sock", s(&store));
    let out = run_ok(&[
        "curl",
        "-s",
        "--unix-socket",
        &sock,
        "-X",
        "DELETE",
        "http://localhost/api/v1/clusters/test",
    ]);
    assert!(out.contains("Busy") && out.contains(s(&d("m2"))), "{out}");

    // status lists the mounts, as text and JSON, from any of them.
    let text = run_ok(&[BIN, "status", s(&d("m1"))]);
    assert!(
        text.contains(&format!("mounted at {} (cluster test)", s(&d("m2")))),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&[BIN, "status", "--json", s(&d("all"))])).unwrap();
    let mounts = json["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 3, "{json}");
    assert_eq!(mounts[1]["cluster"], "prod");
    let listed = run_ok(&[
        "curl",
        "-s",
        "--unix-socket",
        &sock,
        "http://localhost/api/v1/mounts",
    ]);
    assert!(listed.contains(s(&d("m2"))), "{listed}");

    // Each goes on its own, by any of the usual ways; the daemon with the last.
    run_ok(&[BIN, "umount", s(&d("m2"))]);
    assert!(!is_mounted(&d("m2")) && alive(pid));
    run_ok(&["rm", "-rf", s(&d("all/test"))]);
    run_ok(&["fusermount3", "-u", s(&d("m1"))]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while run_ok(&[
        "curl",
        "-s",
        "--unix-socket",
        &sock,
        "http://localhost/api/v1/mounts",
    ])
    .contains(s(&d("m1")))
    {
        assert!(
            Instant::now() < deadline,
            "the daemon still serves m1 after fusermount3 -u"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive(pid));
    run_ok(&["umount", s(&d("all"))]);
    assert!(gone_within(pid, 30), "the daemon outlived its last mount");
    assert_eq!(holding(&store), 0);
    run_ok(&[BIN, "fsck", s(&store)]);
}

#[test]
fn mount_a_from_an_fstab_mounts_two_clusters_of_one_store() {
    if unusable() {
        return;
    }
    let (dir, store, mut c) = store_mounted_at_all("clonefs-fstab.");
    let d = |n: &str| dir.path().join(n);
    fs::create_dir(d("all/prod")).unwrap();
    fs::write(d("all/prod/f"), "p").unwrap();
    fs::create_dir(d("all/prod/.clone/test")).unwrap();
    fs::write(d("all/test/f"), "t").unwrap();
    run_ok(&[BIN, "umount", s(&d("all"))]);
    let _helper = Helper::install();

    let fstab = d("fstab");
    fs::write(
        &fstab,
        format!(
            "# a temporary fstab: never the machine's\n\
             {st}#prod {m1} fuse.clonefs defaults,threads=2 0 0\n\
             {st}#test {m2} fuse.clonefs rw,nofail,_netdev,noatime,x-systemd.requires=a.mount 0 0\n",
            st = s(&store),
            m1 = s(&d("m1")),
            m2 = s(&d("m2"))
        ),
    )
    .unwrap();
    c.points.extend([d("m1"), d("m2")]);
    run_ok(&["mount", "-a", "-T", s(&fstab)]);
    assert!(is_mounted(&d("m1")) && is_mounted(&d("m2")));
    assert_eq!(fs::read_to_string(d("m1/f")).unwrap(), "p");
    assert_eq!(fs::read_to_string(d("m2/f")).unwrap(), "t");
    assert_eq!(holding(&store), 1, "one daemon for both fstab mounts");
    let pid = daemon_of(&store).expect("a daemon holds the store");
    // The mounts say where they come from, as fstab wrote it.
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        mounts.contains(&format!(
            "{}\\043prod {} fuse.clonefs",
            s(&store),
            s(&d("m1"))
        )),
        "{mounts}"
    );

    // Malformed sources and options: clear errors, nothing mounted.
    for (src, opts, says) in [
        (format!("{}#", s(&store)), "rw", "names no cluster"),
        ("#prod".to_string(), "rw", "names no store"),
        (
            s(&store).to_string(),
            "frobnicate",
            "unknown option 'frobnicate'",
        ),
        (s(&store).to_string(), "cluster=nope", "no cluster 'nope'"),
        (format!("{}.missing", s(&store)), "rw", "does not exist"),
        (s(&store).to_string(), "writeback_cache", "writeback cache"),
    ] {
        let out = run(&["mount", "-t", "fuse.clonefs", &src, s(&d("m3")), "-o", opts]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "mount {src} -o {opts} succeeded");
        assert!(
            err.contains(says),
            "mount {src} -o {opts}: wanted '{says}' in: {err}"
        );
        assert!(!is_mounted(&d("m3")));
    }

    run_ok(&["umount", s(&d("m1"))]);
    assert!(alive(pid), "the daemon went with its first unmount");
    run_ok(&["umount", s(&d("m2"))]);
    assert!(gone_within(pid, 30), "the daemon outlived its last mount");
    assert_eq!(holding(&store), 0);
}

#[test]
fn a_user_without_root_mounts_clones_and_unmounts_a_store_of_their_own() {
    if unusable() {
        return;
    }
    if run(&["id", "nobody"]).status.code() != Some(0) {
        skip("no user nobody");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("clonefs-user.")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The binary under target/ may be out of the user's reach: a copy of it.
    let bin = dir.path().join("clonefs");
    fs::copy(BIN, &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("u");
    fs::create_dir(&home).unwrap();
    run_ok(&["chown", "nobody", s(&home)]);
    let store = home.join("s.clonefs");
    let mut c = Cleanup {
        store: store.clone(),
        points: vec![home.join("m"), home.join("m2")],
    };
    let script = format!(
        "set -eu; cd {home}; B={bin}; mkdir m m2 m3
         timeout 60 $B mkfs s.clonefs --size 256M
         timeout 60 $B mount s.clonefs m
         mkdir m/a; echo u > m/a/f; mkdir m/a/.clone/b; cat m/b/f
         timeout 60 $B mount s.clonefs m2 --cluster b
         echo v > m2/g; cat m/b/g
         if timeout 60 $B mount s.clonefs m3 --cluster a --allow-other 2>err; then echo allow_other-mounted; fi
         cat err
         timeout 60 $B status m2 | grep 'mounted at'
         timeout 60 $B umount m2
         timeout 60 $B umount m
         echo done",
        home = s(&home),
        bin = s(&bin)
    );
    let out = run_for(300, &["su", "nobody", "-s", "/bin/sh", "-c", &script]);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "as nobody: {o}\n{e}");
    assert!(o.contains("\nu\n") && o.contains("\nv\n"), "{o}");
    // Without user_allow_other in /etc/fuse.conf, allow_other is refused, and said so.
    let fuse_conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if !fuse_conf.lines().any(|l| l.trim() == "user_allow_other") {
        assert!(!o.contains("allow_other-mounted"), "{o}");
        assert!(o.contains("allow_other"), "{o}");
    }
    assert!(
        o.contains("(cluster b)") && o.trim_end().ends_with("done"),
        "{o}"
    );
    assert!(!is_mounted(&home.join("m")) && !is_mounted(&home.join("m2")));
    assert_eq!(fs::metadata(&store).unwrap().uid(), 65534);
    c.points.clear();
}

#[test]
fn a_clone_through_the_store_mount_holds_what_a_cluster_mount_still_caches() {
    if unusable() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("clonefs-wb.")
        .tempdir()
        .unwrap();
    let d = |n: &str| dir.path().join(n);
    let store = d("s.clonefs");
    let _c = Cleanup {
        store: store.clone(),
        points: vec![d("all"), d("m1")],
    };
    fs::create_dir(d("all")).unwrap();
    fs::create_dir(d("m1")).unwrap();
    run_ok(&[BIN, "mkfs", s(&store), "--size", "1G"]);
    run_ok(&[BIN, "mount", s(&store), s(&d("all")), "--writeback-cache"]);
    fs::create_dir(d("all/prod")).unwrap();
    run_ok(&[
        BIN,
        "mount",
        s(&store),
        s(&d("m1")),
        "--cluster",
        "prod",
        "--writeback-cache",
    ]);
    // Written through the cluster's mount, still open: its pages sit in that
    // mount's page cache when the store mount's .clone is asked for a clone.
    let mut f = fs::File::create(d("m1/f")).unwrap();
    std::io::Write::write_all(&mut f, b"only in the page cache").unwrap();
    fs::create_dir(d("all/prod/.clone/c")).unwrap();
    assert_eq!(
        fs::read_to_string(d("all/c/f")).unwrap(),
        "only in the page cache"
    );
    drop(f);
}
