//! The volume layer: clusters, inodes, directories, file contents, clone.
//!
//! Its rooms, each an `impl Volume` block or the formats beneath them:
//!
//! | file | what it owns |
//! |---|---|
//! | `open.rs` | making a store, opening it (recount, orphans), closing it |
//! | `commit.rs` | the commit, its timer, the epoch gate, room for metadata |
//! | `op.rs` | one change to a cluster: locks, touched inodes, directory indexes |
//! | `clusters.rs` | create, clone, delete and list clusters |
//! | `namespace.rs` | lookup, attributes, make, link, unlink, rename, readdir |
//! | `contents.rs` | read, truncate, open/fsync/fdatasync/release |
//! | `write.rs` | where a write goes: in place, or copy-on-write |
//! | `ranges.rs` | fallocate, seek data/hole, copy_file_range |
//! | `xattr.rs` | extended attributes |
//! | `restore.rs` | restore points, restore to a time, reset, protection, expiry |
//! | `mounted.rs` | where the volume is mounted: a cluster mounted on its own is busy |
//! | `check.rs` | space per cluster, fsck, the recount walks |
//! | `space.rs` | space figures from a background walk of the last commit's trees |
//! | `node.rs` | the tree engine: pages, radix trees, copy-on-write, lazy counts |
//! | `inode.rs`, `dir.rs`, `catalog.rs` | the records in the trees' leaves |
//!
//! A cluster is one tree: its inode table (a record tree indexed by inode number),
//! whose records hold the roots of each file's page map, each directory's slots and
//! each inode's xattrs. The catalog (a record tree indexed by cluster id) holds each
//! cluster's inode-table root; the superblock holds the catalog's root. A clone is a
//! new catalog entry whose inode table is the source's root with one more
//! reference: O(1), whatever the data size.
//!
//! Locks, always taken in this order:
//! 1. the epoch gate: shared by every change, exclusive for the instant a commit
//!    seals an epoch (reads do not take it);
//! 2. a cluster's state lock: shared by reads, exclusive for changes, clone and delete;
//! 3. the catalog (clone and delete take it while holding the cluster; anyone else
//!    takes it alone, or under the exclusive gate);
//! 4. a cluster's directory-index and open-count mutexes;
//! 5. the engine's deferred list and the allocator (inside the store).
//!
//! Nothing commits while holding 2-5. Space: an operation that adds metadata first
//! checks that the store has room beyond its reserve, then draws on the reserve, so
//! it never fails half-done for want of a page; unlink, rmdir, truncate and delete
//! draw on the reserve without the check; data pages never come from the reserve,
//! so a full store is `NoSpace` to the writer and nothing else.

pub mod catalog;
mod check;
mod clusters;
mod commit;
mod contents;
pub mod dir;
pub mod inode;
mod mounted;
mod namespace;
pub mod node;
mod op;
mod open;
mod ranges;
mod restore;
mod space;
mod write;
mod xattr;

use catalog::{Record, Settings};
pub use check::{FsckProgress, FsckReport};
use dir::DirIndex;
pub use inode::{Attr, Caller, Change, Ino, Inode, Kind, SetAttr, SetTime};
pub use mounted::{mounted_busy, MountPoint};
use node::{Engine, RecordFormat, Records, Tree};
pub use restore::{
    parse_duration, parse_time, CloneOptions, ResetTo, Restorable, DEFAULT_RETENTION,
};
pub use space::SpaceReport;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// The records at the leaves of the trees, as the tree engine sees them.
const RECORDS: Records = Records {
    inodes: RecordFormat {
        bytes: inode::INODE_BYTES,
        children: Inode::children,
    },
    dirents: RecordFormat {
        bytes: dir::DIRENT_BYTES,
        children: |_| Vec::new(),
    },
    catalog: RecordFormat {
        bytes: catalog::RECORD_BYTES,
        children: catalog::record_children,
    },
};

/// The largest file size (the kernel's limit for a 64-bit offset, rounded down).
const MAX_FILE_SIZE: u64 = 1 << 60;

/// A change to the set of clusters, for whoever watches (the API's event stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Created(String),
    Deleted(String),
    Reset(String),
    Expired(String),
    /// Its protection, expiry or retention changed.
    Modified(String),
}

/// A cluster's id: stable for the cluster's life, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    pub id: ClusterId,
    pub name: String,
    /// The cluster it was cloned from, if any (even if that one is gone).
    pub parent: Option<String>,
    pub created: SystemTime,
    /// Cannot be deleted or reset, nor can names in it be removed.
    pub protected: bool,
    /// When the daemon deletes it (unless it is protected by then).
    pub expires_at: Option<SystemTime>,
    /// How long its restore points are kept (zero: none are taken).
    pub retention: Duration,
    /// Its restore points, oldest first.
    pub restore_points: Vec<SystemTime>,
}

/// A cluster as a listing of every cluster shows it: [`ClusterInfo`]'s figures, with
/// the name and parent shared with the catalog rather than copied, and the restore
/// points counted rather than listed (a status document lists 10,000 clusters).
pub struct ClusterSummary {
    cluster: Arc<Cluster>,
    pub protected: bool,
    pub expires_at: Option<SystemTime>,
    pub retention: Duration,
    /// How many restore points it has.
    pub restore_points: usize,
    /// Its oldest restore point.
    pub earliest_point: Option<SystemTime>,
}

