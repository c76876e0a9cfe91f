//! The namespace the mount shows: the root with one directory per cluster, the
//! status file, each cluster's `.clone` directory and the clone markers in it, and
//! the clusters' own trees below them.
//!
//! Here the kernel's requests become decisions: what a name resolves to, what a
//! directory lists, where a node may be made or removed and why not, how long the
//! kernel may cache each answer. Virtual names change without the kernel seeing it
//! (a clone appears, a cluster goes), so their entries and attributes are never
//! cached; the clusters' trees change only through this mount, so theirs are.

use super::attr::{errno, file_attr, kind_of};
use super::{CloneFs, Node, GEN, NO_TTL, SHARED_TTL, STATUS_NAME, TTL};
use crate::error::Error;
use crate::volume::{mounted_busy, parse_time, Attr, CloneOptions, ClusterId, Ino, Volume};
use fuser::{Errno, FileAttr, FileType, INodeNo, Notifier, ReplyEntry};
use log::{debug, error, warn};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

/// What a lookup, mkdir, create or readdir entry resolves to.
pub(super) struct Entry {
    pub(super) attr: FileAttr,
    pub(super) ttl: Duration,
}

/// One directory entry, with the offset that continues after it.
pub(super) struct Listed {
    pub(super) node: Node,
    pub(super) offset: u64,
    pub(super) kind: FileType,
    pub(super) name: Vec<u8>,
}

/// The attributes of a virtual directory of a cluster (`.clone`, or the marker of a
/// clone in it): those of the cluster's root, as an empty directory of mode `perm`.
pub(super) fn cluster_dir_attr(node: Node, root: &Attr, blksize: u32, perm: u16) -> FileAttr {
    let mut a = file_attr(node, root, blksize);
    a.perm = perm;
    a.nlink = 2;
    a.size = 0;
    a.blocks = 0;
    a
}

/// The attributes of `SRC/.clone/NAME`, the read-only directory standing for clone `c`.
pub(super) fn marker_attr(vol: &Volume, blksize: u32, c: ClusterId) -> Result<FileAttr, Error> {
    let root = vol.getattr(c, Ino::ROOT)?;
    Ok(cluster_dir_attr(Node::Marker(c), &root, blksize, 0o555))
}

/// `mkdir SRC/.clone/NAME`: clones cluster `src` as `name`; `NAME@TIME` restores
/// it as it was at TIME (RFC 3339 or relative, see [`parse_time`]). The entry of
/// the new cluster's marker.
pub(super) fn clone_entry(
    vol: &Volume,
    blksize: u32,
    src: ClusterId,
    name: &str,
) -> Result<Entry, Error> {
    let started = Instant::now();
    let (name, at) = match name.split_once('@') {
        Some((name, t)) => (name, Some(parse_time(t).map_err(Error::BadTime)?)),
        None => (name, None),
    };
    let opts = CloneOptions {
        at,
        ..Default::default()
    };
    let c = vol
        .clone_with(&vol.cluster_info(src)?.name, name, &opts)?
        .0
        .id;
    debug!("clone {name} made in {:?}", started.elapsed());
    Ok(Entry {
        attr: marker_attr(vol, blksize, c)?,
        // Names in `.clone` are never cached.
        ttl: NO_TTL,
    })
}

impl CloneFs {
    pub(super) fn cluster_name(&self, c: ClusterId) -> Result<String, Error> {
        Ok(self.vol.cluster_info(c)?.name)
    }

    pub(super) fn file_attr(&self, node: Node, a: &Attr) -> FileAttr {
        FileAttr {
            ino: self.kernel_id(node),
            ..file_attr(node, a, self.blksize)
        }
    }

