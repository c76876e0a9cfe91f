//! A local cache of a remote device's pages (a RADOS store's), in front of it.
//!
//! [`CachedDevice`] wraps any [`PageDevice`] and keeps copies of pages in a local
//! file (`--cache DIR`, `--cache-size SIZE`): reads of a cached page never leave
//! the host. The file is direct-mapped: page `p` lives in slot `p % slots`, so a
//! lookup is one comparison and the table costs 8 bytes of memory per slot.
//!
//! What it promises: a cached slot always holds exactly the bytes the device
//! below would return for its page. Every write goes to the device first and then
//! to the cache (write-through; a write of whole pages also fills their slots),
//! so the device below stays the one truth and its sync, commit and release keep
//! their meaning unchanged: a cache never acknowledges a byte the device has not.
//!
//! What it does not promise: to outlive the mount. The file is emptied when a
//! daemon opens it and removed when the daemon closes, because while it was
//! closed another host may have taken the store over and changed any page. (A
//! cache that survives a remount would need the store to say which pages changed
//! since; see the README's "A store on Ceph".)
//!
//! A slot's tag and bytes change together under its stripe's lock. A page read
//! from below is put in the cache only if no write to its stripe began while the
//! read was under way, so a slow read can never put back bytes a write replaced.
//! A failure of the cache file (a full or failing local disk) drops the slot and
//! is logged once; the device's answer is used and no operation fails for it.

use super::PageDevice;
use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Locks over the slots (slot `s` is under stripe `s % STRIPES`).
const STRIPES: usize = 256;
/// A slot's tag when it holds no page (tags are page + 1).
const EMPTY: u64 = 0;

pub struct CachedDevice<D> {
    inner: D,
    file: File,
    path: PathBuf,
    page_size: usize,
    slots: u64,
    /// Per slot: the page it holds, plus one; `EMPTY` when none.
    tags: Vec<AtomicU64>,
    /// Per stripe: how many writes to its slots' pages have begun.
    stripes: Vec<Mutex<u64>>,
    hits: AtomicU64,
    misses: AtomicU64,
    complained: AtomicBool,
}

/// What the cache has done, for the log and the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

