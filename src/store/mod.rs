//! The page store: one device of fixed-size pages, a superblock, a reference
//! count for every page and an extent allocator.
//!
//! The store knows pages, never files. Its on-disk format is only the superblock:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `b"CLONEFS\0"` |
//! | 8  | 4 | format version (2; 1 is read too: its catalog holds clusters only) |
//! | 12 | 4 | page size in bytes (power of two, 4 KiB..64 KiB) |
//! | 16 | 8 | capacity in pages |
//! | 24 | 8 | generation (the commit number) |
//! | 32 | 8 | root page of the catalog tree (0 = empty) |
//! | 40 | 4 | height of the catalog tree |
//! | 48 | 8 | next cluster id |
//! | 56 | 8 | creation time (seconds since the epoch) |
//! | 64 | 4 | CRC-32 of bytes 0..64 |
//! | 72 | 8 | first page of the saved reference counts (0 = none) |
//! | 80 | 8 | pages of the saved reference counts |
//! | 88 | 4 | CRC-32 of bytes 72..88 |
//!
//! Pages 0 and 1 hold two copies; commit N writes copy N % 2, so a torn superblock
//! write leaves the previous one intact. Open takes the valid copy with the higher
//! generation.
//!
//! Reference counts live in memory while the store is open. They are derived
//! state: after a crash, open walks the committed trees once and counts every
//! reference (the volume's recount), so pages leaked by a crash are free again and
//! no count can disagree with the trees. A clean close saves them instead
//! ([`Store::save_counts`]): the last commit's superblock names a run of pages
//! holding every page's count, run-length encoded, and the next open reads those
//! pages rather than every tree, so a clean open costs what the counts' runs take
//! (they follow fragmentation, not data). The saved counts belong to that one
//! superblock: the first commit after the open writes a superblock without them
//! and frees their pages, so a crash later recounts. An older clonefs ignores the
//! extension (bytes 72..92 of the superblock page) and recounts. Free space is
//! every page whose count is 0.
//!
//! A page of saved counts:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `b"CFCOUNT\0"` |
//! | 8  | 8 | the page's own number |
//! | 16 | 4 | runs in this page |
//! | 20 | 4 | CRC-32 of the page with this field zeroed |
//! | 24 | 8 each | runs: pages (u32), their count (u32), from page 2 to the end |

pub mod addr;
pub mod cache;
pub mod device;
pub mod librados;
pub mod memdev;
pub mod rados;
pub mod sparse;

use crate::error::{Error, Result};
pub use device::{MmapDevice, PageDevice};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub const MAGIC: &[u8; 8] = b"CLONEFS\0";
/// The version written. Version 2 added restore points and cluster settings to
/// the catalog (record kinds 2 and 3); a version 1 store opens as is and is written
/// as version 2 from its first commit, so an older clonefs then refuses it clearly
/// instead of misreading those records.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version read.
pub const OLDEST_VERSION: u32 = 1;
pub const MIN_PAGE_SIZE: usize = 4096;
pub const MAX_PAGE_SIZE: usize = 65536;
/// Pages 0 and 1 hold the superblocks.
pub const FIRST_DATA_PAGE: u64 = 2;
const SB_BYTES: usize = 92;
const COUNTS_MAGIC: &[u8; 8] = b"CFCOUNT\0";
/// The header of a page of saved counts.
const COUNTS_HEADER: usize = 24;
/// The smallest reserve of pages kept for operations that free space.
const RESERVE_MIN: u64 = 48;

/// A physical page number in the store. 0 means "no page" (page 0 is a superblock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageNo(pub u64);

impl PageNo {
    pub const NONE: PageNo = PageNo(0);
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for PageNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a committed superblock records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub page_size: u32,
    pub capacity_pages: u64,
    pub generation: u64,
    pub catalog_root: PageNo,
    pub catalog_height: u32,
    pub next_cluster_id: u64,
    pub created: u64,
    /// The reference counts as of this commit, saved by a clean close.
    pub counts: Option<CountMap>,
}

