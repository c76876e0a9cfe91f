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
use clonefs::volume::{ClusterId, Ino, Kind, NewInode, RenameFlags, SetAttr, Volume};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const PS: usize = 4096;
const PAGES: u64 = 16384;
const MAX_FILE: u64 = 256 * 1024;
const MAX_WRITE: u64 = 64 * 1024;
const WHO: NewInode = NewInode {
    perm: 0o755,
    uid: 0,
    gid: 0,
};

// ---- a small deterministic generator -------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// The bytes a write with `seed` writes.
fn gen_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed ^ 0xD1B5_4A32_D192_ED03);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---- the model -------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    CreateCluster(String),
    Mkdir(String, String),
    Create(String, String),
    Write {
        c: String,
        path: String,
        off: u64,
        len: usize,
        seed: u64,
    },
    Truncate(String, String, u64),
    Unlink(String, String),
    Rename(String, String, String),
    Clone(String, String),
    Delete(String),
}

#[derive(Clone, Debug, Default)]
struct ClusterModel {
    parent: Option<String>,
    dirs: BTreeSet<String>,
    /// Path ("f1" or "a/f1") -> file identity.
    files: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default)]
struct State {
    clusters: BTreeMap<String, ClusterModel>,
    files: HashMap<u64, Arc<Vec<u8>>>,
    next_fid: u64,
}

/// Bytes an operation wrote into a file in place (None: zeros).
struct Touch {
    fid: u64,
    off: u64,
    len: u64,
    data: Option<Arc<Vec<u8>>>,
}

impl Touch {
    fn allows(&self, fid: u64, i: u64, b: u8) -> bool {
        fid == self.fid
            && (self.off..self.off + self.len).contains(&i)
            && match &self.data {
                None => b == 0,
                Some(d) => d[(i - self.off) as usize] == b,
            }
    }
}

type Meta = BTreeMap<String, (Option<String>, BTreeSet<String>, BTreeMap<String, u64>)>;

impl State {
    fn new_fid(&mut self, content: Arc<Vec<u8>>) -> u64 {
        let f = self.next_fid;
        self.next_fid += 1;
        self.files.insert(f, content);
        f
    }

    fn cl(&mut self, c: &str) -> &mut ClusterModel {
        self.clusters
            .get_mut(c)
            .expect("the model knows the cluster")
    }

    /// Applies `op`; returns the bytes it wrote in place.
    fn apply(&mut self, op: &Op) -> Vec<Touch> {
        match op {
            Op::CreateCluster(c) => {
                self.clusters.insert(c.clone(), ClusterModel::default());
            }
            Op::Mkdir(c, d) => {
                self.cl(c).dirs.insert(d.clone());
            }
            Op::Create(c, p) => {
                let f = self.new_fid(Arc::new(Vec::new()));
                self.cl(c).files.insert(p.clone(), f);
            }
            Op::Write {
                c,
                path,
                off,
                len,
                seed,
            } => {
                let f = self.cl(c).files[path];
                let data = Arc::new(gen_bytes(*seed, *len));
                let content = Arc::make_mut(self.files.get_mut(&f).unwrap());
                let end = (*off as usize) + len;
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[*off as usize..end].copy_from_slice(&data);
                return vec![Touch {
                    fid: f,
                    off: *off,
                    len: *len as u64,
                    data: Some(data),
                }];
            }
            Op::Truncate(c, p, size) => {
                let f = self.cl(c).files[p];
                let content = Arc::make_mut(self.files.get_mut(&f).unwrap());
                let old = content.len() as u64;
                content.resize(*size as usize, 0);
                if *size < old {
                    // The tail of the last kept page is zeroed in place.
                    let end = old.div_ceil(PS as u64) * PS as u64;
                    return vec![Touch {
                        fid: f,
                        off: *size,
                        len: end - size,
                        data: None,
                    }];
                }
            }
            Op::Unlink(c, p) => {
                let f = self.cl(c).files.remove(p).unwrap();
                self.files.remove(&f);
            }
            Op::Rename(c, from, to) => {
                let cl = self.cl(c);
                let f = cl.files.remove(from).unwrap();
                if let Some(old) = cl.files.insert(to.clone(), f) {
                    self.files.remove(&old);
                }
            }
            Op::Clone(src, dst) => {
                let s = self.clusters[src].clone();
                let mut files = BTreeMap::new();
                for (p, f) in &s.files {
                    let content = self.files[f].clone();
                    files.insert(p.clone(), self.new_fid(content));
                }
                self.clusters.insert(
                    dst.clone(),
                    ClusterModel {
                        parent: Some(src.clone()),
                        dirs: s.dirs,
                        files,
                    },
                );
            }
            Op::Delete(c) => {
                let cl = self.clusters.remove(c).unwrap();
                for f in cl.files.values() {
                    self.files.remove(f);
                }
            }
        }
        Vec::new()
    }

