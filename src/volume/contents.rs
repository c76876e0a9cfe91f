//! Reading a file, truncating it, and the life of its handles (open, fsync, release).
//!
//! A file's page map is a radix tree of data pages; holes read as zeros. `fsync`
//! commits; `fdatasync` of a file whose size and page map are as last committed
//! (the `remapped` epochs say which) only syncs the store's data. The last release
//! of an orphan frees it.

use super::inode::{Ino, Inode, Kind};
use super::node::{self, NodeKind, Tree};
use super::{ClusterId, Volume};
use crate::error::{Error, Result};
use crate::store::PageNo;
use std::sync::atomic::Ordering;

impl Volume {
    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read(&self, c: ClusterId, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.read_op(c, |_, st| {
            let i = self.load(st, ino)?;
            if i.kind == Kind::Dir {
                return Err(Error::IsADirectory);
            }
            if offset >= i.size {
                return Ok(Vec::new());
            }
            let len = (len as u64).min(i.size - offset) as usize;
            let mut buf = vec![0u8; len];
            self.read_into(i.content, offset, &mut buf)?;
            Ok(buf)
        })
    }

    pub(super) fn read_bytes(&self, t: Tree, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_into(t, offset, &mut buf)?;
        Ok(buf)
    }

    /// The data pages mapping leaves `[first, first + n)` of a content tree.
    pub(super) fn map_range(&self, t: Tree, first: u64, n: u64) -> Result<Vec<PageNo>> {
        let fan = self.eng.fanout;
        let mut out = vec![PageNo::NONE; n as usize];
        let mut idx = first;
        while idx < first + n {
            let end = ((idx / fan + 1) * fan).min(first + n);
            if t.height > 0 && idx < self.eng.reach(t.height) {
                let leaf = if t.height == 1 {
                    t.root
                } else {
                    // The level-1 entry that maps this leaf node.
                    self.leaf_node(t, idx)?
                };
                if !leaf.is_none() {
                    self.eng.check_node(leaf, NodeKind::RadixData, Some(0))?;
                    let mut raw = vec![0u8; 8 * (end - idx) as usize];
                    self.eng
                        .store
                        .read(leaf, node::HEADER + 8 * (idx % fan) as usize, &mut raw)?;
                    for (k, c) in raw.chunks_exact(8).enumerate() {
                        out[(idx - first) as usize + k] =
                            PageNo(u64::from_le_bytes(c.try_into().unwrap()));
                    }
                }
            }
            idx = end;
        }
        Ok(out)
    }

    /// The level-0 radix node of a content tree that maps leaf `idx` (NONE if absent).
    fn leaf_node(&self, t: Tree, idx: u64) -> Result<PageNo> {
        let mut node = t.root;
        for level in (1..t.height).rev() {
            self.eng
                .check_node(node, NodeKind::RadixData, Some(level))?;
            node = self
                .eng
                .entry(node, (idx / self.eng.span(level)) % self.eng.fanout)?;
            if node.is_none() {
                break;
            }
        }
        Ok(node)
    }

    fn read_into(&self, t: Tree, offset: u64, buf: &mut [u8]) -> Result<()> {
        let ps = self.eng.ps as u64;
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / ps;
        let last = (offset + buf.len() as u64 - 1) / ps;
        let pages = self.map_range(t, first, last - first + 1)?;
        let mut done = 0usize;
        let mut k = 0usize;
        while k < pages.len() {
            let pos = offset + done as u64;
            let in_page = (pos % ps) as usize;
            // Extend over physically contiguous pages (or a run of holes).
            let mut run = 1;
            while k + run < pages.len()
                && ((pages[k].is_none() && pages[k + run].is_none())
                    || (!pages[k].is_none() && pages[k + run].0 == pages[k].0 + run as u64))
            {
                run += 1;
            }
            let n = (run * ps as usize - in_page).min(buf.len() - done);
            if pages[k].is_none() {
                buf[done..done + n].fill(0);
            } else {
                self.eng
                    .store
                    .read(pages[k], in_page, &mut buf[done..done + n])?;
            }
            done += n;
            k += run;
        }
        Ok(())
    }

