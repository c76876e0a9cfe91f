//! The FUSE adapter: kernel requests in, [`Volume`] calls out, replies back.
//!
//! It holds no file-system logic. What it owns is the mapping between the kernel's
//! single space of node ids and the volume's (cluster, inode) pairs, plus three kinds
//! of virtual node that exist only at the mount:
//!
//! | node id | what |
//! |---|---|
//! | `1` | the mount root: one directory per cluster |
//! | `2` | `/.clonefs-status`: JSON about the store, made at open (never listed) |
//! | `cid << 40 \| ino` | inode `ino` of cluster `cid` (the cluster root is `ino` 1) |
//! | `cid << 40 \| 0` | `CLUSTER/.clone`, the control directory (never listed) |
//! | `cid << 40 \| (1 << 40) - 1` | `SRC/.clone/NAME`: an empty read-only directory standing for clone `cid` |
//!
//! Cluster ids start at 1 and inode numbers are never reused, so a node id never
//! names two different files in the life of a store: the kernel's caches cannot
//! confuse them and every generation number is 0.
//!
//! A mount of one cluster (`clonefs mount --cluster`) uses the same ids, except
//! that the kernel's root id `1` stands for that cluster's root (`cid << 40 | 1`):
//! `CloneFs::node` and `CloneFs::kernel_id` translate, and nothing else changes.
//! Such a mount is one of several the daemon serves (`sessions`): a cluster that
//! two mounts show has its names and attributes cached for a moment only, and
//! names in it cannot be removed through a mount other than its own while it is
//! mounted alone (the volume keeps the cluster itself from delete and reset).
//!
//! By default the writeback cache stays off: a write has reached the volume when
//! `write(2)` returns, so a clone made after it contains it. With it on
//! (`--writeback-cache`), a clone first has the kernel write back the dirty pages
//! of the cluster's open files. Names under the mount root and
//! under `.clone` change without the kernel seeing each change (a clone appears,
//! a cluster is deleted from another name), so their entries are never cached.
//!
//! The parts: `node` (the id layout), `handles` (zero-message open: what keeps a
//! file alive without OPEN), `namespace` (what each node is and what a
//! request on it decides), `attr` (translation of attributes, flags and errors),
//! `mount` (the session), `sessions` (the mounts of one daemon). This file is the
//! `Filesystem` impl: each handler decodes, calls one of those or the volume, and
//! replies.

mod attr;
mod handles;
mod mount;
mod namespace;
mod node;
mod sessions;

pub use mount::{cluster_users, mount, mounts, MountConfig, MountEntry, Notifiers};
pub use node::Node;
pub use sessions::{Live, MountError, Sessions};

use crate::error::Error;
use crate::status::StatusSnapshot;
use crate::volume::{Caller, ClusterId, SetAttr, Volume, Whence, Writer};
use attr::{
    errno, in_group, kind_from_mode, rename_flags, reply_xattr, set_time, xattr_mode, xattr_name,
};
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, error, info};
use namespace::clone_entry;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Name of the hidden status file at the mount root.
pub const STATUS_NAME: &str = ".clonefs-status";
/// Name of the hidden control directory in every cluster root.
pub const CONTROL_NAME: &str = ".clone";

/// How long the kernel may trust attributes and names of files inside clusters: as
/// long as a local file system's. Every change to a cluster's tree comes through this
/// mount, and the kernel drops what each change makes stale (the parent's attributes
/// on a create, the size and times on a write, the target on a rename or unlink).
/// What changes behind its back is virtual (the root, `.clone`) and never cached.
/// A day, like libfuse passthrough's `cache=always`: with 1 s, a walk of a large
/// tree (`du`, `grep -r`) outlives the entries readdirplus gave it and looks every
/// name up again.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// Names and attributes in a cluster that another mount shows too: changes made
/// there reach this mount's kernel caches within this.
const SHARED_TTL: Duration = Duration::from_secs(1);
/// Virtual nodes and the names under the mount root and `.clone`: not cached.
const NO_TTL: Duration = Duration::ZERO;
const GEN: Generation = Generation(0);
/// A file's cached pages outlive its handles: every change to a file's bytes comes
/// through this mount, and the kernel drops the ranges it cannot vouch for itself
/// (truncate, fallocate, the destination of copy_file_range, a failed write). A
/// clone's files have node ids of their own. Without it each open would drop the
/// file's cache, and the next reads and writes would fill fresh pages again.
const FILE_OPEN: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE;
/// statfs: the volume has no inode limit; report a large, steady figure.
const FILES: u64 = 1 << 40;

