//! Model test: random operations on several clusters of a volume, compared after
//! every step with a plain in-memory reference (a map of paths per cluster).
//! Checks every file's bytes, every directory listing and the space accounting;
//! fsck is clean at the end of every case. The reference keeps each cluster's state
//! after every step with the step's start and end time, so a restore to any of the
//! volume's restore points, or a reset, can be checked byte for byte.

use clonefs::error::Error;
use clonefs::store::memdev::MemDevice;
use clonefs::store::PageDevice;
use clonefs::volume::{
    CloneOptions, ClusterId, Ino, Kind, NewInode, RenameFlags, ResetTo, SetAttr, Volume,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const WHO: NewInode = NewInode {
    perm: 0o755,
    uid: 0,
    gid: 0,
};
const CLUSTERS: [&str; 4] = ["a", "b", "c", "d"];
const NAMES: [&str; 4] = ["f", "g", "d0/f", "d0/h"];
const PAGE: usize = 4096;

#[derive(Clone, Debug)]
enum Op {
    Create(usize, usize),
    Write {
        c: usize,
        f: usize,
        off: u64,
        len: usize,
        byte: u8,
    },
    Truncate(usize, usize, u64),
    Rename(usize, usize, usize),
    Unlink(usize, usize),
    Mkdir(usize),
    Rmdir(usize),
    Copy {
        c: usize,
        f: usize,
        to_c: usize,
        to_f: usize,
    },
    Clone(usize, usize),
    /// Restore cluster .0 as .1 from one of its restore points (.2 picks which).
    Restore(usize, usize, usize),
    /// Reset a cluster to its parent's latest contents.
    Reset(usize),
    Delete(usize),
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLUSTERS.len();
    let f = 0..NAMES.len();
    prop_oneof![
        3 => (c.clone(), f.clone()).prop_map(|(c, f)| Op::Create(c, f)),
        6 => (c.clone(), f.clone(), 0u64..40_000, 1usize..20_000, any::<u8>())
            .prop_map(|(c, f, off, len, byte)| Op::Write { c, f, off, len, byte }),
        2 => (c.clone(), f.clone(), 0u64..50_000).prop_map(|(c, f, s)| Op::Truncate(c, f, s)),
        2 => (c.clone(), f.clone(), f.clone()).prop_map(|(c, a, b)| Op::Rename(c, a, b)),
        2 => (c.clone(), f.clone()).prop_map(|(c, f)| Op::Unlink(c, f)),
        2 => c.clone().prop_map(Op::Mkdir),
        1 => c.clone().prop_map(Op::Rmdir),
        2 => (c.clone(), f.clone(), c.clone(), f.clone()).prop_map(|(c, f, to_c, to_f)| Op::Copy { c, f, to_c, to_f }),
        2 => (c.clone(), c.clone()).prop_map(|(a, b)| Op::Clone(a, b)),
        3 => (c.clone(), c.clone(), 0usize..64).prop_map(|(a, b, k)| Op::Restore(a, b, k)),
        1 => c.clone().prop_map(Op::Reset),
        1 => c.clone().prop_map(Op::Delete),
        2 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

/// The reference: per cluster, a map from path to file bytes, and the set of directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    dirs: Vec<String>,
}

struct Harness {
    vol: Arc<Volume>,
    dev: Arc<MemDevice>,
    model: BTreeMap<String, Model>,
    /// Per cluster: its state after each step, with the step's start and end.
    history: BTreeMap<String, Vec<(SystemTime, SystemTime, Model)>>,
    /// Each clone's parent.
    parents: BTreeMap<String, String>,
}

fn split(path: &str) -> (Option<&str>, &str) {
    match path.split_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, path),
    }
}

impl Harness {
    fn new() -> Harness {
        let (vol, dev) = Volume::in_memory(PAGE, 4096).unwrap();
        // A restore point at every commit that changed a cluster.
        vol.set_point_interval(Duration::ZERO);
        let mut model = BTreeMap::new();
        for name in ["a", "b"] {
            vol.create_cluster(name, WHO).unwrap();
            model.insert(name.to_string(), Model::default());
        }
        let mut h = Harness {
            vol,
            dev,
            model,
            history: BTreeMap::new(),
            parents: BTreeMap::new(),
        };
        let now = SystemTime::now();
        h.record(now, now);
        h
    }

