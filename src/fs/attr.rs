//! Translation between the kernel's vocabulary and the volume's: attributes, file
//! kinds, mode bits, rename and xattr flags, and volume errors to errno.
//!
//! Each function is total over what the kernel may send: a flag or kind the volume
//! has no word for comes back as `None` (the caller answers EINVAL) rather than
//! being guessed at. Errors are logged here, once, at the level a user needs:
//! corruption and I/O as errors, everyday answers (ENOENT, ENODATA) as debug.

use super::{CloneFs, Node, CONTROL_NAME};
use crate::error::Error;
use crate::volume::{Attr, ClusterId, Kind, NewInode, RenameFlags, SetTime, XattrMode};
use fuser::{Errno, FileAttr, FileType, Request, TimeOrNow};
use log::{debug, error, warn};

/// The preferred I/O size a regular file reports (`st_blksize`): the largest request
/// the kernel sends (max_write, max_read). `cp` and stdio size their buffers by it,
/// so each of their writes reaches the volume in one request instead of eight or more.
pub(super) const FILE_IO_SIZE: u32 = 1 << 20;

pub(super) fn file_attr(node: Node, a: &Attr, blksize: u32) -> FileAttr {
    let blksize = if a.kind == Kind::File {
        FILE_IO_SIZE
    } else {
        blksize
    };
    FileAttr {
        ino: node.id(),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: kind_of(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize,
        flags: 0,
    }
}

pub(super) fn kind_of(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// The node kind `mknod` asks for, from the file-type bits of its mode.
pub(super) fn kind_from_mode(mode: u32) -> Option<Kind> {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG => Some(Kind::File),
        libc::S_IFIFO => Some(Kind::Fifo),
        libc::S_IFSOCK => Some(Kind::Socket),
        libc::S_IFCHR => Some(Kind::CharDev),
        libc::S_IFBLK => Some(Kind::BlockDev),
        _ => None,
    }
}

pub(super) fn rename_flags(flags: fuser::RenameFlags) -> Option<RenameFlags> {
    let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
    if !known.contains(flags) {
        return None;
    }
    Some(RenameFlags {
        noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
        exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
    })
}

pub(super) fn xattr_mode(flags: i32) -> Option<XattrMode> {
    match flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) {
        0 => Some(XattrMode::Any),
        libc::XATTR_CREATE => Some(XattrMode::Create),
        libc::XATTR_REPLACE => Some(XattrMode::Replace),
        _ => None,
    }
}

/// Whether an extended attribute name is one this file system keeps: `user.*`,
/// `trusted.*` and `security.*`, as a local file system does. Any other name is
/// EOPNOTSUPP (an unknown namespace, or `system.*`: a POSIX ACL would be stored but
/// never enforced, the kernel only enforces them for FUSE_POSIX_ACL servers), and a
/// namespace prefix alone is EINVAL. The kernel leaves all this to a FUSE server.
pub(super) fn xattr_name(name: &[u8]) -> Result<(), Errno> {
    const KEPT: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
    match KEPT.iter().find(|p| name.starts_with(p)) {
        Some(p) if name.len() == p.len() => Err(Errno::EINVAL),
        Some(_) => Ok(()),
        None => Err(Errno::EOPNOTSUPP),
    }
}

pub(super) fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
        TimeOrNow::Now => SetTime::Now,
    }
}

pub(super) fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

impl CloneFs {
    /// Logs a failure the way a user needs it, and gives the errno to reply with.
    pub(super) fn fail(&self, op: &str, node: Node, e: Error) -> Errno {
        // The place is described only when logged: a missing name (every new file's
        // lookup) is on the hot path.
        let place = || self.describe(node);
        match &e {
            Error::Corrupt { .. } | Error::PreviousIo | Error::Io(_) | Error::BadStore { .. } => {
                error!("{op} on {}: {e}", place())
            }
            // Everyday answers: a name that is not there, an attribute not set.
            Error::NotFound | Error::NoData | Error::NoSuchOffset => {
                debug!("{op} on {}: {e}", place())
            }
            _ => warn!("{op} on {}: {e}", place()),
        }
        errno(e.errno())
    }

    /// Refuses an operation on a virtual node, saying why in the log.
    pub(super) fn refuse(&self, op: &str, node: Node, code: i32, why: &str) -> Errno {
        warn!("{op} on {}: refused: {why}", self.describe(node));
        errno(code)
    }