    pub(super) fn virtual_attr(
        &self,
        node: Node,
        kind: FileType,
        perm: u16,
        nlink: u32,
    ) -> FileAttr {
        FileAttr {
            ino: self.kernel_id(node),
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
    pub(super) fn attr_of(&self, node: Node) -> Result<FileAttr, Error> {
        match node {
            Node::Root => {
                let n = self.vol.cluster_count() as u32;
                Ok(self.virtual_attr(node, FileType::Directory, 0o755, 2 + n))
            }
            Node::Status => {
                let mut a = self.virtual_attr(node, FileType::RegularFile, 0o444, 1);
                a.size = self.status_len();
                Ok(a)
            }
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
    pub(super) fn entry_ttl(&self, parent: Node) -> Duration {
        match parent {
            Node::File(c, _) => self.cluster_ttl(c),
            _ => NO_TTL,
        }
    }

    /// How long the kernel may keep the attributes of `node`.
    pub(super) fn attr_ttl(&self, node: Node) -> Duration {
        match node {
            Node::File(c, _) => self.cluster_ttl(c),
            _ => NO_TTL,
        }
    }

    /// How long names and attributes in cluster `c` may be cached: a day while
    /// this mount is the only one showing it (every change then comes through it),
    /// a moment while another mount shows it too (the whole store beside a mount of
    /// the cluster alone), whose changes this kernel mount never hears of.
    fn cluster_ttl(&self, c: ClusterId) -> Duration {
        if self.vol.mounts_showing(c) > 1 {
            SHARED_TTL
        } else {
            TTL
        }
    }

    pub(super) fn entry(&self, parent: Node, node: Node) -> Result<Entry, Error> {
        Ok(Entry {
            attr: self.attr_of(node)?,
            ttl: self.entry_ttl(parent).min(self.attr_ttl(node)),
        })
    }

    pub(super) fn entry_from(&self, parent: Node, c: ClusterId, a: &Attr) -> Entry {
        Entry {
            attr: self.file_attr(Node::File(c, a.ino), a),
            ttl: self.entry_ttl(parent),
        }
    }

    /// `mkdir SRC/.clone/NAME` with the writeback cache on and files of `src` open:
    /// their dirty pages are still in the kernel. A thread of its own asks the kernel
    /// to write them back (each invalidation returns once the workers have served
    /// those writes, so no worker may wait for it), then clones and answers.
    pub(super) fn clone_after_writeback(
        &self,
        src: ClusterId,
        name: String,
        open: Vec<Ino>,
        notifiers: Vec<Notifier>,
        reply: ReplyEntry,
    ) {
        let (vol, blksize) = (self.vol.clone(), self.blksize);
        let spawned = std::thread::Builder::new()
            .name("clonefs-clone".into())
            .spawn(move || {
                let started = Instant::now();
                for (ino, notifier) in open
                    .iter()
                    .flat_map(|i| notifiers.iter().map(move |n| (i, n)))
                {
                    // A file's node id is the same on every mount of the store.
                    let node = Node::File(src, *ino);
                    match notifier.inval_inode(node.id(), 0, 0) {
                        // The kernel no longer has the inode: nothing of it is
                        // cached; a mount gone meanwhile has nothing either.
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ENOENT | libc::ENODEV | libc::EBADF)
                            ) => {}
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

    pub(super) fn cluster_id(&self, name: &OsStr) -> Result<ClusterId, Error> {
        let name = std::str::from_utf8(name.as_bytes()).map_err(|_| Error::NotFound)?;
        Ok(self.vol.cluster_by_name(name)?.id)
    }

    /// Finds `name` in directory `parent`.
    pub(super) fn find(&self, parent: Node, name: &OsStr) -> Result<Entry, Error> {
        match parent {
            Node::Root if name.as_bytes() == STATUS_NAME.as_bytes() => {
                // Without handles, each open reads the document this lookup makes.
                if self.zero_open {
                    self.status_refresh()?;
                }
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
    pub(super) fn list(&self, dir: Node, offset: u64) -> Result<Vec<Listed>, Error> {
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

    /// Creates a node named `name` in `parent` (not a directory: see `mkdir`).
    pub(super) fn make(
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
    pub(super) fn remove(
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
            Node::File(c, _) if self.root != Some(c) && !self.vol.mounted_at(c).is_empty() => {
                let at = self.vol.mounted_at(c);
                let name = self.cluster_name(c).unwrap_or_default();
                Err(self.fail(op, parent, mounted_busy(&name, &at[0])))
            }
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
    pub(super) fn file(&self, ino: INodeNo) -> Result<(ClusterId, Ino), Errno> {
        match self.node(ino)? {
            Node::File(c, i) => Ok((c, i)),
            Node::Status => Err(errno(libc::EPERM)),
            _ => Err(errno(libc::EISDIR)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::NewInode;

    #[test]
    fn listing_and_lookup_of_virtual_directories() {
        let (vol, _dev) = Volume::in_memory(4096, 1024).unwrap();
        let who = NewInode::dir_of_this_process();
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