    /// Sets a file's size: unmaps whole pages past it and zeros the tail of the last.
    pub(super) fn truncate(&self, i: &mut Inode, size: u64) -> Result<()> {
        let ps = self.eng.ps as u64;
        if size < i.size {
            let keep = size.div_ceil(ps);
            let gone =
                self.eng
                    .unmap_range(&mut i.content, NodeKind::RadixData, keep, u64::MAX, true)?;
            // Saturating: a count damaged on disk shows in fsck, not as a panic here.
            i.mapped = i.mapped.saturating_sub(gone);
            self.zero_within(i, size, size.div_ceil(ps) * ps)?;
        } else {
            self.zero_gap(i, size)?;
        }
        i.size = size;
        Ok(())
    }

    /// Zeros what mapped pages hold in `[i.size, to)` before the file grows over it.
    /// Bytes past the end of file must read as zeros, but after a crash they may hold
    /// an in-place write that the last commit did not include (the size rolled back).
    pub(super) fn zero_gap(&self, i: &mut Inode, to: u64) -> Result<()> {
        let ps = self.eng.ps as u64;
        let mut from = i.size;
        while from < to {
            let Some(p) = self
                .eng
                .seek(i.content, NodeKind::RadixData, from / ps, true)?
            else {
                break;
            };
            let start = (p * ps).max(from);
            if start >= to {
                break;
            }
            let end = ((p + 1) * ps).min(to);
            self.zero_within(i, start, end)?;
            from = end;
        }
        Ok(())
    }

    /// Zeros bytes `[from, to)` of mapped pages (holes stay holes), within one page.
    pub(super) fn zero_within(&self, i: &mut Inode, from: u64, to: u64) -> Result<()> {
        let ps = self.eng.ps as u64;
        if from >= to {
            return Ok(());
        }
        let idx = from / ps;
        if self
            .eng
            .lookup(i.content, NodeKind::RadixData, idx)?
            .is_none()
        {
            return Ok(());
        }
        let zeros = vec![0u8; (to - from) as usize];
        self.write_bytes(&mut i.content, &mut i.mapped, from, &zeros, true)?;
        Ok(())
    }

    /// Makes a file's data and metadata durable.
    pub fn fsync(&self, c: ClusterId, ino: Ino) -> Result<()> {
        self.getattr(c, ino)?;
        self.commit()
    }

    /// Makes a file's data durable, and the metadata needed to read it back. When
    /// its size and page map are as last committed, its pages were overwritten in
    /// place, so syncing the data pages is enough; otherwise this commits.
    pub fn fdatasync(&self, c: ClusterId, ino: Ino) -> Result<()> {
        let cl = self.cluster(c)?;
        self.getattr(c, ino)?;
        let pending = cl.remapped.lock().unwrap().get(&ino).copied();
        // Read without the commit lock: a commit in flight must not hold up a
        // data-only sync.
        let durable = self.durable.load(Ordering::Acquire);
        match pending {
            Some(e) if e > durable => self.commit(),
            _ => self.eng.store.sync_shared(),
        }
    }

    /// A handle on the file was opened (unlinked files live until the last release).
    pub fn open_file(&self, c: ClusterId, ino: Ino) -> Result<()> {
        self.read_op(c, |cl, st| {
            self.load(st, ino)?;
            *cl.open.lock().unwrap().entry(ino).or_default() += 1;
            Ok(())
        })
    }

    /// The files of cluster `c` that some handle has open.
    pub fn open_files(&self, c: ClusterId) -> Result<Vec<Ino>> {
        Ok(self
            .cluster(c)?
            .open
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect())
    }

    /// A handle on the file was closed.
    pub fn release_file(&self, c: ClusterId, ino: Ino) -> Result<()> {
        let Ok(cl) = self.cluster(c) else {
            return Ok(());
        };
        let last = {
            let mut open = cl.open.lock().unwrap();
            let n = open.entry(ino).or_default();
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&ino);
                true
            } else {
                false
            }
        };
        // Only an unlinked file has anything to free on its last release.
        if !last || self.getattr(c, ino).is_ok_and(|a| a.nlink > 0) {
            return Ok(());
        }
        self.op(c, false, |op| {
            let i = match op.inode(ino) {
                Err(Error::NotFound) => return Ok(()),
                r => r?,
            };
            if i.nlink == 0 && op.cl.open.lock().unwrap().get(&ino).is_none() {
                let i = op.touched.remove(&ino).unwrap();
                self.free_inode(op.cl, op.st, ino, i)?;
                op.st.orphans = op.st.orphans.saturating_sub(1);
            }
            Ok(())
        })
    }
}
