//! Power cuts at random points of a random workload, on the in-memory device.
//!
//! Each case runs a random single-threaded workload (create and delete clusters,
//! clone them, mkdir, create, write, truncate, rename, unlink; syncs by `commit`,
//! `fsync` or `fdatasync`) on a [`MemDevice`], cuts the power at a random point —
//! either `cut_power_after(n)` (the cut lands after `n` more device writes or
//! syncs, so often in the middle of a commit) or `power_cut()` taken between two
//! operations — rebuilds a device from the surviving bytes (pages written since the
//! last device sync are dropped, kept or torn at a 512-byte boundary), reopens it
//! and checks the result. Then it continues on the reopened volume and cuts once
//! more, so that recovery after a crash (recount, leaked pages freed) is exercised.
//!
//! # What the check accepts
//! The test keeps a model of the volume: clusters (with their parent), directories,
//! the path of every file and its bytes. It records the model at the last full sync
//! (`commit` or `fsync`) that returned while the power was still on (`synced`) and
//! every operation issued after it (`since`, the last one possibly cut half way).
//! Operations are atomic with respect to commits (each holds the epoch gate), so
//! the committed states reachable after the cut are exactly the prefixes
//! `synced + since[..k]` (the 2 s background commit may add any of them).
//!
//! - Metadata (clusters, their parents, directories, names, file sizes) must equal
//!   one of those prefix states exactly.
//! - Data: a page private to one file is overwritten in place, so a byte may hold
//!   its value in that prefix state or any value a later operation (in `since[k..]`)
//!   wrote to the same file — a write's bytes, or the zeros a shrinking truncate
//!   writes over the tail of its last page. Files are identified through clones:
//!   a clone's files are new identities, so a write in the source never excuses a
//!   byte of the clone or the other way round (the engine copies shared pages).
//! - `fdatasync(f)` that returned after `since[..t]`: `f`'s map and size were as
//!   committed and its bytes then are durable, so in a prefix state before `t` each
//!   byte of `f` holds its value at `t` or a value written after `t`.
//! - `fsck` must be clean after the reopen.
//!
//! Once the power is cut the device silently drops writes, so the live process may
//! read pages it never wrote; what it does then (errors, even panics) is ignored,
//! as a real process would be dead. With the power on, any error fails the case.
//!
//! Targeted cases use a tapping device that intercepts the superblock write of a
//! commit: the power is cut right after the data sync (before the superblock), or
//! the superblock is torn; the recovered state must then be the previous commit.
//!
//! Knobs: `CLONEFS_POWERCUT_SEED` replays a run (its seed is printed),
//! `CLONEFS_POWERCUT_CASES` sets the number of cases, `CLONEFS_POWERCUT_CASE` runs
//! one case by its case seed, and `CLONEFS_POWERCUT_PARANOID` also compares the
//! live volume with the model after every operation.

use clonefs::error::{Error, Result};
use clonefs::store::memdev::{Image, MemDevice};
use clonefs::store::PageDevice;
use clonefs::volume::{ClusterId, Ino, Kind, SetAttr, Volume};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const PAGES: u64 = 16384;

mod rng;
mod workload;
use workload::*;

/// What a sync promised.
enum Synced {
    /// Everything (`commit` or `fsync`).
    All,
    /// The data of one file (`fdatasync`): its bytes as of now.
    Data(String, String),
}

/// A sync through `commit`, or `fsync` or `fdatasync` of a random file.
fn sync(v: &Volume, rng: &mut Rng, m: &State) -> Result<Synced> {
    let files: Vec<(String, String)> = m
        .clusters
        .iter()
        .flat_map(|(c, cl)| cl.files.keys().map(move |p| (c.clone(), p.clone())))
        .collect();
    if files.is_empty() || rng.chance(30) {
        return v.commit().map(|_| Synced::All);
    }
    let (c, p) = rng.pick(&files).clone();
    let (id, ino) = file_ino(v, &c, &p)?;
    if rng.chance(50) {
        v.fsync(id, ino).map(|_| Synced::All)
    } else {
        v.fdatasync(id, ino).map(|_| Synced::Data(c, p))
    }
}

#[derive(Default)]
struct Stats {
    rounds: u64,
    scheduled_cuts: u64,
    cuts_mid_op: u64,
    exact_sync_state: u64,
    later_state: u64,
    bytes: u64,
    ops: u64,
    syncs: u64,
    datasyncs: u64,
    nospace: u64,
    short_writes: u64,
}