/// The file system the kernel talks to.
pub struct CloneFs {
    vol: Arc<Volume>,
    /// The cluster shown at the mount's root (kernel node 1) when one cluster is
    /// mounted on its own; None: the whole store, node 1 being the list of clusters.
    root: Option<ClusterId>,
    /// Owner of the virtual nodes: the daemon's user.
    uid: u32,
    gid: u32,
    mounted: SystemTime,
    blksize: u32,
    /// Status documents, one per open of `.clonefs-status`, by file handle.
    status: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    /// The status document reads without a handle get (see `handles`).
    status_latest: Mutex<Option<Arc<Vec<u8>>>>,
    /// OPEN and CREATE answered ENOSYS; the kernel's references keep files alive.
    zero_open: bool,
    next_fh: AtomicU64,
    /// The kernel's writeback cache is on: dirty pages of open files sit in the
    /// kernel until it writes them back, so a clone has them written back first.
    writeback: bool,
    /// Ask the kernel for FUSE over io_uring at INIT.
    io_uring: bool,
    /// The notifiers of every mount of this daemon, this one's once its session
    /// exists: how a clone asks the kernel for those pages.
    notifiers: Arc<Notifiers>,
}

impl CloneFs {
    pub fn new(vol: Arc<Volume>) -> CloneFs {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let blksize = vol.page_size() as u32;
        CloneFs {
            vol,
            root: None,
            uid,
            gid,
            mounted: SystemTime::now(),
            blksize,
            status: Mutex::new(HashMap::new()),
            status_latest: Mutex::new(None),
            zero_open: true,
            next_fh: AtomicU64::new(1),
            writeback: false,
            io_uring: false,
            notifiers: Arc::default(),
        }
    }

    /// A file system showing cluster `c` alone at its root.
    pub fn of_cluster(vol: Arc<Volume>, c: ClusterId) -> CloneFs {
        CloneFs {
            root: Some(c),
            ..CloneFs::new(vol)
        }
    }
}

