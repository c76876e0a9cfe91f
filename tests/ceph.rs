//! Stores on Ceph RADOS, against a real cluster: one monitor and three BlueStore
//! OSDs started by `scripts/ceph-up.sh` in a temporary directory, once for the whole
//! file (startup costs ~13 s), and stopped by `scripts/ceph-down.sh` from a guard's
//! `Drop`, whatever a scenario panics on. One test runs the scenarios in sequence:
//! the cluster is shared, and one OSD is killed near the end.
//!
//! - `clone_remount`: mkfs, mount, write, clone, remount: contents equal; fsck clean.
//! - `mount_helper`: `mount -t fuse.clonefs rados://clonefs/basic#copy DIR -o
//!   ceph_conf=...,host=...` (what an fstab line does) mounts the cluster; umount.
//! - `errors`: an existing store, a missing store, a missing pool, a bad address.
//! - `second_writer_refused`: another `--host` is refused, naming the holder.
//! - `sigkill_take_over`: SIGKILL mid-load; `--take-over`; every fsync'd record there;
//!   then again with `fsck --take-over` before a plain mount.
//! - `sigstop_take_over`: a paused writer is fenced; woken, it cannot change a byte.
//! - `lease_expired`: the same, the store taken by a plain mount once the paused
//!   writer's lease ran out (the last holder is fenced all the same).
//! - `engine_on_rados`: the volume layer on a RADOS device in this process: random
//!   writes (across object boundaries), clones and reopens against a reference;
//!   and a writer whose store is taken over gets errors, not a silent write.
//! - `power_cuts`: the power-cut test's random rounds (`tests/workload/cuts.rs`) on a
//!   RADOS device in this process, cut after a few device writes or between two
//!   operations; the store is taken over as another host would and must hold a state
//!   the round may leave, every synced byte included; fsck clean.
//! - `trim`: deleting a file gives its space in Ceph back (BlueStore's stored bytes
//!   drop); what is written there again reads back; fsck clean; `delete-store`
//!   refused while mounted, then no object of the store is left.
//! - `postgres_on_rados`: `scripts/db-postgres.sh --store rados://...`: PostgreSQL
//!   cloned under load, recovery on the clone, pg_amcheck clean, no object left.
//! - `monitor_restarted`: the monitor stops and starts again under an fsync load: no
//!   error, every record there.
//! - `osd_killed`: an OSD dies under a write load: no error, every record there.
//! - `unreachable`: a bad monitor address is an error within a bounded time.
//!
//! `CLONEFS_CEPH_STEPS=power_cuts,errors` runs only the scenarios named;
//! `CLONEFS_POWERCUT_SEED` replays the power cuts, `CLONEFS_RADOS_CUT_CASES` sets
//! their number (8).
//!
//! Needs root (ceph-up.sh installs the Ceph packages with apt-get when missing) and FUSE.

mod common;
mod rng;
mod workload;

use clonefs::store::rados::LEASE;
use common::{is_mounted, run, run_for, run_ok, s, Helper, BIN};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
const POOL: &str = "clonefs";

/// A cluster of this test; stopped and removed on drop.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    /// The monitor, once `restart_monitor` started it again.
    monitor: std::sync::Mutex<Option<std::process::Child>>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn start(tmp: tempfile::TempDir) -> Cluster {
        let dir = tmp.path().join("ceph");
        let t = Instant::now();
        let out = run_for(600, &[&format!("{SCRIPTS}/ceph-up.sh"), s(&dir)]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conf = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("CEPH_CONF="))
            .map(PathBuf::from);
        let cluster = Cluster {
            dir: dir.clone(),
            conf: conf.clone().unwrap_or_default(),
            monitor: Default::default(),
            _tmp: tmp,
        };
        assert!(
            out.status.success() && conf.is_some(),
            "ceph-up.sh failed ({}):\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("cluster up in {:.1} s", t.elapsed().as_secs_f64());
        cluster
    }

    fn conf(&self) -> &str {
        s(&self.conf)
    }

    /// Where this test's daemons keep their page caches (`--cache`).
    fn cache(&self) -> PathBuf {
        self._tmp.path().join("cache")
    }

    /// Stops the monitor (SIGTERM, by the PID ceph-up.sh recorded) and starts it
    /// again as ceph-up.sh does; its new PID goes where ceph-down.sh looks.
    fn restart_monitor(&self) -> Duration {
        let pid_file = self.dir.join("mon.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let t = Instant::now();
        // SAFETY: kill has no memory effects; the pid is this cluster's monitor.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        wait_gone(pid);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log/mon.out"))
            .unwrap();
        let child = std::process::Command::new("setsid")
            .args(["ceph-mon", "-f", "--id", "a", "-c", self.conf()])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", "/root")
            .env("CEPH_CONF", &self.conf)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, child.id().to_string()).unwrap();
        *self.monitor.lock().unwrap() = Some(child);
        let out = run_for(60, &["ceph", "-c", self.conf(), "osd", "stat"]);
        assert!(out.status.success(), "the monitor did not come back");
        t.elapsed()
    }

    fn osd_pid(&self, id: u32) -> i32 {
        let p = std::fs::read_to_string(self.dir.join(format!("osd{id}.pid"))).unwrap();
        p.trim().parse().unwrap()
    }

    /// The bytes of every object of `store`, by name.
    /// Bytes BlueStore holds for objects, over the three OSDs (each has a copy).
    fn stored(&self) -> u64 {
        (0..3)
            .map(|id| {
                let osd = format!("osd.{id}");
                let cmd = [
                    "ceph",
                    "-c",
                    self.conf(),
                    "tell",
                    &osd,
                    "perf",
                    "dump",
                    "bluestore",
                ];
                let dump: serde_json::Value = serde_json::from_str(&run_ok(&cmd)).unwrap();
                dump["bluestore"]["bluestore_stored"].as_u64().unwrap()
            })
            .sum()
    }

    fn objects(&self, store: &str) -> Vec<(String, Vec<u8>)> {
        let ls = run_ok(&["rados", "-c", self.conf(), "-p", POOL, "ls"]);
        let mut names: Vec<&str> = ls
            .lines()
            .filter(|n| n.starts_with(&format!("{store}.")))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let out = run(&["rados", "-c", self.conf(), "-p", POOL, "get", n, "-"]);
                assert!(out.status.success(), "rados get {n} failed");
                (n.to_string(), out.stdout)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        run_for(120, &[&format!("{SCRIPTS}/ceph-down.sh"), s(&self.dir)]);
        // A monitor this test restarted is its child: reaped once ceph-down.sh stopped it.
        if let Some(mut mon) = self.monitor.lock().unwrap().take() {
            let _ = mon.wait();
        }
    }
}

