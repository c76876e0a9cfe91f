//! A real mount driven through std::fs and the clonefs command: clusters, clones
//! through `.clone` and the CLI, independence of both sides, the refusals, status,
//! and a clean fsck after unmount.

mod common;

use common::{run, run_ok, Mounted, BIN};
use std::fs;
use std::io::ErrorKind;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
fn clusters_clone_and_stay_independent() {
    let Some(mut m) = Mounted::new() else { return };

    fs::create_dir(m.path("prod")).unwrap();
    fs::create_dir_all(m.path("prod/sub/dir")).unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    fs::write(m.path("prod/data"), &data).unwrap();
    fs::write(m.path("prod/sub/dir/f"), b"hello\n").unwrap();
    assert_eq!(fs::read(m.path("prod/data")).unwrap(), data);

    // Clone through the control directory: same content, at the root.
    fs::create_dir(m.path("prod/.clone/test")).unwrap();
    assert!(m.path("test").is_dir());
    assert_eq!(fs::read(m.path("test/data")).unwrap(), data);
    assert_eq!(fs::read(m.path("test/sub/dir/f")).unwrap(), b"hello\n");

    // `.clone` is reachable but never listed; it lists the clones made from it.
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(m.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("prod"), ["data", "sub"]);
    assert_eq!(names("prod/.clone"), ["test"]);
    assert_eq!(names(""), ["prod", "test"]);
    assert!(m.path("prod/.clone/test").is_dir());

    // Writes on either side stay on that side.
    fs::write(m.path("prod/sub/dir/f"), b"changed in prod\n").unwrap();
    fs::write(m.path("test/only-in-test"), b"t").unwrap();
    assert_eq!(fs::read(m.path("test/sub/dir/f")).unwrap(), b"hello\n");
    assert!(!m.path("prod/only-in-test").exists());
    assert_eq!(
        fs::read(m.path("prod/sub/dir/f")).unwrap(),
        b"changed in prod\n"
    );

    // A write that completed (not fsync'd) is in a clone made after it.
    fs::write(m.path("prod/unsynced"), b"fresh").unwrap();
    fs::create_dir(m.path("prod/.clone/now")).unwrap();
    assert_eq!(fs::read(m.path("now/unsynced")).unwrap(), b"fresh");

    // The command: clone of a clone.
    let out = run_ok(&[
        BIN,
        "clone",
        "--source-cluster",
        "test",
        "--cluster",
        "test2",
        m.mnt_str(),
    ]);
    assert!(out.starts_with("cloned test as test2 in "), "{out}");
    assert_eq!(fs::read(m.path("test2/data")).unwrap(), data);
    let again = run(&[
        BIN,
        "clone",
        "--source-cluster",
        "test",
        "--cluster",
        "test2",
        m.mnt_str(),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("cluster test2 already exists"),
        "{again:?}"
    );

    // Refusals: bad names, files at the root, renaming clusters.
    let e = fs::create_dir(m.path("prod/.clone/bad_name")).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL, "{e}");
    let e = fs::create_dir(m.path("1abc")).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL, "{e}");
    let e = fs::write(m.path("file-at-root"), b"x").unwrap_err();
    assert_eq!(errno(&e), libc::EPERM, "{e}");
    let e = std::os::unix::fs::symlink("prod", m.path("link")).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM, "{e}");
    let e = fs::create_dir(m.path("prod/.clone/test")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = fs::rename(m.path("prod/data"), m.path("test/moved")).unwrap_err();
    assert_eq!(errno(&e), libc::EXDEV, "{e}");
    let e = fs::hard_link(m.path("prod/data"), m.path("test/linked")).unwrap_err();
    assert_eq!(errno(&e), libc::EXDEV, "{e}");

    // Deleting the source leaves its clones whole.
    fs::remove_dir_all(m.path("prod")).unwrap();
    assert!(!m.path("prod").exists());
    assert_eq!(fs::read(m.path("test/data")).unwrap(), data);
    assert_eq!(fs::read(m.path("test2/data")).unwrap(), data);
    assert_eq!(fs::read(m.path("now/unsynced")).unwrap(), b"fresh");

    // status --json is JSON (checked by python's parser) naming the clusters.
    let json = run_ok(&[BIN, "status", "--json", m.mnt_str()]);
    let check = run(&[
        "python3",
        "-c",
        "import json,sys; d=json.loads(sys.argv[1]); \
         print(' '.join(sorted(c['name'] for c in d['clusters'])))",
        &json,
    ]);
    assert!(check.status.success(), "not JSON: {json}");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "now test test2"
    );
    let table = run_ok(&[BIN, "status", m.mnt_str()]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("store: capacity"), "{table}");

    // Unmount (the daemon commits and exits), then the store checks clean.
    m.umount();
    let out = run(&[BIN, "fsck", m.store_str()]);
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn files_behave_like_files() {
    let Some(m) = Mounted::new() else { return };
    fs::create_dir(m.path("c")).unwrap();
    let p = m.path("c/f");
    fs::write(&p, b"0123456789").unwrap();

    // Truncate, append, metadata.
    let f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    use std::io::Write;
    (&f).write_all(b"abc").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"0123456789abc");
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(4)
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"0123");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    // Rename within a cluster, symlinks, hard links.
    fs::rename(&p, m.path("c/g")).unwrap();
    std::os::unix::fs::symlink("g", m.path("c/l")).unwrap();
    assert_eq!(fs::read_link(m.path("c/l")).unwrap().to_str(), Some("g"));
    assert_eq!(fs::read(m.path("c/l")).unwrap(), b"0123");
    fs::hard_link(m.path("c/g"), m.path("c/h")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(m.path("c/h")).unwrap().nlink(), 2);

    // Inode numbers: distinct per cluster, the clone's differ from the source's.
    fs::create_dir(m.path("c/.clone/d")).unwrap();
    let a = fs::metadata(m.path("c/g")).unwrap().ino();
    let b = fs::metadata(m.path("d/g")).unwrap().ino();
    assert_ne!(a, b);

    // An unlinked file stays readable while open.
    let keep = fs::File::open(m.path("c/h")).unwrap();
    fs::remove_file(m.path("c/h")).unwrap();
    fs::remove_file(m.path("c/g")).unwrap();
    let mut buf = String::new();
    use std::io::Read;
    (&keep).read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "0123");
    drop(keep);

    // rmdir of a cluster needs it empty.
    let e = fs::remove_dir(m.path("d")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY, "{e}");
    fs::remove_file(m.path("c/l")).unwrap();
    fs::remove_dir(m.path("c")).unwrap();
    assert!(!m.path("c").exists());

    // statfs reports the store.
    let out = run_ok(&["stat", "-f", "-c", "%S %b", m.mnt_str()]);
    let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(v[0], 4096);
    assert!(v[0] * v[1] > 1000 << 20 && v[0] * v[1] <= 1 << 30, "{out}");
}

