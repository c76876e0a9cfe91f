//! Metadata pages, radix trees of pages, copy-on-write and lazy reference counts.
//!
//! Every metadata page starts with a 32-byte header:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 2 | magic 0xC10F |
//! | 2  | 1 | node kind ([`NodeKind`]) |
//! | 3  | 1 | level (radix nodes: 0 = leaf) |
//! | 8  | 8 | birth: the epoch (commit generation) that wrote the page |
//! | 16 | 8 | the page's own number (catches misdirected writes) |
//! | 24 | 4 | CRC-32 of the page with this field zeroed |
//!
//! A radix node holds `(page_size - 32) / 8` little-endian page numbers (0 = hole).
//! A [`Tree`] of height h maps index -> page through h levels of radix nodes; its
//! leaves are data pages or record pages (inodes, directory slots, catalog entries).
//!
//! Copy-on-write (Rodeh, "B-trees, Shadowing, and Clones"; btrfs delayed refs):
//! - every page counts its parents; a clone adds one parent to a tree's root;
//! - decrements wait in a list until the next commit is durable ([`Deferred`]), so
//!   a count of 1 means one parent in the committed and live trees together;
//! - writing below a node with count > 1 copies it and increments its children;
//!   a node with count 1 born in an earlier epoch is copied ("shadowed") and the copy
//!   takes over its children; a node with count 1 born in this epoch is changed in
//!   place. A data page with count 1 is overwritten in place.
//! - checksums of pages written in an epoch are computed when the epoch is sealed by
//!   a commit; until then the page is trusted because this process wrote it.

use crate::error::{Error, Result};
use crate::store::{PageNo, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub const HEADER: usize = 32;
const NODE_MAGIC: u16 = 0xC10F;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// Radix node whose leaves are data pages.
    RadixData = 1,
    /// Radix nodes whose leaves are record pages of the matching kind.
    RadixInodes = 2,
    RadixDirents = 3,
    RadixCatalog = 4,
    Inodes = 5,
    Dirents = 6,
    Catalog = 7,
}

impl NodeKind {
    fn from_code(c: u8) -> Option<NodeKind> {
        Some(match c {
            1 => NodeKind::RadixData,
            2 => NodeKind::RadixInodes,
            3 => NodeKind::RadixDirents,
            4 => NodeKind::RadixCatalog,
            5 => NodeKind::Inodes,
            6 => NodeKind::Dirents,
            7 => NodeKind::Catalog,
            _ => return None,
        })
    }

    /// The kind of page a radix tree of this kind has at its leaves (None: data).
    pub fn leaf(self) -> Option<NodeKind> {
        match self {
            NodeKind::RadixInodes => Some(NodeKind::Inodes),
            NodeKind::RadixDirents => Some(NodeKind::Dirents),
            NodeKind::RadixCatalog => Some(NodeKind::Catalog),
            _ => None,
        }
    }
}

/// How the engine sees one kind of record: its size and the pages it references.
/// The modules that define the records supply these ([`Records`]); the engine
/// reads no field of a record itself.
#[derive(Clone, Copy)]
pub struct RecordFormat {
    pub bytes: usize,
    /// The pages a record references, with their kinds (holes may be included).
    pub children: fn(&[u8]) -> Vec<Child>,
}

/// The formats of the record kinds at the leaves of record trees.
#[derive(Clone, Copy)]
pub struct Records {
    pub inodes: RecordFormat,
    pub dirents: RecordFormat,
    pub catalog: RecordFormat,
}

/// A tree: its root page and height (0 = empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub root: PageNo,
    pub height: u8,
}

impl Tree {
    pub const EMPTY: Tree = Tree {
        root: PageNo::NONE,
        height: 0,
    };
}

/// A reference a page holds: the child and its node kind (None: a data page).
pub type Child = (PageNo, Option<NodeKind>);

/// While a walk of committed trees runs ([`Engine::pin`]), the drops of durable
/// commits wait here, so that no page those trees reach is freed and reused under it.
#[derive(Default)]
struct Pins {
    walks: usize,
    held: Vec<Deferred>,
}

/// Holds back reference drops while it lives (see [`Engine::pin`]).
pub struct Pin<'a>(&'a Engine);

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let held = {
            let mut pins = self.0.pins.lock().unwrap();
            pins.walks -= 1;
            if pins.walks > 0 {
                return;
            }
            std::mem::take(&mut pins.held)
        };
        if let Err(e) = self.0.apply_now(held) {
            log::error!("applying reference drops held back by a walk: {e}");
        }
    }
}

