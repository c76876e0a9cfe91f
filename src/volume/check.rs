//! Space and checks: the store's space, each cluster's, and fsck, all by walks over
//! whole trees (also the recount of references at open and the listing of records).

use super::catalog::{self, RecordKind, Slot};
use super::dir::{Dirent, DIRENT_BYTES};
use super::inode::{self, Ino, Inode, Kind};
use super::node::{Engine, NodeKind, Tree, HEADER};
use super::{ClusterSpace, Volume};
use crate::error::{Error, Result};
use crate::store::sparse::Counts;
use crate::store::{PageNo, StoreSpace};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;

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
        self.fsck_with_progress(&|_| {})
    }

    /// As [`Volume::fsck`], telling `progress` where it is, every few thousand pages
    /// and after each inode table.
    pub fn fsck_with_progress(&self, progress: &dyn Fn(FsckProgress)) -> Result<FsckReport> {
        for _ in 0..10 {
            // A space walk holds drops back, which fsck would see as leaks.
            self.cancel_space_walk();
            self.commit()?;
            self.commit()?;
            let gate = self.gate.write().unwrap();
            if self.read_only || !self.eng.has_pending() {
                let cs = self.commit.lock().unwrap();
                let clusters = self.fsck_clusters();
                let mut r = fsck(&self.eng, cs.tree, &clusters, !self.read_only, progress);
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
    /// What fsck checks of each cluster: name, inode table, next inode number and
    /// orphans, as they are now (the caller holds changes off).
    pub(super) fn fsck_clusters(&self) -> Vec<(String, Tree, u64, u64)> {
        let cat = self.catalog.read().unwrap();
        cat.by_name
            .values()
            .map(|c| {
                let st = c.state.read().unwrap();
                (c.name.clone(), st.itable, st.next_ino, st.orphans)
            })
            .collect()
    }

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
    recount_with(eng, catalog, &|p| {
        eng.store.incref(p);
        eng.store.refcount(p)
    })
}

/// As [`recount`], into `counts` instead of the store's own.
pub fn recount_into(eng: &Engine, catalog: Tree, counts: &Counts) -> Result<()> {
    recount_with(eng, catalog, &|p| {
        counts.entry(p.0).fetch_add(1, Ordering::Relaxed) + 1
    })
}

/// The walk of [`recount`]; `incref` adds a reference and returns the new count.
fn recount_with(eng: &Engine, catalog: Tree, incref: &dyn Fn(PageNo) -> u32) -> Result<()> {
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
        if incref(p) > 1 {
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
    // page -> (the one cluster reaching it, or SHARED; whether its live tree does),
    // in an array by page number (no hashing: a walk of millions of pages).
    let owner = Owners(Counts::new(eng.store.capacity_pages()));
    let mut visited = 0u64;
    for (c, (_, live, points)) in clusters.iter().enumerate() {
        // The live tree first: a point's walk stops where the live tree's went.
        let trees = std::iter::once((*live, true)).chain(points.iter().map(|t| (*t, false)));
        for (t, is_live) in trees {
            if t.root.is_none() {
                continue;
            }
            let mut stack = vec![(t.root, Some(NodeKind::RadixInodes))];
            while let Some((p, kind)) = stack.pop() {
                visited += 1;
                if visited.is_multiple_of(4096) && !keep_going() {
                    return Ok(None);
                }
                if p.0 >= eng.store.capacity_pages() {
                    return Err(Error::Corrupt {
                        page: p.0,
                        why: "a tree references a page outside the store".into(),
                    });
                }
                let descend = match owner.get(p.0) {
                    None => {
                        owner.set(p.0, c, is_live);
                        true
                    }
                    Some((SHARED, _)) => false,
                    Some((o, _)) if o != c => {
                        owner.set(p.0, SHARED, true);
                        true
                    }
                    Some((_, seen_live)) => {
                        owner.set(p.0, c, seen_live || is_live);
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
    for (o, live) in owner.all() {
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

/// Who reaches each page, for [`space`]: 0 for no one, else one more than the
/// cluster's index (all ones below the top bit for SHARED), with the top bit set
/// if a live tree does.
struct Owners(Counts);

impl Owners {
    const LIVE: u32 = 1 << 31;
    const SHARED: u32 = Self::LIVE - 1;

    fn decode(v: u32) -> (usize, bool) {
        let o = match v & !Self::LIVE {
            Self::SHARED => usize::MAX,
            n => n as usize - 1,
        };
        (o, v & Self::LIVE != 0)
    }

    fn get(&self, page: u64) -> Option<(usize, bool)> {
        let v = self.0.get(page).map_or(0, |a| a.load(Ordering::Relaxed));
        (v != 0).then(|| Self::decode(v))
    }

    fn set(&self, page: u64, owner: usize, live: bool) {
        let o = if owner == usize::MAX {
            Self::SHARED
        } else {
            owner as u32 + 1
        };
        let v = o | if live { Self::LIVE } else { 0 };
        self.0.entry(page).store(v, Ordering::Relaxed);
    }

    /// Every page someone reaches.
    fn all(&self) -> impl Iterator<Item = (usize, bool)> + '_ {
        (0..self.0.chunk_count())
            .filter_map(|k| self.0.chunk(k))
            .flatten()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&v| v != 0)
            .map(Self::decode)
    }
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

/// Where a running fsck is: first it walks every page the trees reach, then it
/// checks each distinct inode table (clusters that share their root share it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsckProgress {
    /// Pages walked so far (each page once, however many trees reach it).
    pub pages: u64,
    /// Inode tables checked, of how many (0 of 0 until the walk is done).
    pub tables: usize,
    pub of_tables: usize,
}

/// Checks a quiescent store: every node's checksum and header, every reference
/// count against the references the trees hold, free space against use, and each
/// cluster's directories against its inodes. `progress` hears where it is, now and
/// then.
///
/// Clones share pages, so the check reads each page once however many trees reach
/// it: the reference walk visits each page once, and the per-cluster checks keep
/// what they derive from a page by its number ([`Shared`]).
pub fn fsck(
    eng: &Engine,
    catalog: Tree,
    clusters: &[(String, Tree, u64, u64)],
    live: bool,
    progress: &dyn Fn(FsckProgress),
) -> Result<FsckReport> {
    let mut r = FsckReport {
        clusters: clusters.len(),
        ..Default::default()
    };
    let cap = eng.store.capacity_pages();
    // Pages reached (a bit each, in store order) and, for those reached more than
    // once, how many more times: most pages have one parent.
    let mut reached = vec![0u64; cap.div_ceil(64) as usize];
    let mut more: HashMap<u64, u32> = HashMap::new();
    let mut walked = 0u64;
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
        let (w, bit) = ((p.0 / 64) as usize, 1u64 << (p.0 % 64));
        if reached[w] & bit != 0 {
            *more.entry(p.0).or_default() += 1;
            continue;
        }
        reached[w] |= bit;
        walked += 1;
        if walked.is_multiple_of(PROGRESS_EVERY) {
            progress(FsckProgress {
                pages: walked,
                ..Default::default()
            });
        }
        if let Some(k) = kind {
            match eng.read_node(p, k) {
                Ok(b) => stack.extend(eng.children(&b).into_iter().map(|(c, ck)| (c, ck, p))),
                Err(e) => r.problems.push(e.to_string()),
            }
        }
    }
    r.pages = walked;
    for (w, &bits) in reached.iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            let p = w as u64 * 64 + u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            let n = 1 + more.get(&p).copied().unwrap_or(0);
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
    }
    if live {
        for (p, n) in eng.store.counts() {
            if reached[(p.0 / 64) as usize] & (1 << (p.0 % 64)) == 0 {
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
    let mut shared = Shared::default();
    let mut at = FsckProgress {
        pages: walked,
        tables: 0,
        of_tables: clusters
            .iter()
            .map(|c| c.1.root)
            .collect::<HashSet<_>>()
            .len(),
    };
    progress(at);
    for (name, itable, next_ino, orphans) in clusters {
        if committed.get(name) != Some(itable) {
            r.problems.push(format!(
                "cluster {name}: the catalog records another inode table than the live one"
            ));
        }
        if !seen_roots.insert(itable.root) {
            continue;
        }
        match check_cluster(eng, name, *itable, *next_ino, *orphans, &mut shared, &mut r) {
            Ok(n) => r.inodes += n,
            Err(e) => r.problems.push(format!("cluster {name}: {e}")),
        }
        at.tables += 1;
        progress(at);
    }
    Ok(r)
}

/// How many pages the reference walk checks between two calls of its progress.
const PROGRESS_EVERY: u64 = 4096;

/// The used slots of one directory page: (slot in the page, the entry or why it
/// is not one).
type DirPage = Rc<Vec<(u64, std::result::Result<Dirent, String>)>>;

/// What the per-cluster checks derive from a page, kept by page number: a page
/// shared by many clusters' trees is read and decoded once. Only what a page
/// yields without error is kept; a page that fails is read again by each tree that
/// reaches it, so each cluster reports it as it did when checked alone.
#[derive(Default)]
struct Shared {
    /// Per radix node of a file's map: its level, the leaves mapped below it, and
    /// one past the index of the highest (relative to the node; 0 when none is).
    maps: HashMap<u64, (u8, u64, u64)>,
    /// Per inode page: (slot in the page, inode) of its used slots.
    inodes: HashMap<u64, Rc<Vec<(u64, Inode)>>>,
    /// Per directory page: its used slots.
    dirents: HashMap<u64, DirPage>,
}

impl Shared {
    /// Mapped leaves below data radix node `p` at `level`, and one past the highest.
    fn map_extent(&mut self, eng: &Engine, p: PageNo, level: u8) -> Result<(u64, u64)> {
        if let Some(&(l, n, end)) = self.maps.get(&p.0) {
            if l == level {
                return Ok((n, end));
            }
        }
        eng.check_node(p, NodeKind::RadixData, Some(level))?;
        let b = eng.read_node(p, NodeKind::RadixData)?;
        let span = eng.span(level);
        let (mut n, mut end) = (0u64, 0u64);
        for (i, c) in entries(&b) {
            if level == 0 {
                n += 1;
                end = i + 1;
            } else {
                let (cn, ce) = self.map_extent(eng, c, level - 1)?;
                n += cn;
                if ce > 0 {
                    end = i.saturating_mul(span).saturating_add(ce);
                }
            }
        }
        self.maps.insert(p.0, (level, n, end));
        Ok((n, end))
    }

    /// The inodes of `itable`, in inode order.
    fn inodes(&mut self, eng: &Engine, itable: Tree) -> Result<Vec<(Ino, Inode)>> {
        let per = eng.per_page(NodeKind::Inodes);
        let (leaves, walked) = record_leaves(eng, itable, NodeKind::RadixInodes, u64::MAX);
        walked?;
        let mut out = Vec::new();
        for (idx, p) in leaves {
            let page = match self.inodes.get(&p.0) {
                Some(page) => page.clone(),
                None => {
                    let b = eng.read_node(p, NodeKind::Inodes)?;
                    let mut page = Vec::new();
                    for (k, r) in b[HEADER..].chunks_exact(inode::INODE_BYTES).enumerate() {
                        match Inode::decode(r) {
                            Ok(Some(i)) => page.push((k as u64, i)),
                            Ok(None) => {}
                            Err(why) => {
                                let ino = Ino(idx * per + k as u64);
                                return Err(Error::Corrupt {
                                    page: 0,
                                    why: format!("inode {ino}: {why}"),
                                });
                            }
                        }
                    }
                    let page = Rc::new(page);
                    self.inodes.insert(p.0, page.clone());
                    page
                }
            };
            out.extend(page.iter().map(|(k, i)| (Ino(idx * per + k), i.clone())));
        }
        Ok(out)
    }

    /// The used slots of a directory's pages below `slots`, in slot order: each page
    /// with its index. A page that fails its checks ends the list, with its error.
    fn dirents(
        &mut self,
        eng: &Engine,
        content: Tree,
        slots: u64,
    ) -> (Vec<(u64, DirPage)>, Result<()>) {
        let per = eng.per_page(NodeKind::Dirents);
        let (leaves, walked) =
            record_leaves(eng, content, NodeKind::RadixDirents, slots.div_ceil(per));
        let mut out = Vec::new();
        for (idx, p) in leaves {
            if let Err(e) = eng.check_node(p, NodeKind::Dirents, Some(0)) {
                return (out, Err(e));
            }
            let page = match self.dirents.get(&p.0) {
                Some(page) => page.clone(),
                None => {
                    let b = match eng.read_node(p, NodeKind::Dirents) {
                        Ok(b) => b,
                        Err(e) => return (out, Err(e)),
                    };
                    let page: Vec<_> = b[HEADER..]
                        .chunks_exact(DIRENT_BYTES)
                        .enumerate()
                        .filter_map(|(k, r)| match Dirent::decode(r) {
                            Ok(None) => None,
                            Ok(Some(e)) => Some((k as u64, Ok(e))),
                            Err(why) => Some((k as u64, Err(why))),
                        })
                        .collect();
                    let page = Rc::new(page);
                    self.dirents.insert(p.0, page.clone());
                    page
                }
            };
            out.push((idx, page));
        }
        (out, walked)
    }
}

/// The non-hole entries of a radix node: (index in the node, page).
fn entries(b: &[u8]) -> impl Iterator<Item = (u64, PageNo)> + '_ {
    b[HEADER..]
        .chunks_exact(8)
        .enumerate()
        .map(|(i, c)| (i as u64, PageNo(u64::from_le_bytes(c.try_into().unwrap()))))
        .filter(|(_, p)| !p.is_none())
}

/// The leaf pages of record tree `tree` with index below `limit`, in index order,
/// checking each radix node on the way (header, checksum, level). On an error, the
/// leaves before the failing node come with it.
fn record_leaves(
    eng: &Engine,
    tree: Tree,
    radix: NodeKind,
    limit: u64,
) -> (Vec<(u64, PageNo)>, Result<()>) {
    fn walk(
        eng: &Engine,
        p: PageNo,
        radix: NodeKind,
        level: u8,
        base: u64,
        limit: u64,
        out: &mut Vec<(u64, PageNo)>,
    ) -> Result<()> {
        eng.check_node(p, radix, Some(level))?;
        let b = eng.read_node(p, radix)?;
        let span = eng.span(level);
        for (i, c) in entries(&b) {
            let lo = base.saturating_add(i.saturating_mul(span));
            if lo >= limit {
                break;
            }
            if level == 0 {
                out.push((lo, c));
            } else {
                walk(eng, c, radix, level - 1, lo, limit, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if tree.height == 0 || limit == 0 {
        return (out, Ok(()));
    }
    let r = walk(eng, tree.root, radix, tree.height - 1, 0, limit, &mut out);
    (out, r)
}

fn check_cluster(
    eng: &Engine,
    name: &str,
    itable: Tree,
    next_ino: u64,
    orphans: u64,
    shared: &mut Shared,
    r: &mut FsckReport,
) -> Result<u64> {
    let ps = eng.ps as u64;
    // In inode order: a lookup is a binary search, and counts sit beside them.
    let all = shared.inodes(eng, itable)?;
    let find = |ino: Ino| all.binary_search_by_key(&ino, |(i, _)| *i).ok();
    let mut links = vec![0u32; all.len()];
    let mut subdirs = vec![0u32; all.len()];
    let mut problem = |s: String| r.problems.push(format!("cluster {name}: {s}"));
    if !find(Ino::ROOT).is_some_and(|k| all[k].1.kind == Kind::Dir) {
        problem("no root directory (inode 1)".into());
    }
    for (me, (ino, i)) in all.iter().enumerate() {
        let ino = *ino;
        if ino.0 >= next_ino {
            problem(format!(
                "inode {ino} is at or above the next inode number {next_ino}"
            ));
        }
        if i.kind == Kind::Dir {
            let per = eng.per_page(NodeKind::Dirents);
            let mut names = HashSet::new();
            let (pages, walked) = shared.dirents(eng, i.content, i.size);
            for (idx, page) in &pages {
                for (k, e) in page.iter() {
                    let s = idx * per + k;
                    if s >= i.size {
                        break;
                    }
                    match e {
                        Err(why) => problem(format!("directory {ino} slot {s}: {why}")),
                        Ok(e) => {
                            if !names.insert(&e.name[..]) {
                                problem(format!(
                                    "directory {ino} holds the name {:?} twice",
                                    String::from_utf8_lossy(&e.name)
                                ));
                            }
                            match find(e.ino) {
                                None => problem(format!(
                                    "directory {ino} names inode {} which does not exist",
                                    e.ino
                                )),
                                Some(k) if all[k].1.kind != e.kind => problem(format!(
                                    "directory {ino} names inode {} as {:?}, it is {:?}",
                                    e.ino, e.kind, all[k].1.kind
                                )),
                                Some(k) => {
                                    links[k] += 1;
                                    let t = &all[k].1;
                                    if t.kind == Kind::Dir {
                                        subdirs[me] += 1;
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
            }
            walked?;
        } else {
            let t = i.content;
            let (mapped, end) = match (t.root.is_none(), t.height.checked_sub(1)) {
                (true, _) => (0, 0),
                (false, Some(level)) => shared.map_extent(eng, t.root, level)?,
                (false, None) => {
                    return Err(Error::Corrupt {
                        page: t.root.0,
                        why: format!("inode {ino} has a map of height 0"),
                    })
                }
            };
            if mapped != i.mapped {
                problem(format!(
                    "inode {ino} records {} mapped pages, its map holds {mapped}",
                    i.mapped
                ));
            }
            // Only a map reaching past the size is searched for its first such page.
            let from = i.size.div_ceil(ps);
            if end > from {
                if let Some(p) = eng.seek(t, NodeKind::RadixData, from, true)? {
                    if p < eng.reach(t.height) {
                        problem(format!(
                            "inode {ino} maps page {p} beyond its size {}",
                            i.size
                        ));
                    }
                }
            }
        }
    }
    let mut orphans_found = 0;
    for (k, (ino, i)) in all.iter().enumerate() {
        let l = links[k];
        let want = if i.kind == Kind::Dir {
            2 + subdirs[k]
        } else {
            l
        };
        let named_ok = if i.kind == Kind::Dir {
            l == u32::from(*ino != Ino::ROOT)
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
