//! One change to a cluster: its locks, the inodes it touches, and what it stores.
//!
//! [`Volume::op`] takes the gate shared and the cluster's state exclusively and hands
//! its closure an [`Op`]: an inode is loaded on first touch, after its record page
//! is made private to the cluster (so the counts of the trees it references say
//! whether they are shared), and every touched inode is stored when the closure
//! returns, whether it succeeded or not (the trees it copied are already what those
//! inodes reference). [`Volume::read_op`] holds the state shared. Each cluster keeps
//! a name index of the directories it has looked into ([`Volume::with_dir`]), built
//! from their slots on first use and dropped when a change fails.

use super::dir::{self, DirIndex, Dirent};
use super::inode::{self, Ino, Inode, Kind};
use super::node::NodeKind;
use super::{Cluster, ClusterId, State, Volume};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The inodes one operation reads and changes; `finish` writes them back.
pub(super) struct Op<'a> {
    pub(super) vol: &'a Volume,
    pub(super) cl: &'a Cluster,
    pub(super) st: &'a mut State,
    pub(super) touched: BTreeMap<Ino, Inode>,
    /// Inodes whose change left their size and page map as they were: an
    /// fdatasync of them needs their data pages synced, not a commit.
    pub(super) data_only: std::collections::BTreeSet<Ino>,
}

impl<'a> Op<'a> {
    /// The inode to change. Its record page is made private to this cluster first,
    /// so that the counts of the trees it references say whether they are shared.
    pub(super) fn inode(&mut self, ino: Ino) -> Result<&mut Inode> {
        if !self.touched.contains_key(&ino) {
            let i = self.vol.load(self.st, ino)?;
            self.vol.eng.writable_record(
                &mut self.st.itable,
                NodeKind::RadixInodes,
                ino.0,
                true,
            )?;
            self.cl.dirty.store(true, Ordering::Release);
            self.cl.changed.store(true, Ordering::Release);
            self.touched.insert(ino, i);
        }
        Ok(self.touched.get_mut(&ino).unwrap())
    }

    pub(super) fn dir(&mut self, ino: Ino) -> Result<&mut Inode> {
        let d = self.inode(ino)?;
        if d.kind != Kind::Dir {
            return Err(Error::NotADirectory);
        }
        Ok(d)
    }

    pub(super) fn find(&mut self, dir: Ino, name: &[u8]) -> Result<Option<(u64, Dirent)>> {
        let d = self.dir(dir)?.clone();
        self.vol.with_dir(self.cl, dir, &d, |idx| {
            Ok(idx.get(name).map(|(s, e)| (s, e.clone())))
        })
    }

    /// Writes `e` into a free slot of directory `dir`.
    pub(super) fn insert(&mut self, dir: Ino, e: Dirent) -> Result<()> {
        let (vol, cl) = (self.vol, self.cl);
        let d = self.dir(dir)?;
        let snapshot = d.clone();
        vol.with_dir(cl, dir, &snapshot, |idx| {
            let slot = idx.free_slot();
            vol.eng.write_record(
                &mut d.content,
                NodeKind::RadixDirents,
                slot,
                &e.encode(),
                true,
            )?;
            idx.insert(slot, e);
            d.size = idx.high;
            Ok(())
        })
    }

    /// Writes `e` over slot `slot` of `dir` (None: clears it).
    pub(super) fn set_slot(&mut self, dir: Ino, slot: u64, e: Option<Dirent>) -> Result<()> {
        let (vol, cl) = (self.vol, self.cl);
        let d = self.dir(dir)?;
        let snapshot = d.clone();
        vol.with_dir(cl, dir, &snapshot, |idx| {
            let bytes = e
                .as_ref()
                .map(|e| e.encode())
                .unwrap_or([0; dir::DIRENT_BYTES]);
            vol.eng
                .write_record(&mut d.content, NodeKind::RadixDirents, slot, &bytes, true)?;
            idx.remove(slot);
            if let Some(e) = e {
                idx.insert(slot, e);
            }
            Ok(())
        })
    }

    pub(super) fn touch_dir(&mut self, dir: Ino, now: i64) -> Result<()> {
        let d = self.inode(dir)?;
        d.mtime = now;
        d.ctime = now;
        Ok(())
    }

