//! Reliability on a real mount: the daemon killed with SIGKILL mid-write loses no
//! fsync'd byte; a clone storm under four writers gives consistent images and gives
//! every page back when the clones go; many threads renaming, writing and cloning
//! at once end with a clean fsck; the store file and the mount are locked down.
//!
//! `CLONEFS_LONG=1` runs the long variants (more cycles, clones and seconds).

mod common;
mod rng;

use common::{run, run_ok, s, Mounted, BIN};
use rng::Rng;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn long() -> bool {
    std::env::var_os("CLONEFS_LONG").is_some()
}

fn fsck_clean(store: &str) {
    let out = run_for_fsck(store);
    assert!(
        out.status.success(),
        "fsck not clean:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_for_fsck(store: &str) -> std::process::Output {
    common::run_for(300, &[BIN, "fsck", store])
}

/// What fsync acknowledged for one file, and the one write in flight after it.
#[derive(Default, Clone)]
struct Ledger {
    synced: Vec<u8>,
    in_flight: Option<(u64, Vec<u8>)>,
}

impl Ledger {
    /// Every byte must be what was synced, or what the in-flight write put there.
    fn check(&self, got: &[u8], what: &str) {
        let (off, data) = self.in_flight.clone().unwrap_or_default();
        let max = self.synced.len().max(off as usize + data.len());
        assert!(
            got.len() >= self.synced.len(),
            "{what}: {} bytes, {} were fsync'd",
            got.len(),
            self.synced.len()
        );
        assert!(
            got.len() <= max,
            "{what}: {} bytes, at most {max} were ever written",
            got.len()
        );
        for (i, b) in got.iter().enumerate() {
            let synced = self.synced.get(i);
            let flying = (i as u64)
                .checked_sub(off)
                .and_then(|k| data.get(k as usize));
            assert!(
                synced == Some(b) || flying == Some(b),
                "{what}: byte {i} is {b}, fsync'd {synced:?}, in flight {flying:?}"
            );
        }
    }
}

#[test]
fn sigkill_of_the_daemon_loses_no_fsynced_byte() {
    let Some(mut m) = Mounted::with_size("1G") else {
        return;
    };
    let mut rng = Rng::from_env("CLONEFS_SEED");
    let cycles = if long() { 100 } else { 20 };
    let files: Vec<String> = ["alpha/f1", "alpha/f2", "beta/f1", "beta/sub/f3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    fs::create_dir(m.path("alpha")).unwrap();
    fs::create_dir_all(m.path("beta/sub")).unwrap();
    let mut ledgers: HashMap<String, Ledger> = files
        .iter()
        .map(|f| (f.clone(), Ledger::default()))
        .collect();
    let mut clones: Vec<(String, Vec<u8>)> = Vec::new();
    let mut verified = 0u64;
    for cycle in 0..cycles {
        // A writer thread: appends and overwrites, each followed by fsync or fdatasync.
        let shared = Arc::new(Mutex::new(ledgers.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (shared, stop, files, mnt) =
                (shared.clone(), stop.clone(), files.clone(), m.mnt.clone());
            let mut rng = Rng::new(rng.next());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let name = &files[rng.below(files.len() as u64) as usize];
                    let Ok(f) = fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(mnt.join(name))
                    else {
                        return;
                    };
                    let len = shared.lock().unwrap()[name].synced.len() as u64;
                    let n = 1 + rng.below(48 * 1024) as usize;
                    let off = if len > 0 && rng.below(2) == 0 {
                        rng.below(len)
                    } else {
                        len
                    };
                    let data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    shared.lock().unwrap().get_mut(name).unwrap().in_flight =
                        Some((off, data.clone()));
                    let ok = f.write_all_at(&data, off).is_ok()
                        && if rng.below(2) == 0 {
                            f.sync_all()
                        } else {
                            f.sync_data()
                        }
                        .is_ok();
                    if !ok {
                        return;
                    }
                    let mut l = shared.lock().unwrap();
                    let led = l.get_mut(name).unwrap();
                    let end = off as usize + n;
                    if led.synced.len() < end {
                        led.synced.resize(end, 0);
                    }
                    led.synced[off as usize..end].copy_from_slice(&data);
                    led.in_flight = None;
                }
            })
        };
        // Sometimes a clone, made durable by an fsync of its root, mid-load.
        std::thread::sleep(Duration::from_millis(50 + rng.below(250)));
        if cycle % 4 == 0 {
            let name = format!("snap{cycle}");
            if fs::create_dir(m.path(&format!("alpha/.clone/{name}"))).is_ok() {
                let _ = fs::File::open(m.path(&name)).and_then(|d| d.sync_all());
                if let Ok(bytes) = fs::read(m.path(&format!("{name}/f1"))) {
                    clones.push((name, bytes));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(200)));
        m.kill_daemon();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        ledgers = shared.lock().unwrap().clone();
        fsck_clean(m.store_str());
        m.mount_again();
        let mut survived = HashMap::new();
        for (name, led) in &ledgers {
            let got = fs::read(m.path(name)).unwrap_or_default();
            led.check(&got, &format!("cycle {cycle}: {name}"));
            verified += led.synced.len() as u64;
            // Whatever survived is the state the next cycle builds on.
            survived.insert(
                name.clone(),
                Ledger {
                    synced: got,
                    in_flight: None,
                },
            );
        }
        ledgers = survived;
        for (name, bytes) in &clones {
            let got = fs::read(m.path(&format!("{name}/f1")))
                .unwrap_or_else(|e| panic!("cycle {cycle}: clone {name} lost: {e}"));
            assert!(got == *bytes, "cycle {cycle}: clone {name} changed");
        }
    }
    eprintln!(
        "{cycles} kill cycles survived, {verified} fsync'd bytes verified, {} clones kept",
        clones.len()
    );
    m.umount();
    fsck_clean(m.store_str());
}

fn used(m: &Mounted) -> u64 {
    let out = run_ok(&["stat", "-f", "-c", "%S %b %f", m.mnt_str()]);
    let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    v[0] * (v[1] - v[2])
}

const REC: usize = 64;

/// When each write began and ended, per writer thread.
type Timings = Vec<(Instant, Instant)>;

/// Checks that a clone of the writers' cluster is one point in time: per writer, a
/// prefix of its records, and no missing record finished before a present one began.
fn check_image(dir: &Path, log: &[Vec<(Instant, Instant)>]) {
    let mut last_present_start = None::<Instant>;
    let mut first_absent_end = None::<Instant>;
    for (t, writes) in log.iter().enumerate() {
        let body = fs::read(dir.join(format!("w{t}"))).unwrap_or_default();
        assert_eq!(
            body.len() % REC,
            0,
            "{}: a torn record in w{t}",
            dir.display()
        );
        let n = body.len() / REC;
        for (i, rec) in body.chunks(REC).enumerate() {
            assert!(
                rec.starts_with(format!("w{t} {i:08}").as_bytes()),
                "{}: w{t} record {i} is wrong",
                dir.display()
            );
        }
        if n > 0 {
            let s = writes[n - 1].0;
            last_present_start = Some(last_present_start.map_or(s, |x| x.max(s)));
        }
        if let Some(w) = writes.get(n) {
            first_absent_end = Some(first_absent_end.map_or(w.1, |x| x.min(w.1)));
        }
    }
    if let (Some(p), Some(a)) = (last_present_start, first_absent_end) {
        assert!(
            a >= p,
            "{}: a record missing from the clone finished before a present one began",
            dir.display()
        );
    }
}

#[test]
fn clone_storm_under_four_writers() {
    let Some(m) = Mounted::with_size("2G") else {
        return;
    };
    let mut rng = Rng::from_env("CLONEFS_SEED");
    let total = if long() { 5000 } else { 1000 };
    fs::create_dir(m.path("prod")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Vec<Mutex<Timings>>> = Arc::new((0..4).map(|_| Mutex::new(Vec::new())).collect());
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, log, path) = (stop.clone(), log.clone(), m.path(&format!("prod/w{t}")));
            std::thread::spawn(move || {
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut rec = format!("w{t} {i:08}").into_bytes();
                    rec.resize(REC - 1, b'.');
                    rec.push(b'\n');
                    let start = Instant::now();
                    f.write_all(&rec).unwrap();
                    log[t].lock().unwrap().push((start, Instant::now()));
                    i += 1;
                    std::thread::sleep(Duration::from_micros(300));
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut names: Vec<String> = Vec::new();
    for k in 0..total {
        // Clones of prod, and clones of clones.
        let src = if names.is_empty() || rng.below(3) > 0 {
            "prod".to_string()
        } else {
            names[rng.below(names.len() as u64) as usize].clone()
        };
        let name = format!("c{k}");
        fs::create_dir(m.path(&format!("{src}/.clone/{name}")))
            .unwrap_or_else(|e| panic!("clone {k} of {src}: {e}"));
        names.push(name);
    }
    let storm = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let log: Vec<Vec<(Instant, Instant)>> = log.iter().map(|l| l.lock().unwrap().clone()).collect();
    for name in &names {
        check_image(&m.path(name), &log);
    }
    // Delete them all in random order: the store goes back to the source alone.
    let order: Vec<usize> = {
        let mut v: Vec<usize> = (0..names.len()).collect();
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i as u64 + 1) as usize);
        }
        v
    };
    for i in order {
        run_ok(&["rm", "-rf", s(&m.path(&names[i]))]);
    }
    let status = run_ok(&[BIN, "status", "--json", m.mnt_str()]);
    let at = status
        .find("\"logical\":")
        .expect("status gives logical bytes")
        + 10;
    let logical: u64 = status[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap();
    let u = used(&m);
    assert!(
        u >= logical && u - logical < 1 << 20,
        "after deleting every clone the store uses {u} bytes; the source alone reaches {logical}"
    );
    eprintln!("{total} clones in {storm:?} under 4 writers; every image consistent; space back to {u} bytes");
    let mut m = m;
    m.umount();
    fsck_clean(m.store_str());
}

#[test]
fn many_threads_write_rename_and_clone_at_once() {
    let Some(mut m) = Mounted::with_size("2G") else {
        return;
    };
    let secs = if long() { 60 } else { 12 };
    fs::create_dir(m.path("prod")).unwrap();
    for d in 0..4 {
        fs::create_dir(m.path(&format!("prod/d{d}"))).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let seed = Rng::from_env("CLONEFS_SEED").next();
    let mnt = m.mnt.clone();
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let (stop, ops, mnt) = (stop.clone(), ops.clone(), mnt.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
                let p = |rng: &mut Rng| -> PathBuf {
                    mnt.join(format!("prod/d{}/f{}", rng.below(4), rng.below(16)))
                };
                while !stop.load(Ordering::Relaxed) {
                    let r = match rng.below(8) {
                        0 | 1 => fs::OpenOptions::new()
                            .create(true)
                            .truncate(false)
                            .write(true)
                            .open(p(&mut rng))
                            .and_then(|f| {
                                let data = vec![rng.next() as u8; 1 + rng.below(200_000) as usize];
                                f.write_all_at(&data, rng.below(100_000))
                            }),
                        2 => fs::read(p(&mut rng)).map(|_| ()),
                        3 => fs::rename(p(&mut rng), p(&mut rng)),
                        4 => fs::remove_file(p(&mut rng)),
                        5 => fs::OpenOptions::new()
                            .write(true)
                            .open(p(&mut rng))
                            .and_then(|f| f.set_len(rng.below(300_000))),
                        6 => fs::read_dir(mnt.join(format!("prod/d{}", rng.below(4))))
                            .map(|d| d.for_each(drop)),
                        _ => fs::hard_link(p(&mut rng), p(&mut rng)),
                    };
                    if let Err(e) = r {
                        // Races between threads give these; anything else is a defect.
                        let ok = [libc::ENOENT, libc::EEXIST];
                        assert!(
                            ok.contains(&e.raw_os_error().unwrap_or(0)),
                            "thread {t}: unexpected error {e}"
                        );
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let cloner = {
        let (stop, mnt) = (stop.clone(), mnt.clone());
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                fs::create_dir(mnt.join(format!("prod/.clone/s{k}"))).unwrap();
                if k >= 3 {
                    let out = run(&["rm", "-rf", s(&mnt.join(format!("s{}", k - 3)))]);
                    assert!(out.status.success(), "rm -rf of a clone: {out:?}");
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            k
        })
    };
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let clones = cloner.join().unwrap();
    eprintln!(
        "{} operations and {clones} clones in {secs} s from 7 threads",
        ops.load(Ordering::Relaxed)
    );
    m.umount();
    fsck_clean(m.store_str());
}

#[test]
fn the_store_file_and_the_mount_are_locked_down() {
    let Some(mut m) = Mounted::new() else { return };
    let mode = fs::metadata(&m.store).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the store file must be readable by its owner alone"
    );
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(&format!(" {} ", m.mnt_str())))
        .unwrap()
        .to_string();
    assert!(line.contains("default_permissions"), "{line}");
    assert!(
        !line.contains("allow_other"),
        "allow_other without --allow-other: {line}"
    );
    // Names cannot climb out of a cluster: '..' of a cluster root is the mount root.
    fs::create_dir(m.path("a")).unwrap();
    fs::create_dir(m.path("b")).unwrap();
    fs::write(m.path("b/secret"), b"b's").unwrap();
    assert_eq!(fs::read(m.path("a/../b/secret")).unwrap(), b"b's");
    let parent = fs::metadata(m.path("a/..")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&parent),
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&m.mnt).unwrap())
    );
    let e = fs::rename(m.path("a"), m.path("b/a")).unwrap_err();
    assert!(
        [libc::EXDEV, libc::EPERM].contains(&e.raw_os_error().unwrap()),
        "moving a cluster into another: {e}"
    );
    assert!(m.path("a").is_dir() && !m.path("b/a").exists());
    m.umount();
}

