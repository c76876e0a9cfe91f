//! Operations on ranges of a file: fallocate (reserve, punch, zero), seek to data
//! or hole, and copy_file_range.
//!
//! A copy of whole aligned pages shares them (one more reference each, no bytes
//! copied), within a cluster or across clusters; anything else is copied through a
//! buffer. A copy to another cluster holds the source exclusively: an overwrite in
//! place holds it shared and must see the references the copy adds.

use super::inode::{self, Ino, Inode, Kind};
use super::node::{Deferred, NodeKind};
use super::op::Op;
use super::{ClusterId, Volume, Whence, MAX_FILE_SIZE};
use crate::error::{Error, Result};
use std::collections::BTreeMap;

impl Volume {
    /// fallocate(2): allocate (mode 0 or KEEP_SIZE), PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE.
    pub fn fallocate(
        &self,
        c: ClusterId,
        ino: Ino,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<()> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
        {
            return Err(Error::Unsupported("this fallocate mode"));
        }
        if punch && (!keep || zero) {
            return Err(Error::InvalidArgument("PUNCH_HOLE needs KEEP_SIZE alone"));
        }
        if len == 0 {
            return Err(Error::InvalidArgument("fallocate of length 0"));
        }
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(Error::TooBig)?;
        self.op(c, !punch, |op| {
            let i = op.inode(ino)?;
            match i.kind {
                Kind::File => {}
                Kind::Dir => return Err(Error::IsADirectory),
                _ => return Err(Error::InvalidArgument("fallocate needs a regular file")),
            }
            if punch || zero {
                self.punch(i, offset, end.min(i.size))?;
            }
            if !punch {
                if !keep && end > i.size {
                    self.zero_gap(i, end)?;
                }
                self.allocate_range(i, offset, end)?;
                if !keep {
                    i.size = i.size.max(end);
                }
            }
            let now = inode::now_ns();
            i.mtime = now;
            i.ctime = now;
            Ok(())
        })
    }

    fn punch(&self, i: &mut Inode, from: u64, to: u64) -> Result<()> {
        let ps = self.eng.ps as u64;
        if from >= to {
            return Ok(());
        }
        let (first_full, end_full) = (from.div_ceil(ps), to / ps);
        if first_full < end_full {
            let gone = self.eng.unmap_range(
                &mut i.content,
                NodeKind::RadixData,
                first_full,
                end_full,
                true,
            )?;
            i.mapped = i.mapped.saturating_sub(gone);
            self.zero_within(i, from, first_full * ps)?;
            self.zero_within(i, end_full * ps, to)
        } else if from / ps == (to - 1) / ps {
            self.zero_within(i, from, to)
        } else {
            self.zero_within(i, from, first_full * ps)?;
            self.zero_within(i, first_full * ps, to)
        }
    }

    /// Maps zeroed pages into the holes of `[from, to)`.
    fn allocate_range(&self, i: &mut Inode, from: u64, to: u64) -> Result<()> {
        let ps = self.eng.ps as u64;
        let (first, end) = (from / ps, (to - 1) / ps + 1);
        // Whole runs of holes at a time (up to 1 MiB a write), so they get
        // contiguous extents and one large write each.
        let max_run = ((1 << 20) / ps).max(1);
        let zeros = vec![0u8; (max_run * ps) as usize];
        let mut idx = first;
        while idx < end {
            let Some(hole) = self.eng.seek(i.content, NodeKind::RadixData, idx, false)? else {
                break;
            };
            if hole >= end {
                break;
            }
            let data = self.eng.seek(i.content, NodeKind::RadixData, hole, true)?;
            let run = data.unwrap_or(end).min(end).min(hole + max_run) - hole;
            let bytes = &zeros[..(run * ps) as usize];
            let (n, _) =
                self.write_bytes(&mut i.content, &mut i.mapped, hole * ps, bytes, false)?;
            if n < bytes.len() {
                return Err(Error::NoSpace);
            }
            idx = hole + run;
        }
        Ok(())
    }

    /// lseek(2) SEEK_DATA / SEEK_HOLE.
    pub fn seek(&self, c: ClusterId, ino: Ino, offset: u64, whence: Whence) -> Result<u64> {
        self.read_op(c, |_, st| {
            let i = self.load(st, ino)?;
            if offset >= i.size {
                return Err(Error::NoSuchOffset);
            }
            let ps = self.eng.ps as u64;
            let found = self.eng.seek(
                i.content,
                NodeKind::RadixData,
                offset / ps,
                whence == Whence::Data,
            )?;
            match (whence, found) {
                (Whence::Data, Some(p)) if p * ps < i.size => Ok((p * ps).max(offset)),
                (Whence::Data, _) => Err(Error::NoSuchOffset),
                (Whence::Hole, Some(p)) => Ok((p * ps).max(offset).min(i.size)),
                (Whence::Hole, None) => Ok(i.size),
            }
        })
    }