/// Where a store at rest saved its reference counts: `pages` pages from `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountMap {
    pub first: PageNo,
    pub pages: u64,
}

impl Superblock {
    fn encode(&self, page_size: usize) -> Vec<u8> {
        let mut b = vec![0u8; page_size];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.capacity_pages.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..40].copy_from_slice(&self.catalog_root.0.to_le_bytes());
        b[40..44].copy_from_slice(&self.catalog_height.to_le_bytes());
        b[48..56].copy_from_slice(&self.next_cluster_id.to_le_bytes());
        b[56..64].copy_from_slice(&self.created.to_le_bytes());
        let crc = crc32fast::hash(&b[0..64]);
        b[64..68].copy_from_slice(&crc.to_le_bytes());
        if let Some(m) = self.counts {
            b[72..80].copy_from_slice(&m.first.0.to_le_bytes());
            b[80..88].copy_from_slice(&m.pages.to_le_bytes());
            let crc = crc32fast::hash(&b[72..88]);
            b[88..92].copy_from_slice(&crc.to_le_bytes());
        }
        b
    }

    /// Decodes one superblock copy, or says what is wrong with it.
    fn decode(b: &[u8]) -> std::result::Result<Superblock, String> {
        if &b[0..8] != MAGIC {
            return Err("not a clonefs store (bad magic)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        if u32_at(64) != crc32fast::hash(&b[0..64]) {
            return Err("superblock checksum mismatch".into());
        }
        let version = u32_at(8);
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "format version {version}, but this clonefs reads versions {OLDEST_VERSION} \
                 to {FORMAT_VERSION}{}",
                if version > FORMAT_VERSION {
                    " (the store was made by a newer clonefs)"
                } else {
                    ""
                }
            ));
        }
        let page_size = u32_at(12);
        if !valid_page_size(page_size as usize) {
            return Err(format!("bad page size {page_size}"));
        }
        Ok(Superblock {
            page_size,
            capacity_pages: u64_at(16),
            generation: u64_at(24),
            catalog_root: PageNo(u64_at(32)),
            catalog_height: u32_at(40),
            next_cluster_id: u64_at(48),
            created: u64_at(56),
            counts: (u32_at(88) == crc32fast::hash(&b[72..88]) && u64_at(72) != 0).then(|| {
                CountMap {
                    first: PageNo(u64_at(72)),
                    pages: u64_at(80),
                }
            }),
        })
    }
}

pub fn valid_page_size(ps: usize) -> bool {
    ps.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps)
}

/// Capacity, used and free, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreSpace {
    pub page_size: u64,
    pub capacity: u64,
    pub used: u64,
    pub free: u64,
}

pub struct Store {
    dev: Arc<dyn PageDevice>,
    path: PathBuf,
    page_size: usize,
    capacity: u64,
    refs: sparse::Counts,
    alloc: Mutex<Allocator>,
    failed: AtomicBool,
    /// Tickets handed to callers of [`Store::sync_shared`], and what the syncs
    /// started and finished so far cover: concurrent callers share device syncs.
    sync_tickets: AtomicU64,
    syncs: Mutex<Syncs>,
    sync_done: Condvar,
}

/// The last ticket a sync in flight covers, and the last one a finished sync
/// covers (`started >= synced`).
#[derive(Default)]
struct Syncs {
    started: u64,
    synced: u64,
}

/// Free extents of the store, keyed by first page.
struct Allocator {
    free: BTreeMap<u64, u64>,
    free_pages: u64,
    /// Where the next search starts, so consecutive allocations are contiguous.
    cursor: u64,
    /// Pages only operations that free space may use (unlink, truncate, commit).
    reserve: u64,
}

impl Allocator {
    fn new(capacity: u64) -> Allocator {
        Allocator {
            free: BTreeMap::new(),
            free_pages: 0,
            cursor: FIRST_DATA_PAGE,
            reserve: (capacity / 32).clamp(RESERVE_MIN, 4096),
        }
    }