#[test]
fn mount_refuses_bad_mount_points() {
    let Some(m) = Mounted::new() else { return };
    let dir = m.dir.path();
    // Already a mount (and the store is in use by the first daemon anyway).
    let out = run(&[BIN, "mount", m.store_str(), m.mnt_str()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already a mount"),
        "{out:?}"
    );
    // Missing, not empty.
    let missing = dir.join("missing");
    let out = run(&[BIN, "mount", m.store_str(), common::s(&missing)]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    let full = dir.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), b"").unwrap();
    let out = run(&[BIN, "mount", m.store_str(), common::s(&full)]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not empty"),
        "{out:?}"
    );
    // The store is served by the running daemon: a second mount joins it (and
    // goes on its own). tests/mount_points.rs has the rest of that story.
    let free = dir.join("free");
    fs::create_dir(&free).unwrap();
    fs::create_dir(m.path("c")).unwrap();
    let out = run(&[BIN, "mount", m.store_str(), common::s(&free)]);
    let joined = out.status.success() && common::is_mounted(&free);
    let seen = free.join("c").is_dir();
    run(&[BIN, "umount", common::s(&free)]);
    assert!(joined, "{out:?}");
    assert!(seen, "the second mount does not show the store");
    assert!(!common::is_mounted(&free));
    // fsck refuses a mounted store.
    let out = run(&[BIN, "fsck", m.store_str()]);
    assert!(!out.status.success());
    // mkfs refuses an existing file.
    let out = run(&[BIN, "mkfs", m.store_str()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );
}

#[test]
fn sigterm_unmounts_and_commits() {
    let Some(mut m) = Mounted::new() else { return };
    fs::create_dir(m.path("c")).unwrap();
    fs::write(m.path("c/f"), b"kept").unwrap();
    // SAFETY: kill has no memory effects; the pid is this guard's own daemon.
    assert_eq!(unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) }, 0);
    assert!(m.wait_daemon_exit(30), "the daemon did not exit on SIGTERM");
    assert!(!common::is_mounted(&m.mnt), "still mounted after SIGTERM");
    let out = run(&[BIN, "fsck", m.store_str()]);
    assert!(out.status.success(), "{out:?}");
    // The write is in the store: mount again and read it.
    m.mount_again();
    assert_eq!(fs::read(m.path("c/f")).unwrap(), b"kept");
}