    /// Applies `op`, then records every cluster's state with the step's times.
    fn step(&mut self, op: &Op) {
        let start = SystemTime::now();
        self.apply(op);
        self.record(start, SystemTime::now());
    }

    fn record(&mut self, start: SystemTime, end: SystemTime) {
        self.history.retain(|c, _| self.model.contains_key(c));
        for (c, m) in &self.model {
            self.history
                .entry(c.clone())
                .or_default()
                .push((start, end, m.clone()));
        }
    }

    /// The states cluster `c` may have had at time `t`: the one after the last step
    /// that ended by `t`, and the next one if that step began by `t` (a commit
    /// between a step's start and end may or may not hold it).
    fn states_at(&self, c: &str, t: SystemTime) -> Vec<Model> {
        let h = &self.history[c];
        let last = h.iter().rposition(|(_, end, _)| *end <= t).unwrap_or(0);
        let mut out = vec![h[last].2.clone()];
        if let Some((start, _, m)) = h.get(last + 1) {
            if *start <= t {
                out.push(m.clone());
            }
        }
        out
    }

    fn cid(&self, c: &str) -> ClusterId {
        self.vol.cluster_by_name(c).unwrap().id
    }

    fn dir_ino(&self, c: ClusterId, dir: Option<&str>) -> Result<Ino, Error> {
        match dir {
            None => Ok(Ino::ROOT),
            Some(d) => Ok(self.vol.lookup(c, Ino::ROOT, d.as_bytes())?.ino),
        }
    }

    fn resolve(&self, c: ClusterId, path: &str) -> Result<Ino, Error> {
        let (d, n) = split(path);
        Ok(self.vol.lookup(c, self.dir_ino(c, d)?, n.as_bytes())?.ino)
    }

