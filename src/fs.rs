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
//! By default the writeback cache stays off: a write has reached the volume when
//! `write(2)` returns, so a clone made after it contains it. With it on
//! (`--writeback-cache`), a clone first has the kernel write back the dirty pages
//! of the cluster's open files. Names under the mount root and
//! under `.clone` change without the kernel seeing each change (a clone appears,
//! a cluster is deleted from another name), so their entries are never cached.

use crate::error::Error;
use crate::status::StatusDoc;
use crate::volume::{
    Attr, ClusterId, Ino, Kind, NewInode, RenameFlags, SetAttr, SetTime, Volume, Whence, Writer,
    XattrMode,
};
use fuser::{
    AccessFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, Notifier,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    Session, SessionACL, TimeOrNow, WriteFlags,
};
use log::{debug, error, info, warn};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Name of the hidden status file at the mount root.
pub const STATUS_NAME: &str = ".clonefs-status";
/// Name of the hidden control directory in every cluster root.
pub const CONTROL_NAME: &str = ".clone";

const ROOT_NODE: u64 = 1;
const STATUS_NODE: u64 = 2;
const INO_BITS: u32 = 40;
const INO_MASK: u64 = (1 << INO_BITS) - 1;
const CONTROL_INO: u64 = 0;
const MARKER_INO: u64 = INO_MASK;

/// How long the kernel may trust attributes and names of files inside clusters.
const TTL: Duration = Duration::from_secs(1);
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

/// What a kernel node id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Root,
    Status,
    /// An inode of a cluster.
    File(ClusterId, Ino),
    /// `CLUSTER/.clone` of the cluster.
    Control(ClusterId),
    /// `SRC/.clone/NAME`, standing for cluster NAME (the id).
    Marker(ClusterId),
}

impl Node {
    pub fn decode(id: u64) -> Option<Node> {
        let (cid, low) = (id >> INO_BITS, id & INO_MASK);
        match (cid, low) {
            (0, ROOT_NODE) => Some(Node::Root),
            (0, STATUS_NODE) => Some(Node::Status),
            (0, _) => None,
            (c, CONTROL_INO) => Some(Node::Control(ClusterId(c))),
            (c, MARKER_INO) => Some(Node::Marker(ClusterId(c))),
            (c, ino) => Some(Node::File(ClusterId(c), Ino(ino))),
        }
    }

    pub fn encode(self) -> u64 {
        match self {
            Node::Root => ROOT_NODE,
            Node::Status => STATUS_NODE,
            Node::File(c, ino) => (c.0 << INO_BITS) | (ino.0 & INO_MASK),
            Node::Control(c) => c.0 << INO_BITS,
            Node::Marker(c) => (c.0 << INO_BITS) | MARKER_INO,
        }
    }

    fn id(self) -> INodeNo {
        INodeNo(self.encode())
    }

    /// The root directory of cluster `c`.
    fn cluster_root(c: ClusterId) -> Node {
        Node::File(c, Ino::ROOT)
    }

    /// Is `name` the control directory, looked up in this directory?
    fn is_control(self, name: &OsStr) -> bool {
        matches!(self, Node::File(_, Ino::ROOT)) && name.as_bytes() == CONTROL_NAME.as_bytes()
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Root => write!(f, "/"),
            Node::Status => write!(f, "/{STATUS_NAME}"),
            Node::File(c, ino) => write!(f, "cluster#{} inode {ino}", c.0),
            Node::Control(c) => write!(f, "cluster#{}/{CONTROL_NAME}", c.0),
            Node::Marker(c) => write!(f, "clone marker of cluster#{}", c.0),
        }
    }
}

/// What a lookup, mkdir, create or readdir entry resolves to.
struct Entry {
    attr: FileAttr,
    ttl: Duration,
}

/// One directory entry, with the offset that continues after it.
struct Listed {
    node: Node,
    offset: u64,
    kind: FileType,
    name: Vec<u8>,
}