    /// `node` with its cluster's name, for messages.
    pub(super) fn describe(&self, node: Node) -> String {
        let name = |c: ClusterId| {
            self.vol
                .cluster_info(c)
                .map(|i| i.name)
                .unwrap_or_else(|_| format!("#{}", c.0))
        };
        match node {
            Node::File(c, ino) => format!("cluster {} inode {ino}", name(c)),
            Node::Control(c) => format!("{}/{CONTROL_NAME}", name(c)),
            Node::Marker(c) => format!("clone {}", name(c)),
            other => other.to_string(),
        }
    }

    pub(super) fn who(req: &Request, mode: u32, umask: u32) -> NewInode {
        NewInode {
            perm: mode & !umask & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
        }
    }
}

/// Whether the process that sent `req` is in group `gid`: its file-system gid, or
/// one of the supplementary groups on the `Groups:` line of `/proc/PID/status`
/// (the kernel sends the thread's id, whose status shows the thread's
/// credentials). A process that is gone, or one in another pid namespace (pid 0),
/// counts as outside the group: a setgid bit then drops, which grants nothing.
pub(super) fn in_group(req: &Request, gid: u32) -> bool {
    gid == req.gid()
        || std::fs::read_to_string(format!("/proc/{}/status", req.pid()))
            .is_ok_and(|status| supplementary_groups(&status).any(|g| g == gid))
}

/// The groups on the `Groups:` line of a `/proc/PID/status`.
fn supplementary_groups(status: &str) -> impl Iterator<Item = u32> + '_ {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
}

/// Replies to a size-0 xattr probe with the length, else with the bytes if they fit.
pub(super) fn reply_xattr(data: &[u8], size: u32, reply: fuser::ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(fuser::Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_flags_translate() {
        assert_eq!(kind_from_mode(libc::S_IFREG | 0o644), Some(Kind::File));
        assert_eq!(kind_from_mode(0o644), Some(Kind::File));
        assert_eq!(kind_from_mode(libc::S_IFIFO | 0o600), Some(Kind::Fifo));
        assert_eq!(kind_from_mode(libc::S_IFSOCK), Some(Kind::Socket));
        assert_eq!(kind_from_mode(libc::S_IFCHR), Some(Kind::CharDev));
        assert_eq!(kind_from_mode(libc::S_IFBLK), Some(Kind::BlockDev));
        assert_eq!(kind_from_mode(libc::S_IFDIR), None);
        assert_eq!(xattr_mode(0), Some(XattrMode::Any));
        assert_eq!(xattr_mode(1), Some(XattrMode::Create));
        assert_eq!(xattr_mode(2), Some(XattrMode::Replace));
        assert_eq!(xattr_mode(3), None);
        assert_eq!(xattr_name(b"user.a"), Ok(()));
        assert_eq!(xattr_name(b"trusted.overlay.opaque"), Ok(()));
        assert_eq!(xattr_name(b"security.capability"), Ok(()));
        assert_eq!(xattr_name(b"user."), Err(Errno::EINVAL));
        assert_eq!(xattr_name(b"bogus.x"), Err(Errno::EOPNOTSUPP));
        assert_eq!(
            xattr_name(b"system.posix_acl_access"),
            Err(Errno::EOPNOTSUPP)
        );
        assert_eq!(xattr_name(b"user"), Err(Errno::EOPNOTSUPP));
        let f = rename_flags(fuser::RenameFlags::from_bits_retain(1)).unwrap();
        assert!(f.noreplace && !f.exchange);
        let f = rename_flags(fuser::RenameFlags::from_bits_retain(2)).unwrap();
        assert!(!f.noreplace && f.exchange);
        assert!(rename_flags(fuser::RenameFlags::from_bits_retain(4)).is_none());
    }

    #[test]
    fn supplementary_groups_come_from_the_status_line() {
        let status = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n\
                      FDSize:\t64\nGroups:\t4 27 4242 \nNStgid:\t7\n";
        assert_eq!(
            supplementary_groups(status).collect::<Vec<_>>(),
            [4, 27, 4242]
        );
        assert_eq!(supplementary_groups("Groups:\t\n").count(), 0);
        assert_eq!(supplementary_groups("Name:\tx\n").count(), 0);
    }
}