#[test]
fn delete_store_asks_for_yes_and_refuses_a_served_store_or_another_file() {
    let Some(mut m) = Mounted::new() else { return };
    fs::create_dir(m.path("a")).unwrap();
    fs::create_dir(m.path("a/.clone/b")).unwrap();
    let fails = |args: &[&str], says: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    };
    let store = m.store_str().to_string();
    fails(&[BIN, "delete-store", &store], "run it again with --yes");
    fails(&[BIN, "delete-store", &store, "--yes"], "in use by process");
    m.umount();
    assert!(m.store.exists());
    let other = m.dir.path().join("notes.txt");
    fs::write(&other, "not a store").unwrap();
    fails(
        &[BIN, "delete-store", other.to_str().unwrap(), "--yes"],
        "no superblock",
    );
    assert!(other.exists());
    let out = run_ok(&[BIN, "delete-store", &store, "--yes"]);
    assert!(out.contains("(2 clusters)"), "{out}");
    assert!(!m.store.exists());
}

/// Voluntary context switches of the daemon's threads, by thread name.
fn thread_switches(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = fs::read_to_string(t.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |n| n.trim().parse().unwrap());
        out.push((name.trim().to_string(), switches));
    }
    out
}

/// The switches of the threads whose names start with `prefix`, summed.
fn switches_of(pid: u32, prefix: &str) -> u64 {
    thread_switches(pid)
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, s)| s)
        .sum()
}

/// Creates, writes, reads back and lists 300 files: a few requests each.
fn small_file_work(m: &Mounted, dir: &str) {
    fs::create_dir(m.path(dir)).unwrap();
    for i in 0..300 {
        fs::write(m.path(&format!("{dir}/f{i}")), format!("file {i}\n")).unwrap();
    }
    for i in 0..300 {
        let got = fs::read_to_string(m.path(&format!("{dir}/f{i}"))).unwrap();
        assert_eq!(got, format!("file {i}\n"));
    }
    assert_eq!(fs::read_dir(m.path(dir)).unwrap().count(), 300);
}

/// Writes of sizes around the page (the ring lends a payload of a page or more to
/// the parser in place rather than copying it) and of more than one request, at odd
/// offsets, each read back.
fn large_writes_read_back(m: &Mounted, name: &str) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(m.path(name)).unwrap();
    let mut model = Vec::new();
    let mut at = 3u64;
    for (k, len) in [4095usize, 4096, 4097, 65_539, 1 << 20, (1 << 20) + 4097]
        .into_iter()
        .enumerate()
    {
        let piece: Vec<u8> = (0..len).map(|i| (i * 7 + k * 31) as u8).collect();
        f.write_all_at(&piece, at).unwrap();
        model.resize(at as usize, 0);
        model.extend_from_slice(&piece);
        at += len as u64 + 5;
    }
    drop(f);
    assert!(
        fs::read(m.path(name)).unwrap() == model,
        "{name} reads back otherwise"
    );
}