impl<D: PageDevice> CachedDevice<D> {
    /// Puts a cache of `bytes` (rounded down to whole pages; at least 16 pages)
    /// in front of `inner`, in a new file at `path`, locked for this process.
    pub fn new(inner: D, path: &Path, bytes: u64) -> Result<CachedDevice<D>> {
        let page_size = inner.page_size();
        let slots = (bytes / page_size as u64).min(inner.capacity_pages());
        if slots < 16 {
            return Err(Error::InvalidArgument(
                "a page cache needs room for at least 16 pages (--cache-size)",
            ));
        }
        let bad = |why: String| Error::BadStore {
            path: path.to_owned(),
            why,
        };
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| bad(format!("cannot make the cache directory: {e}")))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| bad(format!("cannot make the page cache file: {e}")))?;
        let file = super::device::open_locked(path).map_err(|e| match e {
            Error::Locked { holder, .. } => bad(format!(
                "the page cache is in use by {holder}: a daemon of this host serves the \
                 store already (or give another --host or --cache)"
            )),
            e => e,
        })?;
        // Emptied, then sparse at its full size: slots take disk space as they fill.
        file.set_len(0)
            .and_then(|()| file.set_len(slots * page_size as u64))
            .map_err(|e| bad(format!("cannot size the page cache file: {e}")))?;
        Ok(CachedDevice {
            inner,
            file,
            path: path.to_owned(),
            page_size,
            slots,
            tags: (0..slots).map(|_| AtomicU64::new(EMPTY)).collect(),
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            complained: AtomicBool::new(false),
        })
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn slot(&self, page: u64) -> u64 {
        page % self.slots
    }

    fn stripe(&self, page: u64) -> MutexGuard<'_, u64> {
        self.stripes[(self.slot(page) % STRIPES as u64) as usize]
            .lock()
            .unwrap()
    }

    fn holds(&self, page: u64) -> bool {
        self.tags[self.slot(page) as usize].load(Ordering::Relaxed) == page + 1
    }

    /// Drops a slot after the cache file failed; says so once.
    fn drop_slot(&self, page: u64, e: std::io::Error) {
        self.tags[self.slot(page) as usize].store(EMPTY, Ordering::Relaxed);
        if !self.complained.swap(true, Ordering::Relaxed) {
            log::warn!(
                "the page cache {} failed ({e}); pages it cannot keep are read from the store",
                self.path.display()
            );
        }
    }

    /// Copies `bytes` into `page`'s slot at `offset` (stripe locked by the caller);
    /// `fill` makes the slot `page`'s, otherwise it is updated only if it is.
    fn put(&self, page: u64, offset: usize, bytes: &[u8], fill: bool) {
        if !fill && !self.holds(page) {
            return;
        }
        let slot = self.slot(page);
        if fill {
            // Emptied first: a failed copy must not leave the old page's tag on new bytes.
            self.tags[slot as usize].store(EMPTY, Ordering::Relaxed);
        }
        let at = slot * self.page_size as u64 + offset as u64;
        match self.file.write_all_at(bytes, at) {
            Ok(()) if fill => self.tags[slot as usize].store(page + 1, Ordering::Relaxed),
            Ok(()) => {}
            Err(e) => self.drop_slot(page, e),
        }
    }

    /// Serves the read from the cache if every page it touches is there.
    fn read_cached(&self, page: u64, offset: usize, buf: &mut [u8]) -> bool {
        let ps = self.page_size;
        let mut done = 0;
        let mut p = page + (offset / ps) as u64;
        let mut off = offset % ps;
        while done < buf.len() {
            let n = (ps - off).min(buf.len() - done);
            let _stripe = self.stripe(p);
            if !self.holds(p) {
                return false;
            }
            let at = self.slot(p) * ps as u64 + off as u64;
            if let Err(e) = self.file.read_exact_at(&mut buf[done..done + n], at) {
                self.drop_slot(p, e);
                return false;
            }
            done += n;
            p += 1;
            off = 0;
        }
        true
    }

    /// Runs `f` (a write to the device below) with the stripes of `pages` locked,
    /// each counting one more write, then copies `data` into the cache.
    fn write_through(
        &self,
        page: u64,
        offset: usize,
        data: &[u8],
        f: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let ps = self.page_size;
        let first = page + (offset / ps) as u64;
        let off = offset % ps;
        let count = (off + data.len()).div_ceil(ps) as u64;
        let mut stripes: Vec<usize> = (first..first + count.min(STRIPES as u64))
            .map(|p| (self.slot(p) % STRIPES as u64) as usize)
            .collect();
        // Always in ascending order, so two writers never wait on each other's locks.
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards: Vec<_> = stripes
            .iter()
            .map(|&s| self.stripes[s].lock().unwrap())
            .collect();
        for g in guards.iter_mut() {
            **g += 1;
        }
        let r = f();
        let mut done = 0;
        let mut in_page = off;
        for p in first..first + count {
            let n = (ps - in_page).min(data.len() - done);
            if r.is_ok() {
                self.put(p, in_page, &data[done..done + n], n == ps);
            } else {
                // The device may hold either version now: forget the page.
                self.tags[self.slot(p) as usize].store(EMPTY, Ordering::Relaxed);
            }
            done += n;
            in_page = 0;
        }
        drop(guards);
        r
    }
}

impl<D: PageDevice> PageDevice for CachedDevice<D> {
    fn page_size(&self) -> usize {
        self.page_size
    }

    fn capacity_pages(&self) -> u64 {
        self.inner.capacity_pages()
    }

    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.read_cached(page, offset, buf) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Whole pages from below (one request, as the caller's would have been),
        // so that each can be cached.
        let ps = self.page_size;
        let first = page + (offset / ps) as u64;
        let off = offset % ps;
        let count = (off + buf.len()).div_ceil(ps) as u64;
        let seen: Vec<u64> = (first..first + count).map(|p| *self.stripe(p)).collect();
        let mut whole = vec![0u8; count as usize * ps];
        self.inner.read(first, 0, &mut whole)?;
        buf.copy_from_slice(&whole[off..off + buf.len()]);
        for (i, p) in (first..first + count).enumerate() {
            let stripe = self.stripe(p);
            if *stripe == seen[i] {
                self.put(p, 0, &whole[i * ps..(i + 1) * ps], true);
            }
        }
        Ok(())
    }

    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<()> {
        self.write_through(page, offset, data, || self.inner.write(page, offset, data))
    }