/// One round: random operations and syncs, a power cut; returns the surviving
/// image, the model at the last sync that returned with the power on, and the
/// operations issued since.
struct Round {
    image: Image,
    synced: State,
    since: Vec<Op>,
    datasyncs: Vec<DataSync>,
}

fn run_round(
    v: &Volume,
    mem: &MemDevice,
    model: &mut State,
    rng: &mut Rng,
    counter: &mut u32,
    stats: &mut Stats,
) -> std::result::Result<Round, String> {
    let nops = 10 + rng.below(90);
    let cut_at = rng.below(nops + 1);
    let scheduled = rng.chance(60);
    let cut_seed = rng.next();
    let mut synced = model.clone();
    let mut since = Vec::new();
    let mut datasyncs = Vec::new();
    let mut handles = Vec::new();
    let mut image = None;
    for i in 0..nops {
        if i == cut_at {
            if scheduled {
                stats.scheduled_cuts += 1;
                mem.cut_power_after(rng.below(48), cut_seed);
            } else {
                image = Some(mem.power_cut(cut_seed));
                break;
            }
        }
        if rng.chance(12) {
            stats.syncs += 1;
            let r = guarded(|| sync(v, rng, model));
            if mem.power_is_cut() {
                break;
            }
            match r
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| format!("sync failed with the power on: {e}"))?
            {
                Synced::All => {
                    synced = model.clone();
                    since.clear();
                    datasyncs.clear();
                }
                Synced::Data(c, p) => {
                    stats.datasyncs += 1;
                    let fid = model.clusters[&c].files[&p];
                    datasyncs.push(DataSync {
                        fid,
                        at: since.len(),
                        bytes: model.files[&fid].clone(),
                    });
                }
            }
        } else {
            if rng.chance(6) {
                // Open a file or close a handle: unlinking an open file leaves an
                // orphan, which its last release or (after a cut) the mount frees.
                let r = guarded(|| handle(v, rng, model, &mut handles));
                if mem.power_is_cut() {
                    break;
                }
                r.and_then(|r| r.map_err(|e| e.to_string()))
                    .map_err(|e| format!("open/release with the power on: {e}"))?;
                continue;
            }
            let mut op = random_op(rng, model, counter);
            stats.ops += 1;
            let r = guarded(|| exec(v, &op));
            if std::env::var("CLONEFS_POWERCUT_PARANOID").is_ok() {
                println!("op {op:?} -> {r:?}");
            }
            if let (Ok(Ok(n)), Op::Write { len, .. }) = (&r, &mut op) {
                if *n < *len {
                    stats.short_writes += 1;
                    *len = *n;
                }
            }
            if mem.power_is_cut() {
                model.apply(&op);
                since.push(op);
                stats.cuts_mid_op += 1;
                break;
            }
            match r.map_err(|e| format!("{op:?} panicked with the power on: {e}"))? {
                Ok(_) => {
                    model.apply(&op);
                    since.push(op.clone());
                }
                Err(Error::NoSpace) => {
                    // Decided before anything changed: the volume is as before.
                    stats.nospace += 1;
                    let a = read_actual(v)?;
                    check(model, &[], &a)
                        .map_err(|e| format!("{op:?} failed with NoSpace but changed: {e}"))?;
                    continue;
                }
                Err(e) => return Err(format!("{op:?} failed with the power on: {e}")),
            }
            if std::env::var("CLONEFS_POWERCUT_PARANOID").is_ok() {
                let a = read_actual(v)?;
                check(model, &[], &a).map_err(|e| format!("live after {op:?}: {e}"))?;
            }
        }
    }
    let image = image.unwrap_or_else(|| mem.power_cut(cut_seed));
    Ok(Round {
        image,
        synced,
        since,
        datasyncs,
    })
}

/// Opens a random file (keeping the handle) or releases a random handle.
fn handle(v: &Volume, rng: &mut Rng, m: &State, handles: &mut Vec<(ClusterId, Ino)>) -> Result<()> {
    if !handles.is_empty() && rng.chance(50) {
        let (c, ino) = handles.swap_remove(rng.below(handles.len() as u64) as usize);
        return v.release_file(c, ino);
    }
    let files: Vec<(&String, &String)> = m
        .clusters
        .iter()
        .flat_map(|(c, cl)| cl.files.keys().map(move |p| (c, p)))
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    let (c, p) = *rng.pick(&files);
    let (c, ino) = file_ino(v, c, p)?;
    v.open_file(c, ino)?;
    handles.push((c, ino));
    Ok(())
}