/// Held by the tests that look at the transport, for one of them turns io_uring
/// off in the kernel for a moment.
static TRANSPORT: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn requests_come_over_io_uring_with_a_queue_per_cpu() {
    if !std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring");
        return;
    }
    let _held = TRANSPORT.lock().unwrap_or_else(|e| e.into_inner());
    let Some(m) = Mounted::new() else { return };
    let pid = m.pid();
    // SAFETY: sysconf has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as usize;
    // A queue per CPU, served by as many threads as the mount's --threads (4),
    // started once the kernel answered INIT (so maybe just after the mount returns).
    let ring_threads = || {
        let names: Vec<String> = thread_switches(pid).into_iter().map(|(n, _)| n).collect();
        let n = names
            .iter()
            .filter(|n| n.starts_with("fuser-ring-"))
            .count();
        (names, n)
    };
    let started = std::time::Instant::now();
    while ring_threads().1 < 4 * cpus && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let names = ring_threads().0;
    for q in 0..cpus {
        let serving = names
            .iter()
            .filter(|n| n.starts_with(&format!("fuser-ring-{q}.")))
            .count();
        assert_eq!(serving, 4, "threads of queue {q}: {names:?}");
    }
    let (ring, classic) = (switches_of(pid, "fuser-ring"), switches_of(pid, "fuser-"));
    fs::create_dir(m.path("prod")).unwrap();
    small_file_work(&m, "prod/many");
    large_writes_read_back(&m, "prod/large");
    let ring_after = switches_of(pid, "fuser-ring");
    let classic_after = switches_of(pid, "fuser-") - ring_after;
    // The 900 or so requests came to the queues; the /dev/fuse readers saw only
    // what stays there (FORGET).
    assert!(
        ring_after - ring >= 300,
        "queues woke {} times",
        ring_after - ring
    );
    assert!(
        classic_after - (classic - ring) < 100,
        "/dev/fuse readers woke {} times",
        classic_after - (classic - ring)
    );
    // A clone under way holds its request while another thread finishes it.
    fs::create_dir(m.path("prod/.clone/copy")).unwrap();
    assert_eq!(
        fs::read_to_string(m.path("copy/many/f7")).unwrap(),
        "file 7\n"
    );
}

#[test]
fn no_io_uring_serves_through_dev_fuse() {
    let Some(m) = Mounted::with_options("1G", &["--no-io-uring"]) else {
        return;
    };
    let pid = m.pid();
    fs::create_dir(m.path("prod")).unwrap();
    small_file_work(&m, "prod/many");
    let names: Vec<String> = thread_switches(pid).into_iter().map(|(n, _)| n).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("fuser-ring")),
        "{names:?}"
    );
    assert!(switches_of(pid, "fuser-") >= 300);
}

/// Puts kernel.io_uring_disabled back as it was, whatever happens.
struct IoUringDisabled(String);

impl Drop for IoUringDisabled {
    fn drop(&mut self) {
        fs::write("/proc/sys/kernel/io_uring_disabled", &self.0).unwrap();
    }
}

#[test]
fn a_mount_where_io_uring_is_refused_goes_through_dev_fuse() {
    let knob = "/proc/sys/kernel/io_uring_disabled";
    let Ok(was) = fs::read_to_string(knob) else {
        eprintln!("SKIPPED: no {knob}");
        return;
    };
    if !std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring");
        return;
    }
    let _held = TRANSPORT.lock().unwrap_or_else(|e| e.into_inner());
    // The kernel offers io_uring, but no ring can be made: the daemon must say
    // so at INIT, or the kernel would hold every request for queues never served.
    let restore = IoUringDisabled(was);
    fs::write(knob, "2").unwrap();
    let m = Mounted::new();
    drop(restore);
    let Some(m) = m else { return };
    fs::create_dir(m.path("prod")).unwrap();
    small_file_work(&m, "prod/many");
    let names: Vec<String> = thread_switches(m.pid())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("fuser-ring")),
        "{names:?}"
    );
    let log = fs::read_to_string(format!("{}.log", m.store.display())).unwrap();
    assert!(log.contains("no FUSE over io_uring"), "{log}");
}
