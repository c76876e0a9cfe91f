//! Where a write goes.
//!
//! A write first tries [`Volume::overwrite_in_place`]: when every page it covers is
//! already the file's alone (count 1 along the whole path from the inode table), it
//! writes the data pages directly with the cluster's state held shared, changes no
//! tree, and leaves the file's new times waiting for the next commit. Otherwise it
//! takes the state exclusively and goes through [`Volume::write_bytes`]: pages shared
//! with a clone are copied (copy-on-write), holes get fresh extents, and the page
//! map's nodes on the path are made private first. Whole pages go to the store as
//! `pwrite`s of contiguous runs; partial pages are read, changed and written.

use super::inode::{self, Change, Ino, Inode, Kind};
use super::node::{Deferred, NodeKind, Tree};
use super::{ClusterId, State, Volume, Writer, MAX_FILE_SIZE};
use crate::error::{Error, Result};
use crate::store::PageNo;
use std::sync::atomic::Ordering;

impl Volume {
    /// Writes `data` at `offset`; returns the bytes written (fewer only when the
    /// store filled up part way).
    pub fn write(&self, c: ClusterId, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_as(c, ino, offset, data, Writer::default())
    }

    /// As [`Volume::write`], by `who`. A writer without CAP_FSETID drops the file's
    /// setuid and setgid bits in the same change; a file that has none stays as it
    /// was, so an fdatasync of the write needs no commit.
    pub fn write_as(
        &self,
        c: ClusterId,
        ino: Ino,
        offset: u64,
        data: &[u8],
        who: Writer,
    ) -> Result<usize> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > MAX_FILE_SIZE)
        {
            return Err(Error::TooBig);
        }
        {
            let _gate = self.change()?;
            let done = self.read_op(c, |cl, st| {
                let done = self.overwrite_in_place(st, ino, offset, data, who)?;
                if done.is_some() {
                    cl.changed.store(true, Ordering::Release);
                }
                Ok(done)
            })?;
            if let Some(n) = done {
                return Ok(n);
            }
        }
        self.op(c, false, |op| {
            let i = op.inode(ino)?;
            if i.kind == Kind::Dir {
                return Err(Error::IsADirectory);
            }
            if offset > i.size && !data.is_empty() {
                self.zero_gap(i, offset)?;
            }
            let r = self.write_bytes(&mut i.content, &mut i.mapped, offset, data, false);
            let (n, remapped) = match r {
                Ok(r) => r,
                Err(Error::NoSpace) if data.is_empty() => (0, false),
                Err(e) => return Err(e),
            };
            if n == 0 && !data.is_empty() {
                return Err(Error::NoSpace);
            }
            let grows = offset + n as u64 > i.size;
            i.size = i.size.max(offset + n as u64);
            if !who.from_cache {
                let now = inode::now_ns();
                i.mtime = now;
                i.ctime = now;
            }
            // A dropped setuid bit must be as durable as the data written after it.
            let dropped = i.drop_suidgid(Change::Data, &who.caller);
            if !remapped && !grows && !dropped {
                op.data_only.insert(ino);
            }
            Ok(n)
        })
    }

    /// The common case of a database or a rewriting writer: `data` lands within the
    /// file on pages that belong to it alone, and leaves the inode as it was but for
    /// its times. The pages are written in place and the times wait in `st.times`,
    /// so the cluster's tree is not touched and an epoch with nothing else needs no
    /// commit. None (nothing written) when the write needs more than that.
    ///
    /// It holds the cluster's state shared, so writers of different files (or of
    /// different pages of one, with the writeback cache) write at once. That is
    /// sound because what it reads stays put while the state is held: a page of
    /// this cluster's trees whose path is private gains a reference only by a
    /// change of this cluster, a clone of it or a copy_file_range from it, each of
    /// which holds the state exclusively. (Another cluster's copy of a node shared
    /// with this one raises the counts below it at once and lowers the node's own
    /// only at a commit, which holds the gate.)
    fn overwrite_in_place(
        &self,
        st: &State,
        ino: Ino,
        offset: u64,
        data: &[u8],
        who: Writer,
    ) -> Result<Option<usize>> {
        let i = self.load(st, ino)?;
        if data.is_empty()
            || i.kind != Kind::File
            || offset + data.len() as u64 > i.size
            || i.perm_after(Change::Data, &who.caller) != i.perm
        {
            return Ok(None);
        }
        // Counts below a shared page are lazy: the content tree's counts say whether
        // its pages are shared only when the inode table's path to the record is
        // private too (the slow path makes it so by copying it).
        let per = self.eng.per_page(NodeKind::Inodes);
        let rec = self
            .eng
            .lookup(st.itable, NodeKind::RadixInodes, ino.0 / per)?;
        if !self.private_path(st.itable, NodeKind::RadixInodes, ino.0 / per)?
            || self.eng.store.refcount(rec) != 1
        {
            return Ok(None);
        }
        let ps = self.eng.ps as u64;
        let fan = self.eng.fanout;
        let (first, last) = (offset / ps, (offset + data.len() as u64 - 1) / ps);
        let mut runs = Vec::new();
        let mut idx = first;
        while idx <= last {
            let end = ((idx / fan + 1) * fan).min(last + 1);
            let Some(pages) = self.own_pages(i.content, idx, end - idx)? else {
                return Ok(None);
            };
            runs.push((idx, pages));
            idx = end;
        }
        let mut done = 0usize;
        for (idx, pages) in runs {
            let pos = offset.max(idx * ps);
            let len = ((idx + pages.len() as u64) * ps).min(offset + data.len() as u64) - pos;
            done += self.write_pages(&pages, idx, pos, &data[done..done + len as usize])?;
        }
        if !who.from_cache {
            let now = inode::now_ns();
            self.wait_times(st, ino, now, now);
        }
        Ok(Some(done))
    }

    /// Writes `data` at `offset` into content tree `t`, copying shared pages and
    /// mapping new ones in contiguous runs. Returns bytes written (on running out of
    /// space part way, the bytes written so far) and whether any page was remapped
    /// (a hole filled or a shared page copied), which a commit must make durable.
    pub(super) fn write_bytes(
        &self,
        t: &mut Tree,
        mapped: &mut u64,
        offset: u64,
        data: &[u8],
        reserve: bool,
    ) -> Result<(usize, bool)> {
        let ps = self.eng.ps as u64;
        let fan = self.eng.fanout;
        let mut done = 0usize;
        let mut remapped = false;
        while done < data.len() {
            let pos = offset + done as u64;
            let idx = pos / ps;
            let leaf_end = (idx / fan + 1) * fan;
            let end = (offset + data.len() as u64).min(leaf_end * ps);
            let npages = (end - 1) / ps - idx + 1;
            let r = self.write_leaf(
                t,
                mapped,
                idx,
                npages,
                pos,
                &data[done..done + (end - pos) as usize],
                reserve,
            );
            match r {
                Ok((n, fresh)) => {
                    done += n;
                    remapped |= fresh;
                    if (n as u64) < end - pos {
                        break;
                    }
                }
                Err(Error::NoSpace) if done > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok((done, remapped))
    }

    /// Writes within one leaf radix node: pages `[idx, idx + npages)`.
    #[allow(clippy::too_many_arguments)]
    fn write_leaf(
        &self,
        t: &mut Tree,
        mapped: &mut u64,
        idx: u64,
        npages: u64,
        pos: u64,
        data: &[u8],
        reserve: bool,
    ) -> Result<(usize, bool)> {
        let ps = self.eng.ps as u64;
        // Overwriting pages that belong to this file alone needs no change to its
        // map: write them in place without copying the map's path (which would
        // happen once per commit epoch for every leaf a database rewrites).
        if let Some(old) = self.own_pages(*t, idx, npages)? {
            return self.write_pages(&old, idx, pos, data).map(|n| (n, false));
        }
        let (leaf, slot0) = self.eng.cow_path(t, NodeKind::RadixData, idx, reserve)?;
        let old = self.map_range(*t, idx, npages)?;
        // Which pages need a fresh page: holes and shared pages.
        let need: Vec<bool> = old
            .iter()
            .map(|p| p.is_none() || self.eng.store.refcount(*p) > 1)
            .collect();
        let wanted = need.iter().filter(|n| **n).count() as u64;
        let mut fresh = Vec::with_capacity(wanted as usize);
        while (fresh.len() as u64) < wanted {
            match self
                .eng
                .store
                .allocate(wanted - fresh.len() as u64, reserve)
            {
                Ok((start, n)) => fresh.extend((0..n).map(|k| PageNo(start.0 + k))),
                Err(Error::NoSpace) => break,
                Err(e) => return Err(e),
            }
        }
        let mut fresh = fresh.into_iter();
        let mut done = 0usize;
        let mut targets = Vec::with_capacity(npages as usize);
        for k in 0..npages as usize {
            let (lo, hi) = self.span_in_page(idx + k as u64, pos, data.len());
            let target = if need[k] {
                let Some(p) = fresh.next() else { break };
                if lo > 0 || hi < ps as usize {
                    // A partial write: start from the old bytes, or zeros for a hole.
                    let mut page = vec![0u8; ps as usize];
                    if !old[k].is_none() {
                        self.eng.store.read(old[k], 0, &mut page)?;
                    }
                    self.eng.store.write(p, 0, &page)?;
                }
                self.eng.set_entry(leaf, slot0 + k as u64, p)?;
                if old[k].is_none() {
                    *mapped += 1;
                } else {
                    self.eng.defer(Deferred::Dec(old[k], false));
                }
                p
            } else {
                old[k]
            };
            targets.push((target, lo, hi));
            done += hi - lo;
        }
        self.write_runs(&targets, data)?;
        Ok((done, wanted > 0))
    }

    /// The bytes `[lo, hi)` of leaf page `page` that `len` bytes written at `pos` cover.
    fn span_in_page(&self, page: u64, pos: u64, len: usize) -> (usize, usize) {
        let ps = self.eng.ps as u64;
        let start = page * ps;
        let lo = pos.max(start) - start;
        let hi = (pos + len as u64).min(start + ps) - start;
        (lo as usize, hi as usize)
    }

    /// Writes `data` over the mapped pages `pages` (leaves `idx..`) in place.
    fn write_pages(&self, pages: &[PageNo], idx: u64, pos: u64, data: &[u8]) -> Result<usize> {
        let targets: Vec<(PageNo, usize, usize)> = pages
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let (lo, hi) = self.span_in_page(idx + k as u64, pos, data.len());
                (*p, lo, hi)
            })
            .collect();
        self.write_runs(&targets, data)?;
        Ok(data.len())
    }

    /// Copies `data` into `(page, lo, hi)` targets in order, one write per
    /// physically contiguous run.
    fn write_runs(&self, targets: &[(PageNo, usize, usize)], data: &[u8]) -> Result<()> {
        let ps = self.eng.ps;
        let mut k = 0;
        let mut off = 0usize;
        while k < targets.len() {
            let (p, lo, mut hi) = targets[k];
            let mut run = 1;
            while k + run < targets.len() && targets[k + run].0 .0 == p.0 + run as u64 && hi == ps {
                hi = targets[k + run].2;
                run += 1;
            }
            let n = (run - 1) * ps + hi - lo;
            self.eng.store.write(p, lo, &data[off..off + n])?;
            off += n;
            k += run;
        }
        Ok(())
    }

    /// The pages mapping leaves `[idx, idx + npages)` (within one leaf radix node) of
    /// content tree `t`, when they and the path to them belong to the file alone:
    /// they can be written in place. The caller has made sure that the inode's record
    /// path is private (see [`Volume::private_path`]).
    fn own_pages(&self, t: Tree, idx: u64, npages: u64) -> Result<Option<Vec<PageNo>>> {
        if !self.private_path(t, NodeKind::RadixData, idx)? {
            return Ok(None);
        }
        let pages = self.map_range(t, idx, npages)?;
        let own = pages
            .iter()
            .all(|p| !p.is_none() && self.eng.store.refcount(*p) == 1);
        Ok(own.then_some(pages))
    }

    /// Does every radix node on the path to leaf `idx` of tree `t` (of `kind`) belong
    /// to it alone (count 1)? For a content tree, the caller has made sure that the
    /// inode's record page is private (see [`Op::inode`]), so that the root's count
    /// says whether another cluster shares the tree.
    fn private_path(&self, t: Tree, kind: NodeKind, idx: u64) -> Result<bool> {
        if t.height == 0 || idx >= self.eng.reach(t.height) {
            return Ok(false);
        }
        let mut node = t.root;
        for level in (0..t.height).rev() {
            if self.eng.store.refcount(node) != 1 {
                return Ok(false);
            }
            if level == 0 {
                break;
            }
            self.eng.check_node(node, kind, Some(level))?;
            node = self
                .eng
                .entry(node, (idx / self.eng.span(level)) % self.eng.fanout)?;
            if node.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn write_into(&self, dst: &mut Inode, off: u64, bytes: &[u8]) -> Result<usize> {
        let n = self.write_bytes(&mut dst.content, &mut dst.mapped, off, bytes, false);
        let (n, _) = n?;
        dst.size = dst.size.max(off + n as u64);
        Ok(n)
    }
}
