//! Space and checks: the store's space, each cluster's, and fsck, all by walks over
//! whole trees (also the recount of references at open and the listing of records).

use super::catalog::{self, RecordKind, Slot};
use super::dir::Dirent;
use super::inode::{self, Ino, Inode, Kind};
use super::node::{Engine, NodeKind, Tree, HEADER};
use super::{ClusterSpace, Volume};
use crate::error::{Error, Result};
use crate::store::{PageNo, StoreSpace};
use std::collections::{HashMap, HashSet};

impl Volume {
    pub fn statfs(&self) -> StoreSpace {
        self.eng.store.space()
    }

    /// Logical, shared and unique bytes of every cluster (a walk of every tree).
    pub fn space(&self) -> Result<Vec<ClusterSpace>> {
        // The walk needs every tree still: hold changes off for its length (reads
        // go on); walking the committed roots under the commit lock instead would
        // let writers go on too.
        let _gate = self.gate.write().unwrap();
        let trees: Vec<(String, Tree, Vec<Tree>)> = self
            .catalog
            .read()
            .unwrap()
            .by_name
            .values()
            .map(|c| {
                let points = c.points.lock().unwrap().iter().map(|p| p.itable).collect();
                (c.name.clone(), c.state.read().unwrap().itable, points)
            })
            .collect();
        Ok(space(&self.eng, &trees, &|| true)?.expect("a walk that never stops early"))
    }

    /// Checks every tree and every reference count; see [`FsckReport`].
    pub fn fsck(&self) -> Result<FsckReport> {
        for _ in 0..10 {
            // A space walk holds drops back, which fsck would see as leaks.
            self.cancel_space_walk();
            self.commit()?;
            self.commit()?;
            let gate = self.gate.write().unwrap();
            if self.read_only || !self.eng.has_pending() {
                let cs = self.commit.lock().unwrap();
                let cat = self.catalog.read().unwrap();
                let clusters: Vec<(String, Tree, u64, u64)> = cat
                    .by_name
                    .values()
                    .map(|c| {
                        let st = c.state.read().unwrap();
                        (c.name.clone(), st.itable, st.next_ino, st.orphans)
                    })
                    .collect();
                let mut r = fsck(&self.eng, cs.tree, &clusters, !self.read_only);
                if let Ok(r) = &mut r {
                    self.check_saved_counts(r);
                }
                drop(gate);
                return r;
            }
        }
        Err(Error::InvalidArgument("the store is too busy to check"))
    }
}

impl Volume {
    /// A store closed cleanly names the counts it saved; a check (which recounts
    /// at open) compares them with its recount: the next mount will trust them.
    fn check_saved_counts(&self, r: &mut FsckReport) {
        let Some(map) = self.saved_counts.filter(|_| self.read_only) else {
            return;
        };
        match self.eng.store.saved_counts_differ(map, 10) {
            Err(why) => r.notes.push(format!(
                "the reference counts saved at the last close are unusable ({why}): \
                 the next mount recounts"
            )),
            Ok(diffs) => {
                for (p, saved, now) in diffs {
                    r.problems.push(format!(
                        "page {p}: the counts saved at the last close say {saved}, \
                         the trees hold {now} references"
                    ));
                }
            }
        }
    }
}

/// Counts every reference the committed trees hold, each shared subtree once. A
/// node that fails its checks is logged and not descended: its pages stay allocated
/// only if another path reaches them, and reads through it report EIO.
pub fn recount(eng: &Engine, catalog: Tree) -> Result<()> {
    if catalog.root.is_none() {
        return Ok(());
    }
    let cap = eng.store.capacity_pages();
    let mut stack = vec![(catalog.root, Some(NodeKind::RadixCatalog))];
    while let Some((p, kind)) = stack.pop() {
        if p.0 < crate::store::FIRST_DATA_PAGE || p.0 >= cap {
            log::error!("a tree references page {p}, outside the store (capacity {cap} pages)");
            continue;
        }
        eng.store.incref(p);
        if eng.store.refcount(p) > 1 {
            continue;
        }
        if let Some(k) = kind {
            match eng.read_node(p, k) {
                Ok(b) => stack.extend(eng.children(&b)),
                Err(e) => log::error!("recount: {e}"),
            }
        }
    }
    Ok(())
}