/// Runs `f`, turning a panic into an error. Once the power is cut the device drops
/// writes, so the live process may read pages it never wrote: what it does then
/// does not matter (a real process would be dead), but with the power on a panic
/// is a failure like any other.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<Result<T>, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(p) => Err(format!(
            "panic: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// Opens the image, checks it against the round, runs fsck; returns the volume,
/// its device and what it holds.
fn recover(
    round: &Round,
    pages: u64,
    stats: &mut Stats,
) -> std::result::Result<(Arc<Volume>, Arc<MemDevice>, Actual), String> {
    let mem = Arc::new(MemDevice::from_image(PS, pages, round.image.clone()));
    let v = Volume::open_device(mem.clone(), Path::new("powercut-image"), false)
        .map_err(|e| format!("reopening after the cut: {e}"))?;
    let actual = read_actual(&v)?;
    let k = check_states(&round.synced, &round.since, &round.datasyncs, &actual, None)?;
    if k == 0 {
        stats.exact_sync_state += 1;
    } else {
        stats.later_state += 1;
    }
    stats.bytes += actual.bytes();
    let r = v.fsck().map_err(|e| format!("fsck: {e}"))?;
    if !r.is_clean() {
        return Err(format!("fsck after the cut:\n{r}"));
    }
    Ok((v, mem, actual))
}

fn run_case(seed: u64, pages: u64, stats: &mut Stats) -> std::result::Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut mem = Arc::new(MemDevice::new(PS, pages));
    let mut v = Volume::create_on(mem.clone()).map_err(|e| e.to_string())?;
    let mut model = State::default();
    let mut counter = 0;
    for round in 0..2 {
        let r = run_round(&v, &mem, &mut model, &mut rng, &mut counter, stats)
            .map_err(|e| format!("round {round}: {e}"))?;
        drop(v);
        if std::env::var("CLONEFS_POWERCUT_PARANOID").is_ok() {
            println!("round {round} cut; {} ops since the sync", r.since.len());
        }
        stats.rounds += 1;
        let (v2, mem2, actual) =
            recover(&r, pages, stats).map_err(|e| format!("round {round}: {e}"))?;
        model = State::from_actual(&actual);
        v = v2;
        mem = mem2;
    }
    Ok(())
}

/// Runs the random cases on a device of `pages` pages.
fn run_cases(name: &str, pages: u64, default_cases: u64) {
    let seed = rng::seed_from_env("CLONEFS_POWERCUT_SEED");
    let cases: u64 = std::env::var("CLONEFS_POWERCUT_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    println!("{name}: CLONEFS_POWERCUT_SEED={seed}, {cases} cases of {pages} pages");
    let t = Instant::now();
    let mut stats = Stats::default();
    if let Some(case_seed) = std::env::var("CLONEFS_POWERCUT_CASE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_case(case_seed, pages, &mut stats).unwrap_or_else(|e| panic!("case {case_seed}: {e}"));
        return;
    }
    for i in 0..cases {
        let case_seed = Rng::new(seed.wrapping_add(i)).next();
        if let Err(e) = run_case(case_seed, pages, &mut stats) {
            panic!("case {i} (CLONEFS_POWERCUT_SEED={seed}, case seed {case_seed}) failed:\n{e}");
        }
    }
    println!(
        "{cases} cases, {} power cuts ({} scheduled by device writes, {} observed in an \
         operation), {} ops ({} refused with NoSpace, {} short writes), {} syncs ({} \
         fdatasync); the recovered state was the synced one {} times, only a later one {} \
         times; {} bytes verified; {:.1?}",
        stats.rounds,
        stats.scheduled_cuts,
        stats.cuts_mid_op,
        stats.ops,
        stats.nospace,
        stats.short_writes,
        stats.syncs,
        stats.datasyncs,
        stats.exact_sync_state,
        stats.later_state,
        stats.bytes,
        t.elapsed()
    );
}

#[test]
fn random_power_cuts() {
    run_cases("random_power_cuts", PAGES, 500);
}

/// The same on a store of 768 KiB, which the workload fills: a refused operation
/// must leave the volume exactly as it was, and commits must still succeed.
#[test]
fn random_power_cuts_on_a_full_store() {
    run_cases("random_power_cuts_on_a_full_store", 192, 300);
}

// ---- targeted cuts at the superblock write --------------------------------------

#[derive(Clone, Copy)]
enum Tap {
    /// Take the image right before the superblock write: after the data sync.
    BeforeSuperblock,
    /// Write the first `n` bytes of the new superblock over the old copy and take the
    /// image: a torn superblock write.
    TornSuperblock(usize),
}

/// A device that passes everything to a [`MemDevice`] and can catch one commit.
struct TapDevice {
    mem: Arc<MemDevice>,
    armed: Mutex<Option<Tap>>,
    commits: AtomicU64,
    /// The image and the generation of the superblock being written.
    caught: Mutex<Option<(Image, u64, u64)>>,
}

impl PageDevice for TapDevice {
    fn page_size(&self) -> usize {
        self.mem.page_size()
    }
    fn capacity_pages(&self) -> u64 {
        self.mem.capacity_pages()
    }
    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.mem.read(page, offset, buf)
    }
    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<()> {
        self.mem.write(page, offset, data)
    }
    fn allocate(&self, start: u64, count: u64) -> Result<()> {
        self.mem.allocate(start, count)
    }
    fn free(&self, start: u64, count: u64) {
        self.mem.free(start, count)
    }
    fn sync(&self) -> Result<()> {
        self.mem.sync()
    }
    fn commit(&self, page: u64, bytes: &[u8]) -> Result<()> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let generation = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        if let Some(tap) = self.armed.lock().unwrap().take() {
            let image = match tap {
                Tap::BeforeSuperblock => self.mem.power_cut(1),
                Tap::TornSuperblock(k) => {
                    let mut old = vec![0u8; bytes.len()];
                    self.mem.read(page, 0, &mut old)?;
                    old[..k].copy_from_slice(&bytes[..k]);
                    self.mem.write(page, 0, &old)?;
                    self.mem.sync()?;
                    self.mem.power_cut(1)
                }
            };
            *self.caught.lock().unwrap() = Some((image, generation, n));
        }
        self.mem.commit(page, bytes)
    }
}