    fn meta(&self) -> Meta {
        self.clusters
            .iter()
            .map(|(n, c)| {
                let sizes = c
                    .files
                    .iter()
                    .map(|(p, f)| (p.clone(), self.files[f].len() as u64))
                    .collect();
                (n.clone(), (c.parent.clone(), c.dirs.clone(), sizes))
            })
            .collect()
    }

    fn from_actual(a: &Actual) -> State {
        let mut s = State::default();
        for (n, c) in &a.clusters {
            let mut files = BTreeMap::new();
            for (p, content) in &c.files {
                files.insert(p.clone(), s.new_fid(Arc::new(content.clone())));
            }
            s.clusters.insert(
                n.clone(),
                ClusterModel {
                    parent: c.parent.clone(),
                    dirs: c.dirs.clone(),
                    files,
                },
            );
        }
        s
    }
}

/// What a reopened volume holds.
#[derive(Debug, Default)]
struct Actual {
    clusters: BTreeMap<String, ActualCluster>,
}

#[derive(Debug, Default)]
struct ActualCluster {
    parent: Option<String>,
    dirs: BTreeSet<String>,
    files: BTreeMap<String, Vec<u8>>,
}

impl Actual {
    fn meta(&self) -> Meta {
        self.clusters
            .iter()
            .map(|(n, c)| {
                let sizes = c
                    .files
                    .iter()
                    .map(|(p, d)| (p.clone(), d.len() as u64))
                    .collect();
                (n.clone(), (c.parent.clone(), c.dirs.clone(), sizes))
            })
            .collect()
    }

    fn bytes(&self) -> u64 {
        self.clusters
            .values()
            .flat_map(|c| c.files.values())
            .map(|d| d.len() as u64)
            .sum()
    }
}

fn list_dir(v: &Volume, c: ClusterId, dir: Ino) -> Result<Vec<(String, Ino, Kind)>> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let batch = v.readdir(c, dir, off)?;
        let Some(last) = batch.last() else { break };
        off = last.offset;
        for e in batch {
            if e.name != b"." && e.name != b".." {
                out.push((String::from_utf8(e.name).unwrap(), e.ino, e.kind));
            }
        }
    }
    Ok(out)
}

fn read_file(v: &Volume, c: ClusterId, ino: Ino) -> Result<Vec<u8>> {
    let size = v.getattr(c, ino)?.size;
    let data = v.read(c, ino, 0, size as usize)?;
    assert_eq!(data.len() as u64, size, "a read of a whole file is whole");
    Ok(data)
}

fn read_actual(v: &Volume) -> std::result::Result<Actual, String> {
    let mut a = Actual::default();
    for info in v.clusters() {
        let c = info.id;
        let mut ac = ActualCluster {
            parent: info.parent.clone(),
            ..Default::default()
        };
        let ctx = |e: Error| format!("reading cluster {}: {e}", info.name);
        for (name, ino, kind) in list_dir(v, c, Ino::ROOT).map_err(ctx)? {
            match kind {
                Kind::Dir => {
                    for (n2, ino2, k2) in list_dir(v, c, ino).map_err(ctx)? {
                        assert_eq!(k2, Kind::File, "only files live in subdirectories");
                        let d = read_file(v, c, ino2).map_err(ctx)?;
                        ac.files.insert(format!("{name}/{n2}"), d);
                    }
                    ac.dirs.insert(name);
                }
                Kind::File => {
                    ac.files.insert(name, read_file(v, c, ino).map_err(ctx)?);
                }
                k => return Err(format!("unexpected {k:?} {name} in {}", info.name)),
            }
        }
        a.clusters.insert(info.name.clone(), ac);
    }
    Ok(a)
}

/// An `fdatasync` that returned with the power on: file `fid` after `since[..at]`,
/// and its bytes then.
#[derive(Clone)]
struct DataSync {
    fid: u64,
    at: usize,
    bytes: Arc<Vec<u8>>,
}

/// Checks that `actual` is one of the states `synced + since[..k]`, with the
/// in-place data leniency of the module doc. Returns `k`.
fn check(synced: &State, since: &[Op], actual: &Actual) -> std::result::Result<usize, String> {
    check_states(synced, since, &[], actual, None)
}