/// The record pages of a record tree, with their page index.
fn record_pages(eng: &Engine, tree: Tree, radix: NodeKind) -> Result<Vec<(u64, Vec<u8>)>> {
    let leaf = radix.leaf().expect("a record tree");
    let mut out = Vec::new();
    let mut idx = 0;
    while let Some(i) = eng.seek(tree, radix, idx, true)? {
        if i >= eng.reach(tree.height) {
            break;
        }
        let p = eng.lookup(tree, radix, i)?;
        out.push((i, eng.read_node(p, leaf)?));
        idx = i + 1;
    }
    Ok(out)
}

pub fn catalog_records(eng: &Engine, tree: Tree) -> Result<Vec<Slot>> {
    let mut out = Vec::new();
    for (_, b) in record_pages(eng, tree, NodeKind::RadixCatalog)? {
        for r in b[HEADER..].chunks_exact(catalog::RECORD_BYTES) {
            if let Some(slot) = catalog::decode(r, PageNo(0))? {
                out.push(slot);
            }
        }
    }
    Ok(out)
}

pub fn inodes(eng: &Engine, itable: Tree) -> Result<Vec<(Ino, Inode)>> {
    let per = eng.per_page(NodeKind::Inodes);
    let mut out = Vec::new();
    for (idx, b) in record_pages(eng, itable, NodeKind::RadixInodes)? {
        for (k, r) in b[HEADER..].chunks_exact(inode::INODE_BYTES).enumerate() {
            let ino = Ino(idx * per + k as u64);
            match Inode::decode(r) {
                Ok(Some(i)) => out.push((ino, i)),
                Ok(None) => {}
                Err(why) => {
                    return Err(Error::Corrupt {
                        page: 0,
                        why: format!("inode {ino}: {why}"),
                    })
                }
            }
        }
    }
    Ok(out)
}

/// Per cluster (its live tree and its restore points' trees): pages its live tree
/// reaches, of those the ones another cluster reaches too, and pages only its
/// restore points reach.
/// `None` if `keep_going` said no on the way (it is asked every few thousand pages).
pub fn space(
    eng: &Engine,
    clusters: &[(String, Tree, Vec<Tree>)],
    keep_going: &dyn Fn() -> bool,
) -> Result<Option<Vec<ClusterSpace>>> {
    /// A page reached by two clusters.
    const SHARED: usize = usize::MAX;
    // page -> (the one cluster reaching it, or SHARED; whether its live tree does).
    let mut owner: HashMap<u64, (usize, bool)> = HashMap::new();
    for (c, (_, live, points)) in clusters.iter().enumerate() {
        // The live tree first: a point's walk stops where the live tree's went.
        let trees = std::iter::once((*live, true)).chain(points.iter().map(|t| (*t, false)));
        for (t, is_live) in trees {
            if t.root.is_none() {
                continue;
            }
            let mut stack = vec![(t.root, Some(NodeKind::RadixInodes))];
            while let Some((p, kind)) = stack.pop() {
                if owner.len().is_multiple_of(4096) && !keep_going() {
                    return Ok(None);
                }
                let descend = match owner.get(&p.0).copied() {
                    None => {
                        owner.insert(p.0, (c, is_live));
                        true
                    }
                    Some((SHARED, _)) => false,
                    Some((o, _)) if o != c => {
                        owner.insert(p.0, (SHARED, true));
                        true
                    }
                    Some((_, seen_live)) => {
                        owner.insert(p.0, (c, seen_live || is_live));
                        is_live && !seen_live
                    }
                };
                if descend {
                    if let Some(k) = kind {
                        stack.extend(eng.children(&eng.read_node(p, k)?));
                    }
                }
            }
        }
    }
    let ps = eng.ps as u64;
    let mut unique = vec![0u64; clusters.len()];
    let mut restore_only = vec![0u64; clusters.len()];
    for &(o, live) in owner.values() {
        match (o, live) {
            (SHARED, _) => {}
            (o, true) => unique[o] += ps,
            (o, false) => restore_only[o] += ps,
        }
    }
    let mut memo = HashMap::new();
    let figures = clusters
        .iter()
        .enumerate()
        .map(|(c, (name, t, _))| {
            let logical = if t.root.is_none() {
                0
            } else {
                subtree_pages(eng, t.root, NodeKind::RadixInodes, &mut memo)? * ps
            };
            Ok(ClusterSpace {
                name: name.clone(),
                logical,
                shared: logical - unique[c].min(logical),
                unique: unique[c],
                restore_only: restore_only[c],
            })
        })
        .collect::<Result<_>>()?;
    Ok(Some(figures))
}