/// A change to a reference count that waits for the next durable commit.
#[derive(Clone, Copy, Debug)]
pub enum Deferred {
    /// Drop one reference; at zero, drop the page's children and free it.
    Dec(PageNo, bool),
    /// A shadowed page: free it, its children now belong to its copy.
    Release(PageNo),
}

pub struct Engine {
    pub store: Store,
    pub ps: usize,
    pub fanout: u64,
    epoch: AtomicU64,
    deferred: Mutex<Vec<Deferred>>,
    /// Walks of committed trees under way, and the drops they hold back.
    pins: Mutex<Pins>,
    /// A page was freed without its children (it failed its checks): the counts
    /// may hold leaks, so they must not be saved for the next open.
    pub counts_suspect: AtomicBool,
    dirty: Mutex<Vec<PageNo>>,
    verified: crate::store::sparse::Bits,
    records: Records,
}

impl Engine {
    pub fn new(store: Store, epoch: u64, records: Records) -> Engine {
        let ps = store.page_size();
        let words = store.capacity_pages().div_ceil(64);
        Engine {
            fanout: ((ps - HEADER) / 8) as u64,
            ps,
            epoch: AtomicU64::new(epoch),
            deferred: Mutex::new(Vec::new()),
            pins: Mutex::default(),
            counts_suspect: AtomicBool::new(false),
            dirty: Mutex::new(Vec::new()),
            verified: crate::store::sparse::Bits::new(words),
            records,
            store,
        }
    }