impl ClusterSummary {
    pub fn id(&self) -> ClusterId {
        self.cluster.id
    }

    pub fn name(&self) -> &str {
        &self.cluster.name
    }

    /// The cluster it was cloned from, if any (even if that one is gone).
    pub fn parent(&self) -> Option<&str> {
        self.cluster.parent.as_deref()
    }

    pub fn created(&self) -> SystemTime {
        inode::to_system_time(self.cluster.created)
    }
}

/// Space of one cluster, in bytes of store pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpace {
    pub name: String,
    /// Pages its tree reaches.
    pub logical: u64,
    /// Of those, pages other clusters reach too.
    pub shared: u64,
    /// Pages only it reaches.
    pub unique: u64,
    /// Pages only its restore points reach (what dropping them frees). Deleting
    /// the cluster frees `unique + restore_only`.
    pub restore_only: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The offset to pass to continue after this entry.
    pub offset: u64,
    pub ino: Ino,
    pub kind: Kind,
    pub name: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    Create,
    Replace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whence {
    Data,
    Hole,
}

/// Who a write comes from, as far as the volume cares (see [`Volume::write_as`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Writer<'a> {
    /// Without CAP_FSETID the write drops the file's setuid and setgid bits
    /// ([`Inode::drop_suidgid`]).
    pub caller: Caller<'a>,
    /// The kernel's writeback cache, which keeps the file's times itself and sends
    /// them in a setattr: the write leaves them as they are.
    pub from_cache: bool,
}

/// Owner and group of a new inode, and the umask-applied permission bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewInode {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
}

impl NewInode {
    /// A directory of mode 0755 owned by this process's effective user and group:
    /// a cluster the daemon makes for a client of its API, where no kernel request
    /// names a caller (so an unprivileged daemon's clusters are its user's).
    pub fn dir_of_this_process() -> NewInode {
        NewInode {
            perm: 0o755,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
}

struct Cluster {
    id: ClusterId,
    name: String,
    parent: Option<String>,
    created: i64,
    state: RwLock<State>,
    dirs: Mutex<HashMap<Ino, DirIndex>>,
    open: Mutex<HashMap<Ino, u32>>,
    /// The epoch in which each inode's size or page map last changed, until durable.
    remapped: Mutex<HashMap<Ino, u64>>,
    /// Its record (or settings) must be written at the next commit.
    dirty: AtomicBool,
    /// Its contents changed since its last restore point.
    changed: AtomicBool,
    deleted: AtomicBool,
    settings: Mutex<Settings>,
    /// Restore points, oldest first (records of kind [`RecordKind::Point`]).
    points: Mutex<Vec<Record>>,
}

struct State {
    itable: Tree,
    next_ino: u64,
    orphans: u64,
    /// Modification and change times of files overwritten in place since their
    /// records were last stored: [`Volume::load`] lays them over the records and a
    /// commit (or a clone of the cluster) stores them. Behind a lock of its own:
    /// overwrites in place hold the state shared.
    times: Mutex<HashMap<Ino, (i64, i64)>>,
}

#[derive(Default)]
struct Catalog {
    by_name: BTreeMap<String, Arc<Cluster>>,
    by_id: HashMap<ClusterId, Arc<Cluster>>,
    next_id: u64,
    /// Catalog slots the next commit clears (deleted clusters, dropped points).
    removed: Vec<u64>,
    /// Slots of dropped points and settings, for new ones (never for clusters:
    /// cluster ids are never reused).
    free_slots: Vec<u64>,
    /// The store's settings: its default retention.
    defaults: Settings,
    /// `defaults` must be written at the next commit.
    defaults_dirty: bool,
}

struct CommitState {
    tree: Tree,
    created: u64,
}

/// An open store: every cluster in it and the operations on them.
pub struct Volume {
    eng: Engine,
    gate: RwLock<()>,
    commit: Mutex<CommitState>,
    /// The generation of the last durable superblock.
    durable: AtomicU64,
    /// Since when times wait in some cluster's [`State::times`] (None: none wait).
    times_since: Mutex<Option<Instant>>,
    catalog: RwLock<Catalog>,
    read_only: bool,
    stop: Arc<(Mutex<bool>, Condvar)>,
    watchers: Mutex<Vec<crossbeam::channel::Sender<Event>>>,
    /// At most one restore point per cluster in this many ns.
    point_interval: AtomicU64,
    /// Its reference counts came from those a clean close saved, not a recount.
    counts_were_saved: bool,
    /// The counts the superblock it opened names (fsck checks them).
    saved_counts: Option<crate::store::CountMap>,
    /// The space walker's figures and requests.
    space: space::SpaceShared,
    /// Where the volume is mounted (see `mounted.rs`).
    mounts: Mutex<Vec<MountPoint>>,
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fsck;
#[cfg(test)]
mod tests_fsck_reference;
#[cfg(test)]
mod tests_restore;
#[cfg(test)]
mod tests_scale;