fn subtree_pages(
    eng: &Engine,
    p: PageNo,
    kind: NodeKind,
    memo: &mut HashMap<u64, u64>,
) -> Result<u64> {
    if let Some(n) = memo.get(&p.0) {
        return Ok(*n);
    }
    let mut n = 1;
    for (c, k) in eng.children(&eng.read_node(p, kind)?) {
        n += match k {
            Some(k) => subtree_pages(eng, c, k, memo)?,
            None => 1,
        };
    }
    memo.insert(p.0, n);
    Ok(n)
}

/// What fsck found.
#[derive(Debug, Default)]
pub struct FsckReport {
    /// Each disagreement, precisely: these make the store unclean.
    pub problems: Vec<String>,
    /// Facts worth knowing that are not damage (orphans a mount will free).
    pub notes: Vec<String>,
    pub clusters: usize,
    pub inodes: u64,
    pub pages: u64,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for FsckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        write!(
            f,
            "{}: {} clusters, {} inodes, {} pages in use, {} problems",
            if self.is_clean() {
                "clean"
            } else {
                "NOT CLEAN"
            },
            self.clusters,
            self.inodes,
            self.pages,
            self.problems.len()
        )
    }
}

/// Checks a quiescent store: every node's checksum and header, every reference
/// count against the references the trees hold, free space against use, and each
/// cluster's directories against its inodes.
pub fn fsck(
    eng: &Engine,
    catalog: Tree,
    clusters: &[(String, Tree, u64, u64)],
    live: bool,
) -> Result<FsckReport> {
    let mut r = FsckReport {
        clusters: clusters.len(),
        ..Default::default()
    };
    let cap = eng.store.capacity_pages();
    let mut expected: HashMap<u64, u32> = HashMap::new();
    let mut stack = Vec::new();
    if !catalog.root.is_none() {
        stack.push((catalog.root, Some(NodeKind::RadixCatalog), PageNo(0)));
    }
    while let Some((p, kind, parent)) = stack.pop() {
        if p.0 < crate::store::FIRST_DATA_PAGE || p.0 >= cap {
            r.problems.push(format!(
                "page {parent} references page {p}, outside the store"
            ));
            continue;
        }
        let n = expected.entry(p.0).or_default();
        *n += 1;
        if *n > 1 {
            continue;
        }
        if let Some(k) = kind {
            match eng.read_node(p, k) {
                Ok(b) => stack.extend(eng.children(&b).into_iter().map(|(c, ck)| (c, ck, p))),
                Err(e) => r.problems.push(e.to_string()),
            }
        }
    }
    r.pages = expected.len() as u64;
    for (&p, &n) in &expected {
        let have = eng.store.refcount(PageNo(p));
        if have != n {
            r.problems.push(format!(
                "page {p}: reference count {have}, but the trees hold {n} references"
            ));
        }
        if eng.store.is_free(PageNo(p)) {
            r.problems
                .push(format!("page {p} is in use but the allocator has it free"));
        }
    }
    if live {
        for (p, n) in eng.store.counts() {
            if !expected.contains_key(&p.0) {
                r.problems.push(format!(
                    "page {p}: reference count {n}, but no tree references it (leaked)"
                ));
            }
        }
    }
    let committed: HashMap<String, Tree> = catalog_records(eng, catalog)?
        .into_iter()
        .filter_map(|slot| match slot {
            Slot::Record(rec) if rec.kind == RecordKind::Cluster => Some((rec.name, rec.itable)),
            _ => None,
        })
        .collect();
    let mut seen_roots = HashSet::new();
    for (name, itable, next_ino, orphans) in clusters {
        if committed.get(name) != Some(itable) {
            r.problems.push(format!(
                "cluster {name}: the catalog records another inode table than the live one"
            ));
        }
        if !seen_roots.insert(itable.root) {
            continue;
        }
        match check_cluster(eng, name, *itable, *next_ino, *orphans, &mut r) {
            Ok(n) => r.inodes += n,
            Err(e) => r.problems.push(format!("cluster {name}: {e}")),
        }
    }
    Ok(r)
}

