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

use clonefs::error::Result;
use clonefs::store::memdev::{Image, MemDevice};
use clonefs::store::PageDevice;
use clonefs::volume::{Ino, Kind, SetAttr, Volume};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const PAGES: u64 = 16384;

mod rng;
mod workload;
use workload::cuts::*;
use workload::*;

/// The in-memory device cuts its power by taking the image of what survives.
impl Power for MemDevice {
    fn cut_after(&self, n: u64, seed: u64) {
        self.cut_power_after(n, seed);
    }

    fn cut_now(&self, seed: u64) {
        // Taken at the next write or sync, or by `power_cut`: either way, now.
        self.cut_power_after(0, seed);
    }

    fn is_cut(&self) -> bool {
        self.power_is_cut()
    }
}

/// Opens the image, checks it against the round, runs fsck; returns the volume,
/// its device and what it holds.
fn recover(
    image: Image,
    round: &Round,
    pages: u64,
    stats: &mut Stats,
) -> std::result::Result<(Arc<Volume>, Arc<MemDevice>, Actual), String> {
    let mem = Arc::new(MemDevice::from_image(PS, pages, image));
    let v = Volume::open_device(mem.clone(), Path::new("powercut-image"), false)
        .map_err(|e| format!("reopening after the cut: {e}"))?;
    let actual = check_recovered(round, &v, stats)?;
    Ok((v, mem, actual))
}

fn run_case(seed: u64, pages: u64, stats: &mut Stats) -> std::result::Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut mem = Arc::new(MemDevice::new(PS, pages));
    let mut v = Volume::create_on(mem.clone()).map_err(|e| e.to_string())?;
    let mut model = State::default();
    let mut counter = 0;
    for round in 0..2 {
        let r = run_round(&v, mem.as_ref(), &mut model, &mut rng, &mut counter, stats)
            .map_err(|e| format!("round {round}: {e}"))?;
        drop(v);
        let image = mem.power_cut(r.cut_seed);
        if std::env::var("CLONEFS_POWERCUT_PARANOID").is_ok() {
            println!("round {round} cut; {} ops since the sync", r.since.len());
        }
        stats.rounds += 1;
        let (v2, mem2, actual) =
            recover(image, &r, pages, stats).map_err(|e| format!("round {round}: {e}"))?;
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
    println!("{cases} cases, {}; {:.1?}", stats.summary(), t.elapsed());
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
        synced: synced.clone(),
        since: since.clone(),
        datasyncs: Vec::new(),
        cut_seed: 0,
    };
    let (v, _, actual) = recover(image, &round, PAGES, stats)?;
    drop(v);
    // No background commit came between the sync and the caught commit: the
    // recovered state is exactly the synced one (data included, up to in-place
    // overwrites of the synced files' own pages).
    if n == commits_at_sync + 1 {
        check_states(&synced, &since, &[], &actual, Some(0))
            .map_err(|e| format!("not the synced state: {e}"))?;
    }
    let done = Round {
        synced: model,
        since: Vec::new(),
        datasyncs: Vec::new(),
        cut_seed: 0,
    };
    recover(after, &done, PAGES, stats).map_err(|e| format!("after the commit completed: {e}"))?;
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