#[test]
fn a_database_filling_the_store_gets_enospc_and_continues_after_a_delete() {
    let Some(mut m) = Mounted::with_size("160M") else {
        return;
    };
    fs::create_dir(m.path("keep")).unwrap();
    fs::create_dir(m.path("ballast")).unwrap();
    fs::create_dir(m.path("db")).unwrap();
    let keep: Vec<u8> = (0..8 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(m.path("keep/data"), &keep).unwrap();
    fs::write(m.path("ballast/data"), vec![1u8; 32 << 20]).unwrap();
    // SQLite inserts 64 KiB rows until the store is full, in WAL mode like a real app.
    let fill = r#"
import sqlite3, sys, os
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB)")
n = 0
try:
    while True:
        con.execute("INSERT INTO t (b) VALUES (?)", (os.urandom(65536),))
        n += 1
except sqlite3.Error as e:
    print(f"stopped after {n} rows: {e}")
    sys.exit(0 if "full" in str(e) else 2)
"#;
    let db = m.path("db/app.sqlite");
    let out = common::run_for(300, &["python3", "-c", fill, s(&db)]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the writer must see 'database or disk is full' (ENOSPC), not another error: {said}"
    );
    let rows_full: u64 = said.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(rows_full > 500, "{said}");
    // Everything else is intact.
    assert!(
        fs::read(m.path("keep/data")).unwrap() == keep,
        "another cluster changed when the store filled"
    );
    let check = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print(con.execute("PRAGMA integrity_check").fetchone()[0], con.execute("SELECT count(*) FROM t").fetchone()[0])
"#;
    let ok = run_ok(&["python3", "-c", check, s(&db)]);
    assert!(ok.starts_with("ok "), "integrity after ENOSPC: {ok}");
    // Free a cluster: the database goes on.
    run_ok(&["rm", "-rf", s(&m.path("ballast"))]);
    let out = common::run_for(300, &["python3", "-c", fill, s(&db)]);
    let said2 = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said2}");
    let more: u64 = said2.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        more > 200,
        "after deleting 32 MiB the database took only {more} more rows"
    );
    let ok = run_ok(&["python3", "-c", check, s(&db)]);
    assert!(
        ok.starts_with("ok "),
        "integrity after the second fill: {ok}"
    );
    eprintln!("sqlite: {rows_full} rows until ENOSPC, {more} more after deleting a cluster");
    m.umount();
    fsck_clean(m.store_str());
}