/// The file system the kernel talks to.
pub struct CloneFs {
    vol: Arc<Volume>,
    /// Owner of the virtual nodes: the daemon's user.
    uid: u32,
    gid: u32,
    mounted: SystemTime,
    blksize: u32,
    /// Status documents, one per open of `.clonefs-status`, by file handle.
    status: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    next_fh: AtomicU64,
    /// The kernel's writeback cache is on: dirty pages of open files sit in the
    /// kernel until it writes them back, so a clone has them written back first.
    writeback: bool,
    /// Set once the session exists: how a clone asks the kernel for those pages.
    notifier: Arc<OnceLock<Notifier>>,
}

/// How to mount: the choices the command line offers.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub threads: usize,
    pub allow_other: bool,
    /// FUSE_WRITEBACK_CACHE: writes fill the kernel's page cache and reach the
    /// daemon in writeback; a write's ENOSPC shows at fsync or close instead.
    pub writeback_cache: bool,
}

/// Mounts `vol` at `mountpoint`; the mount is live (INIT answered) when this returns.
/// `run()` the session to serve it; it returns when the mount goes away, after the
/// volume is closed (committed).
pub fn mount(
    vol: Arc<Volume>,
    mountpoint: &Path,
    mc: &MountConfig,
) -> std::io::Result<Session<CloneFs>> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(vol.path().display().to_string()),
        MountOption::CUSTOM("subtype=clonefs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if mc.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(mc.threads.max(1));
    config.clone_fd = mc.threads > 1;
    let mut fs = CloneFs::new(vol);
    fs.writeback = mc.writeback_cache;
    let notifier = fs.notifier.clone();
    let session = Session::new(fs, mountpoint, &config)?;
    // Before any request but INIT is served: `run()` serves them.
    let _ = notifier.set(session.notifier());
    if mc.writeback_cache {
        lift_dirty_limits(mountpoint);
    }
    Ok(session)
}

/// PR_SET_IO_FLUSHER, from linux/prctl.h (the libc crate has it for Android only).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// The kernel holds a FUSE mount's dirty pages to 1% of the dirty limit, strictly,
/// in case its daemon cannot be trusted with more; with the writeback cache, a
/// writer then goes at the daemon's pace (one request at a time) instead of the
/// page cache's. clonefs gives its own mount what a local file system has, and
/// makes this thread, and so the workers `run()` starts from it, I/O flushers:
/// their writes to the store are throttled against the store's disk alone, never
/// against the mount's dirty pages, which only they can clean. Failing either is
/// only slower, and is logged.
fn lift_dirty_limits(mountpoint: &Path) {
    // SAFETY: prctl with integer arguments changes only this thread's flags.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } != 0 {
        warn!(
            "cannot make the workers I/O flushers: {}",
            std::io::Error::last_os_error()
        );
    }
    let Some(dev) = mount_device(mountpoint) else {
        warn!(
            "{} is not in /proc/self/mountinfo: its dirty page limits stay the kernel's",
            mountpoint.display()
        );
        return;
    };
    let bdi = Path::new("/sys/class/bdi").join(&dev);
    for (knob, value) in [("strict_limit", "0"), ("max_ratio", "100")] {
        if let Err(e) = std::fs::write(bdi.join(knob), value) {
            warn!("cannot set {}/{knob} to {value}: {e}", bdi.display());
        }
    }
}

/// The device number (`MAJOR:MINOR`) of the mount at `mountpoint`, the topmost one
/// there, read from /proc/self/mountinfo: a stat of the mount would ask the daemon.
fn mount_device(mountpoint: &Path) -> Option<String> {
    let want = std::fs::canonicalize(mountpoint).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let at = unescape_mountinfo(fields.nth(1)?);
        (Path::new(OsStr::from_bytes(&at)) == want).then(|| dev.to_owned())
    })
}

/// A mountinfo path field: space, tab, newline and backslash are written `\ooo`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The attributes of a virtual directory of a cluster (`.clone`, or the marker of a
/// clone in it): those of the cluster's root, as an empty directory of mode `perm`.
fn cluster_dir_attr(node: Node, root: &Attr, blksize: u32, perm: u16) -> FileAttr {
    let mut a = file_attr(node, root, blksize);
    a.perm = perm;
    a.nlink = 2;
    a.size = 0;
    a.blocks = 0;
    a
}