    fn allocate(&self, start: u64, count: u64) -> Result<()> {
        self.inner.allocate(start, count)
    }

    fn free(&self, start: u64, count: u64) {
        self.inner.free(start, count);
        // The device below may read these pages as zeros now (RADOS removes whole
        // objects): their slots go, by page or, for a range past the cache's
        // size, by slot.
        let freed = start..start.saturating_add(count);
        let drop_if_freed = |slot: usize| {
            let tag = self.tags[slot].load(Ordering::Relaxed);
            if tag != EMPTY && freed.contains(&(tag - 1)) {
                self.tags[slot].store(EMPTY, Ordering::Relaxed);
            }
        };
        if count >= self.slots {
            for slot in 0..self.slots {
                let _stripe = self.stripes[(slot % STRIPES as u64) as usize]
                    .lock()
                    .unwrap();
                drop_if_freed(slot as usize);
            }
        } else {
            for p in freed.clone() {
                let _stripe = self.stripe(p);
                drop_if_freed(self.slot(p) as usize);
            }
        }
    }

    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }

    fn commit(&self, page: u64, bytes: &[u8]) -> Result<()> {
        self.write_through(page, 0, bytes, || self.inner.commit(page, bytes))
    }

    fn release(&self) -> Result<()> {
        self.inner.release()?;
        // A clean close: the daemon may exit without dropping the device.
        self.remove();
        Ok(())
    }
}

impl<D> CachedDevice<D> {
    fn remove(&self) {
        log::info!(
            "page cache {}: {} reads served locally, {} from the store; removed",
            self.path.display(),
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed)
        );
        let _ = std::fs::remove_file(&self.path);
    }
}