/// As [`check`], with the promises of `fdatasync` calls since the sync, and only
/// state `only` accepted when given.
fn check_states(
    synced: &State,
    since: &[Op],
    datasyncs: &[DataSync],
    actual: &Actual,
    only: Option<usize>,
) -> std::result::Result<usize, String> {
    let mut states = vec![synced.clone()];
    let mut touches: Vec<Vec<Touch>> = Vec::new();
    for op in since {
        let mut s = states.last().unwrap().clone();
        touches.push(s.apply(op));
        states.push(s);
    }
    let want = actual.meta();
    let mut why = Vec::new();
    for (k, state) in states.iter().enumerate() {
        if only.is_some_and(|o| o != k) || state.meta() != want {
            continue;
        }
        match bytes_ok(state, k, &touches, datasyncs, actual) {
            Ok(()) => return Ok(k),
            Err(e) => why.push(format!(
                "state {k} (after {k} of the ops since the sync): {e}"
            )),
        }
    }
    if why.is_empty() {
        Err(format!(
            "the recovered metadata is none of the {} states from the last sync on\n\
             recovered:   {want:?}\nlast synced: {:?}\nlatest:      {:?}\nops since the sync: {since:?}",
            states.len(),
            synced.meta(),
            states.last().unwrap().meta(),
        ))
    } else {
        Err(format!("{}\nops since the sync: {since:?}", why.join("\n")))
    }
}

/// The bytes of state `k` against `actual`: each byte as in state `k` or as an
/// operation after `k` wrote it in place. When an `fdatasync` of the file returned
/// after `k` (at `at`), the file's map and size were as committed, so its bytes as
/// of then are durable: each byte as then or as written after `at`.
fn bytes_ok(
    s: &State,
    k: usize,
    touches: &[Vec<Touch>],
    datasyncs: &[DataSync],
    actual: &Actual,
) -> std::result::Result<(), String> {
    let later: Vec<&Touch> = touches[k..].iter().flatten().collect();
    for (cname, cl) in &s.clusters {
        for (path, fid) in &cl.files {
            let want = &s.files[fid];
            let got = &actual.clusters[cname].files[path];
            let floor = datasyncs
                .iter()
                .filter(|d| d.fid == *fid && d.at > k)
                .max_by_key(|d| d.at);
            let after: Vec<&Touch> = floor
                .map(|d| touches[d.at..].iter().flatten().collect())
                .unwrap_or_default();
            let mut bad = Vec::new();
            for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
                let ok = match floor {
                    Some(d) if i < d.bytes.len() => {
                        g == d.bytes[i] || after.iter().any(|t| t.allows(*fid, i as u64, g))
                    }
                    _ => g == w || later.iter().any(|t| t.allows(*fid, i as u64, g)),
                };
                if !ok {
                    let expected = floor.map_or(w, |d| d.bytes[i]);
                    bad.push((i, g, expected));
                }
            }
            if let Some(&(i, g, w)) = bad.first() {
                return Err(format!(
                    "cluster {cname} file {path}: {} bytes neither synced nor written later{}; \
                     first at offset {i}: read {g:#04x}, expected {w:#04x}",
                    bad.len(),
                    floor
                        .map(|d| format!(" (fdatasync'd after op {})", d.at))
                        .unwrap_or_default()
                ));
            }
        }
    }
    Ok(())
}

// ---- driving a volume -------------------------------------------------------------

fn cid(v: &Volume, c: &str) -> Result<ClusterId> {
    Ok(v.cluster_by_name(c)?.id)
}

/// The cluster, the directory holding `path` and the name in it.
fn locate(v: &Volume, c: &str, path: &str) -> Result<(ClusterId, Ino, String)> {
    let c = cid(v, c)?;
    match path.split_once('/') {
        Some((d, n)) => Ok((c, v.lookup(c, Ino::ROOT, d.as_bytes())?.ino, n.into())),
        None => Ok((c, Ino::ROOT, path.into())),
    }
}

fn file_ino(v: &Volume, c: &str, path: &str) -> Result<(ClusterId, Ino)> {
    let (c, dir, name) = locate(v, c, path)?;
    Ok((c, v.lookup(c, dir, name.as_bytes())?.ino))
}