macro_rules! node_or_reply {
    ($self:ident, $ino:expr, $reply:ident) => {
        match $self.node($ino) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

macro_rules! file_or_reply {
    ($self:ident, $ino:expr, $reply:ident) => {
        match $self.file($ino) {
            Ok(f) => f,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for CloneFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.negotiate(config);
        Ok(())
    }

    fn destroy(&mut self) {
        // The store stays open for the daemon's other mounts; it closes the
        // volume (the final commit) once the last has gone.
        match self.vol.commit() {
            Ok(()) => info!("unmounted; {} committed", self.vol.path().display()),
            Err(e) => error!(
                "unmounted, but the commit of {} failed: {e}",
                self.vol.path().display()
            ),
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = node_or_reply!(self, parent, reply);
        debug!("lookup {parent} {name:?}");
        match self.find(parent, name) {
            Ok(e) => self.reply_entry(&e, reply),
            Err(e) => reply.error(self.fail("lookup", parent, e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.forget_node(ino, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let n = node_or_reply!(self, ino, reply);
        debug!("getattr {n}");
        match self.attr_of(n) {
            Ok(a) => reply.attr(&self.attr_ttl(n), &a),
            Err(e) => reply.error(self.fail("getattr", n, e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let n = node_or_reply!(self, ino, reply);
        debug!("setattr {n} mode {mode:?} uid {uid:?} gid {gid:?} size {size:?}");
        let Node::File(c, i) = n else {
            return reply.error(self.refuse("setattr", n, libc::EPERM, "a virtual node"));
        };
        let member = |g| in_group(req, g);
        let sa = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime,
            // With FUSE_HANDLE_KILLPRIV_V2 the volume drops setuid and setgid on a
            // truncate or chown. The kernel's FATTR_KILL_SUIDGID (no CAP_FSETID)
            // does not reach us through fuser: root stands for CAP_FSETID.
            caller: Caller {
                fsetid: req.uid() == 0,
                in_group: &member,
            },
        };
        match self.vol.setattr(c, i, &sa) {
            Ok(a) => reply.attr(&self.attr_ttl(n), &self.file_attr(n, &a)),
            Err(e) => reply.error(self.fail("setattr", n, e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (c, i) = file_or_reply!(self, ino, reply);
        debug!("readlink {}", Node::File(c, i));
        match self.vol.readlink(c, i) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(self.fail("readlink", Node::File(c, i), e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let p = node_or_reply!(self, parent, reply);
        debug!("mknod {p} {name:?} mode {mode:o} rdev {rdev}");
        let Some(kind) = kind_from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let who = Self::who(req, mode, umask);
        match self.make("mknod", p, name, |c, ino| {
            self.vol.mknod(c, ino, name.as_bytes(), kind, who, rdev)
        }) {
            Ok(e) => self.reply_entry(&e, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let p = node_or_reply!(self, parent, reply);
        debug!("mkdir {p} {name:?} mode {mode:o}");
        let who = Self::who(req, mode, umask);
        let made = match p {
            Node::Root => {
                let name = String::from_utf8_lossy(name.as_bytes());
                self.vol
                    .create_cluster(&name, who)
                    .map(|cl| {
                        info!("cluster {name} created");
                        cl.id
                    })
                    .and_then(|c| self.entry(p, Node::cluster_root(c)))
                    .map_err(|e| self.fail("mkdir (new cluster)", p, e))
            }
            Node::Control(src) => {
                let name = String::from_utf8_lossy(name.as_bytes());
                if self.writeback {
                    // Every mount of the daemon: the cluster's dirty pages may sit
                    // in another mount's page cache (its own mount, say).
                    match (self.vol.open_files(src), self.notifiers.all()) {
                        (Ok(open), ns) if !open.is_empty() && !ns.is_empty() => {
                            return self.clone_after_writeback(src, name.into(), open, ns, reply);
                        }
                        (Ok(_), ns) if ns.is_empty() => {
                            error!("no notifier: cloning without a writeback")
                        }
                        _ => {}
                    }
                }
                clone_entry(&self.vol, self.blksize, src, &name)
                    .map_err(|e| self.fail("mkdir (clone)", p, e))
            }
            _ => self.make("mkdir", p, name, |c, ino| {
                self.vol.mkdir(c, ino, name.as_bytes(), who)
            }),
        };
        match made {
            Ok(e) => self.reply_entry(&e, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = node_or_reply!(self, parent, reply);
        debug!("unlink {p} {name:?}");
        let done = match p {
            Node::Root => match self.find(p, name) {
                Ok(e) if e.attr.kind == FileType::Directory => Err(errno(libc::EISDIR)),
                Ok(_) => Err(self.refuse("unlink", p, libc::EPERM, "the status file is virtual")),
                Err(e) => Err(self.fail("unlink", p, e)),
            },
            _ => self.remove("unlink", p, name, |c, ino| {
                self.vol.unlink(c, ino, name.as_bytes())
            }),
        };
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = node_or_reply!(self, parent, reply);
        debug!("rmdir {p} {name:?}");
        let done = match p {
            Node::Root if name.as_bytes() == STATUS_NAME.as_bytes() => Err(errno(libc::ENOTDIR)),
            Node::Root => {
                let name = String::from_utf8_lossy(name.as_bytes());
                self.vol
                    .remove_empty_cluster(&name)
                    .map(|()| info!("cluster {name} removed"))
                    .map_err(|e| self.fail("rmdir (cluster)", p, e))
            }
            _ => self.remove("rmdir", p, name, |c, ino| {
                self.vol.rmdir(c, ino, name.as_bytes())
            }),
        };
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let p = node_or_reply!(self, parent, reply);
        debug!("symlink {p} {link_name:?} -> {target:?}");
        let who = Self::who(req, 0o777, 0);
        match self.make("symlink", p, link_name, |c, ino| {
            self.vol.symlink(
                c,
                ino,
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
                who,
            )
        }) {
            Ok(e) => self.reply_entry(&e, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let p = node_or_reply!(self, parent, reply);
        let np = node_or_reply!(self, newparent, reply);
        debug!("rename {p} {name:?} -> {np} {newname:?} flags {flags}");
        let Some(flags) = rename_flags(flags) else {
            return reply.error(Errno::EINVAL);
        };
        match (p, np) {
            _ if p.is_control(name) || np.is_control(newname) => reply.error(self.refuse(
                "rename",
                p,
                libc::EPERM,
                ".clone is the control directory of the cluster",
            )),
            (Node::File(c, from), Node::File(nc, to)) if c == nc => {
                match self
                    .vol
                    .rename(c, from, name.as_bytes(), to, newname.as_bytes(), flags)
                {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(self.fail("rename", p, e)),
                }
            }
            (Node::File(..), Node::File(..)) => {
                reply.error(self.fail("rename", p, Error::CrossCluster))
            }
            _ => reply.error(self.refuse(
                "rename",
                p,
                libc::EPERM,
                "clusters, .clone and clone markers cannot be renamed or moved into",
            )),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let n = node_or_reply!(self, ino, reply);
        let np = node_or_reply!(self, newparent, reply);
        debug!("link {n} -> {np} {newname:?}");
        match (n, np) {
            (Node::File(c, _), Node::File(nc, _)) if c != nc => {
                reply.error(self.fail("link", n, Error::CrossCluster))
            }
            (Node::File(_, i), _) => match self.make("link", np, newname, |c, to| {
                self.vol.link(c, i, to, newname.as_bytes())
            }) {
                Ok(e) => self.reply_entry(&e, reply),
                Err(e) => reply.error(e),
            },
            _ => reply.error(self.refuse("link", n, libc::EPERM, "a virtual node")),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let n = node_or_reply!(self, ino, reply);
        debug!("open {n} flags {flags:#x}");
        if self.zero_open {
            return reply.error(Errno::ENOSYS);
        }
        match n {
            Node::Status => {
                if flags.acc_mode() != OpenAccMode::O_RDONLY {
                    return reply.error(Errno::EACCES);
                }
                match StatusSnapshot::take(&self.vol) {
                    Ok(snapshot) => {
                        let mut doc = Vec::new();
                        snapshot.view().write_json(&mut doc);
                        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                        self.status.lock().unwrap().insert(fh, Arc::new(doc));
                        // Direct I/O: reads go to us whatever size getattr said.
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
                    }
                    Err(e) => reply.error(self.fail("open", n, e)),
                }
            }
            Node::File(c, i) => match self.vol.open_file(c, i) {
                // Never FOPEN_DIRECT_IO: it breaks shared mmap.
                Ok(()) => reply.opened(FileHandle(0), FILE_OPEN),
                Err(e) => reply.error(self.fail("open", n, e)),
            },
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let n = node_or_reply!(self, ino, reply);
        debug!("read {n} {size} at {offset}");
        match n {
            Node::Status => {
                let doc = self.status.lock().unwrap().get(&fh.0).cloned();
                let doc = doc.or_else(|| self.status_latest());
                match doc {
                    Some(doc) => {
                        let from = (offset as usize).min(doc.len());
                        let to = from.saturating_add(size as usize).min(doc.len());
                        reply.data(&doc[from..to]);
                    }
                    None => reply.error(Errno::EBADF),
                }
            }
            Node::File(c, i) => match self.vol.read(c, i, offset, size as usize) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(self.fail("read", n, e)),
            },
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (c, i) = file_or_reply!(self, ino, reply);
        debug!("write {} {} at {offset}", Node::File(c, i), data.len());
        // FUSE_HANDLE_KILLPRIV_V2: the kernel flags every write by a caller without
        // CAP_FSETID, whatever the file's mode; the volume drops the bits it finds.
        let member = |g| in_group(req, g);
        let who = Writer {
            caller: Caller {
                fsetid: !write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
                in_group: &member,
            },
            from_cache: write_flags.contains(WriteFlags::FUSE_WRITE_CACHE),
        };
        match self.vol.write_as(c, i, offset, data, who) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(self.fail("write", Node::File(c, i), e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered here, and the kernel keeps POSIX locks and flocks itself
        // (no FUSE_POSIX_LOCKS / FUSE_FLOCK_LOCKS). ENOSYS once and the kernel sends no
        // FLUSH again (`fc->no_flush`): close costs no round trip. With the writeback
        // cache the kernel still writes a file's dirty pages back at close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let n = node_or_reply!(self, ino, reply);
        debug!("release {n}");
        match n {
            Node::Status => {
                self.status.lock().unwrap().remove(&fh.0);
                reply.ok()
            }
            Node::File(c, i) => match self.vol.release_file(c, i) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail("release", n, e)),
            },
            _ => reply.ok(),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let n = node_or_reply!(self, ino, reply);
        debug!("fsync {n} datasync {datasync}");
        match n {
            Node::File(c, i) => match if datasync {
                self.vol.fdatasync(c, i)
            } else {
                self.vol.fsync(c, i)
            } {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail("fsync", n, e)),
            },
            _ => reply.ok(),
        }
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Databases fsync a directory to make a create or rename durable: answering
        // ENOSYS would make the kernel report success without doing anything.
        self.fsync(req, ino, fh, datasync, reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let n = node_or_reply!(self, ino, reply);
        debug!("opendir {n}");
        // Counted like a file's handle: a directory removed while open lives on
        // (fstat, fchdir) until its last releasedir, as on a local file system.
        match n {
            Node::File(c, i) => match self.vol.open_file(c, i) {
                Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
                Err(e) => reply.error(self.fail("opendir", n, e)),
            },
            _ => reply.opened(FileHandle(0), FopenFlags::empty()),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let n = node_or_reply!(self, ino, reply);
        debug!("releasedir {n}");
        match n {
            Node::File(c, i) => match self.vol.release_file(c, i) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail("releasedir", n, e)),
            },
            _ => reply.ok(),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let n = node_or_reply!(self, ino, reply);
        debug!("readdir {n} from {offset}");
        match self.list(n, offset) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(
                        self.kernel_id(e.node),
                        e.offset,
                        e.kind,
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(self.fail("readdir", n, e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let n = node_or_reply!(self, ino, reply);
        debug!("readdirplus {n} from {offset}");
        match self.list(n, offset) {
            Ok(entries) => {
                let ttl = self.entry_ttl(n);
                for e in entries {
                    // An entry removed since the listing is skipped, not an error.
                    let Ok(attr) = self.attr_of(e.node) else {
                        continue;
                    };
                    if reply.add(
                        self.kernel_id(e.node),
                        e.offset,
                        OsStr::from_bytes(&e.name),
                        &ttl,
                        &attr,
                        GEN,
                    ) {
                        break;
                    }
                    // The kernel keeps every entry but the dots: each is a lookup.
                    if e.name != b"." && e.name != b".." {
                        self.counted(Some(e.node));
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(self.fail("readdirplus", n, e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.vol.statfs();
        let ps = s.page_size.max(1);
        reply.statfs(
            s.capacity / ps,
            (s.capacity - s.used.min(s.capacity)) / ps,
            s.free / ps,
            FILES,
            FILES,
            ps as u32,
            255,
            ps as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let n = node_or_reply!(self, ino, reply);
        debug!(
            "setxattr {n} {name:?} ({} bytes) flags {flags}",
            value.len()
        );
        let Node::File(c, i) = n else {
            return reply.error(self.refuse("setxattr", n, libc::EPERM, "a virtual node"));
        };
        let Some(mode) = xattr_mode(flags) else {
            return reply.error(Errno::EINVAL);
        };
        if let Err(e) = xattr_name(name.as_bytes()) {
            return reply.error(e);
        }
        match self.vol.setxattr(c, i, name.as_bytes(), value, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("setxattr", n, e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let n = node_or_reply!(self, ino, reply);
        debug!("getxattr {n} {name:?} size {size}");
        if let Err(e) = xattr_name(name.as_bytes()) {
            return reply.error(e);
        }
        let Node::File(c, i) = n else {
            return reply.error(errno(libc::ENODATA));
        };
        match self.vol.getxattr(c, i, name.as_bytes()) {
            Ok(v) => reply_xattr(&v, size, reply),
            Err(e) => reply.error(self.fail("getxattr", n, e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let n = node_or_reply!(self, ino, reply);
        debug!("listxattr {n} size {size}");
        let Node::File(c, i) = n else {
            return reply_xattr(&[], size, reply);
        };
        match self.vol.listxattr(c, i) {
            Ok(v) => reply_xattr(&v, size, reply),
            Err(e) => reply.error(self.fail("listxattr", n, e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let n = node_or_reply!(self, ino, reply);
        debug!("removexattr {n} {name:?}");
        if let Err(e) = xattr_name(name.as_bytes()) {
            return reply.error(e);
        }
        let Node::File(c, i) = n else {
            return reply.error(errno(libc::ENODATA));
        };
        match self.vol.removexattr(c, i, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("removexattr", n, e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctls (isatty() probes arrive here): the usual answer for a file
        // that has none.
        debug!("ioctl {:?} cmd {cmd:#x}", self.node(ino));
        reply.error(Errno::ENOTTY);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let p = node_or_reply!(self, parent, reply);
        debug!("create {p} {name:?} mode {mode:o} flags {flags:#x}");
        if self.zero_open {
            return reply.error(Errno::ENOSYS);
        }
        let Some(kind) = kind_from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let who = Self::who(req, mode, umask);
        let made = self.make("create", p, name, |c, ino| {
            let a = self.vol.mknod(c, ino, name.as_bytes(), kind, who, 0)?;
            self.vol.open_file(c, a.ino)?;
            Ok(a)
        });
        match made {
            Ok(e) => reply.created(&e.ttl, &e.attr, GEN, FileHandle(0), FILE_OPEN),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (c, i) = file_or_reply!(self, ino, reply);
        debug!(
            "fallocate {} {length} at {offset} mode {mode:#x}",
            Node::File(c, i)
        );
        match self.vol.fallocate(c, i, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("fallocate", Node::File(c, i), e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let (c, i) = file_or_reply!(self, ino, reply);
        debug!("lseek {} {offset} whence {whence}", Node::File(c, i));
        let whence = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            // The kernel resolves SEEK_SET/CUR/END itself; should one come here,
            // the offset stands as given.
            _ => return reply.offset(offset),
        };
        let Ok(from) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.vol.seek(c, i, from, whence) {
            Ok(to) => reply.offset(to as i64),
            Err(e) => reply.error(self.fail("lseek", Node::File(c, i), e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let (sc, si) = file_or_reply!(self, ino_in, reply);
        let (dc, di) = file_or_reply!(self, ino_out, reply);
        debug!(
            "copy_file_range {} at {offset_in} -> {} at {offset_out}, {len} bytes",
            Node::File(sc, si),
            Node::File(dc, di)
        );
        // The reply carries a u32; the kernel clamps `len` below that already.
        let len = len.min(u32::MAX as u64 & !(self.blksize as u64 - 1));
        match self
            .vol
            .copy_range(sc, si, offset_in, dc, di, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(self.fail("copy_file_range", Node::File(dc, di), e)),
        }
    }
}