impl<D> Drop for CachedDevice<D> {
    fn drop(&mut self) {
        if self.path.exists() {
            self.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memdev::MemDevice;
    use std::sync::Arc;

    const PS: usize = 4096;

    /// A tiny deterministic generator (xorshift), so failures replay.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn cached(pages: u64, cache_pages: u64) -> (tempfile::TempDir, CachedDevice<MemDevice>) {
        let dir = tempfile::tempdir().unwrap();
        let mem = MemDevice::new(PS, pages);
        let dev =
            CachedDevice::new(mem, &dir.path().join("c/p.cache"), cache_pages * PS as u64).unwrap();
        (dir, dev)
    }

    #[test]
    fn reads_match_the_device_below_through_random_writes() {
        // A cache of 97 slots over 300 pages: slots are shared and replaced often.
        let (_dir, dev) = cached(300, 97);
        let mut model = vec![0u8; 300 * PS];
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for step in 0..4000 {
            let page = rng.below(300);
            let offset = rng.below(PS as u64 * 2) as usize;
            let max = (300 * PS - page as usize * PS - offset.min(300 * PS - page as usize * PS))
                .min(3 * PS);
            if max == 0 {
                continue;
            }
            let len = 1 + rng.below(max as u64) as usize;
            let at = page as usize * PS + offset;
            if at + len > model.len() {
                continue;
            }
            if rng.below(3) == 0 {
                // Whole pages now and then, which fill slots on the write.
                let (p, n) = (page, (1 + rng.below(3)).min(300 - page) as usize);
                let data: Vec<u8> = (0..n * PS).map(|i| (step + i) as u8).collect();
                dev.write(p, 0, &data).unwrap();
                model[p as usize * PS..p as usize * PS + data.len()].copy_from_slice(&data);
            } else if rng.below(2) == 0 {
                let data = vec![step as u8; len];
                dev.write(page, offset, &data).unwrap();
                model[at..at + len].copy_from_slice(&data);
            } else {
                let mut buf = vec![0xeeu8; len];
                dev.read(page, offset, &mut buf).unwrap();
                assert_eq!(
                    buf,
                    model[at..at + len],
                    "step {step}: read of {len} at {at}"
                );
            }
        }
        // Every slot agrees with the device below.
        for p in 0..300 {
            let mut a = vec![0u8; PS];
            let mut b = vec![0u8; PS];
            dev.read(p, 0, &mut a).unwrap();
            dev.inner().read(p, 0, &mut b).unwrap();
            assert_eq!(a, b, "page {p}");
        }
        let s = dev.stats();
        assert!(s.hits > 200 && s.misses > 200, "{s:?}");
    }

    #[test]
    fn a_second_read_is_served_locally() {
        let (_dir, dev) = cached(64, 64);
        let data = vec![7u8; 2 * PS];
        dev.inner().write(3, 0, &data).unwrap();
        let mut buf = vec![0u8; 100];
        dev.read(4, 10, &mut buf).unwrap();
        assert_eq!(dev.stats(), CacheStats { hits: 0, misses: 1 });
        dev.read(4, 0, &mut buf).unwrap();
        assert_eq!(dev.stats(), CacheStats { hits: 1, misses: 1 });
        assert_eq!(buf, vec![7u8; 100]);
        // A partial write updates the cached page; the next read still hits.
        dev.write(4, 50, &[9u8; 10]).unwrap();
        dev.read(4, 45, &mut buf[..20]).unwrap();
        assert_eq!(
            &buf[..20],
            &[7, 7, 7, 7, 7, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 7, 7, 7, 7, 7]
        );
        assert_eq!(dev.stats().hits, 2);
    }

    #[test]
    fn freed_pages_leave_the_cache() {
        let (_dir, dev) = cached(256, 32);
        for p in [3, 40, 100] {
            dev.write(p, 0, &[p as u8; PS]).unwrap();
        }
        let mut buf = vec![0u8; PS];
        // A small range by page, a large one (past the cache's 32 slots) by slot.
        dev.free(3, 1);
        dev.free(90, 100);
        for p in [3, 40, 100] {
            dev.read(p, 0, &mut buf).unwrap();
        }
        assert_eq!(dev.stats(), CacheStats { hits: 1, misses: 2 });
    }

    #[test]
    fn the_file_is_emptied_on_open_held_while_open_and_removed_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.cache");
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        let mem = || MemDevice::new(PS, 64);
        let dev = CachedDevice::new(mem(), &path, 32 * PS as u64).unwrap();
        let mut buf = vec![1u8; PS];
        dev.read(0, 0, &mut buf).unwrap();
        assert_eq!(
            buf,
            vec![0u8; PS],
            "stale bytes of an old cache file were served"
        );
        let e = CachedDevice::new(mem(), &path, 32 * PS as u64)
            .err()
            .expect("a second cache on the same file");
        assert!(e.to_string().contains("in use by"), "{e}");
        drop(dev);
        assert!(!path.exists());
        let small = CachedDevice::new(mem(), &path, 4 * PS as u64)
            .err()
            .unwrap();
        assert!(small.to_string().contains("--cache-size"), "{small}");
    }

    #[test]
    fn concurrent_readers_and_writers_of_different_pages_agree_with_the_device() {
        let (_dir, dev) = cached(512, 61);
        let dev = Arc::new(dev);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    // Thread t owns pages p with p % 4 == t: writes never overlap a
                    // concurrent read of the same page, as the engine guarantees.
                    let mut rng = Rng(t + 1);
                    let mut mine = [0u8; 128];
                    for step in 0..3000u64 {
                        let i = rng.below(128);
                        let p = i * 4 + t;
                        if rng.below(2) == 0 {
                            let v = (step % 251) as u8 + 1;
                            dev.write(p, 0, &vec![v; PS]).unwrap();
                            mine[i as usize] = v;
                        } else {
                            let mut buf = vec![0u8; PS];
                            dev.read(p, 0, &mut buf).unwrap();
                            assert!(buf.iter().all(|&b| b == mine[i as usize]), "page {p}");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