/// Runs `op`; returns the bytes a write wrote (fewer than asked only on a full
/// store), 0 for other operations.
fn exec(v: &Volume, op: &Op) -> Result<usize> {
    match op {
        Op::CreateCluster(c) => {
            v.create_cluster(c, WHO)?;
        }
        Op::Mkdir(c, d) => {
            v.mkdir(cid(v, c)?, Ino::ROOT, d.as_bytes(), WHO)?;
        }
        Op::Create(c, p) => {
            let (c, dir, name) = locate(v, c, p)?;
            v.mknod(c, dir, name.as_bytes(), Kind::File, WHO, 0)?;
        }
        Op::Write {
            c,
            path,
            off,
            len,
            seed,
        } => {
            let (c, ino) = file_ino(v, c, path)?;
            return v.write(c, ino, *off, &gen_bytes(*seed, *len));
        }
        Op::Truncate(c, p, size) => {
            let (c, ino) = file_ino(v, c, p)?;
            let sa = SetAttr {
                size: Some(*size),
                ..Default::default()
            };
            v.setattr(c, ino, &sa)?;
        }
        Op::Unlink(c, p) => {
            let (c, dir, name) = locate(v, c, p)?;
            v.unlink(c, dir, name.as_bytes())?;
        }
        Op::Rename(c, from, to) => {
            let (id, d1, n1) = locate(v, c, from)?;
            let (_, d2, n2) = locate(v, c, to)?;
            v.rename(
                id,
                d1,
                n1.as_bytes(),
                d2,
                n2.as_bytes(),
                RenameFlags::default(),
            )?;
        }
        Op::Clone(src, dst) => {
            v.clone_cluster(src, dst)?;
        }
        Op::Delete(c) => v.delete_cluster(c)?,
    }
    Ok(0)
}

/// A random operation that is valid in state `m`.
fn random_op(rng: &mut Rng, m: &State, counter: &mut u32) -> Op {
    loop {
        let names: Vec<String> = m.clusters.keys().cloned().collect();
        let r = rng.below(100);
        if names.is_empty() || (r < 3 && names.len() < 5) {
            *counter += 1;
            return Op::CreateCluster(format!("c{counter}"));
        }
        let c = rng.pick(&names).clone();
        let cl = &m.clusters[&c];
        let files: Vec<String> = cl.files.keys().cloned().collect();
        let mut dirs = vec![String::new()];
        dirs.extend(cl.dirs.iter().cloned());
        let new_path = |rng: &mut Rng| {
            let d = rng.pick(&dirs).clone();
            let n = format!("f{}", rng.below(5));
            if d.is_empty() {
                n
            } else {
                format!("{d}/{n}")
            }
        };
        match r {
            3..=7 if names.len() < 6 => {
                *counter += 1;
                return Op::Clone(c, format!("k{counter}"));
            }
            8..=9 if names.len() > 1 => return Op::Delete(c),
            10..=12 => {
                let d = if rng.chance(50) { "a" } else { "b" };
                if !cl.dirs.contains(d) {
                    return Op::Mkdir(c, d.into());
                }
            }
            13..=24 => {
                let p = new_path(rng);
                if !cl.files.contains_key(&p) && files.len() < 8 {
                    return Op::Create(c, p);
                }
            }
            25..=29 if !files.is_empty() => return Op::Unlink(c, rng.pick(&files).clone()),
            30..=35 if !files.is_empty() => {
                let from = rng.pick(&files).clone();
                let to = new_path(rng);
                if to != from {
                    return Op::Rename(c, from, to);
                }
            }
            36..=42 if !files.is_empty() => {
                let size = match rng.below(3) {
                    0 => 0,
                    1 => rng.below(MAX_FILE + 1),
                    _ => rng.below(MAX_FILE / PS as u64 + 1) * PS as u64,
                };
                return Op::Truncate(c, rng.pick(&files).clone(), size);
            }
            43.. if !files.is_empty() => {
                let len = match rng.below(3) {
                    0 => 1 + rng.below(512),
                    1 => PS as u64 * (1 + rng.below(4)),
                    _ => 1 + rng.below(MAX_WRITE),
                };
                let mut off = rng.below(MAX_FILE - len + 1);
                if rng.chance(30) {
                    off = off / PS as u64 * PS as u64;
                }
                return Op::Write {
                    c,
                    path: rng.pick(&files).clone(),
                    off,
                    len: len as usize,
                    seed: rng.next(),
                };
            }
            _ => {}
        }
    }
}

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

fn base_seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Runs the random cases on a device of `pages` pages.
fn run_cases(name: &str, pages: u64, default_cases: u64) {
    let seed = base_seed("CLONEFS_POWERCUT_SEED");
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
    let seed = base_seed("CLONEFS_POWERCUT_SEED");
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
    let seed = base_seed("CLONEFS_POWERCUT_SEED");
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