    fn apply(&mut self, op: &Op) {
        match op.clone() {
            Op::Create(c, f) => {
                let (cl, path) = (CLUSTERS[c], NAMES[f]);
                let Some(m) = self.model.get(cl) else { return };
                let (d, n) = split(path);
                let ok =
                    d.is_none_or(|d| m.dirs.iter().any(|x| x == d)) && !m.files.contains_key(path);
                let cid = self.cid(cl);
                let r = self
                    .dir_ino(cid, d)
                    .and_then(|p| self.vol.mknod(cid, p, n.as_bytes(), Kind::File, WHO, 0));
                assert_eq!(r.is_ok(), ok, "{op:?}: {r:?}");
                if ok {
                    self.model
                        .get_mut(cl)
                        .unwrap()
                        .files
                        .insert(path.into(), Vec::new());
                }
            }
            Op::Write {
                c,
                f,
                off,
                len,
                byte,
            } => {
                let (cl, path) = (CLUSTERS[c], NAMES[f]);
                let Some(m) = self.model.get_mut(cl) else {
                    return;
                };
                let Some(content) = m.files.get_mut(path) else {
                    return;
                };
                let data = vec![byte; len];
                let end = off as usize + len;
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[off as usize..end].copy_from_slice(&data);
                let cid = self.cid(cl);
                let ino = self.resolve(cid, path).unwrap();
                assert_eq!(self.vol.write(cid, ino, off, &data).unwrap(), len);
            }
            Op::Truncate(c, f, size) => {
                let (cl, path) = (CLUSTERS[c], NAMES[f]);
                let Some(m) = self.model.get_mut(cl) else {
                    return;
                };
                let Some(content) = m.files.get_mut(path) else {
                    return;
                };
                content.resize(size as usize, 0);
                let cid = self.cid(cl);
                let ino = self.resolve(cid, path).unwrap();
                let attr = self
                    .vol
                    .setattr(
                        cid,
                        ino,
                        &SetAttr {
                            size: Some(size),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                assert_eq!(attr.size, size);
            }
            Op::Rename(c, a, b) => {
                let cl = CLUSTERS[c];
                let Some(m) = self.model.get_mut(cl) else {
                    return;
                };
                let (from, to) = (NAMES[a], NAMES[b]);
                let (td, _) = split(to);
                let ok =
                    m.files.contains_key(from) && td.is_none_or(|d| m.dirs.iter().any(|x| x == d));
                if ok && from != to {
                    let content = m.files.remove(from).unwrap();
                    m.files.insert(to.into(), content);
                }
                let cid = self.cid(cl);
                let (fd, fnm) = split(from);
                let (tdn, tnm) = split(to);
                let r = self.dir_ino(cid, fd).and_then(|p| {
                    let q = self.dir_ino(cid, tdn)?;
                    self.vol.rename(
                        cid,
                        p,
                        fnm.as_bytes(),
                        q,
                        tnm.as_bytes(),
                        RenameFlags::default(),
                    )
                });
                assert_eq!(r.is_ok(), ok, "{op:?}: {r:?}");
            }
            Op::Unlink(c, f) => {
                let (cl, path) = (CLUSTERS[c], NAMES[f]);
                let Some(m) = self.model.get_mut(cl) else {
                    return;
                };
                let ok = m.files.remove(path).is_some();
                let cid = self.cid(cl);
                let (d, n) = split(path);
                let r = self
                    .dir_ino(cid, d)
                    .and_then(|p| self.vol.unlink(cid, p, n.as_bytes()));
                assert_eq!(r.is_ok(), ok, "{op:?}: {r:?}");
            }
            Op::Mkdir(c) => {
                let cl = CLUSTERS[c];
                let Some(m) = self.model.get_mut(cl) else {
                    return;
                };
                let ok = m.dirs.is_empty();
                if ok {
                    m.dirs.push("d0".into());
                }
                let cid = self.cid(cl);
                let r = self.vol.mkdir(cid, Ino::ROOT, b"d0", WHO);
                assert_eq!(r.is_ok(), ok, "{op:?}: {r:?}");
            }
            Op::Rmdir(c) => {
                let cl = CLUSTERS[c];
                let Some(m) = self.model.get_mut(cl) else {
                    return;
                };
                let has = !m.dirs.is_empty();
                let empty = !m.files.keys().any(|k| k.starts_with("d0/"));
                let r = self.vol.rmdir(self.cid(cl), Ino::ROOT, b"d0");
                match (has, empty) {
                    (true, true) => {
                        r.unwrap();
                        self.model.get_mut(cl).unwrap().dirs.clear();
                    }
                    (true, false) => assert!(matches!(r, Err(Error::NotEmpty)), "{r:?}"),
                    (false, _) => assert!(matches!(r, Err(Error::NotFound)), "{r:?}"),
                }
            }
            Op::Copy { c, f, to_c, to_f } => {
                let (sc, sp, dc, dp) = (CLUSTERS[c], NAMES[f], CLUSTERS[to_c], NAMES[to_f]);
                let (Some(src), Some(dst)) = (self.model.get(sc), self.model.get(dc)) else {
                    return;
                };
                let (Some(content), Some(_)) = (src.files.get(sp).cloned(), dst.files.get(dp))
                else {
                    return;
                };
                let (scid, dcid) = (self.cid(sc), self.cid(dc));
                let (si, di) = (
                    self.resolve(scid, sp).unwrap(),
                    self.resolve(dcid, dp).unwrap(),
                );
                let n = self
                    .vol
                    .copy_range(scid, si, 0, dcid, di, 0, content.len() as u64)
                    .unwrap();
                assert_eq!(n, content.len() as u64);
                let d = self.model.get_mut(dc).unwrap().files.get_mut(dp).unwrap();
                if d.len() < content.len() {
                    d.resize(content.len(), 0);
                }
                d[..content.len()].copy_from_slice(&content);
            }
            Op::Clone(a, b) => {
                let (src, dst) = (CLUSTERS[a], CLUSTERS[b]);
                let ok = self.model.contains_key(src) && !self.model.contains_key(dst);
                self.vol.commit().unwrap();
                self.vol.commit().unwrap();
                let used = self.vol.statfs().used;
                let r = self.vol.clone_cluster(src, dst);
                assert_eq!(r.is_ok(), ok, "{op:?}: {r:?}");
                if ok {
                    assert_eq!(self.vol.statfs().used, used, "a clone allocates no page");
                    let m = self.model[src].clone();
                    self.model.insert(dst.into(), m);
                    self.parents.insert(dst.into(), src.into());
                }
            }
            Op::Restore(c, d, k) => {
                let (src, dst) = (CLUSTERS[c], CLUSTERS[d]);
                let Some(_) = self.model.get(src) else {
                    let r = self.vol.clone_with(src, dst, &CloneOptions::default());
                    assert!(matches!(r, Err(Error::NotFound)), "{op:?}: {r:?}");
                    return;
                };
                let points = self.vol.cluster_by_name(src).unwrap().restore_points;
                let Some(&t) = points.get(k % points.len().max(1)) else {
                    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
                    let opts = CloneOptions {
                        at: Some(hour_ago),
                        ..Default::default()
                    };
                    let r = self.vol.clone_with(src, dst, &opts);
                    assert!(matches!(r, Err(Error::BadTime(_))), "{op:?}: {r:?}");
                    return;
                };
                let opts = CloneOptions {
                    at: Some(t),
                    ..Default::default()
                };
                let r = self.vol.clone_with(src, dst, &opts);
                if self.model.contains_key(dst) {
                    assert!(matches!(r, Err(Error::AlreadyExists(_))), "{op:?}: {r:?}");
                    return;
                }
                assert_eq!(r.unwrap().1, t, "a restore holds the point asked for");
                let states = self.states_at(src, t);
                let m = states
                    .iter()
                    .find(|m| self.holds(dst, m))
                    .unwrap_or_else(|| panic!("{op:?}: restored {dst} holds none of {states:?}"))
                    .clone();
                self.model.insert(dst.into(), m);
                self.parents.insert(dst.into(), src.into());
            }
            Op::Reset(c) => {
                let cl = CLUSTERS[c];
                let r = self.vol.reset_cluster(cl, ResetTo::Parent);
                let parent = self.parents.get(cl).filter(|p| self.model.contains_key(*p));
                match (self.model.contains_key(cl), parent) {
                    (false, _) => assert!(matches!(r, Err(Error::NotFound)), "{op:?}: {r:?}"),
                    (true, None) => {
                        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{op:?}: {r:?}")
                    }
                    (true, Some(p)) => {
                        r.unwrap();
                        let m = self.model[p].clone();
                        self.model.insert(cl.into(), m);
                    }
                }
            }
            Op::Delete(c) => {
                let cl = CLUSTERS[c];
                if !self.model.contains_key(cl) {
                    assert!(matches!(self.vol.delete_cluster(cl), Err(Error::NotFound)));
                    return;
                }
                self.vol.commit().unwrap();
                self.vol.commit().unwrap();
                let space = self
                    .vol
                    .space()
                    .unwrap()
                    .into_iter()
                    .find(|s| s.name == cl)
                    .unwrap();
                // Its restore points go with it.
                let unique = space.unique + space.restore_only;
                let used = self.vol.statfs().used;
                self.vol.delete_cluster(cl).unwrap();
                self.vol.commit().unwrap();
                self.vol.commit().unwrap();
                assert_eq!(
                    used - self.vol.statfs().used,
                    unique,
                    "deleting {cl} frees exactly its unique pages and those only its restore points hold"
                );
                self.model.remove(cl);
                self.parents.remove(cl);
            }
            Op::Sync => {
                self.vol.commit().unwrap();
                // The background walk of the commit's trees (what status shows)
                // equals a walk of the live trees with writes held off.
                let report = self.vol.space_report(Duration::from_secs(30)).unwrap();
                assert!(report.current, "nothing changed since the commit");
                let mut walked = (*report.clusters).clone();
                walked.sort_by(|a, b| a.name.cmp(&b.name));
                let mut live = self.vol.space().unwrap();
                live.sort_by(|a, b| a.name.cmp(&b.name));
                assert_eq!(walked, live);
            }
            Op::Reopen => {
                let points: Vec<_> = self
                    .vol
                    .clusters()
                    .into_iter()
                    .map(|c| (c.name, c.restore_points))
                    .collect();
                self.vol.close().unwrap();
                let image = self.dev.live_image();
                let dev = Arc::new(MemDevice::from_image(
                    PAGE,
                    self.dev.capacity_pages(),
                    image,
                ));
                self.vol = Volume::open_device(dev.clone(), Path::new("model"), false).unwrap();
                self.vol.set_point_interval(Duration::ZERO);
                self.dev = dev;
                // The counts the close saved are exactly a recount of the trees.
                assert!(self.vol.counts_were_saved());
                let r = self.vol.fsck().unwrap();
                assert!(r.is_clean(), "{r}");
                let after: Vec<_> = self
                    .vol
                    .clusters()
                    .into_iter()
                    .map(|c| (c.name, c.restore_points))
                    .collect();
                // Closing commits, which may take one more point of each cluster.
                for ((n, before), (n2, now)) in points.iter().zip(&after) {
                    assert_eq!(n, n2);
                    assert!(
                        now.starts_with(before),
                        "{n}: points {before:?} became {now:?}"
                    );
                }
            }
        }
    }

    /// Does cluster `c` hold exactly `m` (every listing and byte)?
    fn holds(&self, c: &str, m: &Model) -> bool {
        self.vol.cluster_by_name(c).is_ok() && self.difference(c, m).is_none()
    }

    /// The first way cluster `cl` differs from `m` (None: it holds exactly `m`).
    fn difference(&self, cl: &str, m: &Model) -> Option<String> {
        let cid = self.cid(cl);
        let list = |dir: Ino| -> Vec<String> {
            let mut v: Vec<String> = self
                .vol
                .readdir(cid, dir, 0)
                .unwrap()
                .into_iter()
                .map(|e| String::from_utf8(e.name).unwrap())
                .filter(|n| n != "." && n != "..")
                .collect();
            v.sort();
            v
        };
        let mut want_root: Vec<String> = m
            .files
            .keys()
            .filter(|k| !k.contains('/'))
            .cloned()
            .collect();
        want_root.extend(m.dirs.iter().cloned());
        want_root.sort();
        let root = list(Ino::ROOT);
        if root != want_root {
            return Some(format!("listing of {cl}/: {root:?}, want {want_root:?}"));
        }
        for d in &m.dirs {
            let want: Vec<String> = m
                .files
                .keys()
                .filter_map(|k| k.strip_prefix(&format!("{d}/")).map(String::from))
                .collect();
            let got = list(self.dir_ino(cid, Some(d)).unwrap());
            if got != want {
                return Some(format!("listing of {cl}/{d}: {got:?}, want {want:?}"));
            }
        }
        for (path, content) in &m.files {
            let ino = self.resolve(cid, path).unwrap();
            let attr = self.vol.getattr(cid, ino).unwrap();
            if attr.size != content.len() as u64 {
                return Some(format!(
                    "size of {cl}/{path}: {}, want {}",
                    attr.size,
                    content.len()
                ));
            }
            let got = self.vol.read(cid, ino, 0, content.len() + 10).unwrap();
            if got != *content {
                return Some(format!("bytes of {cl}/{path} differ from the model"));
            }
        }
        None
    }

    /// Compares every cluster, directory listing and file with the model.
    fn check(&self) {
        let names: Vec<String> = self.vol.clusters().into_iter().map(|c| c.name).collect();
        assert_eq!(names, self.model.keys().cloned().collect::<Vec<_>>());
        for (cl, m) in &self.model {
            if let Some(d) = self.difference(cl, m) {
                panic!("{d}");
            }
        }
        let space = self.vol.space().unwrap();
        let store = self.vol.statfs();
        let unique: u64 = space.iter().map(|s| s.unique).sum();
        assert!(
            unique <= store.used,
            "unique bytes {unique} exceed used {}",
            store.used
        );
        for s in &space {
            assert_eq!(s.shared + s.unique, s.logical, "{s:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, .. ProptestConfig::default() })]

    #[test]
    fn volume_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in &ops {
            h.step(op);
            h.check();
        }
        let report = h.vol.fsck().unwrap();
        prop_assert!(report.is_clean(), "{}", report);
    }
}
