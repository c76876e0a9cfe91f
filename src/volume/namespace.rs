//! Names within a cluster: lookup, attributes, make, link, unlink, rename, readdir.
//!
//! A directory is a tree of fixed-size slots ([`Dirent`]), indexed by name in memory
//! ([`DirIndex`]); a freed slot is reused. An inode unlinked while open becomes an
//! orphan: its record stays until its last handle is released (or until the next
//! open, after a crash). Each operation does its checks before its first write, and
//! orders its steps so a failure (no space) leaves no half-made name. In a
//! protected cluster nothing can be unlinked or removed (a rename over a name is
//! an update, and stays allowed). A setattr of
//! mtime alone (the writeback cache handing over its times) waits with the times of
//! in-place overwrites instead of storing the record.

use super::dir::{Dirent, NAME_MAX};
use super::inode::{self, Attr, Change, Ino, Inode, Kind, SetAttr};
use super::op::Op;
use super::{ClusterId, DirEntry, NewInode, RenameFlags, State, Volume, MAX_FILE_SIZE};
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;
use std::time::Instant;

const SYMLINK_MAX: usize = 4095;
/// Entries returned by one readdir call.
const READDIR_BATCH: usize = 1024;

impl Volume {
    pub fn lookup(&self, c: ClusterId, parent: Ino, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        self.read_op(c, |cl, st| {
            let d = self.load(st, parent)?;
            let ino = match name {
                b"." => parent,
                b".." => d.parent,
                _ => self
                    .with_dir(cl, parent, &d, |idx| Ok(idx.get(name).map(|(_, e)| e.ino)))?
                    .ok_or(Error::NotFound)?,
            };
            Ok(self.load(st, ino)?.attr(ino, self.eng.ps as u64))
        })
    }

    pub fn getattr(&self, c: ClusterId, ino: Ino) -> Result<Attr> {
        self.read_op(c, |_, st| {
            Ok(self.load(st, ino)?.attr(ino, self.eng.ps as u64))
        })
    }

    pub fn setattr(&self, c: ClusterId, ino: Ino, sa: &SetAttr) -> Result<Attr> {
        if let Some(a) = self.set_mtime_waiting(c, ino, sa)? {
            return Ok(a);
        }
        // A size change allocates no data page; its metadata comes from the reserve.
        self.op(c, false, |op| {
            let now = inode::now_ns();
            let ps = self.eng.ps as u64;
            let i = op.inode(ino)?;
            if let Some(size) = sa.size {
                match i.kind {
                    Kind::Dir => return Err(Error::IsADirectory),
                    Kind::File => {}
                    _ => {
                        return Err(Error::InvalidArgument(
                            "only regular files can be truncated",
                        ))
                    }
                }
                if size > MAX_FILE_SIZE {
                    return Err(Error::TooBig);
                }
                self.truncate(i, size)?;
                i.mtime = now;
                i.ctime = now;
            }
            if let Some(p) = sa.perm {
                i.perm = p & 0o7777;
                i.ctime = now;
            }
            // Before the new owner is set: a chown's setgid rule asks about the
            // file's old group.
            let truncated = sa.size.is_some() && i.drop_suidgid(Change::Data, &sa.caller);
            let chown =
                (sa.uid.is_some() || sa.gid.is_some()) && i.drop_suidgid(Change::Owner, &sa.caller);
            if truncated || chown {
                i.ctime = now;
            }
            if let Some(u) = sa.uid {
                i.uid = u;
                i.ctime = now;
            }
            if let Some(g) = sa.gid {
                i.gid = g;
                i.ctime = now;
            }
            if let Some(t) = sa.atime {
                i.atime = t.ns(now);
                i.ctime = now;
            }
            if let Some(t) = sa.mtime {
                i.mtime = t.ns(now);
                i.ctime = now;
            }
            if let Some(t) = sa.ctime {
                i.ctime = inode::from_system_time(t);
            }
            Ok(i.attr(ino, ps))
        })
    }