    /// Drops one link of `ino`; frees it when none is left and no one has it open.
    pub(super) fn unlink_inode(&mut self, ino: Ino, now: i64) -> Result<()> {
        let i = self.inode(ino)?;
        i.nlink = if i.kind == Kind::Dir {
            0
        } else {
            i.nlink.saturating_sub(1)
        };
        i.ctime = now;
        if i.nlink == 0 {
            if self.cl.open.lock().unwrap().get(&ino).copied().unwrap_or(0) > 0 {
                self.st.orphans += 1;
            } else {
                let i = self.touched.remove(&ino).unwrap();
                self.vol.free_inode(self.cl, self.st, ino, i)?;
            }
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Result<()> {
        let epoch = self.vol.eng.epoch();
        let mut remapped = self.cl.remapped.lock().unwrap();
        for (ino, i) in &self.touched {
            self.vol.store_inode(self.cl, self.st, *ino, i)?;
            if !self.data_only.contains(ino) {
                remapped.insert(*ino, epoch);
            }
        }
        Ok(())
    }
}

impl Volume {
    pub(super) fn cluster(&self, c: ClusterId) -> Result<Arc<Cluster>> {
        let cl = self
            .catalog
            .read()
            .unwrap()
            .by_id
            .get(&c)
            .cloned()
            .ok_or(Error::NotFound)?;
        Ok(cl)
    }

    /// Inode `ino` as it stands: its record, with the times of in-place overwrites
    /// that wait in `st.times` laid over it.
    pub(super) fn load(&self, st: &State, ino: Ino) -> Result<Inode> {
        if ino.0 == 0 || ino.0 >= st.next_ino {
            return Err(Error::NotFound);
        }
        let mut b = [0u8; inode::INODE_BYTES];
        self.eng
            .read_record(st.itable, NodeKind::RadixInodes, ino.0, &mut b)?;
        let mut i = Inode::decode(&b)
            .map_err(|why| Error::Corrupt {
                page: 0,
                why: format!("inode {ino}: {why}"),
            })?
            .ok_or(Error::NotFound)?;
        if let Some(&(mtime, ctime)) = st.times.lock().unwrap().get(&ino) {
            i.mtime = mtime;
            i.ctime = ctime;
        }
        Ok(i)
    }

    /// Stores inode `i` (as loaded, then changed): its record now holds its times.
    fn store_inode(&self, cl: &Cluster, st: &mut State, ino: Ino, i: &Inode) -> Result<()> {
        self.eng.write_record(
            &mut st.itable,
            NodeKind::RadixInodes,
            ino.0,
            &i.encode(),
            true,
        )?;
        st.times.get_mut().unwrap().remove(&ino);
        cl.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Stores the times waiting in `st.times` into their records.
    pub(super) fn store_times(&self, cl: &Cluster, st: &mut State) -> Result<()> {
        let waiting: Vec<Ino> = st.times.get_mut().unwrap().keys().copied().collect();
        for ino in waiting {
            let i = self.load(st, ino)?;
            self.store_inode(cl, st, ino, &i)?;
        }
        Ok(())
    }

    pub(super) fn free_inode(
        &self,
        cl: &Cluster,
        st: &mut State,
        ino: Ino,
        mut i: Inode,
    ) -> Result<()> {
        // Private record page first: its copy takes its own references to the trees
        // dropped below, so a clone sharing the old page keeps them.
        self.eng
            .writable_record(&mut st.itable, NodeKind::RadixInodes, ino.0, true)?;
        self.eng.drop_tree(&mut i.content);
        self.eng.drop_tree(&mut i.xattrs);
        self.eng.write_record(
            &mut st.itable,
            NodeKind::RadixInodes,
            ino.0,
            &[0; inode::INODE_BYTES],
            true,
        )?;
        st.times.get_mut().unwrap().remove(&ino);
        cl.dirs.lock().unwrap().remove(&ino);
        cl.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs `f` on the index of directory `ino`, loading it from its slots first.
    pub(super) fn with_dir<T>(
        &self,
        cl: &Cluster,
        ino: Ino,
        d: &Inode,
        f: impl FnOnce(&mut DirIndex) -> Result<T>,
    ) -> Result<T> {
        if d.kind != Kind::Dir {
            return Err(Error::NotADirectory);
        }
        let mut dirs = cl.dirs.lock().unwrap();
        let idx = match dirs.entry(ino) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut slots = Vec::with_capacity(d.size as usize);
                let mut b = [0u8; dir::DIRENT_BYTES];
                for s in 0..d.size {
                    self.eng
                        .read_record(d.content, NodeKind::RadixDirents, s, &mut b)?;
                    let e = Dirent::decode(&b).map_err(|why| Error::Corrupt {
                        page: 0,
                        why: format!("directory {ino} slot {s}: {why}"),
                    })?;
                    slots.push((s, e));
                }
                v.insert(DirIndex::load(slots.into_iter(), d.size))
            }
        };
        f(idx)
    }

    /// Runs a change on cluster `c` with its state locked exclusively.
    pub(super) fn op<T>(
        &self,
        c: ClusterId,
        needs_room: bool,
        f: impl Fn(&mut Op) -> Result<T>,
    ) -> Result<T> {
        self.with_room(|| {
            let _gate = self.change()?;
            let cl = self.cluster(c)?;
            let mut st = cl.state.write().unwrap();
            if cl.deleted.load(Ordering::Acquire) {
                return Err(Error::NotFound);
            }
            if needs_room {
                self.room()?;
            }
            let mut op = Op {
                vol: self,
                cl: &cl,
                st: &mut st,
                touched: BTreeMap::new(),
                data_only: Default::default(),
            };
            let r = f(&mut op);
            match r {
                Ok(v) => {
                    op.finish()?;
                    Ok(v)
                }
                Err(e) => {
                    // The trees the change copied are already what the inodes it
                    // touched reference (the old pages wait to be freed): store
                    // them, or the records would keep pointing at those old pages.
                    // Operations order their steps so that what fails leaves no
                    // half-made name behind.
                    if let Err(e2) = op.finish() {
                        log::error!(
                            "cluster {}: storing inodes after a failed change: {e2}",
                            cl.name
                        );
                    }
                    cl.dirs.lock().unwrap().clear();
                    Err(e)
                }
            }
        })
    }

    pub(super) fn read_op<T>(
        &self,
        c: ClusterId,
        f: impl FnOnce(&Cluster, &State) -> Result<T>,
    ) -> Result<T> {
        let cl = self.cluster(c)?;
        let st = cl.state.read().unwrap();
        if cl.deleted.load(Ordering::Acquire) {
            return Err(Error::NotFound);
        }
        f(&cl, &st)
    }
}