/// A mount of a RADOS store by one `--host`; unmounted (or detached, and its
/// daemon killed by pid) on drop.
struct RMount {
    mnt: PathBuf,
    pid: u32,
    host: String,
}

impl RMount {
    fn try_new(
        c: &Cluster,
        store: &str,
        mnt: &Path,
        host: &str,
        extra: &[&str],
    ) -> Result<RMount, String> {
        std::fs::create_dir_all(mnt).unwrap();
        let addr = format!("rados://{POOL}/{store}");
        let cache = c.cache();
        let mut cmd = vec![
            BIN,
            "mount",
            &addr,
            s(mnt),
            "--ceph-conf",
            c.conf(),
            "--host",
            host,
            "--cache",
            s(&cache),
            "--cache-size",
            "64M",
        ];
        cmd.extend(extra);
        let out = run_for(90, &cmd);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let doc = std::fs::read_to_string(mnt.join(".clonefs-status")).unwrap();
        let at = doc.find("\"pid\":").unwrap() + 6;
        let pid: String = doc[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        Ok(RMount {
            mnt: mnt.to_owned(),
            pid: pid.parse().unwrap(),
            host: host.into(),
        })
    }

    fn new(c: &Cluster, store: &str, mnt: &Path, host: &str, extra: &[&str]) -> RMount {
        Self::try_new(c, store, mnt, host, extra).unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    fn umount(mut self) {
        run_ok(&[BIN, "umount", s(&self.mnt)]);
        assert!(!is_mounted(&self.mnt));
        self.pid = 0;
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory effects; the pid is this guard's own daemon.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// SIGKILL, then detach the dead mount.
    fn kill(mut self) {
        self.signal(libc::SIGKILL);
        wait_gone(self.pid);
        run_for(20, &["fusermount3", "-uz", s(&self.mnt)]);
        self.pid = 0;
    }
}

impl Drop for RMount {
    fn drop(&mut self) {
        if self.pid == 0 {
            return;
        }
        self.signal(libc::SIGCONT);
        if !run(&[BIN, "umount", s(&self.mnt)]).status.success() {
            run_for(20, &["fusermount3", "-uz", s(&self.mnt)]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(self.pid) {
            eprintln!(
                "daemon {} ({}) still running; killing it",
                self.pid, self.host
            );
            self.signal(libc::SIGKILL);
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| st.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfs(c: &Cluster, store: &str) {
    let addr = format!("rados://{POOL}/{store}");
    run_ok(&[BIN, "mkfs", &addr, "--ceph-conf", c.conf(), "--size", "1G"]);
}

fn fsck_clean(c: &Cluster, store: &str) {
    let addr = format!("rados://{POOL}/{store}");
    let out = run_ok(&[BIN, "fsck", &addr, "--ceph-conf", c.conf()]);
    assert!(out.starts_with("clean"), "fsck of {addr}: {out}");
}

const REC: usize = 4096;

fn record(i: u64) -> Vec<u8> {
    let mut r = vec![(i % 251) as u8; REC];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r
}

/// Appends records to `path`, each fdatasync'd, until `stop` or an error; returns
/// how many were acknowledged, and the first error if any.
fn record_writer(path: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<(u64, Option<String>)> {
    std::thread::spawn(move || {
        let mut f = match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) => return (0, Some(e.to_string())),
        };
        let mut acked = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = f.write_all(&record(acked)).and_then(|_| f.sync_data()) {
                return (acked, Some(e.to_string()));
            }
            acked += 1;
        }
        (acked, None)
    })
}

/// Every one of the first `acked` records is in `path`, whole.
fn check_records(path: &Path, acked: u64) {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    assert!(
        len >= acked * REC as u64,
        "{}: {len} bytes, {acked} records acknowledged",
        path.display()
    );
    let mut buf = vec![0u8; REC];
    for i in 0..acked {
        f.read_exact_at(&mut buf, i * REC as u64).unwrap();
        assert!(buf == record(i), "record {i} of {} differs", path.display());
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn clone_remount(c: &Cluster, work: &Path) {
    mkfs(c, "basic");
    let mnt = work.join("basic");
    let m = RMount::new(c, "basic", &mnt, "h1", &[]);
    std::fs::create_dir(mnt.join("prod")).unwrap();
    for i in 0..20u64 {
        let len = if i == 0 {
            24 << 20
        } else {
            1000 + i as usize * 777
        };
        std::fs::write(mnt.join(format!("prod/f{i}")), pattern(i, len)).unwrap();
    }
    std::fs::create_dir(mnt.join("prod/.clone/copy")).unwrap();
    std::fs::write(mnt.join("prod/f1"), b"changed after the clone").unwrap();
    let status = run_ok(&[BIN, "status", s(&mnt)]);
    assert!(
        status.contains("copy") && status.contains("prod"),
        "{status}"
    );
    // A second mount on this host (same --host) joins the store's daemon.
    let alone = work.join("basic-copy");
    std::fs::create_dir_all(&alone).unwrap();
    let out = run_ok(&[
        BIN,
        "mount",
        "rados://clonefs/basic",
        s(&alone),
        "--ceph-conf",
        c.conf(),
        "--host",
        "h1",
        "--cluster",
        "copy",
    ]);
    assert!(out.contains("served by the store's daemon"), "{out}");
    assert!(std::fs::read(alone.join("f3")).unwrap() == pattern(3, 1000 + 3 * 777));
    run_ok(&[BIN, "umount", s(&alone)]);
    m.umount();
    fsck_clean(c, "basic");
    let m = RMount::new(c, "basic", &mnt, "h1", &[]);
    // The page cache: a file per store and host while the daemon lives.
    let cache = c.cache().join("clonefs/basic@h1");
    assert!(cache.is_file(), "no page cache at {}", cache.display());
    for i in 0..20u64 {
        let len = if i == 0 {
            24 << 20
        } else {
            1000 + i as usize * 777
        };
        let copy = std::fs::read(mnt.join(format!("copy/f{i}"))).unwrap();
        assert!(copy == pattern(i, len), "copy/f{i} differs after a remount");
        let prod = std::fs::read(mnt.join(format!("prod/f{i}"))).unwrap();
        if i == 1 {
            assert_eq!(prod, b"changed after the clone");
        } else {
            assert!(prod == pattern(i, len), "prod/f{i} differs after a remount");
        }
    }
    m.umount();
    assert!(!cache.exists(), "the page cache outlived its daemon");
    // The daemon's log counts what the cache served: the store's metadata pages
    // are read again and again, so some reads must have been local.
    let log = std::fs::read_to_string(
        Path::new(&std::env::var("CLONEFS_RUN_DIR").unwrap()).join("rados/clonefs/basic@h1.log"),
    )
    .unwrap();
    let served: u64 = log
        .lines()
        .rfind(|l| l.contains("reads served locally"))
        .and_then(|l| l.split(": ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no page cache line in the log:\n{log}"));
    assert!(served > 0, "the page cache served nothing");
}

fn errors(c: &Cluster, work: &Path) {
    let fails = |cmd: &[&str], want: &str| {
        let out = run(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{cmd:?}: {err}"
        );
    };
    let conf = c.conf();
    fails(
        &[BIN, "mkfs", "rados://clonefs/basic", "--ceph-conf", conf],
        "exists already",
    );
    fails(
        &[BIN, "fsck", "rados://clonefs/nothing", "--ceph-conf", conf],
        "no such store",
    );
    fails(
        &[BIN, "mkfs", "rados://nopool/x", "--ceph-conf", conf],
        "no pool 'nopool'",
    );
    fails(
        &[BIN, "mkfs", "rados://clonefs/a/b", "--ceph-conf", conf],
        "rados://POOL/STORE",
    );
    // Credentials: a configuration without a monitor, one that asks for cephx with
    // no keyring, one with a key of a cluster that offers no cephx; another user.
    let text = std::fs::read_to_string(conf).unwrap();
    let variant = |name: &str, text: String| {
        let p = work.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let nomon = variant(
        "nomon.conf",
        text.lines()
            .filter(|l| !l.trim_start().starts_with("mon host"))
            .map(|l| format!("{l}\n"))
            .collect(),
    );
    let cephx = variant(
        "cephx.conf",
        text.replace(
            "auth client required = none",
            "auth client required = cephx",
        ),
    );
    assert_ne!(std::fs::read_to_string(&cephx).unwrap(), text);
    let keyring = work.join("client.keyring");
    run_ok(&[
        "ceph-authtool",
        "--create-keyring",
        s(&keyring),
        "--gen-key",
        "-n",
        "client.admin",
    ]);
    fn fsck<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut cmd = vec![BIN, "fsck", "rados://clonefs/basic"];
        cmd.extend(extra);
        cmd
    }
    fails(&fsck(&["--ceph-conf", s(&nomon)]), "names no monitor");
    fails(
        &fsck(&["--ceph-conf", s(&cephx)]),
        "no key for client.admin",
    );
    fails(
        &fsck(&["--ceph-conf", s(&cephx), "--ceph-keyring", s(&keyring)]),
        "share no way to authenticate",
    );
    let out = run_ok(&fsck(&["--ceph-conf", conf, "--ceph-user", "someone"]));
    assert!(out.contains("clean"), "{out}");
    let mnt = work.join("missing");
    std::fs::create_dir_all(&mnt).unwrap();
    let err = RMount::try_new(c, "nothing", &mnt, "h1", &[])
        .err()
        .expect("mounted a missing store");
    assert!(err.contains("no such store"), "{err}");
}

fn second_writer_refused(c: &Cluster, work: &Path) {
    let a = RMount::new(c, "basic", &work.join("a"), "host-one", &[]);
    let err = RMount::try_new(c, "basic", &work.join("b"), "host-two", &[])
        .err()
        .expect("a second writer was let in");
    assert!(err.contains("in use by host host-one"), "{err}");
    assert!(err.contains("--take-over"), "{err}");
    let out = run(&[
        BIN,
        "fsck",
        "rados://clonefs/basic",
        "--ceph-conf",
        c.conf(),
    ]);
    assert!(!out.status.success(), "fsck ran beside a live writer");
    a.umount();
}

fn sigkill_take_over(c: &Cluster, work: &Path) {
    mkfs(c, "crash");
    let mnt = work.join("crash");
    let m = RMount::new(c, "crash", &mnt, "h1", &[]);
    std::fs::create_dir(mnt.join("db")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = record_writer(mnt.join("db/log"), stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    m.kill();
    let (acked, err) = w.join().unwrap();
    assert!(acked > 10 && err.is_some(), "acked {acked}, error {err:?}");
    // The lease of the dead daemon still lives: a plain mount is refused.
    let err = RMount::try_new(c, "crash", &mnt, "h2", &[])
        .err()
        .expect("mounted under a live lease");
    assert!(err.contains("host h1"), "{err}");
    let t = Instant::now();
    let m = RMount::new(c, "crash", &mnt, "h2", &["--take-over"]);
    eprintln!(
        "take-over after SIGKILL: {:.2} s, {acked} records",
        t.elapsed().as_secs_f64()
    );
    check_records(&mnt.join("db/log"), acked);
    m.umount();
    fsck_clean(c, "crash");
    // Killed again: fsck refuses the live lease, fsck --take-over checks (and lets
    // go of the lease after), and a plain mount then finds every record.
    let m = RMount::new(c, "crash", &mnt, "h2", &[]);
    let w = record_writer(mnt.join("db/log2"), stop);
    std::thread::sleep(Duration::from_secs(2));
    m.kill();
    let (acked, _) = w.join().unwrap();
    let addr = "rados://clonefs/crash";
    let out = run(&[BIN, "fsck", addr, "--ceph-conf", c.conf()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("host h2"), "{err}");
    let out = run_ok(&[BIN, "fsck", addr, "--ceph-conf", c.conf(), "--take-over"]);
    assert!(out.starts_with("clean"), "{out}");
    let m = RMount::new(c, "crash", &mnt, "h3", &[]);
    check_records(&mnt.join("db/log2"), acked);
    m.umount();
}

/// A writer paused (SIGSTOP) mid-load; another host takes the store: with
/// `--take-over` at once, or (`expire`) with a plain mount once the lease ran out.
/// Woken, the paused writer cannot change a byte of the store.
fn paused_writer(c: &Cluster, work: &Path, store: &str, expire: bool) {
    mkfs(c, store);
    let (ma, mb) = (
        work.join(format!("{store}-a")),
        work.join(format!("{store}-b")),
    );
    let a = RMount::new(c, store, &ma, "h1", &[]);
    std::fs::create_dir(ma.join("db")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = record_writer(ma.join("db/log"), stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    a.signal(libc::SIGSTOP);
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let b = if expire {
        std::thread::sleep(LEASE + Duration::from_secs(2));
        RMount::new(c, store, &mb, "h2", &[])
    } else {
        RMount::new(c, store, &mb, "h2", &["--take-over"])
    };
    // The writer thread is stuck in the stopped daemon: every record acknowledged
    // so far is counted in its file on the new writer's side.
    let len = std::fs::metadata(mb.join("db/log")).unwrap().len();
    std::fs::write(mb.join("db/after"), b"written by the new holder").unwrap();
    b.umount();
    let before = c.objects(store);
    assert!(!before.is_empty());
    a.signal(libc::SIGCONT);
    let (acked, _) = w.join().unwrap();
    assert!(
        acked > 5 && acked * REC as u64 <= len,
        "acked {acked}, {len} bytes on the new side"
    );
    // The woken writer tries to write, sync and commit: all refused.
    let wrote = std::fs::write(ma.join("db/late"), vec![7u8; 100_000]).and_then(|_| {
        let f = std::fs::File::open(ma.join("db/late"))?;
        f.sync_all()
    });
    assert!(wrote.is_err(), "the fenced writer's fsync succeeded");
    std::thread::sleep(Duration::from_secs(3));
    drop(a);
    // Its log says why.
    let logs = std::env::var("CLONEFS_RUN_DIR").unwrap() + "/rados/clonefs/";
    let log = std::fs::read_to_string(format!("{logs}{store}@h1.log")).unwrap();
    let why = if expire { "lease" } else { "blocklisted" };
    assert!(log.contains(why), "{log}");
    if expire {
        let log = std::fs::read_to_string(format!("{logs}{store}@h2.log")).unwrap();
        assert!(log.contains("did not close the store: fencing it"), "{log}");
    }
    assert!(
        c.objects(store) == before,
        "the fenced writer changed the store"
    );
    fsck_clean(c, store);
    let m = RMount::new(c, store, &mb, "h2", &[]);
    check_records(&mb.join("db/log"), acked);
    assert!(!mb.join("db/late").exists());
    assert_eq!(
        std::fs::read(mb.join("db/after")).unwrap(),
        b"written by the new holder"
    );
    m.umount();
}

/// In-process: random writes into files of two clusters and their clones, each
/// reopen compared byte for byte with a reference; fsck clean at every reopen.
fn engine_on_rados(c: &Cluster) {
    use clonefs::store::addr::{StoreAddr, StoreOptions};
    use clonefs::volume::{Ino, Kind, NewInode, Volume};
    use std::collections::BTreeMap;
    const WHO: NewInode = NewInode {
        perm: 0o644,
        uid: 0,
        gid: 0,
    };
    let addr = StoreAddr::parse("rados://clonefs/engine").unwrap();
    // A page cache of 8 MiB, far smaller than what the rounds touch: its slots are
    // replaced again and again under the engine.
    let opts = |host: &str, take_over: bool| StoreOptions {
        ceph_conf: Some(c.conf.clone()),
        host: Some(host.into()),
        take_over,
        ceph_user: None,
        ceph_keyring: None,
        cache: Some(c.cache()),
        cache_size: 8 << 20,
    };
    Volume::mkfs_store(&addr, &opts("e1", false), 1 << 30, 4096, Duration::ZERO).unwrap();
    let mut vol = Volume::open_store(&addr, &opts("e1", false), true).unwrap();
    vol.close().unwrap();
    vol = Volume::open_store(&addr, &opts("e1", false), false).unwrap();
    // cluster -> file -> bytes
    let mut model: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for cl in ["a", "b"] {
        vol.create_cluster(cl, WHO).unwrap();
        model.insert(cl.into(), BTreeMap::new());
    }
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for round in 0..4 {
        for _ in 0..60 {
            let cls: Vec<String> = model.keys().cloned().collect();
            let cl = &cls[rnd(cls.len() as u64) as usize];
            let cid = vol.cluster_by_name(cl).unwrap().id;
            let name = format!("f{}", rnd(4));
            let ino = match vol.lookup(cid, Ino::ROOT, name.as_bytes()) {
                Ok(a) => a.ino,
                Err(_) => {
                    vol.mknod(cid, Ino::ROOT, name.as_bytes(), Kind::File, WHO, 0)
                        .unwrap()
                        .ino
                }
            };
            // Offsets up to 10 MiB: writes cross the 4 MiB objects' boundaries.
            let off = rnd(10 << 20);
            let data = pattern(rnd(1 << 30), 1 + rnd(300_000) as usize);
            assert_eq!(vol.write(cid, ino, off, &data).unwrap(), data.len());
            let f = model.get_mut(cl).unwrap().entry(name).or_default();
            let end = off as usize + data.len();
            if f.len() < end {
                f.resize(end, 0);
            }
            f[off as usize..end].copy_from_slice(&data);
        }
        let clone = format!("c{round}");
        let src = model
            .keys()
            .nth(rnd(model.len() as u64) as usize)
            .unwrap()
            .clone();
        vol.clone_cluster(&src, &clone).unwrap();
        let copy = model[&src].clone();
        model.insert(clone, copy);
        vol.close().unwrap();
        drop(vol);
        vol = Volume::open_store(&addr, &opts("e1", false), false).unwrap();
        let report = vol.fsck().unwrap();
        assert!(report.is_clean(), "round {round}: {report}");
        for (cl, files) in &model {
            let cid = vol.cluster_by_name(cl).unwrap().id;
            for (name, want) in files {
                let ino = vol.lookup(cid, Ino::ROOT, name.as_bytes()).unwrap().ino;
                let got = vol.read(cid, ino, 0, want.len() + 1).unwrap();
                assert!(
                    got == *want,
                    "round {round}: {cl}/{name} differs after a reopen"
                );
            }
        }
    }
    // Taken over under its feet, the old writer's next commit fails.
    let cid = vol.cluster_by_name("a").unwrap().id;
    let ino = vol.lookup(cid, Ino::ROOT, b"f0").unwrap_or_else(|_| {
        vol.mknod(cid, Ino::ROOT, b"f0", Kind::File, WHO, 0)
            .unwrap()
    });
    let new = Volume::open_store(&addr, &opts("e2", true), false).unwrap();
    let late = vol
        .write(cid, ino.ino, 0, b"late")
        .and_then(|_| vol.commit());
    let err = late.expect_err("a fenced writer committed").to_string();
    assert!(
        err.contains("blocklisted") || err.contains("lease"),
        "{err}"
    );
    drop(vol);
    let report = new.fsck().unwrap();
    assert!(report.is_clean(), "after the take-over: {report}");
    new.close().unwrap();
}

/// The RADOS device of one host, whose power a round cuts: from then on every
/// write, sync and commit is dropped without an error, and reads fail. The writes the device had
/// gathered and not sent are lost with it; those in flight land or not.
struct CutRados {
    dev: clonefs::store::rados::RadosDevice,
    /// Device writes and syncs left before the cut; negative: none scheduled.
    left: std::sync::atomic::AtomicI64,
    cut: AtomicBool,
}

impl CutRados {
    fn new(dev: clonefs::store::rados::RadosDevice) -> Arc<CutRados> {
        Arc::new(CutRados {
            dev,
            left: (-1).into(),
            cut: false.into(),
        })
    }

    /// Counts one write or sync; true when it falls after the cut.
    fn dropped(&self) -> bool {
        if self.cut.load(Ordering::SeqCst) {
            return true;
        }
        if self.left.load(Ordering::SeqCst) >= 0 && self.left.fetch_sub(1, Ordering::SeqCst) == 0 {
            self.cut.store(true, Ordering::SeqCst);
        }
        self.cut.load(Ordering::SeqCst)
    }
}

impl clonefs::store::PageDevice for CutRados {
    fn page_size(&self) -> usize {
        self.dev.page_size()
    }
    fn capacity_pages(&self) -> u64 {
        self.dev.capacity_pages()
    }
    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> clonefs::error::Result<()> {
        // A dead host reads nothing; and a read would send the gathered writes
        // it touches, which the cut lost.
        if self.cut.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO).into());
        }
        self.dev.read(page, offset, buf)
    }
    fn write(&self, page: u64, offset: usize, data: &[u8]) -> clonefs::error::Result<()> {
        match self.dropped() {
            true => Ok(()),
            false => self.dev.write(page, offset, data),
        }
    }
    fn allocate(&self, start: u64, count: u64) -> clonefs::error::Result<()> {
        self.dev.allocate(start, count)
    }
    fn free(&self, start: u64, count: u64) {
        // A dead host trims nothing: the engine frees pages once it believes the
        // commit that drops them durable, and after the cut that commit was lost.
        if !self.cut.load(Ordering::SeqCst) {
            self.dev.free(start, count)
        }
    }
    fn sync(&self) -> clonefs::error::Result<()> {
        match self.dropped() {
            true => Ok(()),
            false => self.dev.sync(),
        }
    }
    fn commit(&self, page: u64, bytes: &[u8]) -> clonefs::error::Result<()> {
        match self.dropped() {
            true => Ok(()),
            false => self.dev.commit(page, bytes),
        }
    }
    fn release(&self) -> clonefs::error::Result<()> {
        match self.cut.load(Ordering::SeqCst) {
            true => Ok(()),
            false => self.dev.release(),
        }
    }
}

impl workload::cuts::Power for CutRados {
    fn cut_after(&self, n: u64, _seed: u64) {
        self.left.store(n as i64, Ordering::SeqCst);
    }
    fn cut_now(&self, _seed: u64) {
        self.cut.store(true, Ordering::SeqCst);
    }
    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Random rounds of operations and syncs on a RADOS store, each ended by a power
/// cut; after each, another host takes the store over and checks it.
fn power_cuts(c: &Cluster) {
    use clonefs::store::rados::{RadosDevice, RadosTarget};
    use clonefs::volume::Volume;
    use workload::cuts::{check_recovered, run_round, Stats};
    use workload::{Rng, State, PS};
    let seed = rng::seed_from_env("CLONEFS_POWERCUT_SEED");
    let cases: u64 = std::env::var("CLONEFS_RADOS_CUT_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    eprintln!("power_cuts: CLONEFS_POWERCUT_SEED={seed}, {cases} cases");
    let mut stats = Stats::default();
    for case in 0..cases {
        let store = format!("cut{case}");
        let target = |host: u32| RadosTarget {
            ceph_conf: c.conf.clone(),
            ceph_user: None,
            ceph_keyring: None,
            pool: POOL.into(),
            store: store.clone(),
            host: format!("cut-host{host}"),
            take_over: host > 0,
            anchor: None,
        };
        let fail = |round: u32, e: String| -> ! {
            panic!("case {case} (CLONEFS_POWERCUT_SEED={seed}), round {round}: {e}")
        };
        let mut rng = Rng::new(Rng::new(seed.wrapping_add(case)).next());
        let mut dev =
            CutRados::new(RadosDevice::create(&target(0), 16384 * PS as u64, PS).unwrap());
        let mut v = Volume::create_on(dev.clone()).unwrap();
        let (mut model, mut counter) = (State::default(), 0);
        for round in 0..2 {
            let r = run_round(
                &v,
                dev.as_ref(),
                &mut model,
                &mut rng,
                &mut counter,
                &mut stats,
            )
            .unwrap_or_else(|e| fail(round, e));
            stats.rounds += 1;
            drop(v);
            // Another host: fences the cut one (its lease still lives) and opens
            // the store at its last commit.
            dev = CutRados::new(
                RadosDevice::open(&target(round + 1))
                    .unwrap_or_else(|e| fail(round, e.to_string())),
            );
            v = Volume::open_device(dev.clone(), Path::new("rados-cut"), false)
                .unwrap_or_else(|e| fail(round, format!("reopening after the cut: {e}")));
            let actual = check_recovered(&r, &v, &mut stats).unwrap_or_else(|e| fail(round, e));
            model = State::from_actual(&actual);
        }
        v.close().unwrap();
    }
    eprintln!("power_cuts: {cases} cases, {}", stats.summary());
    assert!(stats.exact_sync_state + stats.later_state == 2 * cases);
}

/// mount(8) and fstab: `mount -t fuse.clonefs rados://POOL/STORE#CLUSTER DIR -o ...`
/// runs mount.fuse.clonefs, which mounts the cluster with the Ceph options.
fn mount_helper(c: &Cluster, work: &Path) {
    let _helper = Helper::install();
    let dir = work.join("helper");
    std::fs::create_dir_all(&dir).unwrap();
    let opts = format!(
        "_netdev,ceph_conf={},host=h1,cache={},cache_size=16M",
        c.conf(),
        s(&c.cache())
    );
    let src = format!("rados://{POOL}/basic#copy");
    run_ok(&[
        "timeout",
        "90",
        "mount",
        "-t",
        "fuse.clonefs",
        &src,
        s(&dir),
        "-o",
        &opts,
    ]);
    assert!(std::fs::read(dir.join("f3")).unwrap() == pattern(3, 1000 + 3 * 777));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(s(&dir)) && l.contains("fuse.clonefs")),
        "{mounts}"
    );
    let err = run(&[
        "timeout",
        "90",
        "mount",
        "-t",
        "fuse.clonefs",
        &src,
        s(&dir),
        "-o",
        "ceph_conf",
    ]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("needs a value"));
    run_ok(&["timeout", "60", "umount", s(&dir)]);
    assert!(!is_mounted(&dir));
    fsck_clean(c, "basic");
}

/// Deleting a file gives its space in Ceph back (whole objects removed, the rest
/// zeroed), and what is written there again reads back right.
fn trim(c: &Cluster, work: &Path) {
    // No restore points, which would keep the deleted file's pages.
    let addr = format!("rados://{POOL}/trim");
    let conf = c.conf();
    run_ok(&[
        BIN,
        "mkfs",
        &addr,
        "--ceph-conf",
        conf,
        "--size",
        "1G",
        "--retention",
        "0",
    ]);
    let mnt = work.join("trim");
    let m = RMount::new(c, "trim", &mnt, "h1", &[]);
    std::fs::create_dir(mnt.join("prod")).unwrap();
    let big = pattern(7, 40 << 20);
    let mut f = std::fs::File::create(mnt.join("prod/big")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f); // an open file's pages live until it is closed
    std::fs::write(mnt.join("prod/small"), b"stays").unwrap();
    let with = c.stored();
    std::fs::remove_file(mnt.join("prod/big")).unwrap();
    // The pages are freed once the commit that drops them is durable (2 s).
    let want = 3 * (36 << 20); // three copies of 36 of the 40 MiB at least
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut without = with;
    while Instant::now() < deadline && without + want > with {
        std::thread::sleep(Duration::from_secs(1));
        without = c.stored();
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "trim: the OSDs stored {:.1} MiB with a 40 MiB file, {:.1} MiB after deleting it",
        mib(with),
        mib(without)
    );
    assert!(
        without + want <= with,
        "deleting 40 MiB gave back {:.1} MiB of 3 copies",
        mib(with.saturating_sub(without))
    );
    m.umount();
    fsck_clean(c, "trim");
    let m = RMount::new(c, "trim", &mnt, "h1", &[]);
    assert_eq!(std::fs::read(mnt.join("prod/small")).unwrap(), b"stays");
    // Written again after the trims, the freed pages read back right.
    std::fs::write(mnt.join("prod/again"), &big[..20 << 20]).unwrap();
    m.umount();
    let m = RMount::new(c, "trim", &mnt, "h1", &[]);
    assert!(std::fs::read(mnt.join("prod/again")).unwrap() == big[..20 << 20]);
    // delete-store: refused while a daemon serves the store, then every object goes.
    let delete = [BIN, "delete-store", &addr, "--ceph-conf", conf, "--yes"];
    let out = run(&delete);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in use by host h1"),
        "{err}"
    );
    m.umount();
    fsck_clean(c, "trim");
    let out = run_ok(&delete);
    assert!(
        out.contains("deleted clonefs store rados://clonefs/trim (1 clusters)"),
        "{out}"
    );
    let left = run_ok(&["rados", "-c", conf, "-p", POOL, "ls"]);
    assert!(!left.lines().any(|l| l.starts_with("trim.")), "{left}");
}

/// A record writer on a fresh store while `fault` strikes (it returns what it did):
/// the writer sees no error, and after a remount every record is there; fsck clean.
fn writer_through(c: &Cluster, work: &Path, store: &str, fault: &dyn Fn() -> String) {
    mkfs(c, store);
    let mnt = work.join(store);
    let m = RMount::new(c, store, &mnt, "h1", &[]);
    std::fs::create_dir(mnt.join("db")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = record_writer(mnt.join("db/log"), stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let what = fault();
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    let (acked, err) = w.join().unwrap();
    assert!(
        err.is_none(),
        "the writer saw an error after {what}: {err:?}"
    );
    eprintln!("{acked} records through {what}");
    m.umount();
    fsck_clean(c, store);
    let m = RMount::new(c, store, &mnt, "h1", &[]);
    check_records(&mnt.join("db/log"), acked);
    m.umount();
}

/// The monitor restarts under an fsync load: no error, every record there.
fn monitor_restarted(c: &Cluster, work: &Path) {
    writer_through(c, work, "mon", &|| {
        let took = c.restart_monitor();
        format!(
            "a monitor restart ({:.1} s until it answered)",
            took.as_secs_f64()
        )
    });
}

/// `scripts/db-postgres.sh --store rados://clonefs/pg`: PostgreSQL on a store in this
/// cluster's pool, cloned under pgbench and a ledger; the server on the clone recovers,
/// pg_amcheck finds it clean, the clone holds exactly the ledger's prefix; the script
/// removes the store's objects at its end. It refuses a store it did not make.
fn postgres_on_rados(c: &Cluster) {
    let script = format!("{SCRIPTS}/db-postgres.sh");
    let with_bin = format!("DB_CLONEFS={BIN}");
    let conf = c.conf();
    let db_postgres = |store: &str| {
        let addr = format!("rados://{POOL}/{store}");
        let cmd = [
            "env",
            &with_bin,
            "bash",
            &script,
            "--store",
            &addr,
            "--ceph-conf",
            conf,
        ];
        let out = run_for(900, &cmd);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status, stdout, stderr)
    };
    let before = c.objects("basic");
    let (status, _, err) = db_postgres("basic");
    assert!(
        !status.success() && err.contains("exists already"),
        "db-postgres.sh took the existing store basic ({status}): {err}"
    );
    assert!(c.objects("basic") == before, "db-postgres.sh changed basic");

    let t = Instant::now();
    let (status, out, err) = db_postgres("pg");
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        status.success(),
        "db-postgres.sh on RADOS failed ({status}) after {:.0} s:\n{}\n{}",
        t.elapsed().as_secs_f64(),
        tail(&out),
        tail(&err)
    );
    for want in [
        "database system was not properly shut down; automatic recovery in progress",
        "pg_amcheck --all --heapallindexed on the clone: clean",
        "pgbench invariant on the clone: sum(abalance) = sum(bbalance) = sum(history.delta)",
        "pg_amcheck --all --heapallindexed on test: clean",
        "fsck: clean",
        "removed the store rados://clonefs/pg",
        "db-postgres: PASS",
    ] {
        assert!(out.contains(want), "no line '{want}' in:\n{out}");
    }
    assert!(
        c.objects("pg").is_empty(),
        "objects of the store pg are left"
    );
    let summary = out
        .split("== db-postgres: summary")
        .nth(1)
        .unwrap_or_default();
    eprintln!(
        "PostgreSQL on RADOS in {:.0} s:{}",
        t.elapsed().as_secs_f64(),
        summary.trim_end()
    );
}

fn osd_killed(c: &Cluster, work: &Path) {
    writer_through(c, work, "osd", &|| {
        // SAFETY: kill has no memory effects; the pid is this cluster's osd.1.
        unsafe { libc::kill(c.osd_pid(1), libc::SIGKILL) };
        "an OSD's death".to_string()
    });
}

fn unreachable(work: &Path) {
    let conf = work.join("bad.conf");
    std::fs::write(
        &conf,
        "[global]\nmon host = 127.0.0.1:9\nauth client required = none\n",
    )
    .unwrap();
    let t = Instant::now();
    let out = run_for(
        120,
        &[BIN, "mkfs", "rados://clonefs/x", "--ceph-conf", s(&conf)],
    );
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the Ceph cluster"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "the error took {took:?}");
    let mnt = work.join("unreachable");
    std::fs::create_dir_all(&mnt).unwrap();
    let t = Instant::now();
    let out = run_for(
        120,
        &[
            BIN,
            "mount",
            "rados://clonefs/x",
            s(&mnt),
            "--ceph-conf",
            s(&conf),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the Ceph cluster"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the mount's error took {:?}",
        t.elapsed()
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn rados_store() {
    if let Some(why) = common::no_fuse() {
        eprintln!("SKIPPED: the RADOS tests need FUSE: {why}");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("clonefs-ceph.")
        .tempdir()
        .unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The anchors, sockets and logs of this test's daemons (inherited by them).
    std::env::set_var("CLONEFS_RUN_DIR", tmp.path().join("run"));
    let c = Cluster::start(tmp);
    let mut took = Vec::new();
    // CLONEFS_CEPH_STEPS=a,b runs only those scenarios (while working on one).
    let only = std::env::var("CLONEFS_CEPH_STEPS").ok();
    let mut step = |name: &str, f: &dyn Fn()| {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|s| s == name))
        {
            return;
        }
        let t = Instant::now();
        f();
        took.push(format!("{name} {:.1} s", t.elapsed().as_secs_f64()));
    };
    step("clone_remount", &|| clone_remount(&c, &work));
    step("errors", &|| errors(&c, &work));
    step("mount_helper", &|| mount_helper(&c, &work));
    step("second_writer_refused", &|| {
        second_writer_refused(&c, &work)
    });
    step("sigkill_take_over", &|| sigkill_take_over(&c, &work));
    step("sigstop_take_over", &|| {
        paused_writer(&c, &work, "pause", false)
    });
    step("lease_expired", &|| {
        paused_writer(&c, &work, "expire", true)
    });
    step("engine_on_rados", &|| engine_on_rados(&c));
    step("power_cuts", &|| power_cuts(&c));
    step("trim", &|| trim(&c, &work));
    step("monitor_restarted", &|| monitor_restarted(&c, &work));
    step("postgres_on_rados", &|| postgres_on_rados(&c));
    step("osd_killed", &|| osd_killed(&c, &work));
    step("unreachable", &|| unreachable(&work));
    eprintln!("{}", took.join(", "));
}