    /// A setattr of the modification time (and change time) alone, which is how the
    /// kernel hands over the times its writeback cache kept for written files, waits
    /// in `st.times` as an overwrite in place's times do: the tree is not touched, so
    /// the fdatasync that follows syncs data only. None when `sa` changes more.
    fn set_mtime_waiting(&self, c: ClusterId, ino: Ino, sa: &SetAttr) -> Result<Option<Attr>> {
        let SetAttr {
            perm: None,
            uid: None,
            gid: None,
            size: None,
            atime: None,
            mtime: Some(mtime),
            ctime,
            caller: _,
        } = sa
        else {
            return Ok(None);
        };
        let _gate = self.change()?;
        self.read_op(c, |cl, st| {
            cl.changed.store(true, Ordering::Release);
            let mut i = self.load(st, ino)?;
            let now = inode::now_ns();
            i.mtime = mtime.ns(now);
            i.ctime = ctime.map_or(now, inode::from_system_time);
            self.wait_times(st, ino, i.mtime, i.ctime);
            Ok(Some(i.attr(ino, self.eng.ps as u64)))
        })
    }

    /// Lays `mtime` and `ctime` over inode `ino`'s record until the next commit (or
    /// clone of the cluster) stores them. The caller holds the gate shared and the
    /// cluster's state.
    pub(super) fn wait_times(&self, st: &State, ino: Ino, mtime: i64, ctime: i64) {
        // Times already waiting mean `times_since` is set: only a commit, which
        // holds the gate, clears both.
        if st
            .times
            .lock()
            .unwrap()
            .insert(ino, (mtime, ctime))
            .is_none()
        {
            self.times_since
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
        }
    }

    /// Creates a file, FIFO, socket or device node.
    pub fn mknod(
        &self,
        c: ClusterId,
        parent: Ino,
        name: &[u8],
        kind: Kind,
        who: NewInode,
        rdev: u32,
    ) -> Result<Attr> {
        self.make(c, parent, name, kind, who, rdev, b"")
    }

    pub fn mkdir(&self, c: ClusterId, parent: Ino, name: &[u8], who: NewInode) -> Result<Attr> {
        self.make(c, parent, name, Kind::Dir, who, 0, b"")
    }

