//! SIGKILL of a real process working on a real store file, many times over.
//!
//! The test binary re-runs itself as a child (as sled's crash tests do): with
//! `CLONEFS_CRASH_CHILD` set, `sigkill_cycles` runs the child workload instead of
//! the test. The parent makes a store file once (`Volume::mkfs`), then for each
//! cycle starts a child, kills it with SIGKILL after a random delay, reopens the
//! store with `Volume::open_path`, checks it, runs `fsck`, and starts the next
//! child on the same store.
//!
//! # The child
//! It opens the store (`Volume::open_path`), reads what it holds, and runs a random
//! workload: writes (random offsets and lengths up to 64 KiB into files of up to
//! 256 KiB), creates, unlinks, renames, truncates, directories, clones and deletes
//! of clusters, open handles (so some unlinked files are orphans when the kill
//! comes, for the next mount to free), and frequent syncs (`commit`, `fsync`,
//! `fdatasync`). It keeps a
//! ledger file outside the store (plain `std::fs`):
//! - before issuing an operation it appends the operation (a write is logged by its
//!   offset, length and seed, from which the parent regenerates the bytes);
//! - after a sync returns it appends `S` (`commit`/`fsync`: everything so far) or
//!   `Y cluster path` (`fdatasync`: that file's bytes so far) and fsyncs the ledger.
//!
//! Each line carries a hash; a line torn by the kill is ignored (only the last can
//! be), which is sound: an operation whose record is torn was never issued, and a
//! sync whose record is torn only makes the check assume an earlier sync.
//!
//! # The check
//! The parent replays the ledger from the state it verified after the previous
//! kill: `synced` is the state at the last `S`, `since` the operations logged after
//! it (the last possibly never issued or cut half way). A SIGKILL loses nothing the
//! process wrote (the page cache survives), so what the reopened store holds is the
//! last commit whose superblock was written: one of the states `synced + since[..k]`
//! (operations are atomic with respect to commits; the 2 s background commit and
//! cluster deletes commit on their own). Metadata (clusters and their parents,
//! directories, names, sizes) must equal such a state exactly; data pages private
//! to one file are overwritten in place, so each byte may hold its value in that
//! state or a value a later logged operation wrote to the same file (a clone's
//! files are separate identities: writes in the source never excuse a byte of the
//! clone). After an `fdatasync` at `t`, bytes of that file hold their value at `t` or
//! a later one. Every synced clone thus exists with its content as of the clone.
//! `fsck` must be clean. The verified state is the base of the next cycle.
//!
//! `CLONEFS_CRASH_SEED` replays the workloads of a run (the kill times differ),
//! `CLONEFS_CRASH_CYCLES` sets the number of kill cycles.

use clonefs::volume::{ClusterId, Ino, Kind, Volume};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const CHILD: &str = "CLONEFS_CRASH_CHILD";
const STORE: &str = "CLONEFS_CRASH_STORE";
const LEDGER: &str = "CLONEFS_CRASH_LEDGER";
const CHILD_SEED: &str = "CLONEFS_CRASH_CHILD_SEED";
const CYCLE: &str = "CLONEFS_CRASH_CYCLE";
const TEST_NAME: &str = "sigkill_cycles";
mod rng;
mod workload;
use workload::*;

// ---- the ledger ------------------------------------------------------------------

enum Record {
    Op(Op),
    /// `commit` or `fsync` returned: everything before is durable.
    Sync,
    /// `fdatasync` of a file returned: its bytes are durable.
    DataSync(String, String),
}

fn encode(op: &Op) -> String {
    match op {
        Op::CreateCluster(c) => format!("K {c}"),
        Op::Mkdir(c, d) => format!("M {c} {d}"),
        Op::Create(c, p) => format!("N {c} {p}"),
        Op::Write {
            c,
            path,
            off,
            len,
            seed,
        } => format!("W {c} {path} {off} {len} {seed}"),
        Op::Truncate(c, p, size) => format!("T {c} {p} {size}"),
        Op::Unlink(c, p) => format!("U {c} {p}"),
        Op::Rename(c, from, to) => format!("R {c} {from} {to}"),
        Op::Clone(src, dst) => format!("C {src} {dst}"),
        Op::Delete(c) => format!("D {c}"),
    }
}