/// The attributes of `SRC/.clone/NAME`, the read-only directory standing for clone `c`.
fn marker_attr(vol: &Volume, blksize: u32, c: ClusterId) -> Result<FileAttr, Error> {
    let root = vol.getattr(c, Ino::ROOT)?;
    Ok(cluster_dir_attr(Node::Marker(c), &root, blksize, 0o555))
}

/// `mkdir SRC/.clone/NAME`: clones cluster `src` as `name`; the entry of its marker.
fn clone_entry(vol: &Volume, blksize: u32, src: ClusterId, name: &str) -> Result<Entry, Error> {
    let started = Instant::now();
    let c = vol.clone_cluster(&vol.cluster_info(src)?.name, name)?.id;
    debug!("clone {name} made in {:?}", started.elapsed());
    let node = Node::Marker(c);
    Ok(Entry {
        attr: marker_attr(vol, blksize, c)?,
        ttl: CloneFs::entry_ttl(Node::Control(src)).min(CloneFs::attr_ttl(node)),
    })
}

fn file_attr(node: Node, a: &Attr, blksize: u32) -> FileAttr {
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

fn kind_of(k: Kind) -> FileType {
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
fn kind_from_mode(mode: u32) -> Option<Kind> {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG => Some(Kind::File),
        libc::S_IFIFO => Some(Kind::Fifo),
        libc::S_IFSOCK => Some(Kind::Socket),
        libc::S_IFCHR => Some(Kind::CharDev),
        libc::S_IFBLK => Some(Kind::BlockDev),
        _ => None,
    }
}

fn rename_flags(flags: fuser::RenameFlags) -> Option<RenameFlags> {
    let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
    if !known.contains(flags) {
        return None;
    }
    Some(RenameFlags {
        noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
        exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
    })
}

fn xattr_mode(flags: i32) -> Option<XattrMode> {
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
fn xattr_name(name: &[u8]) -> Result<(), Errno> {
    const KEPT: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
    match KEPT.iter().find(|p| name.starts_with(p)) {
        Some(p) if name.len() == p.len() => Err(Errno::EINVAL),
        Some(_) => Ok(()),
        None => Err(Errno::EOPNOTSUPP),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
        TimeOrNow::Now => SetTime::Now,
    }
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

/// Replies to a size-0 xattr probe with the length, else with the bytes if they fit.
fn reply_xattr(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl CloneFs {
    pub fn new(vol: Arc<Volume>) -> CloneFs {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let blksize = vol.page_size() as u32;
        CloneFs {
            vol,
            uid,
            gid,
            mounted: SystemTime::now(),
            blksize,
            status: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            writeback: false,
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Logs a failure the way a user needs it, and gives the errno to reply with.
    fn fail(&self, op: &str, node: Node, e: Error) -> Errno {
        let place = self.describe(node);
        match &e {
            Error::Corrupt { .. } | Error::PreviousIo | Error::Io(_) | Error::BadStore { .. } => {
                error!("{op} on {place}: {e}")
            }
            // Everyday answers: a name that is not there, an attribute not set.
            Error::NotFound | Error::NoData | Error::NoSuchOffset => {
                debug!("{op} on {place}: {e}")
            }
            _ => warn!("{op} on {place}: {e}"),
        }
        errno(e.errno())
    }

    /// Refuses an operation on a virtual node, saying why in the log.
    fn refuse(&self, op: &str, node: Node, code: i32, why: &str) -> Errno {
        warn!("{op} on {}: refused: {why}", self.describe(node));
        errno(code)
    }

    /// `node` with its cluster's name, for messages.
    fn describe(&self, node: Node) -> String {
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

    fn cluster_name(&self, c: ClusterId) -> Result<String, Error> {
        Ok(self.vol.cluster_info(c)?.name)
    }

    fn file_attr(&self, node: Node, a: &Attr) -> FileAttr {
        file_attr(node, a, self.blksize)
    }

    fn virtual_attr(&self, node: Node, kind: FileType, perm: u16, nlink: u32) -> FileAttr {
        FileAttr {
            ino: node.id(),
            size: 0,
            blocks: 0,
            atime: self.mounted,
            mtime: self.mounted,
            ctime: self.mounted,
            crtime: self.mounted,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: self.blksize,
            flags: 0,
        }
    }

    /// Attributes of any node.
    fn attr_of(&self, node: Node) -> Result<FileAttr, Error> {
        match node {
            Node::Root => {
                let n = self.vol.cluster_count() as u32;
                Ok(self.virtual_attr(node, FileType::Directory, 0o755, 2 + n))
            }
            Node::Status => Ok(self.virtual_attr(node, FileType::RegularFile, 0o444, 1)),
            Node::File(c, ino) => Ok(self.file_attr(node, &self.vol.getattr(c, ino)?)),
            // `.clone` belongs to whoever owns the cluster root: who may write there
            // may clone it.
            Node::Control(c) => Ok(cluster_dir_attr(
                node,
                &self.vol.getattr(c, Ino::ROOT)?,
                self.blksize,
                0o755,
            )),
            Node::Marker(c) => marker_attr(&self.vol, self.blksize, c),
        }
    }

    /// How long the kernel may keep an entry found in directory `parent`.
    fn entry_ttl(parent: Node) -> Duration {
        match parent {
            Node::File(..) => TTL,
            _ => NO_TTL,
        }
    }

    /// How long the kernel may keep the attributes of `node`.
    fn attr_ttl(node: Node) -> Duration {
        match node {
            Node::File(..) => TTL,
            _ => NO_TTL,
        }
    }

    fn entry(&self, parent: Node, node: Node) -> Result<Entry, Error> {
        Ok(Entry {
            attr: self.attr_of(node)?,
            ttl: Self::entry_ttl(parent).min(Self::attr_ttl(node)),
        })
    }

    fn entry_from(&self, parent: Node, c: ClusterId, a: &Attr) -> Entry {
        Entry {
            attr: self.file_attr(Node::File(c, a.ino), a),
            ttl: Self::entry_ttl(parent),
        }
    }

    /// `mkdir SRC/.clone/NAME` with the writeback cache on and files of `src` open:
    /// their dirty pages are still in the kernel. A thread of its own asks the kernel
    /// to write them back (each invalidation returns once the workers have served
    /// those writes, so no worker may wait for it), then clones and answers.
    fn clone_after_writeback(
        &self,
        src: ClusterId,
        name: String,
        open: Vec<Ino>,
        notifier: &Notifier,
        reply: ReplyEntry,
    ) {
        let (vol, notifier, blksize) = (self.vol.clone(), notifier.clone(), self.blksize);
        let spawned = std::thread::Builder::new()
            .name("clonefs-clone".into())
            .spawn(move || {
                let started = Instant::now();
                for ino in &open {
                    let node = Node::File(src, *ino);
                    match notifier.inval_inode(node.id(), 0, 0) {
                        // The kernel no longer has the inode: nothing of it is cached.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => warn!("writing back {node} before a clone: {e}"),
                        Ok(()) => {}
                    }
                }
                debug!(
                    "wrote back {} open files in {:?} for clone {name}",
                    open.len(),
                    started.elapsed()
                );
                match clone_entry(&vol, blksize, src, &name) {
                    Ok(e) => reply.entry_with_ttls(&e.ttl, &e.ttl, &e.attr, GEN),
                    Err(e) => {
                        warn!("mkdir (clone) {name} of cluster {src:?}: {e}");
                        reply.error(errno(e.errno()))
                    }
                }
            });
        if let Err(e) = spawned {
            // The reply went with the closure; dropped unanswered, it answers EIO.
            error!("no thread for a clone: {e}");
        }
    }

    fn cluster_id(&self, name: &OsStr) -> Result<ClusterId, Error> {
        let name = std::str::from_utf8(name.as_bytes()).map_err(|_| Error::NotFound)?;
        Ok(self.vol.cluster_by_name(name)?.id)
    }

    /// Finds `name` in directory `parent`.
    fn find(&self, parent: Node, name: &OsStr) -> Result<Entry, Error> {
        match parent {
            Node::Root if name.as_bytes() == STATUS_NAME.as_bytes() => {
                self.entry(parent, Node::Status)
            }
            Node::Root => {
                let c = self.cluster_id(name)?;
                self.entry(parent, Node::cluster_root(c))
            }
            Node::File(c, _) if parent.is_control(name) => self.entry(parent, Node::Control(c)),
            Node::File(_, Ino::ROOT) if name.as_bytes() == b".." => self.entry(parent, Node::Root),
            Node::File(c, ino) => {
                let a = self.vol.lookup(c, ino, name.as_bytes())?;
                Ok(self.entry_from(parent, c, &a))
            }
            Node::Control(src) => {
                let c = self.cluster_id(name)?;
                let src_name = self.cluster_name(src)?;
                if self.vol.cluster_info(c)?.parent.as_deref() != Some(src_name.as_str()) {
                    return Err(Error::NotFound);
                }
                self.entry(parent, Node::Marker(c))
            }
            Node::Marker(_) => Err(Error::NotFound),
            Node::Status => Err(Error::NotADirectory),
        }
    }

    /// The entries of directory `dir` after `offset`.
    fn list(&self, dir: Node, offset: u64) -> Result<Vec<Listed>, Error> {
        let dots = |parent: Node| {
            vec![
                Listed {
                    node: dir,
                    offset: 1,
                    kind: FileType::Directory,
                    name: b".".to_vec(),
                },
                Listed {
                    node: parent,
                    offset: 2,
                    kind: FileType::Directory,
                    name: b"..".to_vec(),
                },
            ]
        };
        let mut all = match dir {
            Node::Root => {
                let mut v = dots(Node::Root);
                for (i, cl) in self.vol.clusters().into_iter().enumerate() {
                    v.push(Listed {
                        node: Node::cluster_root(cl.id),
                        offset: 3 + i as u64,
                        kind: FileType::Directory,
                        name: cl.name.into_bytes(),
                    });
                }
                v
            }
            Node::File(c, ino) => {
                return Ok(self
                    .vol
                    .readdir(c, ino, offset)?
                    .into_iter()
                    .map(|e| Listed {
                        node: if ino == Ino::ROOT && e.name == b".." {
                            Node::Root
                        } else {
                            Node::File(c, e.ino)
                        },
                        offset: e.offset,
                        kind: kind_of(e.kind),
                        name: e.name,
                    })
                    .collect())
            }
            Node::Control(c) => {
                let mut v = dots(Node::cluster_root(c));
                for (i, cl) in self
                    .vol
                    .clones_of(&self.cluster_name(c)?)
                    .into_iter()
                    .enumerate()
                {
                    v.push(Listed {
                        node: Node::Marker(cl.id),
                        offset: 3 + i as u64,
                        kind: FileType::Directory,
                        name: cl.name.into_bytes(),
                    });
                }
                v
            }
            Node::Marker(c) => {
                let parent = self
                    .vol
                    .cluster_info(c)?
                    .parent
                    .and_then(|p| self.vol.cluster_by_name(&p).ok())
                    .map_or(Node::Root, |p| Node::Control(p.id));
                dots(parent)
            }
            Node::Status => return Err(Error::NotADirectory),
        };
        all.retain(|e| e.offset > offset);
        Ok(all)
    }

    fn who(req: &Request, mode: u32, umask: u32) -> NewInode {
        NewInode {
            perm: mode & !umask & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
        }
    }

    /// Creates a node named `name` in `parent` (not a directory: see `mkdir`).
    fn make(
        &self,
        op: &str,
        parent: Node,
        name: &OsStr,
        make: impl FnOnce(ClusterId, Ino) -> crate::error::Result<Attr>,
    ) -> Result<Entry, Errno> {
        match parent {
            Node::File(..) if parent.is_control(name) => Err(self.refuse(
                op,
                parent,
                libc::EEXIST,
                ".clone is the control directory of the cluster",
            )),
            Node::File(c, ino) => make(c, ino)
                .map(|a| self.entry_from(parent, c, &a))
                .map_err(|e| self.fail(op, parent, e)),
            Node::Root => Err(self.refuse(
                op,
                parent,
                libc::EPERM,
                "only clusters (directories) can be made at the mount root",
            )),
            Node::Control(_) => Err(self.refuse(
                op,
                parent,
                libc::EPERM,
                "only directories (clones) can be made in .clone",
            )),
            Node::Marker(_) => {
                Err(self.refuse(op, parent, libc::EPERM, "a clone marker is read-only"))
            }
            Node::Status => Err(errno(libc::ENOTDIR)),
        }
    }

    /// Removes a name (unlink or rmdir) from a directory inside a cluster.
    fn remove(
        &self,
        op: &str,
        parent: Node,
        name: &OsStr,
        remove: impl FnOnce(ClusterId, Ino) -> crate::error::Result<()>,
    ) -> Result<(), Errno> {
        match parent {
            Node::File(..) if parent.is_control(name) => Err(self.refuse(
                op,
                parent,
                libc::EPERM,
                ".clone is the control directory of the cluster",
            )),
            Node::File(c, ino) => remove(c, ino).map_err(|e| self.fail(op, parent, e)),
            Node::Control(_) => Err(self.refuse(
                op,
                parent,
                libc::EPERM,
                "remove a clone at the mount root, not in .clone",
            )),
            Node::Marker(_) => Err(errno(libc::ENOENT)),
            Node::Status => Err(errno(libc::ENOTDIR)),
            // Callers deal with the mount root themselves; refuse rather than guess.
            Node::Root => Err(errno(libc::EPERM)),
        }
    }

    /// The file an I/O request names, or the errno for a virtual node.
    fn file(&self, ino: INodeNo) -> Result<(ClusterId, Ino), Errno> {
        match Node::decode(ino.0) {
            Some(Node::File(c, i)) => Ok((c, i)),
            Some(Node::Status) => Err(errno(libc::EPERM)),
            Some(_) => Err(errno(libc::EISDIR)),
            None => Err(errno(libc::ENOENT)),
        }
    }
}

fn node(ino: INodeNo) -> Result<Node, Errno> {
    Node::decode(ino.0).ok_or(Errno::ENOENT)
}

macro_rules! node_or_reply {
    ($ino:expr, $reply:ident) => {
        match node($ino) {
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
        if let Err(max) = config.set_max_write(1 << 20) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        // Without FUSE_WRITEBACK_CACHE (the default) a write is in the volume when
        // write(2) returns; with it, a clone first has the kernel write back the
        // dirty pages of the cluster's open files (see `clone_after_writeback`).
        let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_CACHE_SYMLINKS
            // The volume drops setuid/setgid itself, so the kernel need not ask
            // for security.capability before every write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.writeback {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let granted = wanted & config.capabilities();
        if config.add_capabilities(granted).is_err() {
            warn!("the kernel refused capabilities {granted:?}");
        }
        if self.writeback && !granted.contains(InitFlags::FUSE_WRITEBACK_CACHE) {
            warn!("the kernel offers no writeback cache: writes go through");
            self.writeback = false;
        }
        info!(
            "serving {} ({} clusters), kernel FUSE ABI {:?}",
            self.vol.path().display(),
            self.vol.cluster_count(),
            config.kernel_abi()
        );
        Ok(())
    }

    fn destroy(&mut self) {
        match self.vol.close() {
            Ok(()) => info!(
                "unmounted; {} committed and closed",
                self.vol.path().display()
            ),
            Err(e) => error!(
                "unmounted, but the last commit of {} failed: {e}",
                self.vol.path().display()
            ),
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = node_or_reply!(parent, reply);
        debug!("lookup {parent} {name:?}");
        match self.find(parent, name) {
            Ok(e) => reply.entry_with_ttls(&e.ttl, &e.ttl, &e.attr, GEN),
            Err(e) => reply.error(self.fail("lookup", parent, e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let n = node_or_reply!(ino, reply);
        debug!("getattr {n}");
        match self.attr_of(n) {
            Ok(a) => reply.attr(&Self::attr_ttl(n), &a),
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
        let n = node_or_reply!(ino, reply);
        debug!("setattr {n} mode {mode:?} uid {uid:?} gid {gid:?} size {size:?}");
        let Node::File(c, i) = n else {
            return reply.error(self.refuse("setattr", n, libc::EPERM, "a virtual node"));
        };
        let sa = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime,
            // With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to us; root
            // stands for CAP_FSETID.
            kill_suidgid: size.is_some() && req.uid() != 0,
        };
        match self.vol.setattr(c, i, &sa) {
            Ok(a) => reply.attr(&TTL, &self.file_attr(n, &a)),
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
        let p = node_or_reply!(parent, reply);
        debug!("mknod {p} {name:?} mode {mode:o} rdev {rdev}");
        let Some(kind) = kind_from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let who = Self::who(req, mode, umask);
        match self.make("mknod", p, name, |c, ino| {
            self.vol.mknod(c, ino, name.as_bytes(), kind, who, rdev)
        }) {
            Ok(e) => reply.entry_with_ttls(&e.ttl, &e.ttl, &e.attr, GEN),
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
        let p = node_or_reply!(parent, reply);
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
                    match (self.vol.open_files(src), self.notifier.get()) {
                        (Ok(open), Some(n)) if !open.is_empty() => {
                            return self.clone_after_writeback(src, name.into(), open, n, reply);
                        }
                        (Ok(_), None) => error!("no notifier: cloning without a writeback"),
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
            Ok(e) => reply.entry_with_ttls(&e.ttl, &e.ttl, &e.attr, GEN),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = node_or_reply!(parent, reply);
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
        let p = node_or_reply!(parent, reply);
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
        let p = node_or_reply!(parent, reply);
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
            Ok(e) => reply.entry_with_ttls(&e.ttl, &e.ttl, &e.attr, GEN),
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
        let p = node_or_reply!(parent, reply);
        let np = node_or_reply!(newparent, reply);
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
        let n = node_or_reply!(ino, reply);
        let np = node_or_reply!(newparent, reply);
        debug!("link {n} -> {np} {newname:?}");
        match (n, np) {
            (Node::File(c, _), Node::File(nc, _)) if c != nc => {
                reply.error(self.fail("link", n, Error::CrossCluster))
            }
            (Node::File(_, i), _) => match self.make("link", np, newname, |c, to| {
                self.vol.link(c, i, to, newname.as_bytes())
            }) {
                Ok(e) => reply.entry_with_ttls(&e.ttl, &e.ttl, &e.attr, GEN),
                Err(e) => reply.error(e),
            },
            _ => reply.error(self.refuse("link", n, libc::EPERM, "a virtual node")),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let n = node_or_reply!(ino, reply);
        debug!("open {n} flags {flags:#x}");
        match n {
            Node::Status => {
                if flags.acc_mode() != OpenAccMode::O_RDONLY {
                    return reply.error(Errno::EACCES);
                }
                match StatusDoc::of(&self.vol) {
                    Ok(doc) => {
                        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                        self.status
                            .lock()
                            .unwrap()
                            .insert(fh, Arc::new(doc.to_json().into_bytes()));
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
        let n = node_or_reply!(ino, reply);
        debug!("read {n} {size} at {offset}");
        match n {
            Node::Status => {
                let doc = self.status.lock().unwrap().get(&fh.0).cloned();
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
        _req: &Request,
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
        let who = Writer {
            drop_suidgid: write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
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
        // Writes are in the volume when they return; nothing is buffered here.
        reply.ok();
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
        let n = node_or_reply!(ino, reply);
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
        let n = node_or_reply!(ino, reply);
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
        let n = node_or_reply!(ino, reply);
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
        let n = node_or_reply!(ino, reply);
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
        let n = node_or_reply!(ino, reply);
        debug!("readdir {n} from {offset}");
        match self.list(n, offset) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(e.node.id(), e.offset, e.kind, OsStr::from_bytes(&e.name)) {
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
        let n = node_or_reply!(ino, reply);
        debug!("readdirplus {n} from {offset}");
        match self.list(n, offset) {
            Ok(entries) => {
                let ttl = Self::entry_ttl(n);
                for e in entries {
                    // An entry removed since the listing is skipped, not an error.
                    let Ok(attr) = self.attr_of(e.node) else {
                        continue;
                    };
                    if reply.add(
                        e.node.id(),
                        e.offset,
                        OsStr::from_bytes(&e.name),
                        &ttl,
                        &attr,
                        GEN,
                    ) {
                        break;
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
        let n = node_or_reply!(ino, reply);
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
        let n = node_or_reply!(ino, reply);
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
        let n = node_or_reply!(ino, reply);
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
        let n = node_or_reply!(ino, reply);
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
        debug!("ioctl {:?} cmd {cmd:#x}", Node::decode(ino.0));
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
        let p = node_or_reply!(parent, reply);
        debug!("create {p} {name:?} mode {mode:o} flags {flags:#x}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_unescape_and_the_root_mount_has_a_device() {
        assert_eq!(
            unescape_mountinfo(r"/a\040b\011c\134d\\"),
            b"/a b\tc\\d\\\\"
        );
        assert_eq!(unescape_mountinfo(r"/x\09"), b"/x\\09");
        let dev = mount_device(Path::new("/")).expect("/ in /proc/self/mountinfo");
        let (major, minor) = dev.split_once(':').expect(&dev);
        assert!(
            major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok(),
            "{dev}"
        );
    }

    #[test]
    fn node_ids_round_trip() {
        let nodes = [
            Node::Root,
            Node::Status,
            Node::File(ClusterId(1), Ino::ROOT),
            Node::File(ClusterId(1), Ino(2)),
            Node::File(ClusterId(7), Ino(INO_MASK - 1)),
            Node::Control(ClusterId(1)),
            Node::Control(ClusterId(12345)),
            Node::Marker(ClusterId(3)),
        ];
        for n in nodes {
            assert_eq!(Node::decode(n.encode()), Some(n), "{n:?}");
        }
    }

    #[test]
    fn node_id_layout_is_the_documented_one() {
        assert_eq!(Node::Root.encode(), 1);
        assert_eq!(Node::File(ClusterId(1), Ino::ROOT).encode(), (1 << 40) | 1);
        assert_eq!(Node::File(ClusterId(3), Ino(9)).encode(), (3 << 40) | 9);
        assert_eq!(Node::Control(ClusterId(3)).encode(), 3 << 40);
        assert_eq!(
            Node::Marker(ClusterId(3)).encode(),
            (3 << 40) | ((1 << 40) - 1)
        );
        // Ids of cluster 0 other than the root and the status file name nothing.
        assert_eq!(Node::decode(0), None);
        assert_eq!(Node::decode(3), None);
    }

    #[test]
    fn control_name_only_in_cluster_roots() {
        let name = OsStr::new(".clone");
        assert!(Node::File(ClusterId(1), Ino::ROOT).is_control(name));
        assert!(!Node::File(ClusterId(1), Ino(5)).is_control(name));
        assert!(!Node::Root.is_control(name));
        assert!(!Node::File(ClusterId(1), Ino::ROOT).is_control(OsStr::new("clone")));
    }

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
    fn listing_and_lookup_of_virtual_directories() {
        let (vol, _dev) = Volume::in_memory(4096, 1024).unwrap();
        let who = NewInode {
            perm: 0o755,
            uid: 0,
            gid: 0,
        };
        let prod = vol.create_cluster("prod", who).unwrap().id;
        let test = vol.clone_cluster("prod", "test").unwrap().id;
        let fs = CloneFs::new(vol);
        let names = |dir: Node| -> Vec<String> {
            fs.list(dir, 0)
                .unwrap()
                .into_iter()
                .map(|e| String::from_utf8(e.name).unwrap())
                .collect()
        };
        assert_eq!(names(Node::Root), [".", "..", "prod", "test"]);
        assert_eq!(names(Node::Control(prod)), [".", "..", "test"]);
        assert_eq!(names(Node::Control(test)), [".", ".."]);
        assert_eq!(names(Node::cluster_root(prod)), [".", ".."]);
        // Continuing after an offset skips what was listed.
        assert_eq!(fs.list(Node::Root, 3).unwrap().len(), 1);
        let root = Node::cluster_root(prod);
        let e = fs.find(root, OsStr::new(".clone")).unwrap();
        assert_eq!(e.attr.ino, Node::Control(prod).id());
        assert_eq!(e.ttl, NO_TTL);
        let e = fs.find(Node::Control(prod), OsStr::new("test")).unwrap();
        assert_eq!(e.attr.ino, Node::Marker(test).id());
        assert_eq!(e.attr.kind, FileType::Directory);
        assert!(fs.find(Node::Control(test), OsStr::new("prod")).is_err());
        let e = fs.find(Node::Root, OsStr::new("test")).unwrap();
        assert_eq!(e.attr.ino, Node::cluster_root(test).id());
        assert!(fs.find(Node::Root, OsStr::new(STATUS_NAME)).is_ok());
    }
}
