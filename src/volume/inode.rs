//! Inode records and the attribute types the volume layer hands out.
//!
//! An inode record is 128 bytes in a page of the cluster's inode table:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1 | kind (0 = free slot) |
//! | 1  | 1 | height of the content tree |
//! | 2  | 1 | height of the xattr tree |
//! | 4  | 4 | permission bits (mode & 0o7777) |
//! | 8  | 4 | uid |
//! | 12 | 4 | gid |
//! | 16 | 4 | link count |
//! | 20 | 4 | rdev |
//! | 24 | 8 | size in bytes (directories: slots used) |
//! | 32 | 8×4 | atime, mtime, ctime, crtime (ns since the Unix epoch) |
//! | 64 | 8 | root page of the content tree (file data, directory slots, symlink target) |
//! | 72 | 8 | root page of the xattr tree |
//! | 80 | 8 | xattr bytes |
//! | 88 | 8 | parent directory (directories only) |
//! | 96 | 8 | content pages mapped (for st_blocks) |

use super::node::{Child, NodeKind, Tree};
use crate::store::PageNo;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const INODE_BYTES: usize = 128;

/// An inode number inside one cluster. The root directory is 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

impl std::fmt::Display for Ino {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Socket => 5,
            Kind::CharDev => 6,
            Kind::BlockDev => 7,
        }
    }

    pub fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// One inode as it sits in the inode table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub crtime: i64,
    /// File data, directory slots or symlink target.
    pub content: Tree,
    pub xattrs: Tree,
    pub xattr_len: u64,
    pub parent: Ino,
    pub mapped: u64,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

impl Inode {
    pub fn new(kind: Kind, perm: u32, uid: u32, gid: u32, now: i64) -> Inode {
        Inode {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            rdev: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            content: Tree::EMPTY,
            xattrs: Tree::EMPTY,
            xattr_len: 0,
            parent: Ino(0),
            mapped: 0,
        }
    }

    pub fn encode(&self) -> [u8; INODE_BYTES] {
        let mut b = [0u8; INODE_BYTES];
        b[0] = self.kind.code();
        b[1] = self.content.height;
        b[2] = self.xattrs.height;
        b[4..8].copy_from_slice(&self.perm.to_le_bytes());
        b[8..12].copy_from_slice(&self.uid.to_le_bytes());
        b[12..16].copy_from_slice(&self.gid.to_le_bytes());
        b[16..20].copy_from_slice(&self.nlink.to_le_bytes());
        b[20..24].copy_from_slice(&self.rdev.to_le_bytes());
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..40].copy_from_slice(&self.atime.to_le_bytes());
        b[40..48].copy_from_slice(&self.mtime.to_le_bytes());
        b[48..56].copy_from_slice(&self.ctime.to_le_bytes());
        b[56..64].copy_from_slice(&self.crtime.to_le_bytes());
        b[64..72].copy_from_slice(&self.content.root.0.to_le_bytes());
        b[72..80].copy_from_slice(&self.xattrs.root.0.to_le_bytes());
        b[80..88].copy_from_slice(&self.xattr_len.to_le_bytes());
        b[88..96].copy_from_slice(&self.parent.0.to_le_bytes());
        b[96..104].copy_from_slice(&self.mapped.to_le_bytes());
        b
    }

    /// Decodes a record; `None` for a free slot, `Err` for an unknown kind.
    pub fn decode(b: &[u8]) -> Result<Option<Inode>, String> {
        if b[0] == 0 {
            return Ok(None);
        }
        let kind = Kind::from_code(b[0]).ok_or_else(|| format!("unknown inode kind {}", b[0]))?;
        Ok(Some(Inode {
            kind,

            perm: u32_at(b, 4),
            uid: u32_at(b, 8),
            gid: u32_at(b, 12),
            nlink: u32_at(b, 16),
            rdev: u32_at(b, 20),
            size: u64_at(b, 24),
            atime: u64_at(b, 32) as i64,
            mtime: u64_at(b, 40) as i64,
            ctime: u64_at(b, 48) as i64,
            crtime: u64_at(b, 56) as i64,
            content: Tree {
                root: PageNo(u64_at(b, 64)),
                height: b[1],
            },
            xattrs: Tree {
                root: PageNo(u64_at(b, 72)),
                height: b[2],
            },
            xattr_len: u64_at(b, 80),
            parent: Ino(u64_at(b, 88)),
            mapped: u64_at(b, 96),
        }))
    }

    /// The page references a record holds: its content tree and its xattr tree.
    pub fn children(b: &[u8]) -> Vec<Child> {
        if b[0] == 0 {
            return Vec::new();
        }
        let content = if b[0] == Kind::Dir.code() {
            NodeKind::RadixDirents
        } else {
            NodeKind::RadixData
        };
        [
            (PageNo(u64_at(b, 64)), Some(content)),
            (PageNo(u64_at(b, 72)), Some(NodeKind::RadixData)),
        ]
        .into_iter()
        .filter(|(p, _)| !p.is_none())
        .collect()
    }
}

/// Attributes as `stat` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub crtime: SystemTime,
}