/// The newest valid superblock generation of an image (as `Store::open` picks it).
fn image_generation(image: &Image) -> Option<u64> {
    (0..2u64)
        .filter_map(|slot| {
            let b = image.get(&slot)?;
            let crc = u32::from_le_bytes(b[64..68].try_into().unwrap());
            (&b[0..8] == b"CLONEFS\0" && crc == crc32fast::hash(&b[0..64]))
                .then(|| u64::from_le_bytes(b[24..32].try_into().unwrap()))
        })
        .max()
}

/// Builds a random state, syncs it, changes it without syncing, and catches the
/// next commit with `tap`. The recovered state must be the synced one.
fn catch_commit(seed: u64, tap: Tap, stats: &mut Stats) -> std::result::Result<(), String> {
    let mut rng = Rng::new(seed);
    let mem = Arc::new(MemDevice::new(PS, PAGES));
    let dev = Arc::new(TapDevice {
        mem: mem.clone(),
        armed: Mutex::new(None),
        commits: AtomicU64::new(0),
        caught: Mutex::new(None),
    });
    let v = Volume::create_on(dev.clone()).map_err(|e| e.to_string())?;
    let mut model = State::default();
    let mut counter = 0;
    for _ in 0..10 + rng.below(60) {
        let op = random_op(&mut rng, &model, &mut counter);
        exec(&v, &op).map_err(|e| format!("{op:?}: {e}"))?;
        model.apply(&op);
        if rng.chance(10) {
            v.commit().map_err(|e| e.to_string())?;
        }
    }
    v.commit().map_err(|e| e.to_string())?;
    let synced = model.clone();
    let commits_at_sync = dev.commits.load(Ordering::SeqCst);
    let mut since = Vec::new();
    for _ in 0..1 + rng.below(40) {
        let op = random_op(&mut rng, &model, &mut counter);
        exec(&v, &op).map_err(|e| format!("{op:?}: {e}"))?;
        model.apply(&op);
        since.push(op);
    }
    // A cluster delete commits by itself; end on a change that does not.
    let op = Op::CreateCluster("last".into());
    exec(&v, &op).map_err(|e| format!("{op:?}: {e}"))?;
    model.apply(&op);
    since.push(op);
    *dev.armed.lock().unwrap() = Some(tap);
    v.commit().map_err(|e| e.to_string())?;
    let Some((image, generation, n)) = dev.caught.lock().unwrap().take() else {
        return Err(format!("the commit after {since:?} wrote no superblock"));
    };
    // Right after the commit: the live volume holds everything.
    let after = mem.power_cut(2);
    drop(v);

    let found = image_generation(&image);
    if found != Some(generation - 1) {
        return Err(format!(
            "the image's newest valid superblock is {found:?}, the commit wrote {generation}"
        ));
    }
    let round = Round {
        image,
        synced: synced.clone(),
        since: since.clone(),
        datasyncs: Vec::new(),
    };
    let (v, _, actual) = recover(&round, PAGES, stats)?;
    drop(v);
    // No background commit came between the sync and the caught commit: the
    // recovered state is exactly the synced one (data included, up to in-place
    // overwrites of the synced files' own pages).
    if n == commits_at_sync + 1 {
        check_states(&synced, &since, &[], &actual, Some(0))
            .map_err(|e| format!("not the synced state: {e}"))?;
    }
    let done = Round {
        image: after,
        synced: model,
        since: Vec::new(),
        datasyncs: Vec::new(),
    };
    recover(&done, PAGES, stats).map_err(|e| format!("after the commit completed: {e}"))?;
    Ok(())
}