    /// copy_file_range(2): whole pages at matching alignment are shared, not copied.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_range(
        &self,
        sc: ClusterId,
        sino: Ino,
        soff: u64,
        dc: ClusterId,
        dino: Ino,
        doff: u64,
        len: u64,
    ) -> Result<u64> {
        if doff.checked_add(len).is_none_or(|e| e > MAX_FILE_SIZE) {
            return Err(Error::TooBig);
        }
        if sc != dc {
            return self.copy_across(sc, sino, soff, dc, dino, doff, len);
        }
        self.op(dc, true, |op| {
            let src = op.inode(sino)?.clone();
            let len = self.copy_len(&src, soff, len)?;
            let overlap = sino == dino && soff < doff + len && doff < soff + len;
            let dst = op.inode(dino)?;
            if dst.kind == Kind::Dir {
                return Err(Error::IsADirectory);
            }
            if overlap {
                let bytes = self.read_bytes(src.content, soff, len as usize)?;
                return self.write_into(dst, doff, &bytes).map(|n| n as u64);
            }
            self.share_range(&src, soff, dst, doff, len)
        })
    }

    fn copy_len(&self, src: &Inode, soff: u64, len: u64) -> Result<u64> {
        match src.kind {
            Kind::File => Ok(len.min(src.size.saturating_sub(soff))),
            Kind::Dir => Err(Error::IsADirectory),
            _ => Err(Error::InvalidArgument(
                "copy_file_range needs regular files",
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_across(
        &self,
        sc: ClusterId,
        sino: Ino,
        soff: u64,
        dc: ClusterId,
        dino: Ino,
        doff: u64,
        len: u64,
    ) -> Result<u64> {
        // Two clusters: lock both in id order, exclusively. The source too: the
        // pages it shares gain a reference, which an overwrite in place (holding
        // the source shared) must not miss.
        self.with_room(|| {
            let _gate = self.change()?;
            let (s, d) = (self.cluster(sc)?, self.cluster(dc)?);
            let (sst, mut dst_st);
            if sc < dc {
                sst = s.state.write().unwrap();
                dst_st = d.state.write().unwrap();
            } else {
                dst_st = d.state.write().unwrap();
                sst = s.state.write().unwrap();
            }
            self.room()?;
            let src = self.load(&sst, sino)?;
            let len = self.copy_len(&src, soff, len)?;
            let mut op = Op {
                vol: self,
                cl: &d,
                st: &mut dst_st,
                touched: BTreeMap::new(),
                data_only: Default::default(),
            };
            let dst = op.inode(dino)?;
            if dst.kind == Kind::Dir {
                return Err(Error::IsADirectory);
            }
            let n = self.share_range(&src, soff, dst, doff, len)?;
            op.finish()?;
            Ok(n)
        })
    }

    /// Puts `len` bytes of `src` at `soff` into `dst` at `doff`: aligned whole pages
    /// by reference, the rest by copy.
    fn share_range(
        &self,
        src: &Inode,
        soff: u64,
        dst: &mut Inode,
        doff: u64,
        len: u64,
    ) -> Result<u64> {
        let ps = self.eng.ps as u64;
        if len == 0 {
            return Ok(0);
        }
        if doff > dst.size {
            self.zero_gap(dst, doff)?;
        }
        let aligned = soff % ps == doff % ps;
        let head = if aligned {
            ((ps - soff % ps) % ps).min(len)
        } else {
            len
        };
        let whole = if aligned { (len - head) / ps } else { 0 };
        let mut done = 0;
        if head > 0 {
            let bytes = self.read_bytes(src.content, soff, head as usize)?;
            done += self.write_into(dst, doff, &bytes)? as u64;
            if done < head {
                return Ok(done);
            }
        }
        if whole > 0 {
            let (sfirst, dfirst) = ((soff + head) / ps, (doff + head) / ps);
            let pages = self.map_range(src.content, sfirst, whole)?;
            for (k, p) in pages.iter().enumerate() {
                let (leaf, slot) = self.eng.cow_path(
                    &mut dst.content,
                    NodeKind::RadixData,
                    dfirst + k as u64,
                    true,
                )?;
                let old = self.eng.entry(leaf, slot)?;
                if !p.is_none() {
                    self.eng.store.incref(*p);
                }
                self.eng.set_entry(leaf, slot, *p)?;
                match (old.is_none(), p.is_none()) {
                    (true, false) => dst.mapped += 1,
                    (false, true) => dst.mapped = dst.mapped.saturating_sub(1),
                    _ => {}
                }
                if !old.is_none() {
                    self.eng.defer(Deferred::Dec(old, false));
                }
            }
            done += whole * ps;
            dst.size = dst.size.max(doff + done);
        }
        let tail = len - done;
        if tail > 0 {
            let bytes = self.read_bytes(src.content, soff + done, tail as usize)?;
            done += self.write_into(dst, doff + done, &bytes)? as u64;
        }
        let now = inode::now_ns();
        dst.mtime = now;
        dst.ctime = now;
        Ok(done)
    }
}
