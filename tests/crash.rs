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

use clonefs::error::{Error, Result};
use clonefs::volume::{ClusterId, Ino, Kind, NewInode, RenameFlags, SetAttr, Volume};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD: &str = "CLONEFS_CRASH_CHILD";
const STORE: &str = "CLONEFS_CRASH_STORE";
const LEDGER: &str = "CLONEFS_CRASH_LEDGER";
const CHILD_SEED: &str = "CLONEFS_CRASH_CHILD_SEED";
const CYCLE: &str = "CLONEFS_CRASH_CYCLE";
const TEST_NAME: &str = "sigkill_cycles";
const PS: usize = 4096;
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
/// in-place data rule and the promises of `fdatasync` calls since the sync
/// (see the module doc); only state `only` is accepted when given. Returns `k`.
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

fn exec(v: &Volume, op: &Op) -> Result<()> {
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
            let n = v.write(c, ino, *off, &gen_bytes(*seed, *len))?;
            assert_eq!(n, *len, "short write of {op:?}");
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
    Ok(())
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
            exec(&v, &op).unwrap_or_else(|e| panic!("child: {op:?}: {e}"));
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
    let seed = std::env::var("CLONEFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
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