pub fn to_system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Nanoseconds since the epoch, as records hold them. Their range (1677-09-21 to
/// 2262-04-11) is narrower than what utimensat(2) can ask for: a time beyond it
/// is clamped to its end, as a file system clamps to its format's range, rather
/// than wrapping around to the other end.
pub fn from_system_time(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

pub fn now_ns() -> i64 {
    from_system_time(SystemTime::now())
}

impl Inode {
    pub fn attr(&self, ino: Ino, page_size: u64) -> Attr {
        Attr {
            ino,
            kind: self.kind,
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            nlink: self.nlink,
            rdev: self.rdev,
            size: self.size,
            blocks: self.mapped * page_size / 512,
            atime: to_system_time(self.atime),
            mtime: to_system_time(self.mtime),
            ctime: to_system_time(self.ctime),
            crtime: to_system_time(self.crtime),
        }
    }

    /// Drops setuid and setgid as Linux does when `caller` changes the file
    /// (`fs/attr.c`: `setattr_should_drop_suidgid`, `setattr_should_drop_sgid`):
    /// a write or truncate by a caller without CAP_FSETID drops setuid, and setgid
    /// where group-executable or where the caller is not in the file's group; a
    /// change of owner drops setuid whoever makes it, and setgid the same way but
    /// with CAP_FSETID standing for membership. Returns whether the mode changed.
    pub fn drop_suidgid(&mut self, change: Change, caller: &Caller) -> bool {
        let p = self.perm_after(change, caller);
        let changed = p != self.perm;
        self.perm = p;
        changed
    }

    /// The permission bits [`Inode::drop_suidgid`] would leave.
    pub fn perm_after(&self, change: Change, caller: &Caller) -> u32 {
        let applies = match change {
            Change::Data => !caller.fsetid && self.kind == Kind::File,
            Change::Owner => self.kind != Kind::Dir,
        };
        let p = self.perm;
        if !applies || p & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return p;
        }
        let mut p = p & !libc::S_ISUID;
        if p & libc::S_ISGID != 0
            && (p & libc::S_IXGRP != 0 || !(caller.fsetid || (caller.in_group)(self.gid)))
        {
            p &= !libc::S_ISGID;
        }
        p
    }
}

/// What a change does to the file, as far as setuid and setgid go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A write or a truncate.
    Data,
    /// A change of owner or group (of anything but a directory, which keeps both).
    Owner,
}

/// Who makes a write, truncate or change of owner, as far as setuid and setgid go.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    /// Holds CAP_FSETID: its writes and truncates keep both bits.
    pub fsetid: bool,
    /// Whether the caller is in a group (its own or a supplementary one): asked
    /// only of a caller without CAP_FSETID, for a setgid file that is not
    /// group-executable.
    pub in_group: &'a dyn Fn(u32) -> bool,
}

impl Caller<'_> {
    /// A caller with CAP_FSETID (root): what the volume's own callers stand for.
    pub const PRIVILEGED: Caller<'static> = Caller {
        fsetid: true,
        in_group: &|_| true,
    };
}

impl Default for Caller<'_> {
    fn default() -> Self {
        Caller::PRIVILEGED
    }
}

impl std::fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("fsetid", &self.fsetid)
            .finish_non_exhaustive()
    }
}

/// A time to set: a given instant, or the time of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    At(SystemTime),
    Now,
}

impl SetTime {
    /// The time in nanoseconds since the epoch, `now` standing for the call's time.
    pub fn ns(self, now: i64) -> i64 {
        match self {
            SetTime::Now => now,
            SetTime::At(t) => from_system_time(t),
        }
    }
}

/// What `setattr` changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct SetAttr<'a> {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub ctime: Option<SystemTime>,
    /// Who asks: a truncate or change of owner drops setuid and setgid as
    /// [`Inode::drop_suidgid`] says.
    pub caller: Caller<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setuid_and_setgid_drop_as_linux_drops_them() {
        let member = Caller {
            fsetid: false,
            in_group: &|g| g == 4242,
        };
        let outsider = Caller {
            fsetid: false,
            in_group: &|_| false,
        };
        let root = Caller::PRIVILEGED;
        // (kind, mode, change, caller) -> mode after, for a file of group 4242.
        let cases = [
            (Kind::File, 0o6777, Change::Data, &outsider, 0o777),
            (Kind::File, 0o6767, Change::Data, &outsider, 0o767),
            (Kind::File, 0o6767, Change::Data, &member, 0o2767),
            (Kind::File, 0o6777, Change::Data, &root, 0o6777),
            (Kind::File, 0o644, Change::Data, &outsider, 0o644),
            (Kind::File, 0o6755, Change::Owner, &root, 0o755),
            (Kind::File, 0o6745, Change::Owner, &root, 0o2745),
            (Kind::File, 0o2745, Change::Owner, &outsider, 0o745),
            (Kind::File, 0o2745, Change::Owner, &member, 0o2745),
            (Kind::Symlink, 0o4777, Change::Owner, &root, 0o777),
            (Kind::Dir, 0o6755, Change::Owner, &root, 0o6755),
            (Kind::Dir, 0o6777, Change::Data, &outsider, 0o6777),
        ];
        for (kind, mode, change, caller, want) in cases {
            let mut i = Inode::new(kind, mode, 0, 4242, 0);
            let changed = i.drop_suidgid(change, caller);
            assert_eq!(
                (i.perm, changed),
                (want, want != mode),
                "{kind:?} {mode:o} {change:?} {caller:?}"
            );
        }
    }

    #[test]
    fn records_round_trip() {
        let mut i = Inode::new(Kind::Dir, 0o1755, 10, 20, 123_456_789);
        i.size = 77;
        i.content = Tree {
            root: PageNo(99),
            height: 2,
        };
        i.parent = Ino(5);
        i.mapped = 3;
        i.atime = -5;
        let b = i.encode();
        assert_eq!(Inode::decode(&b).unwrap(), Some(i));
        assert_eq!(Inode::decode(&[0u8; INODE_BYTES]).unwrap(), None);
        let mut bad = b;
        bad[0] = 99;
        assert!(Inode::decode(&bad).is_err());
    }
}