    /// Takes up to `want` contiguous pages, preferring a run that fits whole.
    fn take(&mut self, want: u64, use_reserve: bool) -> Option<(u64, u64)> {
        let limit = if use_reserve { 0 } else { self.reserve };
        if self.free_pages <= limit {
            return None;
        }
        let want = want.min(self.free_pages - limit);
        let fits = |(&s, &l): (&u64, &u64)| (l >= want).then_some((s, l));
        let found = self
            .free
            .range(self.cursor..)
            .find_map(fits)
            .or_else(|| self.free.range(..self.cursor).find_map(fits))
            .or_else(|| self.free.range(self.cursor..).next().map(|(&s, &l)| (s, l)))
            .or_else(|| self.free.iter().next().map(|(&s, &l)| (s, l)))?;
        let (start, len) = found;
        let n = want.min(len);
        self.free.remove(&start);
        if len > n {
            self.free.insert(start + n, len - n);
        }
        self.free_pages -= n;
        self.cursor = start + n;
        Some((start, n))
    }

    fn give_back(&mut self, start: u64, len: u64) {
        let mut start = start;
        let mut len = len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += nl;
        }
        self.free.insert(start, len);
    }
}

impl Store {
    /// Writes a fresh pair of superblocks on `dev`; the device must be new.
    pub fn format(dev: &dyn PageDevice, now: u64) -> Result<Superblock> {
        let ps = dev.page_size();
        if !valid_page_size(ps) {
            return Err(Error::InvalidArgument(
                "page size must be a power of two from 4 KiB to 64 KiB",
            ));
        }
        let capacity = dev.capacity_pages();
        if capacity < 64 {
            return Err(Error::InvalidArgument("a store needs at least 64 pages"));
        }
        let mut sb = Superblock {
            page_size: ps as u32,
            capacity_pages: capacity,
            generation: 0,
            catalog_root: PageNo::NONE,
            catalog_height: 0,
            next_cluster_id: 1,
            created: now,
            counts: None,
        };
        dev.allocate(0, FIRST_DATA_PAGE)?;
        dev.write(1, 0, &sb.encode(ps))?;
        sb.generation = 1;
        dev.commit(0, &Superblock::encode(&sb, ps))?;
        Ok(sb)
    }

    /// Reads the superblocks of `dev` and returns the newest valid one, or a clear
    /// error naming `path` and the problem. Reference counts start at zero: the
    /// caller recounts them from the trees and then calls [`Store::recount_done`].
    pub fn open(dev: Arc<dyn PageDevice>, path: &Path) -> Result<(Store, Superblock)> {
        let sb = Self::read_superblock(dev.as_ref(), path)?;
        let bad = |why: String| Error::BadStore {
            path: path.to_owned(),
            why,
        };
        if sb.page_size as usize != dev.page_size() {
            return Err(bad(format!(
                "superblock says page size {} but the device was opened with {}",
                sb.page_size,
                dev.page_size()
            )));
        }
        if dev.capacity_pages() < sb.capacity_pages {
            return Err(bad(format!(
                "truncated: the superblock promises {} pages of {} bytes, the file holds {}",
                sb.capacity_pages,
                sb.page_size,
                dev.capacity_pages()
            )));
        }
        let capacity = sb.capacity_pages;
        let store = Store {
            page_size: dev.page_size(),
            path: path.to_owned(),
            capacity,
            refs: sparse::Counts::new(capacity),
            alloc: Mutex::new(Allocator::new(capacity)),
            failed: AtomicBool::new(false),
            sync_tickets: AtomicU64::new(0),
            syncs: Mutex::default(),
            sync_done: Condvar::new(),
            dev,
        };
        Ok((store, sb))
    }

