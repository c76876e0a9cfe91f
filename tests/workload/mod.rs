//! The random workload and its reference model, shared by the crash test (a real
//! process killed with SIGKILL) and the power-cut test (an in-memory device cut
//! at any write): the operations, the state each leaves, running them on a volume,
//! and the check of a reopened volume against the states a crash may leave.
#![allow(dead_code)]

use clonefs::error::{Error, Result};
use clonefs::volume::{ClusterId, Ino, Kind, NewInode, RenameFlags, SetAttr, Volume};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub const PS: usize = 4096;
pub const MAX_FILE: u64 = 256 * 1024;
pub const MAX_WRITE: u64 = 64 * 1024;
pub const WHO: NewInode = NewInode {
    perm: 0o755,
    uid: 0,
    gid: 0,
};

pub use crate::rng::Rng;

pub mod cuts;

/// The bytes a write with `seed` writes.
pub fn gen_bytes(seed: u64, len: usize) -> Vec<u8> {
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
pub enum Op {
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
pub struct ClusterModel {
    pub parent: Option<String>,
    pub dirs: BTreeSet<String>,
    /// Path ("f1" or "a/f1") -> file identity.
    pub files: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default)]
pub struct State {
    pub clusters: BTreeMap<String, ClusterModel>,
    pub files: HashMap<u64, Arc<Vec<u8>>>,
    pub next_fid: u64,
}

/// Bytes an operation wrote into a file in place (None: zeros).
pub struct Touch {
    pub fid: u64,
    pub off: u64,
    pub len: u64,
    pub data: Option<Arc<Vec<u8>>>,
}

impl Touch {
    pub fn allows(&self, fid: u64, i: u64, b: u8) -> bool {
        fid == self.fid
            && (self.off..self.off + self.len).contains(&i)
            && match &self.data {
                None => b == 0,
                Some(d) => d[(i - self.off) as usize] == b,
            }
    }
}

pub type Meta = BTreeMap<String, (Option<String>, BTreeSet<String>, BTreeMap<String, u64>)>;

impl State {
    pub fn new_fid(&mut self, content: Arc<Vec<u8>>) -> u64 {
        let f = self.next_fid;
        self.next_fid += 1;
        self.files.insert(f, content);
        f
    }

    pub fn cl(&mut self, c: &str) -> &mut ClusterModel {
        self.clusters
            .get_mut(c)
            .expect("the model knows the cluster")
    }

    /// Applies `op`; returns the bytes it wrote in place.
    pub fn apply(&mut self, op: &Op) -> Vec<Touch> {
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

    pub fn meta(&self) -> Meta {
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

    pub fn from_actual(a: &Actual) -> State {
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
pub struct Actual {
    pub clusters: BTreeMap<String, ActualCluster>,
}

#[derive(Debug, Default)]
pub struct ActualCluster {
    pub parent: Option<String>,
    pub dirs: BTreeSet<String>,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Actual {
    pub fn meta(&self) -> Meta {
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

    pub fn bytes(&self) -> u64 {
        self.clusters
            .values()
            .flat_map(|c| c.files.values())
            .map(|d| d.len() as u64)
            .sum()
    }
}

pub fn list_dir(v: &Volume, c: ClusterId, dir: Ino) -> Result<Vec<(String, Ino, Kind)>> {
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

pub fn read_file(v: &Volume, c: ClusterId, ino: Ino) -> Result<Vec<u8>> {
    let size = v.getattr(c, ino)?.size;
    let data = v.read(c, ino, 0, size as usize)?;
    assert_eq!(data.len() as u64, size, "a read of a whole file is whole");
    Ok(data)
}

pub fn read_actual(v: &Volume) -> std::result::Result<Actual, String> {
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
pub struct DataSync {
    pub fid: u64,
    pub at: usize,
    pub bytes: Arc<Vec<u8>>,
}

/// Checks that `actual` is one of the states `synced + since[..k]`, with the
/// in-place data leniency of the module doc. Returns `k`.
pub fn check(synced: &State, since: &[Op], actual: &Actual) -> std::result::Result<usize, String> {
    check_states(synced, since, &[], actual, None)
}

/// As [`check`], with the promises of `fdatasync` calls since the sync, and only
/// state `only` accepted when given.
pub fn check_states(
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
pub fn bytes_ok(
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

pub fn cid(v: &Volume, c: &str) -> Result<ClusterId> {
    Ok(v.cluster_by_name(c)?.id)
}

/// The cluster, the directory holding `path` and the name in it.
pub fn locate(v: &Volume, c: &str, path: &str) -> Result<(ClusterId, Ino, String)> {
    let c = cid(v, c)?;
    match path.split_once('/') {
        Some((d, n)) => Ok((c, v.lookup(c, Ino::ROOT, d.as_bytes())?.ino, n.into())),
        None => Ok((c, Ino::ROOT, path.into())),
    }
}

pub fn file_ino(v: &Volume, c: &str, path: &str) -> Result<(ClusterId, Ino)> {
    let (c, dir, name) = locate(v, c, path)?;
    Ok((c, v.lookup(c, dir, name.as_bytes())?.ino))
}

/// Runs `op`; returns the bytes a write wrote (fewer than asked only on a full
/// store), 0 for other operations.
pub fn exec(v: &Volume, op: &Op) -> Result<usize> {
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
pub fn random_op(rng: &mut Rng, m: &State, counter: &mut u32) -> Op {
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