    /// The format of record pages of `kind`.
    fn record(&self, kind: NodeKind) -> &RecordFormat {
        match kind {
            NodeKind::Inodes => &self.records.inodes,
            NodeKind::Dirents => &self.records.dirents,
            NodeKind::Catalog => &self.records.catalog,
            _ => panic!("{kind:?} pages hold no records"),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Seals the current epoch: returns its deferred list and written pages, and
    /// moves writers on to the next epoch. The caller holds the epoch gate exclusively.
    pub fn seal_epoch(&self) -> (Vec<Deferred>, Vec<PageNo>) {
        let d = std::mem::take(&mut *self.deferred.lock().unwrap());
        let w = std::mem::take(&mut *self.dirty.lock().unwrap());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        (d, w)
    }

    /// Gives back the lists of a sealed epoch whose commit failed: the next commit
    /// covers that epoch too, so it writes those checksums and applies those drops.
    pub fn requeue(&self, deferred: Vec<Deferred>, written: Vec<PageNo>) {
        self.deferred.lock().unwrap().extend(deferred);
        self.dirty.lock().unwrap().extend(written);
    }

    /// Has anything not reached the store's counts yet: drops of this epoch or of
    /// sealed ones held back by a walk, or checksums to write?
    pub fn has_pending(&self) -> bool {
        !self.deferred.lock().unwrap().is_empty()
            || !self.dirty.lock().unwrap().is_empty()
            || !self.pins.lock().unwrap().held.is_empty()
    }

    /// Keeps every page of the trees of the last durable commit as it is until the
    /// pin is dropped: drops of later commits wait, and a page with a count of 1
    /// born before this epoch is copied, never changed in place. The caller takes it
    /// under the commit lock, so "the last durable commit" cannot move meanwhile.
    /// Data pages may still be overwritten in place; the walker reads only nodes.
    pub fn pin(&self) -> Pin<'_> {
        self.pins.lock().unwrap().walks += 1;
        Pin(self)
    }

    pub fn defer(&self, d: Deferred) {
        self.deferred.lock().unwrap().push(d);
    }

    fn set_verified(&self, p: PageNo, on: bool) {
        let (w, b) = (p.0 / 64, p.0 % 64);
        if on {
            self.verified.entry(w).fetch_or(1 << b, Ordering::Relaxed);
        } else if let Some(word) = self.verified.get(w) {
            word.fetch_and(!(1 << b), Ordering::Relaxed);
        }
    }

    fn is_verified(&self, p: PageNo) -> bool {
        // A page number beyond the store is never verified: reading it is an error.
        let w = p.0 / 64;
        w < self.verified.len()
            && self
                .verified
                .get(w)
                .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (p.0 % 64)) != 0)
    }

    fn corrupt(p: PageNo, why: impl Into<String>) -> Error {
        let why = why.into();
        log::error!("corrupt page {p}: {why}");
        Error::Corrupt { page: p.0, why }
    }

    fn checksum(page: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&page[..24]);
        h.update(&[0; 4]);
        h.update(&page[28..]);
        h.finalize()
    }

    /// Reads a whole metadata page and checks its header and checksum.
    pub fn read_node(&self, p: PageNo, kind: NodeKind) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.ps];
        self.store.read(p, 0, &mut b)?;
        self.check_header(p, &b, kind)?;
        if !self.is_verified(p) {
            let stored = u32::from_le_bytes(b[24..28].try_into().unwrap());
            if stored != Self::checksum(&b) {
                return Err(Self::corrupt(
                    p,
                    format!("{kind:?} node fails its checksum"),
                ));
            }
            self.set_verified(p, true);
        }
        Ok(b)
    }

    fn check_header(&self, p: PageNo, b: &[u8], kind: NodeKind) -> Result<()> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != NODE_MAGIC {
            return Err(Self::corrupt(
                p,
                format!("expected a {kind:?} node, found no node header"),
            ));
        }
        if b[2] != kind as u8 {
            return Err(Self::corrupt(
                p,
                format!("expected a {kind:?} node, found kind {}", b[2]),
            ));
        }
        if u64::from_le_bytes(b[16..24].try_into().unwrap()) != p.0 {
            return Err(Self::corrupt(p, "node header names another page"));
        }
        Ok(())
    }

    /// Checks a node before its bytes are used: the header always, the checksum once.
    pub fn check_node(&self, p: PageNo, kind: NodeKind, level: Option<u8>) -> Result<()> {
        if !self.is_verified(p) {
            self.read_node(p, kind)?;
        }
        let mut h = [0u8; 24];
        self.store.read(p, 0, &mut h)?;
        self.check_header(p, &h, kind)?;
        if let Some(l) = level {
            if h[3] != l {
                return Err(Self::corrupt(
                    p,
                    format!("{kind:?} node at level {} where {l} belongs", h[3]),
                ));
            }
        }
        Ok(())
    }

    pub fn node_kind(&self, p: PageNo) -> Result<(NodeKind, u8)> {
        let mut h = [0u8; 4];
        self.store.read(p, 0, &mut h)?;
        let kind =
            NodeKind::from_code(h[2]).filter(|_| u16::from_le_bytes([h[0], h[1]]) == NODE_MAGIC);
        kind.map(|k| (k, h[3]))
            .ok_or_else(|| Self::corrupt(p, "not a metadata node"))
    }

    pub fn entry(&self, node: PageNo, i: u64) -> Result<PageNo> {
        Ok(PageNo(self.store.read_u64(node, HEADER + 8 * i as usize)?))
    }

    pub fn set_entry(&self, node: PageNo, i: u64, v: PageNo) -> Result<()> {
        self.store
            .write(node, HEADER + 8 * i as usize, &v.0.to_le_bytes())
    }

    /// Leaves below one child at `level` (fanout^level), saturating.
    pub fn span(&self, level: u8) -> u64 {
        self.fanout.saturating_pow(level as u32)
    }

    /// How many leaves a tree of `height` can address.
    pub fn reach(&self, height: u8) -> u64 {
        if height == 0 {
            0
        } else {
            self.span(height)
        }
    }

    /// The references a metadata page holds, with the kind of each child.
    pub fn children(&self, b: &[u8]) -> Vec<Child> {
        let entries = || {
            b[HEADER..]
                .chunks_exact(8)
                .map(|c| PageNo(u64::from_le_bytes(c.try_into().unwrap())))
                .filter(|p| !p.is_none())
        };
        let Some(kind) = NodeKind::from_code(b[2]) else {
            return Vec::new();
        };
        match kind {
            NodeKind::RadixData
            | NodeKind::RadixInodes
            | NodeKind::RadixDirents
            | NodeKind::RadixCatalog => {
                let child = if b[3] == 0 { kind.leaf() } else { Some(kind) };
                entries().map(|p| (p, child)).collect()
            }
            NodeKind::Inodes | NodeKind::Dirents | NodeKind::Catalog => {
                let f = self.record(kind);
                b[HEADER..]
                    .chunks_exact(f.bytes)
                    .flat_map(f.children)
                    .filter(|(p, _)| !p.is_none())
                    .collect()
            }
        }
    }

    /// A fresh, zeroed metadata page of `kind`, born in this epoch.
    pub fn new_node(&self, kind: NodeKind, level: u8, reserve: bool) -> Result<PageNo> {
        let (p, _) = self.store.allocate(1, reserve)?;
        let mut b = vec![0u8; self.ps];
        self.stamp(&mut b, p, kind as u8, level);
        self.store.write(p, 0, &b)?;
        Ok(p)
    }

    fn stamp(&self, b: &mut [u8], p: PageNo, kind: u8, level: u8) {
        b[0..2].copy_from_slice(&NODE_MAGIC.to_le_bytes());
        b[2] = kind;
        b[3] = level;
        b[8..16].copy_from_slice(&self.epoch().to_le_bytes());
        b[16..24].copy_from_slice(&p.0.to_le_bytes());
        self.set_verified(p, true);
        self.dirty.lock().unwrap().push(p);
    }

    /// Makes metadata page `p` writable by this epoch's tree: returns `p` itself when
    /// it is private and born in this epoch, or a copy (see the module doc).
    pub fn cow_node(&self, p: PageNo, kind: NodeKind, reserve: bool) -> Result<PageNo> {
        let count = self.store.refcount(p);
        let birth = self.store.read_u64(p, 8)?;
        if count == 1 && birth == self.epoch() {
            return Ok(p);
        }
        let mut b = self.read_node(p, kind)?;
        let (copy, _) = self.store.allocate(1, reserve)?;
        let level = b[3];
        self.stamp(&mut b, copy, kind as u8, level);
        self.store.write(copy, 0, &b)?;
        if count > 1 {
            for (c, _) in self.children(&b) {
                self.store.incref(c);
            }
            self.defer(Deferred::Dec(p, true));
        } else {
            self.defer(Deferred::Release(p));
        }
        Ok(copy)
    }

    /// Makes data page `p` writable: itself when private, else a copy of it.
    pub fn cow_data(&self, p: PageNo, reserve: bool) -> Result<PageNo> {
        if self.store.refcount(p) == 1 {
            return Ok(p);
        }
        let (copy, _) = self.store.allocate(1, reserve)?;
        let mut b = vec![0u8; self.ps];
        self.store.read(p, 0, &mut b)?;
        self.store.write(copy, 0, &b)?;
        self.defer(Deferred::Dec(p, false));
        Ok(copy)
    }

    /// The page at `index` of `tree`, or NONE for a hole.
    pub fn lookup(&self, tree: Tree, kind: NodeKind, index: u64) -> Result<PageNo> {
        if tree.height == 0 || index >= self.reach(tree.height) {
            return Ok(PageNo::NONE);
        }
        let mut node = tree.root;
        for level in (0..tree.height).rev() {
            self.check_node(node, kind, Some(level))?;
            let child = self.entry(node, (index / self.span(level)) % self.fanout)?;
            if level == 0 || child.is_none() {
                return Ok(child);
            }
            node = child;
        }
        unreachable!("the loop returns at level 0")
    }

    /// Makes the path to `index` writable (growing the tree as needed) and returns
    /// the leaf radix node and the slot in it that maps `index`.
    pub fn cow_path(
        &self,
        tree: &mut Tree,
        kind: NodeKind,
        index: u64,
        reserve: bool,
    ) -> Result<(PageNo, u64)> {
        while tree.height == 0 || index >= self.reach(tree.height) {
            if tree.height >= 8 {
                return Err(Error::TooBig);
            }
            let root = self.new_node(kind, tree.height, reserve)?;
            if !tree.root.is_none() {
                self.set_entry(root, 0, tree.root)?;
            }
            *tree = Tree {
                root,
                height: tree.height + 1,
            };
        }
        self.check_node(tree.root, kind, Some(tree.height - 1))?;
        tree.root = self.cow_node(tree.root, kind, reserve)?;
        let mut node = tree.root;
        for level in (1..tree.height).rev() {
            let i = (index / self.span(level)) % self.fanout;
            let child = self.entry(node, i)?;
            let next = if child.is_none() {
                self.new_node(kind, level - 1, reserve)?
            } else {
                self.check_node(child, kind, Some(level - 1))?;
                self.cow_node(child, kind, reserve)?
            };
            if next != child {
                self.set_entry(node, i, next)?;
            }
            node = next;
        }
        Ok((node, index % self.fanout))
    }

    /// Records per record page of `kind`.
    pub fn per_page(&self, kind: NodeKind) -> u64 {
        ((self.ps - HEADER) / self.record(kind).bytes) as u64
    }

    /// Reads record `index` of a record tree into `buf` (zeros where none was written).
    pub fn read_record(
        &self,
        tree: Tree,
        radix: NodeKind,
        index: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let leaf = radix.leaf().expect("a record tree");
        let per = self.per_page(leaf);
        let page = self.lookup(tree, radix, index / per)?;
        if page.is_none() {
            buf.fill(0);
            return Ok(());
        }
        self.check_node(page, leaf, Some(0))?;
        self.store.read(
            page,
            HEADER + (index % per) as usize * self.record(leaf).bytes,
            buf,
        )
    }

    /// Makes the record page holding record `index` writable, copying what must be
    /// copied from the root down, and returns it. Call this before changing anything
    /// the record references: the copies made here raise the counts of the trees
    /// below, which is what tells a later write that they are shared.
    pub fn writable_record(
        &self,
        tree: &mut Tree,
        radix: NodeKind,
        index: u64,
        reserve: bool,
    ) -> Result<PageNo> {
        let leaf = radix.leaf().expect("a record tree");
        let per = self.per_page(leaf);
        let (node, slot) = self.cow_path(tree, radix, index / per, reserve)?;
        let old = self.entry(node, slot)?;
        let page = if old.is_none() {
            self.new_node(leaf, 0, reserve)?
        } else {
            self.check_node(old, leaf, Some(0))?;
            self.cow_node(old, leaf, reserve)?
        };
        if page != old {
            self.set_entry(node, slot, page)?;
        }
        Ok(page)
    }

    /// Writes record `index` of a record tree, copying what must be copied.
    pub fn write_record(
        &self,
        tree: &mut Tree,
        radix: NodeKind,
        index: u64,
        rec: &[u8],
        reserve: bool,
    ) -> Result<()> {
        let leaf = radix.leaf().expect("a record tree");
        let per = self.per_page(leaf);
        let page = self.writable_record(tree, radix, index, reserve)?;
        self.store.write(
            page,
            HEADER + (index % per) as usize * self.record(leaf).bytes,
            rec,
        )
    }

    /// Drops the tree's reference to its root (the pages go at the next commit).
    pub fn drop_tree(&self, tree: &mut Tree) {
        if !tree.root.is_none() {
            self.defer(Deferred::Dec(tree.root, true));
        }
        *tree = Tree::EMPTY;
    }

    /// Unmaps leaves `[from, to)` of `tree`; returns how many mapped leaves went.
    pub fn unmap_range(
        &self,
        tree: &mut Tree,
        kind: NodeKind,
        from: u64,
        to: u64,
        reserve: bool,
    ) -> Result<u64> {
        let to = to.min(self.reach(tree.height));
        if from >= to {
            return Ok(0);
        }
        if from == 0 && to == self.reach(tree.height) {
            let n = self.count_leaves(tree.root, kind, tree.height - 1)?;
            self.drop_tree(tree);
            return Ok(n);
        }
        self.check_node(tree.root, kind, Some(tree.height - 1))?;
        tree.root = self.cow_node(tree.root, kind, reserve)?;
        self.unmap_in(tree.root, kind, tree.height - 1, 0, from, to, reserve)
    }

    #[allow(clippy::too_many_arguments)]
    fn unmap_in(
        &self,
        node: PageNo,
        kind: NodeKind,
        level: u8,
        base: u64,
        from: u64,
        to: u64,
        reserve: bool,
    ) -> Result<u64> {
        let span = self.span(level);
        let first = from.saturating_sub(base) / span;
        let last = ((to - base).div_ceil(span)).min(self.fanout);
        let mut removed = 0;
        for i in first..last {
            let lo = base + i * span;
            let hi = lo.saturating_add(span);
            let child = self.entry(node, i)?;
            if child.is_none() {
                continue;
            }
            if level == 0 {
                self.defer(Deferred::Dec(child, kind.leaf().is_some()));
                self.set_entry(node, i, PageNo::NONE)?;
                removed += 1;
            } else if from <= lo && hi <= to {
                removed += self.count_leaves(child, kind, level - 1)?;
                self.defer(Deferred::Dec(child, true));
                self.set_entry(node, i, PageNo::NONE)?;
            } else {
                self.check_node(child, kind, Some(level - 1))?;
                let c = self.cow_node(child, kind, reserve)?;
                if c != child {
                    self.set_entry(node, i, c)?;
                }
                removed += self.unmap_in(c, kind, level - 1, lo, from, to, reserve)?;
            }
        }
        Ok(removed)
    }

    /// Mapped leaves below `node` (at `level`).
    pub fn count_leaves(&self, node: PageNo, kind: NodeKind, level: u8) -> Result<u64> {
        let b = self.read_node(node, kind)?;
        let kids = self.children(&b);
        if level == 0 {
            return Ok(kids.len() as u64);
        }
        kids.iter()
            .map(|(c, _)| self.count_leaves(*c, kind, level - 1))
            .sum()
    }

    /// The first mapped (`want_data`) or unmapped leaf index >= `from`, below `reach`.
    pub fn seek(
        &self,
        tree: Tree,
        kind: NodeKind,
        from: u64,
        want_data: bool,
    ) -> Result<Option<u64>> {
        if tree.height == 0 {
            return Ok(if want_data { None } else { Some(from) });
        }
        self.seek_in(tree.root, kind, tree.height - 1, 0, from, want_data)
            .map(|r| {
                r.or(if want_data {
                    None
                } else {
                    Some(from.max(self.reach(tree.height)))
                })
            })
    }

    fn seek_in(
        &self,
        node: PageNo,
        kind: NodeKind,
        level: u8,
        base: u64,
        from: u64,
        want_data: bool,
    ) -> Result<Option<u64>> {
        self.check_node(node, kind, Some(level))?;
        let span = self.span(level);
        for i in from.saturating_sub(base) / span..self.fanout {
            let lo = base + i * span;
            let child = self.entry(node, i)?;
            match (child.is_none(), level, want_data) {
                (true, _, false) => return Ok(Some(lo.max(from))),
                (true, _, true) => continue,
                (false, 0, true) => return Ok(Some(lo.max(from))),
                (false, 0, false) => continue,
                (false, _, _) => {
                    if let Some(x) = self.seek_in(child, kind, level - 1, lo, from, want_data)? {
                        return Ok(Some(x));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Writes the checksums of the pages a sealed epoch wrote.
    pub fn seal_checksums(&self, pages: &[PageNo]) -> Result<()> {
        let mut b = vec![0u8; self.ps];
        for &p in pages {
            self.store.read(p, 0, &mut b)?;
            let crc = Self::checksum(&b);
            self.store.write(p, 24, &crc.to_le_bytes())?;
        }
        Ok(())
    }

    /// Applies a sealed epoch's deferred list once its commit is durable (or holds
    /// it back while a walk has the trees pinned).
    pub fn apply_deferred(&self, list: Vec<Deferred>) -> Result<()> {
        {
            let mut pins = self.pins.lock().unwrap();
            if pins.walks > 0 {
                pins.held.extend(list);
                return Ok(());
            }
        }
        self.apply_now(list)
    }

    fn apply_now(&self, list: Vec<Deferred>) -> Result<()> {
        let mut stack = list;
        let mut freed = Vec::new();
        while let Some(d) = stack.pop() {
            let (p, meta, shadowed) = match d {
                Deferred::Dec(p, meta) => (p, meta, false),
                Deferred::Release(p) => (p, true, true),
            };
            let left = self.store.decref(p)?;
            if shadowed && left != 0 {
                log::error!("shadowed page {p} still has {left} references");
                continue;
            }
            if left == 0 {
                if meta && !shadowed {
                    match self
                        .node_kind(p)
                        .and_then(|(kind, _)| self.read_node(p, kind))
                    {
                        Ok(b) => stack.extend(
                            self.children(&b)
                                .into_iter()
                                .map(|(c, k)| Deferred::Dec(c, k.is_some())),
                        ),
                        // A recount does not descend a node that fails its checks, so
                        // its children hold no count from it; but counts saved at a
                        // clean close predate damage done at rest, and then its
                        // children stay counted: they leak until a recount, which
                        // the next open does (`counts_suspect`). Free the node alone
                        // rather than fail a commit that is already durable.
                        Err(e) => {
                            self.counts_suspect.store(true, Ordering::Relaxed);
                            log::error!(
                                "freeing page {p} without its children (they stay \
                                 allocated until the store is next mounted): {e}"
                            )
                        }
                    }
                }
                self.set_verified(p, false);
                freed.push(p);
            }
        }
        self.store.release(&mut freed);
        Ok(())
    }
}