    /// Reads both superblock copies and picks the newest valid one.
    pub fn read_superblock(dev: &dyn PageDevice, path: &Path) -> Result<Superblock> {
        let bad = |why: String| Error::BadStore {
            path: path.to_owned(),
            why,
        };
        if dev.capacity_pages() < FIRST_DATA_PAGE {
            return Err(bad("too short to be a clonefs store (no superblock)".into()));
        }
        let mut best: Option<Superblock> = None;
        let mut why = Vec::new();
        for slot in 0..2u64 {
            let mut b = vec![0u8; SB_BYTES];
            dev.read(slot, 0, &mut b)?;
            match Superblock::decode(&b) {
                Ok(sb) if best.as_ref().is_none_or(|b| sb.generation > b.generation) => {
                    best = Some(sb)
                }
                Ok(_) => {}
                Err(e) => why.push(format!("superblock copy {slot}: {e}")),
            }
        }
        best.ok_or_else(|| {
            if why.iter().all(|w| w.contains("bad magic")) {
                bad("not a clonefs store (no clonefs superblock found)".into())
            } else {
                bad(why.join("; "))
            }
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn capacity_pages(&self) -> u64 {
        self.capacity
    }

    fn guard(&self) -> Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::PreviousIo);
        }
        Ok(())
    }

    fn note<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(Error::Io(_)) = &r {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }

    fn check_page(&self, page: PageNo) -> Result<()> {
        if page.0 < FIRST_DATA_PAGE || page.0 >= self.capacity {
            return Err(Error::Corrupt {
                page: page.0,
                why: format!(
                    "page number outside the store (capacity {} pages)",
                    self.capacity
                ),
            });
        }
        Ok(())
    }

    pub fn read(&self, page: PageNo, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_page(page)?;
        self.dev.read(page.0, offset, buf)
    }

    pub fn write(&self, page: PageNo, offset: usize, data: &[u8]) -> Result<()> {
        self.guard()?;
        self.check_page(page)?;
        self.note(self.dev.write(page.0, offset, data))
    }