    pub fn symlink(
        &self,
        c: ClusterId,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        who: NewInode,
    ) -> Result<Attr> {
        if target.len() > SYMLINK_MAX {
            return Err(Error::NameTooLong);
        }
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        self.make(
            c,
            parent,
            name,
            Kind::Symlink,
            NewInode { perm: 0o777, ..who },
            0,
            target,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        c: ClusterId,
        parent: Ino,
        name: &[u8],
        kind: Kind,
        who: NewInode,
        rdev: u32,
        content: &[u8],
    ) -> Result<Attr> {
        check_new_name(name)?;
        self.op(c, true, |op| {
            let now = inode::now_ns();
            if op.find(parent, name)?.is_some() {
                return Err(Error::AlreadyExists(String::from_utf8_lossy(name).into()));
            }
            let d = op.dir(parent)?;
            let (mut gid, mut perm) = (who.gid, who.perm);
            if d.perm & libc::S_ISGID != 0 {
                gid = d.gid;
                if kind == Kind::Dir {
                    perm |= libc::S_ISGID;
                }
            }
            let mut i = Inode::new(kind, perm, who.uid, gid, now);
            i.rdev = rdev;
            if kind == Kind::Dir {
                i.parent = parent;
            }
            if !content.is_empty() {
                if let Err(e) = self.write_bytes(&mut i.content, &mut i.mapped, 0, content, true) {
                    self.eng.drop_tree(&mut i.content);
                    return Err(e);
                }
                i.size = content.len() as u64;
            }
            let ino = Ino(op.st.next_ino);
            op.st.next_ino += 1;
            // The name first: if it cannot be written, no inode is left unnamed.
            let named = op.insert(
                parent,
                Dirent {
                    ino,
                    kind,
                    name: name.to_vec(),
                },
            );
            if let Err(e) = named {
                self.eng.drop_tree(&mut i.content);
                return Err(e);
            }
            op.touched.insert(ino, i.clone());
            op.touch_dir(parent, now)?;
            if kind == Kind::Dir {
                op.inode(parent)?.nlink += 1;
            }
            Ok(i.attr(ino, self.eng.ps as u64))
        })
    }

    pub fn readlink(&self, c: ClusterId, ino: Ino) -> Result<Vec<u8>> {
        self.read_op(c, |_, st| {
            let i = self.load(st, ino)?;
            if i.kind != Kind::Symlink {
                return Err(Error::InvalidArgument("not a symbolic link"));
            }
            self.read_bytes(i.content, 0, i.size as usize)
        })
    }

    pub fn link(&self, c: ClusterId, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        check_new_name(name)?;
        self.op(c, true, |op| {
            let now = inode::now_ns();
            if op.find(parent, name)?.is_some() {
                return Err(Error::AlreadyExists(String::from_utf8_lossy(name).into()));
            }
            let i = op.inode(ino)?;
            if i.kind == Kind::Dir {
                return Err(Error::NotPermitted(
                    "hard links to directories are not allowed",
                ));
            }
            if i.nlink == 0 {
                return Err(Error::NotFound);
            }
            let kind = i.kind;
            op.insert(
                parent,
                Dirent {
                    ino,
                    kind,
                    name: name.to_vec(),
                },
            )?;
            let i = op.inode(ino)?;
            i.nlink += 1;
            i.ctime = now;
            op.touch_dir(parent, now)?;
            Ok(op.inode(ino)?.attr(ino, self.eng.ps as u64))
        })
    }

    pub fn unlink(&self, c: ClusterId, parent: Ino, name: &[u8]) -> Result<()> {
        check_name(name)?;
        self.op(c, false, |op| {
            self.refuse_if_protected(op.cl)?;
            let now = inode::now_ns();
            let (slot, e) = op.find(parent, name)?.ok_or(Error::NotFound)?;
            if e.kind == Kind::Dir {
                return Err(Error::IsADirectory);
            }
            op.set_slot(parent, slot, None)?;
            op.touch_dir(parent, now)?;
            op.unlink_inode(e.ino, now)
        })
    }

    pub fn rmdir(&self, c: ClusterId, parent: Ino, name: &[u8]) -> Result<()> {
        check_name(name)?;
        match name {
            b"." => return Err(Error::InvalidArgument("cannot remove '.'")),
            b".." => return Err(Error::NotEmpty),
            _ => {}
        }
        self.op(c, false, |op| {
            self.refuse_if_protected(op.cl)?;
            let now = inode::now_ns();
            let (slot, e) = op.find(parent, name)?.ok_or(Error::NotFound)?;
            if e.kind != Kind::Dir {
                return Err(Error::NotADirectory);
            }
            let d = op.dir(e.ino)?.clone();
            if !self.with_dir(op.cl, e.ino, &d, |idx| Ok(idx.is_empty()))? {
                return Err(Error::NotEmpty);
            }
            op.set_slot(parent, slot, None)?;
            op.touch_dir(parent, now)?;
            op.inode(parent)?.nlink -= 1;
            op.unlink_inode(e.ino, now)
        })
    }

    pub fn rename(
        &self,
        c: ClusterId,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        check_name(name)?;
        check_new_name(newname)?;
        if name == b"." || name == b".." {
            return Err(Error::InvalidArgument("cannot rename '.' or '..'"));
        }
        if flags.exchange && flags.noreplace {
            return Err(Error::InvalidArgument(
                "RENAME_EXCHANGE with RENAME_NOREPLACE",
            ));
        }
        self.op(c, true, |op| {
            let now = inode::now_ns();
            let (slot, e) = op.find(parent, name)?.ok_or(Error::NotFound)?;
            let target = op.find(newparent, newname)?;
            if e.kind == Kind::Dir && self.is_within(op, newparent, e.ino)? {
                return Err(Error::InvalidArgument(
                    "cannot move a directory into itself",
                ));
            }
            if flags.exchange {
                let (tslot, t) = target.ok_or(Error::NotFound)?;
                if t.kind == Kind::Dir && self.is_within(op, parent, t.ino)? {
                    return Err(Error::InvalidArgument(
                        "cannot move a directory into itself",
                    ));
                }
                op.set_slot(
                    parent,
                    slot,
                    Some(Dirent {
                        name: name.to_vec(),
                        ..t.clone()
                    }),
                )?;
                op.set_slot(
                    newparent,
                    tslot,
                    Some(Dirent {
                        name: newname.to_vec(),
                        ..e.clone()
                    }),
                )?;
                self.moved(op, &e, parent, newparent, now)?;
                self.moved(op, &t, newparent, parent, now)?;
                return Ok(());
            }
            match target {
                Some(_) if flags.noreplace => Err(Error::AlreadyExists(
                    String::from_utf8_lossy(newname).into(),
                )),
                Some((_, t)) if t.ino == e.ino => Ok(()),
                Some((tslot, t)) => {
                    match (e.kind == Kind::Dir, t.kind == Kind::Dir) {
                        (true, false) => return Err(Error::NotADirectory),
                        (false, true) => return Err(Error::IsADirectory),
                        (true, true) => {
                            let d = op.dir(t.ino)?.clone();
                            if !self.with_dir(op.cl, t.ino, &d, |idx| Ok(idx.is_empty()))? {
                                return Err(Error::NotEmpty);
                            }
                            op.inode(newparent)?.nlink -= 1;
                        }
                        (false, false) => {}
                    }
                    op.set_slot(
                        newparent,
                        tslot,
                        Some(Dirent {
                            name: newname.to_vec(),
                            ..e.clone()
                        }),
                    )?;
                    op.set_slot(parent, slot, None)?;
                    self.moved(op, &e, parent, newparent, now)?;
                    op.unlink_inode(t.ino, now)
                }
                None => {
                    op.insert(
                        newparent,
                        Dirent {
                            name: newname.to_vec(),
                            ..e.clone()
                        },
                    )?;
                    op.set_slot(parent, slot, None)?;
                    self.moved(op, &e, parent, newparent, now)
                }
            }
        })
    }

    /// Bookkeeping after entry `e` moved from directory `from` to `to`.
    fn moved(&self, op: &mut Op, e: &Dirent, from: Ino, to: Ino, now: i64) -> Result<()> {
        op.touch_dir(from, now)?;
        op.touch_dir(to, now)?;
        let i = op.inode(e.ino)?;
        i.ctime = now;
        if e.kind == Kind::Dir && from != to {
            i.parent = to;
            op.inode(from)?.nlink -= 1;
            op.inode(to)?.nlink += 1;
        }
        Ok(())
    }

    /// Is directory `ino` the same as `ancestor` or below it?
    fn is_within(&self, op: &mut Op, mut ino: Ino, ancestor: Ino) -> Result<bool> {
        for _ in 0..4096 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == Ino::ROOT {
                return Ok(false);
            }
            ino = op.inode(ino)?.parent;
        }
        Err(Error::Corrupt {
            page: 0,
            why: "directory parents form a loop".into(),
        })
    }