fn check_cluster(
    eng: &Engine,
    name: &str,
    itable: Tree,
    next_ino: u64,
    orphans: u64,
    r: &mut FsckReport,
) -> Result<u64> {
    let ps = eng.ps as u64;
    let all: HashMap<Ino, Inode> = inodes(eng, itable)?.into_iter().collect();
    let mut links: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut problem = |s: String| r.problems.push(format!("cluster {name}: {s}"));
    if !all.get(&Ino::ROOT).is_some_and(|i| i.kind == Kind::Dir) {
        problem("no root directory (inode 1)".into());
    }
    let mut b = [0u8; super::dir::DIRENT_BYTES];
    for (&ino, i) in &all {
        if ino.0 >= next_ino {
            problem(format!(
                "inode {ino} is at or above the next inode number {next_ino}"
            ));
        }
        if i.kind == Kind::Dir {
            let mut names = HashSet::new();
            for s in 0..i.size {
                eng.read_record(i.content, NodeKind::RadixDirents, s, &mut b)?;
                match Dirent::decode(&b) {
                    Ok(None) => {}
                    Err(why) => problem(format!("directory {ino} slot {s}: {why}")),
                    Ok(Some(e)) => {
                        if !names.insert(e.name.clone()) {
                            problem(format!(
                                "directory {ino} holds the name {:?} twice",
                                String::from_utf8_lossy(&e.name)
                            ));
                        }
                        match all.get(&e.ino) {
                            None => problem(format!(
                                "directory {ino} names inode {} which does not exist",
                                e.ino
                            )),
                            Some(t) if t.kind != e.kind => problem(format!(
                                "directory {ino} names inode {} as {:?}, it is {:?}",
                                e.ino, e.kind, t.kind
                            )),
                            Some(t) => {
                                *links.entry(e.ino).or_default() += 1;
                                if t.kind == Kind::Dir {
                                    *subdirs.entry(ino).or_default() += 1;
                                    if t.parent != ino {
                                        problem(format!(
                                            "directory {} lies in {ino} but names {} as parent",
                                            e.ino, t.parent
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        } else {
            let t = i.content;
            let mapped = if t.root.is_none() {
                0
            } else {
                eng.count_leaves(t.root, NodeKind::RadixData, t.height - 1)?
            };
            if mapped != i.mapped {
                problem(format!(
                    "inode {ino} records {} mapped pages, its map holds {mapped}",
                    i.mapped
                ));
            }
            if let Some(p) = eng.seek(t, NodeKind::RadixData, i.size.div_ceil(ps), true)? {
                if p < eng.reach(t.height) {
                    problem(format!(
                        "inode {ino} maps page {p} beyond its size {}",
                        i.size
                    ));
                }
            }
        }
    }
    let mut orphans_found = 0;
    for (&ino, i) in &all {
        let l = links.get(&ino).copied().unwrap_or(0);
        let want = if i.kind == Kind::Dir {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            l
        };
        let named_ok = if i.kind == Kind::Dir {
            l == u32::from(ino != Ino::ROOT)
        } else {
            true
        };
        if i.nlink == 0 && l == 0 {
            orphans_found += 1;
            continue;
        }
        if i.nlink != want || !named_ok {
            problem(format!(
                "inode {ino} ({:?}) has link count {}, but {l} names and {want} expected",
                i.kind, i.nlink
            ));
        }
    }
    if orphans_found > 0 {
        if orphans_found > orphans {
            problem(format!(
                "{orphans_found} unlinked inodes, but the cluster records {orphans} orphans"
            ));
        } else {
            r.notes.push(format!("cluster {name}: {orphans_found} unlinked inodes still open (freed on release or at mount)"));
        }
    }
    Ok(all.len() as u64)
}