fn decode(rec: &str) -> Option<Record> {
    let f: Vec<&str> = rec.split(' ').collect();
    let s = |i: usize| f.get(i).map(|s| s.to_string());
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some(match *f.first()? {
        "S" => Record::Sync,
        "Y" => Record::DataSync(s(1)?, s(2)?),
        "K" => Record::Op(Op::CreateCluster(s(1)?)),
        "M" => Record::Op(Op::Mkdir(s(1)?, s(2)?)),
        "N" => Record::Op(Op::Create(s(1)?, s(2)?)),
        "W" => Record::Op(Op::Write {
            c: s(1)?,
            path: s(2)?,
            off: n(3)?,
            len: n(4)? as usize,
            seed: n(5)?,
        }),
        "T" => Record::Op(Op::Truncate(s(1)?, s(2)?, n(3)?)),
        "U" => Record::Op(Op::Unlink(s(1)?, s(2)?)),
        "R" => Record::Op(Op::Rename(s(1)?, s(2)?, s(3)?)),
        "C" => Record::Op(Op::Clone(s(1)?, s(2)?)),
        "D" => Record::Op(Op::Delete(s(1)?)),
        _ => return None,
    })
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Ledger(File);

impl Ledger {
    fn append(&mut self, rec: &str, durable: bool) {
        let line = format!("{rec}|{:016x}\n", fnv(rec));
        self.0
            .write_all(line.as_bytes())
            .expect("writing the ledger");
        if durable {
            self.0.sync_data().expect("syncing the ledger");
        }
    }
}

/// What the ledger of one cycle says, replayed from `base`.
struct Replay {
    synced: State,
    since: Vec<Op>,
    datasyncs: Vec<DataSync>,
    records: u64,
    syncs: u64,
    torn_tail: bool,
}

fn replay(base: &State, ledger: &Path) -> Replay {
    let text = std::fs::read(ledger).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut r = Replay {
        synced: base.clone(),
        since: Vec::new(),
        datasyncs: Vec::new(),
        records: 0,
        syncs: 0,
        torn_tail: false,
    };
    let mut state = base.clone();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let whole = line
            .strip_suffix('\n')
            .and_then(|l| l.rsplit_once('|'))
            .filter(|(rec, h)| u64::from_str_radix(h, 16).ok() == Some(fnv(rec)))
            .and_then(|(rec, _)| decode(rec));
        let Some(rec) = whole else {
            assert_eq!(i + 1, lines.len(), "ledger line {i} is damaged: {line:?}");
            r.torn_tail = true;
            break;
        };
        r.records += 1;
        match rec {
            Record::Op(op) => {
                state.apply(&op);
                r.since.push(op);
            }
            Record::Sync => {
                r.syncs += 1;
                r.synced = state.clone();
                r.since.clear();
                r.datasyncs.clear();
            }
            Record::DataSync(c, p) => {
                r.syncs += 1;
                let fid = state.clusters[&c].files[&p];
                r.datasyncs.push(DataSync {
                    fid,
                    at: r.since.len(),
                    bytes: state.files[&fid].clone(),
                });
            }
        }
    }
    r
}

// ---- the child -------------------------------------------------------------------

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| panic!("{var} is not set")))
}

fn env_u64(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{var} is not set"))
}

/// Runs until killed (or for 30 s, should the parent be gone).
fn child_main() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let store = env_path(STORE);
    let cycle = env_u64(CYCLE);
    let mut rng = Rng::new(env_u64(CHILD_SEED));
    let v = Volume::open_path(&store).unwrap_or_else(|e| panic!("child: opening: {e}"));
    let actual = read_actual(&v).unwrap_or_else(|e| panic!("child: reading: {e}"));
    let mut model = State::from_actual(&actual);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(env_path(LEDGER))
        .expect("opening the ledger");
    let mut ledger = Ledger(file);
    // Cluster names stay unique across cycles.
    let mut counter = (cycle * 100_000) as u32;
    let mut handles: Vec<(ClusterId, Ino)> = Vec::new();
    while Instant::now() < deadline {
        if rng.chance(15) {
            let files: Vec<(String, String)> = model
                .clusters
                .iter()
                .flat_map(|(c, cl)| cl.files.keys().map(move |p| (c.clone(), p.clone())))
                .collect();
            if files.is_empty() || rng.chance(30) {
                v.commit().unwrap_or_else(|e| panic!("child: commit: {e}"));
                ledger.append("S", true);
                continue;
            }
            let (c, p) = rng.pick(&files).clone();
            let (id, ino) = file_ino(&v, &c, &p).unwrap();
            if rng.chance(50) {
                v.fsync(id, ino)
                    .unwrap_or_else(|e| panic!("child: fsync: {e}"));
                ledger.append("S", true);
            } else {
                v.fdatasync(id, ino)
                    .unwrap_or_else(|e| panic!("child: fdatasync: {e}"));
                ledger.append(&format!("Y {c} {p}"), true);
            }
        } else if rng.chance(6) {
            // Open handles make files unlinked while open into orphans, which the
            // kill leaves for the next mount to free (not logged: not visible).
            if !handles.is_empty() && rng.chance(50) {
                let (c, ino) = handles.swap_remove(rng.below(handles.len() as u64) as usize);
                v.release_file(c, ino)
                    .unwrap_or_else(|e| panic!("child: release: {e}"));
            } else if let Some((c, p)) = {
                let files: Vec<(&String, &String)> = model
                    .clusters
                    .iter()
                    .flat_map(|(c, cl)| cl.files.keys().map(move |p| (c, p)))
                    .collect();
                (!files.is_empty()).then(|| *rng.pick(&files))
            } {
                let (c, ino) = file_ino(&v, c, p).unwrap();
                v.open_file(c, ino)
                    .unwrap_or_else(|e| panic!("child: open: {e}"));
                handles.push((c, ino));
            }
        } else {
            let op = random_op(&mut rng, &model, &mut counter);
            ledger.append(&encode(&op), false);
            let n = exec(&v, &op).unwrap_or_else(|e| panic!("child: {op:?}: {e}"));
            if let Op::Write { len, .. } = &op {
                assert_eq!(n, *len, "short write of {op:?}");
            }
            model.apply(&op);
        }
    }
    std::process::exit(3);
}