#[test]
fn cut_between_the_data_sync_and_the_superblock_write() {
    let seed = rng::seed_from_env("CLONEFS_POWERCUT_SEED");
    println!("CLONEFS_POWERCUT_SEED={seed}");
    let mut stats = Stats::default();
    for i in 0..40 {
        let s = Rng::new(seed.wrapping_add(i)).next();
        if let Err(e) = catch_commit(s, Tap::BeforeSuperblock, &mut stats) {
            panic!("case {i} (CLONEFS_POWERCUT_SEED={seed}): {e}");
        }
    }
    println!("{} bytes verified", stats.bytes);
}

#[test]
fn a_torn_superblock_falls_back_to_the_older_copy() {
    let seed = rng::seed_from_env("CLONEFS_POWERCUT_SEED");
    println!("CLONEFS_POWERCUT_SEED={seed}");
    let mut stats = Stats::default();
    for i in 0..40 {
        let s = Rng::new(seed.wrapping_add(i)).next();
        // Bytes 0..24 are the same in every superblock of a store (magic, version,
        // page size, capacity): tear after the generation starts, before the CRC ends.
        let k = 25 + (s % 40) as usize;
        if let Err(e) = catch_commit(s, Tap::TornSuperblock(k), &mut stats) {
            panic!("case {i} (CLONEFS_POWERCUT_SEED={seed}), torn after {k} bytes: {e}");
        }
    }
    println!("{} bytes verified", stats.bytes);
}

/// Regression: a crash can roll a file's size back while an in-place write after
/// the last commit already reached the bytes past the old end of file in its last
/// page. Extending the file later must show zeros there, not those bytes.
#[test]
fn bytes_past_the_recovered_end_of_file_read_as_zeros() {
    let mem = Arc::new(MemDevice::new(PS, 1024));
    let dev = Arc::new(TapDevice {
        mem: mem.clone(),
        armed: Mutex::new(None),
        commits: AtomicU64::new(0),
        caught: Mutex::new(None),
    });
    let v = Volume::create_on(dev.clone()).unwrap();
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = v.mknod(c, Ino::ROOT, b"f", Kind::File, WHO, 0).unwrap().ino;
    v.write(c, f, 0, &[1u8; 100]).unwrap();
    v.fsync(c, f).unwrap();
    // In place (the page is private), past the committed end of file.
    v.write(c, f, 0, &[2u8; 4096]).unwrap();
    *dev.armed.lock().unwrap() = Some(Tap::BeforeSuperblock);
    v.commit().unwrap();
    let (image, _, _) = dev.caught.lock().unwrap().take().unwrap();
    drop(v);
    let v = Volume::open_device(
        Arc::new(MemDevice::from_image(PS, 1024, image)),
        Path::new("image"),
        false,
    )
    .unwrap();
    let c = v.cluster_by_name("c").unwrap().id;
    let f = v.lookup(c, Ino::ROOT, b"f").unwrap();
    assert_eq!(f.size, 100, "the size of the last commit");
    v.write(c, f.ino, 200, b"x").unwrap();
    let got = v.read(c, f.ino, 0, 201).unwrap();
    assert!(got[..100].iter().all(|&b| b == 1 || b == 2), "{got:?}");
    assert_eq!(&got[100..200], &[0u8; 100][..], "the gap reads as zeros");
    let sa = SetAttr {
        size: Some(4096),
        ..Default::default()
    };
    v.setattr(c, f.ino, &sa).unwrap();
    assert_eq!(v.read(c, f.ino, 201, 4096).unwrap(), vec![0u8; 4096 - 201]);
}