    pub fn read_u64(&self, page: PageNo, offset: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(page, offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn refcount(&self, page: PageNo) -> u32 {
        self.refs
            .get(page.0)
            .map_or(0, |r| r.load(Ordering::Acquire))
    }

    pub fn incref(&self, page: PageNo) {
        self.refs.entry(page.0).fetch_add(1, Ordering::AcqRel);
    }

    /// Drops one reference and returns how many remain.
    pub fn decref(&self, page: PageNo) -> Result<u32> {
        let Some(r) = self.refs.get(page.0) else {
            return Err(Error::Corrupt {
                page: page.0,
                why: "reference count would go below zero".into(),
            });
        };
        let old = r.fetch_sub(1, Ordering::AcqRel);
        if old == 0 {
            r.store(0, Ordering::Release);
            return Err(Error::Corrupt {
                page: page.0,
                why: "reference count would go below zero".into(),
            });
        }
        Ok(old - 1)
    }

    /// Hands out up to `want` contiguous pages, each with a count of 1. Fails with
    /// `NoSpace` when none is free (outside the reserve, unless `use_reserve`).
    pub fn allocate(&self, want: u64, use_reserve: bool) -> Result<(PageNo, u64)> {
        self.guard()?;
        let (start, n) = self
            .alloc
            .lock()
            .unwrap()
            .take(want.max(1), use_reserve)
            .ok_or(Error::NoSpace)?;
        if let Err(e) = self.dev.allocate(start, n) {
            self.alloc.lock().unwrap().give_back(start, n);
            return Err(e);
        }
        for p in start..start + n {
            self.refs.entry(p).store(1, Ordering::Release);
        }
        Ok((PageNo(start), n))
    }

    /// Returns pages whose count reached zero to the allocator and the host.
    pub fn release(&self, pages: &mut [PageNo]) {
        pages.sort_unstable();
        let mut alloc = self.alloc.lock().unwrap();
        let mut i = 0;
        while i < pages.len() {
            let start = pages[i].0;
            let mut n = 1;
            while i + (n as usize) < pages.len() && pages[i + n as usize].0 == start + n {
                n += 1;
            }
            alloc.give_back(start, n);
            alloc.free_pages += n;
            self.dev.free(start, n);
            i += n as usize;
        }
    }

    /// After the volume layer has counted every reference of the committed trees (or
    /// the saved counts were loaded), every page with count 0 becomes free.
    pub fn recount_done(&self) {
        let mut alloc = self.alloc.lock().unwrap();
        *alloc = Allocator::new(self.capacity);
        for (start, len, count) in self.count_runs() {
            if count == 0 {
                alloc.free.insert(start, len);
                alloc.free_pages += len;
            }
        }
    }

    /// Every page's count from the first data page on, as maximal runs of equal
    /// counts: (first page, pages, count). A stretch never counted is one run.
    fn count_runs(&self) -> Vec<(u64, u64, u32)> {
        let mut runs: Vec<(u64, u64, u32)> = Vec::new();
        let mut add = |start: u64, len: u64, count: u32| match runs.last_mut() {
            Some((_, l, c)) if *c == count => *l += len,
            _ => runs.push((start, len, count)),
        };
        let chunk = sparse::CHUNK;
        for k in FIRST_DATA_PAGE / chunk..self.refs.chunk_count() {
            let base = k * chunk;
            let from = FIRST_DATA_PAGE.max(base);
            let to = (base + chunk).min(self.capacity);
            match self.refs.chunk(k) {
                None => add(from, to - from, 0),
                Some(c) => {
                    for p in from..to {
                        add(p, 1, c[(p - base) as usize].load(Ordering::Relaxed));
                    }
                }
            }
        }
        runs
    }

    /// Saves every page's count in pages of the store, for a clean close: the
    /// caller names them in its last superblock ([`Superblock::counts`]) and
    /// changes nothing after. The pages hold a count of 1 each, in the saved
    /// counts too; the next open frees them once its first commit no longer names
    /// them. `None` when the store has no run of free pages to hold them (the next
    /// open recounts).
    pub fn save_counts(&self) -> Result<Option<CountMap>> {
        let per = ((self.page_size - COUNTS_HEADER) / 8) as u64;
        let pages_for = |runs: &[(u64, u64, u32)]| -> u64 {
            let entries: u64 = runs.iter().map(|r| r.1.div_ceil(u32::MAX as u64)).sum();
            entries.div_ceil(per).max(1)
        };
        let mut want = pages_for(&self.count_runs()) + 1;
        for _ in 0..3 {
            let Ok((first, got)) = self.allocate(want, true) else {
                return Ok(None);
            };
            let runs = self.count_runs();
            if pages_for(&runs) <= got {
                self.write_counts(first, got, &runs)?;
                return Ok(Some(CountMap { first, pages: got }));
            }
            // Too short a run of free pages (or the map grew by these): try longer.
            want = pages_for(&runs) + 1;
            let mut pages: Vec<PageNo> = (first.0..first.0 + got).map(PageNo).collect();
            for &p in &pages {
                self.decref(p)?;
            }
            self.release(&mut pages);
        }
        Ok(None)
    }

    fn write_counts(&self, first: PageNo, pages: u64, runs: &[(u64, u64, u32)]) -> Result<()> {
        let per = (self.page_size - COUNTS_HEADER) / 8;
        let mut entries = runs.iter().flat_map(|&(_, len, count)| {
            let max = u32::MAX as u64;
            (0..len.div_ceil(max)).map(move |k| ((len - k * max).min(max) as u32, count))
        });
        let mut b = vec![0u8; self.page_size];
        for p in first.0..first.0 + pages {
            b.fill(0);
            b[0..8].copy_from_slice(COUNTS_MAGIC);
            b[8..16].copy_from_slice(&p.to_le_bytes());
            let mut n = 0;
            for (slot, (len, count)) in b[COUNTS_HEADER..]
                .chunks_exact_mut(8)
                .zip(entries.by_ref().take(per))
            {
                slot[0..4].copy_from_slice(&len.to_le_bytes());
                slot[4..8].copy_from_slice(&count.to_le_bytes());
                n += 1;
            }
            b[16..20].copy_from_slice(&(n as u32).to_le_bytes());
            let crc = counts_checksum(&b);
            b[20..24].copy_from_slice(&crc.to_le_bytes());
            self.write(PageNo(p), 0, &b)?;
        }
        Ok(())
    }

    /// The saved counts `map` names, as runs of (pages, count) from the first data
    /// page; or why they cannot be used (torn, overwritten, not covering the store).
    pub fn read_counts(&self, map: CountMap) -> std::result::Result<Vec<(u64, u32)>, String> {
        let end = map.first.0.checked_add(map.pages);
        if map.first.0 < FIRST_DATA_PAGE || end.is_none_or(|e| e > self.capacity) {
            return Err(format!(
                "pages {}+{} lie outside the store",
                map.first, map.pages
            ));
        }
        let mut runs = Vec::new();
        let mut covered = 0u64;
        let mut b = vec![0u8; self.page_size];
        for p in map.first.0..map.first.0 + map.pages {
            self.dev
                .read(p, 0, &mut b)
                .map_err(|e| format!("page {p}: {e}"))?;
            let stored = u32::from_le_bytes(b[20..24].try_into().unwrap());
            if &b[0..8] != COUNTS_MAGIC
                || u64::from_le_bytes(b[8..16].try_into().unwrap()) != p
                || stored != counts_checksum(&b)
            {
                return Err(format!("page {p} is not an intact page of counts"));
            }
            let n = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
            if COUNTS_HEADER + 8 * n > self.page_size {
                return Err(format!("page {p} claims {n} runs"));
            }
            for e in b[COUNTS_HEADER..COUNTS_HEADER + 8 * n].chunks_exact(8) {
                let len = u32::from_le_bytes(e[0..4].try_into().unwrap()) as u64;
                let count = u32::from_le_bytes(e[4..8].try_into().unwrap());
                if len == 0 {
                    return Err(format!("page {p} holds a run of no pages"));
                }
                covered += len;
                runs.push((len, count));
            }
        }
        if covered != self.capacity - FIRST_DATA_PAGE {
            return Err(format!(
                "they cover {covered} pages, the store has {}",
                self.capacity - FIRST_DATA_PAGE
            ));
        }
        Ok(runs)
    }

    /// Sets every page's count to `truth` (a recount of the committed trees, when
    /// nothing else changes the store) and rebuilds free space from it; returns the
    /// pages that differed as (page, count held, truth).
    pub fn correct_counts(&self, truth: &sparse::Counts) -> Vec<(u64, u32, u32)> {
        let mut wrong = Vec::new();
        for k in 0..self.refs.chunk_count() {
            if self.refs.chunk(k).is_none() && truth.chunk(k).is_none() {
                continue;
            }
            let base = k * sparse::CHUNK;
            for p in base.max(FIRST_DATA_PAGE)..(base + sparse::CHUNK).min(self.capacity) {
                let held = self.refcount(PageNo(p));
                let real = truth.get(p).map_or(0, |c| c.load(Ordering::Relaxed));
                if held != real {
                    wrong.push((p, held, real));
                    self.refs.entry(p).store(real, Ordering::Release);
                }
            }
        }
        if !wrong.is_empty() {
            self.recount_done();
        }
        wrong
    }

    /// Where the saved counts `map` disagree with the counts held now (a recount),
    /// the first `limit` pages as (page, saved, now). The map's own pages hold 1
    /// in it and nothing in the trees: they are not differences.
    pub fn saved_counts_differ(
        &self,
        map: CountMap,
        limit: usize,
    ) -> std::result::Result<Vec<(u64, u32, u32)>, String> {
        let own = map.first.0..map.first.0 + map.pages;
        let mut saved = self.read_counts(map)?.into_iter();
        let mut now = self.count_runs().into_iter();
        let (mut s, mut n) = (saved.next(), now.next().map(|r| (r.1, r.2)));
        let mut page = FIRST_DATA_PAGE;
        let mut out = Vec::new();
        while let (Some((sl, sc)), Some((nl, nc))) = (s, n) {
            let step = sl.min(nl);
            if sc != nc && out.len() < limit {
                for p in page..page + step {
                    if out.len() < limit && !(own.contains(&p) && sc == 1 && nc == 0) {
                        out.push((p, sc, nc));
                    }
                }
            }
            page += step;
            s = if sl > step {
                Some((sl - step, sc))
            } else {
                saved.next()
            };
            n = if nl > step {
                Some((nl - step, nc))
            } else {
                now.next().map(|r| (r.1, r.2))
            };
        }
        Ok(out)
    }

    /// Takes the saved counts `map` names as every page's count; the counts must
    /// all be zero still. On an error nothing was changed (the caller recounts).
    pub fn load_counts(&self, map: CountMap) -> std::result::Result<(), String> {
        let runs = self.read_counts(map)?;
        let mut p = FIRST_DATA_PAGE;
        for (len, count) in runs {
            if count != 0 {
                for q in p..p + len {
                    self.refs.entry(q).store(count, Ordering::Relaxed);
                }
            }
            p += len;
        }
        Ok(())
    }

    /// Are more than `n` pages free outside the reserve?
    pub fn has_room(&self, n: u64) -> bool {
        let alloc = self.alloc.lock().unwrap();
        alloc.free_pages > alloc.reserve + n
    }

    /// Is `page` free in the allocator's view (for fsck)?
    pub fn is_free(&self, page: PageNo) -> bool {
        let alloc = self.alloc.lock().unwrap();
        alloc
            .free
            .range(..=page.0)
            .next_back()
            .is_some_and(|(&s, &l)| page.0 < s + l)
    }

    pub fn sync(&self) -> Result<()> {
        self.guard()?;
        self.note(self.dev.sync())
    }

    /// As [`Store::sync`], shared. A caller's writes are durable once a sync that
    /// began after them ends: the caller waits for such a sync when one is in
    /// flight, and otherwise starts its own at once, beside any older one still
    /// running, so a caller waits through one device sync at most (unless it fails).
    pub fn sync_shared(&self) -> Result<()> {
        let ticket = self.sync_tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let mut syncs = self.syncs.lock().unwrap();
        while syncs.started >= ticket {
            if syncs.synced >= ticket {
                return Ok(());
            }
            syncs = self.sync_done.wait(syncs).unwrap();
        }
        // This sync starts now: it covers every ticket handed out so far.
        let covers = self.sync_tickets.load(Ordering::Acquire);
        syncs.started = covers;
        drop(syncs);
        let r = self.sync();
        let mut syncs = self.syncs.lock().unwrap();
        if r.is_ok() {
            syncs.synced = syncs.synced.max(covers);
        } else {
            // Those waiting on this sync try their own.
            syncs.started = syncs.synced;
        }
        self.sync_done.notify_all();
        r
    }

    /// Makes `sb` the committed state: the caller has synced every page it reaches.
    pub fn commit(&self, sb: &Superblock) -> Result<()> {
        self.guard()?;
        let slot = sb.generation % 2;
        self.note(self.dev.commit(slot, &sb.encode(self.page_size)))
    }

    /// Lets go of the device's hold on the store: the end of a clean close.
    pub fn let_go(&self) -> Result<()> {
        self.dev.release()
    }

    pub fn space(&self) -> StoreSpace {
        let alloc = self.alloc.lock().unwrap();
        let ps = self.page_size as u64;
        let usable = self.capacity - FIRST_DATA_PAGE;
        StoreSpace {
            page_size: ps,
            capacity: usable * ps,
            used: (usable - alloc.free_pages) * ps,
            free: alloc.free_pages.saturating_sub(alloc.reserve) * ps,
        }
    }

    /// Every page with a non-zero count, for fsck.
    pub fn counts(&self) -> impl Iterator<Item = (PageNo, u32)> + '_ {
        self.count_runs()
            .into_iter()
            .filter(|r| r.2 > 0)
            .flat_map(|(start, len, count)| (start..start + len).map(move |p| (PageNo(p), count)))
    }
}

fn counts_checksum(page: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&page[..20]);
    h.update(&[0; 4]);
    h.update(&page[24..]);
    h.finalize()
}

#[cfg(test)]
mod tests;