// ---- the parent ------------------------------------------------------------------

/// Kills the child if the parent unwinds.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn initial_state(store: &Path) -> State {
    let v = Volume::open_path(store).unwrap();
    for (c, files) in [("alpha", 3), ("beta", 2)] {
        let id = v.create_cluster(c, WHO).unwrap().id;
        for k in 0..files {
            let name = format!("f{k}");
            let ino = v
                .mknod(id, Ino::ROOT, name.as_bytes(), Kind::File, WHO, 0)
                .unwrap()
                .ino;
            v.write(id, ino, 0, &gen_bytes(k, 100_000)).unwrap();
        }
    }
    let a = read_actual(&v).unwrap();
    v.close().unwrap();
    State::from_actual(&a)
}

#[test]
fn sigkill_cycles() {
    if std::env::var_os(CHILD).is_some() {
        child_main();
        return;
    }
    let seed = rng::seed_from_env("CLONEFS_CRASH_SEED");
    let cycles: u64 = std::env::var("CLONEFS_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    println!("{TEST_NAME}: CLONEFS_CRASH_SEED={seed}, {cycles} cycles");
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    Volume::mkfs(&store, 256 << 20, PS).unwrap();
    let mut base = initial_state(&store);
    let mut rng = Rng::new(seed);
    let exe = std::env::current_exe().unwrap();
    let (mut records, mut syncs, mut bytes, mut exact, mut later, mut torn) = (0, 0, 0, 0, 0, 0);
    let mut early = 0;
    for cycle in 0..cycles {
        let ledger = dir.path().join(format!("ledger-{cycle}"));
        let log = dir.path().join(format!("child-{cycle}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env(STORE, &store)
            .env(LEDGER, &ledger)
            .env(CHILD_SEED, rng.next().to_string())
            .env(CYCLE, cycle.to_string())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting the child");
        let mut kid = Kid(child);
        let delay = Duration::from_millis(5 + rng.below(500));
        let started = Instant::now();
        let child_log = || std::fs::read_to_string(&log).unwrap_or_default();
        while started.elapsed() < delay {
            if let Some(st) = kid.0.try_wait().unwrap() {
                panic!("cycle {cycle} (CLONEFS_CRASH_SEED={seed}): the child exited by itself ({st}):\n{}", child_log());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        kid.0.kill().unwrap();
        let st = kid.0.wait().unwrap();
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "cycle {cycle}: the child ended by itself ({st}):\n{}",
            child_log()
        );

        let r = replay(&base, &ledger);
        records += r.records;
        syncs += r.syncs;
        torn += r.torn_tail as u64;
        early += (r.records == 0) as u64;
        let fail = |what: String| -> ! {
            panic!(
                "cycle {cycle} (CLONEFS_CRASH_SEED={seed}), killed after {delay:?}, {} ledger \
                 records: {what}\nchild log:\n{}",
                r.records,
                child_log()
            )
        };
        let v = Volume::open_path(&store)
            .unwrap_or_else(|e| fail(format!("reopening after the kill: {e}")));
        let actual = read_actual(&v).unwrap_or_else(|e| fail(e));
        let k = check_states(&r.synced, &r.since, &r.datasyncs, &actual, None)
            .unwrap_or_else(|e| fail(e));
        if k == 0 {
            exact += 1;
        } else {
            later += 1;
        }
        bytes += actual.bytes();
        let report = v.fsck().unwrap_or_else(|e| fail(format!("fsck: {e}")));
        if !report.is_clean() {
            fail(format!("fsck after the kill:\n{report}"));
        }
        base = State::from_actual(&actual);
        v.close().unwrap();
        drop(v);
        let _ = std::fs::remove_file(&ledger);
        let _ = std::fs::remove_file(&log);
    }
    println!(
        "{cycles} SIGKILL cycles in {:.1?}: {records} ledger records ({syncs} syncs, {torn} \
         torn last lines, {early} kills before the first operation); the recovered state \
         was the last synced one {exact} times, only a later one {later} times; {bytes} \
         bytes verified; {} clusters at the end",
        t0.elapsed(),
        base.clusters.len()
    );
}