    /// Directory entries from `offset` on (0 = the start; then each entry's `offset`).
    pub fn readdir(&self, c: ClusterId, ino: Ino, offset: u64) -> Result<Vec<DirEntry>> {
        self.read_op(c, |cl, st| {
            let d = self.load(st, ino)?;
            let mut out = Vec::new();
            if offset == 0 {
                out.push(DirEntry {
                    offset: 1,
                    ino,
                    kind: Kind::Dir,
                    name: b".".to_vec(),
                });
            }
            if offset <= 1 {
                out.push(DirEntry {
                    offset: 2,
                    ino: d.parent,
                    kind: Kind::Dir,
                    name: b"..".to_vec(),
                });
            }
            self.with_dir(cl, ino, &d, |idx| {
                for (slot, e) in idx.from_slot(offset.saturating_sub(2)).take(READDIR_BATCH) {
                    out.push(DirEntry {
                        offset: slot + 3,
                        ino: e.ino,
                        kind: e.kind,
                        name: e.name.clone(),
                    });
                }
                Ok(())
            })?;
            Ok(out)
        })
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::NotFound);
    }
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(Error::InvalidArgument("a name may not contain '/' or NUL"));
    }
    Ok(())
}

fn check_new_name(name: &[u8]) -> Result<()> {
    check_name(name)?;
    if name == b"." || name == b".." {
        return Err(Error::AlreadyExists(String::from_utf8_lossy(name).into()));
    }
    Ok(())
}
