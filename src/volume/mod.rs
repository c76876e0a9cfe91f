//! The volume layer: clusters, inodes, directories, file contents, clone.
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
pub mod dir;
pub mod inode;
pub mod node;

use crate::error::{Error, Result};
use crate::store::memdev::MemDevice;
use crate::store::{MmapDevice, PageDevice, PageNo, Store, StoreSpace};
use catalog::Record;
pub use check::FsckReport;
use dir::{DirIndex, Dirent, NAME_MAX};
pub use inode::{Attr, Ino, Inode, Kind, SetAttr, SetTime};
use node::{Deferred, Engine, NodeKind, Tree};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

/// How often the background thread commits when something changed.
const COMMIT_INTERVAL: Duration = Duration::from_secs(2);
/// How long times of files overwritten in place may wait for a commit when nothing
/// else needs one (the kernel's own writeback of dirty data waits as long).
const TIMES_INTERVAL: Duration = Duration::from_secs(30);
/// Pages beyond the reserve an operation that adds metadata wants free.
const ROOM: u64 = 16;
const MAX_FILE_SIZE: u64 = 1 << 60;
const SYMLINK_MAX: usize = 4095;
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;
/// Entries returned by one readdir call.
const READDIR_BATCH: usize = 1024;

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
}

/// Space of one cluster, in bytes of store pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpace {
    pub name: String,
    /// Pages its tree reaches.
    pub logical: u64,
    /// Of those, pages other clusters reach too.
    pub shared: u64,
    /// Pages only it reaches: what deleting it frees.
    pub unique: u64,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writer {
    /// Without CAP_FSETID: the write drops the file's setuid and setgid bits.
    pub drop_suidgid: bool,
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
    dirty: AtomicBool,
    deleted: AtomicBool,
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

impl Cluster {
    fn new(rec: Record) -> Cluster {
        Cluster {
            id: ClusterId(rec.id),
            name: rec.name,
            parent: rec.parent,
            created: rec.created,
            state: RwLock::new(State {
                itable: rec.itable,
                next_ino: rec.next_ino,
                orphans: rec.orphans,
                times: Mutex::default(),
            }),
            dirs: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            remapped: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(true),
            deleted: AtomicBool::new(false),
        }
    }

    fn info(&self) -> ClusterInfo {
        ClusterInfo {
            id: self.id,
            name: self.name.clone(),
            parent: self.parent.clone(),
            created: inode::to_system_time(self.created),
        }
    }

    fn record(&self, st: &State) -> Record {
        Record {
            id: self.id.0,
            name: self.name.clone(),
            parent: self.parent.clone(),
            created: self.created,
            itable: st.itable,
            next_ino: st.next_ino,
            orphans: st.orphans,
        }
    }
}

#[derive(Default)]
struct Catalog {
    by_name: BTreeMap<String, Arc<Cluster>>,
    by_id: HashMap<ClusterId, Arc<Cluster>>,
    next_id: u64,
    /// Deleted clusters whose catalog records the next commit clears.
    removed: Vec<ClusterId>,
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
}

/// The inodes one operation reads and changes; `finish` writes them back.
struct Op<'a> {
    vol: &'a Volume,
    cl: &'a Cluster,
    st: &'a mut State,
    touched: BTreeMap<Ino, Inode>,
    /// Inodes whose change left their size and page map as they were: an
    /// fdatasync of them needs their data pages synced, not a commit.
    data_only: std::collections::BTreeSet<Ino>,
}

impl<'a> Op<'a> {
    /// The inode to change. Its record page is made private to this cluster first,
    /// so that the counts of the trees it references say whether they are shared.
    fn inode(&mut self, ino: Ino) -> Result<&mut Inode> {
        if !self.touched.contains_key(&ino) {
            let i = self.vol.load(self.st, ino)?;
            self.vol.eng.writable_record(
                &mut self.st.itable,
                NodeKind::RadixInodes,
                ino.0,
                true,
            )?;
            self.cl.dirty.store(true, Ordering::Release);
            self.touched.insert(ino, i);
        }
        Ok(self.touched.get_mut(&ino).unwrap())
    }

    fn dir(&mut self, ino: Ino) -> Result<&mut Inode> {
        let d = self.inode(ino)?;
        if d.kind != Kind::Dir {
            return Err(Error::NotADirectory);
        }
        Ok(d)
    }

    fn find(&mut self, dir: Ino, name: &[u8]) -> Result<Option<(u64, Dirent)>> {
        let d = self.dir(dir)?.clone();
        self.vol.with_dir(self.cl, dir, &d, |idx| {
            Ok(idx.get(name).map(|(s, e)| (s, e.clone())))
        })
    }

    /// Writes `e` into a free slot of directory `dir`.
    fn insert(&mut self, dir: Ino, e: Dirent) -> Result<()> {
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
    fn set_slot(&mut self, dir: Ino, slot: u64, e: Option<Dirent>) -> Result<()> {
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

    fn touch_dir(&mut self, dir: Ino, now: i64) -> Result<()> {
        let d = self.inode(dir)?;
        d.mtime = now;
        d.ctime = now;
        Ok(())
    }

    /// Drops one link of `ino`; frees it when none is left and no one has it open.
    fn unlink_inode(&mut self, ino: Ino, now: i64) -> Result<()> {
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

    fn finish(self) -> Result<()> {
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

impl Volume {
    /// Creates a store file at `path` and an empty volume in it.
    pub fn mkfs(path: &Path, capacity: u64, page_size: usize) -> Result<()> {
        if !crate::store::valid_page_size(page_size) {
            return Err(Error::InvalidArgument(
                "page size must be a power of two from 4 KiB to 64 KiB",
            ));
        }
        let capacity = capacity / page_size as u64 * page_size as u64;
        if capacity < 64 * page_size as u64 {
            return Err(Error::InvalidArgument("a store needs at least 64 pages"));
        }
        let dev = MmapDevice::create(path, capacity, page_size)?;
        let made = Store::format(&dev, unix_now()).and_then(|_| dev.sync());
        if made.is_err() {
            let _ = std::fs::remove_file(path);
        }
        made
    }

    /// Opens the store file at `path` (locked for this process).
    pub fn open_path(path: &Path) -> Result<Arc<Volume>> {
        Self::open_path_mode(path, false)
    }

    /// Opens a store for checking only: nothing is written.
    pub fn open_path_mode(path: &Path, read_only: bool) -> Result<Arc<Volume>> {
        let page_size = probe_page_size(path)?;
        let dev = MmapDevice::open(path, page_size)?;
        Self::open_device(Arc::new(dev), path, read_only)
    }

    /// Formats a fresh in-memory or test device and opens it.
    pub fn create_on(dev: Arc<dyn PageDevice>) -> Result<Arc<Volume>> {
        Store::format(dev.as_ref(), unix_now())?;
        Self::open_device(dev, Path::new("(memory)"), false)
    }

    /// A volume on a new in-memory device (tests, examples).
    pub fn in_memory(
        page_size: usize,
        capacity_pages: u64,
    ) -> Result<(Arc<Volume>, Arc<MemDevice>)> {
        let dev = Arc::new(MemDevice::new(page_size, capacity_pages));
        Ok((Self::create_on(dev.clone())?, dev))
    }

    /// Opens a volume on `dev`: recounts references from the committed trees, loads
    /// the catalog, frees orphans left by a crash, and starts the commit timer.
    pub fn open_device(
        dev: Arc<dyn PageDevice>,
        path: &Path,
        read_only: bool,
    ) -> Result<Arc<Volume>> {
        let (store, sb) = Store::open(dev, path)?;
        let eng = Engine::new(store, sb.generation + 1);
        let cat_tree = Tree {
            root: sb.catalog_root,
            height: sb.catalog_height as u8,
        };
        check::recount(&eng, cat_tree)?;
        eng.store.recount_done();
        let mut catalog = Catalog {
            next_id: sb.next_cluster_id,
            ..Default::default()
        };
        for rec in check::catalog_records(&eng, cat_tree)? {
            let cl = Arc::new(Cluster::new(rec));
            cl.dirty.store(false, Ordering::Relaxed);
            catalog.by_name.insert(cl.name.clone(), cl.clone());
            catalog.by_id.insert(cl.id, cl);
        }
        let vol = Arc::new(Volume {
            eng,
            gate: RwLock::new(()),
            commit: Mutex::new(CommitState {
                tree: cat_tree,
                created: sb.created,
            }),
            durable: AtomicU64::new(sb.generation),
            times_since: Mutex::new(None),
            catalog: RwLock::new(catalog),
            read_only,
            stop: Arc::new((Mutex::new(false), Condvar::new())),
        });
        if !read_only {
            vol.free_orphans()?;
            vol.commit()?;
            Self::start_timer(&vol);
        }
        Ok(vol)
    }

    fn start_timer(vol: &Arc<Volume>) {
        let weak: Weak<Volume> = Arc::downgrade(vol);
        let stop = vol.stop.clone();
        std::thread::Builder::new()
            .name("clonefs-commit".into())
            .spawn(move || loop {
                let (lock, cv) = &*stop;
                let stopped = cv
                    .wait_timeout(lock.lock().unwrap(), COMMIT_INTERVAL)
                    .unwrap()
                    .0;
                if *stopped {
                    return;
                }
                drop(stopped);
                let Some(vol) = weak.upgrade() else { return };
                if vol.eng.has_pending() || vol.any_dirty() || vol.times_waited(TIMES_INTERVAL) {
                    if let Err(e) = vol.commit() {
                        log::error!("background commit failed: {e}");
                    }
                }
            })
            .expect("spawning the commit thread");
    }

    /// Have times of in-place overwrites waited for a commit at least `d`?
    fn times_waited(&self, d: Duration) -> bool {
        self.times_since
            .lock()
            .unwrap()
            .is_some_and(|t| t.elapsed() >= d)
    }

    fn any_dirty(&self) -> bool {
        let cat = self.catalog.read().unwrap();
        !cat.removed.is_empty() || cat.by_id.values().any(|c| c.dirty.load(Ordering::Relaxed))
    }

    /// Commits everything and stops the commit timer: a clean shutdown.
    pub fn close(&self) -> Result<()> {
        self.stop_timer();
        if self.read_only {
            return Ok(());
        }
        self.commit()?;
        // A second commit applies the first one's deferred frees, so the store's
        // counts match its trees at rest.
        self.commit()
    }

    fn stop_timer(&self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    /// The generation of the last durable commit.
    pub fn durable_generation(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub fn page_size(&self) -> usize {
        self.eng.ps
    }

    pub fn path(&self) -> &Path {
        self.eng.store.path()
    }

    /// Makes every change so far durable: writes dirty cluster records into the
    /// catalog, seals the epoch, syncs, writes the superblock, syncs, and then
    /// applies the sealed epoch's deferred reference drops. Concurrent callers share
    /// one commit.
    pub fn commit(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let target = self.eng.epoch();
        let mut cs = self.commit.lock().unwrap();
        if self.durable.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        if !self.eng.has_pending() && !self.any_dirty() && !self.times_waited(Duration::ZERO) {
            // Nothing changed since the last commit: it is the current state.
            return Ok(());
        }
        let (sb, deferred, written) = {
            let _gate = self.gate.write().unwrap();
            let mut cat = self.catalog.write().unwrap();
            let mut since = self.times_since.lock().unwrap();
            if since.is_some() {
                for cl in cat.by_id.values() {
                    self.store_times(cl, &mut cl.state.write().unwrap())?;
                }
                *since = None;
            }
            drop(since);
            // Each removal and dirty flag is cleared only once its record is written:
            // a commit that fails here (no space) leaves them for the next one.
            while let Some(&id) = cat.removed.last() {
                self.eng.write_record(
                    &mut cs.tree,
                    NodeKind::RadixCatalog,
                    id.0,
                    &[0; catalog::RECORD_BYTES],
                    true,
                )?;
                cat.removed.pop();
            }
            for cl in cat.by_id.values() {
                if cl.dirty.load(Ordering::Acquire) {
                    let rec = cl.record(&cl.state.read().unwrap()).encode();
                    self.eng.write_record(
                        &mut cs.tree,
                        NodeKind::RadixCatalog,
                        cl.id.0,
                        &rec,
                        true,
                    )?;
                    cl.dirty.store(false, Ordering::Release);
                }
            }
            let sb = crate::store::Superblock {
                page_size: self.eng.ps as u32,
                capacity_pages: self.eng.store.capacity_pages(),
                generation: self.eng.epoch(),
                catalog_root: cs.tree.root,
                catalog_height: cs.tree.height as u32,
                next_cluster_id: cat.next_id,
                created: cs.created,
            };
            let (d, w) = self.eng.seal_epoch();
            (sb, d, w)
        };
        let flushed = self
            .eng
            .seal_checksums(&written)
            .and_then(|_| self.eng.store.sync())
            .and_then(|_| self.eng.store.commit(&sb));
        if let Err(e) = flushed {
            // The sealed epoch is not durable. The next commit covers it: its
            // checksums and deferred frees wait for that one (and, until it succeeds,
            // a commit is never a no-op).
            self.eng.requeue(deferred, written);
            return Err(e);
        }
        self.durable.store(sb.generation, Ordering::Release);
        for cl in self.catalog.read().unwrap().by_id.values() {
            cl.remapped
                .lock()
                .unwrap()
                .retain(|_, e| *e > sb.generation);
        }
        self.eng.apply_deferred(deferred)
    }

    fn change(&self) -> Result<RwLockReadGuard<'_, ()>> {
        if self.read_only {
            return Err(Error::NotPermitted("the store is open read-only"));
        }
        Ok(self.gate.read().unwrap())
    }

    fn room(&self) -> Result<()> {
        if self.eng.store.has_room(ROOM) {
            Ok(())
        } else {
            Err(Error::NoSpace)
        }
    }

    /// Runs a change; on `NoSpace` with frees pending, commits (releasing them) and
    /// tries once more.
    fn with_room<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Err(Error::NoSpace) if self.eng.has_pending() => {
                self.commit()?;
                f()
            }
            r => r,
        }
    }

    fn cluster(&self, c: ClusterId) -> Result<Arc<Cluster>> {
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
    fn load(&self, st: &State, ino: Ino) -> Result<Inode> {
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
    fn store_times(&self, cl: &Cluster, st: &mut State) -> Result<()> {
        let waiting: Vec<Ino> = st.times.get_mut().unwrap().keys().copied().collect();
        for ino in waiting {
            let i = self.load(st, ino)?;
            self.store_inode(cl, st, ino, &i)?;
        }
        Ok(())
    }

    fn free_inode(&self, cl: &Cluster, st: &mut State, ino: Ino, mut i: Inode) -> Result<()> {
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
    fn with_dir<T>(
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
    fn op<T>(&self, c: ClusterId, needs_room: bool, f: impl Fn(&mut Op) -> Result<T>) -> Result<T> {
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

    fn read_op<T>(&self, c: ClusterId, f: impl FnOnce(&Cluster, &State) -> Result<T>) -> Result<T> {
        let cl = self.cluster(c)?;
        let st = cl.state.read().unwrap();
        if cl.deleted.load(Ordering::Acquire) {
            return Err(Error::NotFound);
        }
        f(&cl, &st)
    }

    // ---- clusters -------------------------------------------------------------

    /// Makes a new, empty cluster whose root directory has `owner`.
    pub fn create_cluster(&self, name: &str, owner: NewInode) -> Result<ClusterInfo> {
        catalog::validate_name(name)?;
        self.with_room(|| {
            let _gate = self.change()?;
            self.room()?;
            let mut cat = self.catalog.write().unwrap();
            if cat.by_name.contains_key(name) {
                return Err(Error::AlreadyExists(name.into()));
            }
            let now = inode::now_ns();
            let mut root = Inode::new(Kind::Dir, owner.perm, owner.uid, owner.gid, now);
            root.parent = Ino::ROOT;
            let mut itable = Tree::EMPTY;
            self.eng.write_record(
                &mut itable,
                NodeKind::RadixInodes,
                Ino::ROOT.0,
                &root.encode(),
                true,
            )?;
            let rec = Record {
                id: cat.next_id,
                name: name.into(),
                parent: None,
                created: now,
                itable,
                next_ino: 2,
                orphans: 0,
            };
            Ok(self.add_cluster(&mut cat, rec))
        })
    }

    fn add_cluster(&self, cat: &mut Catalog, rec: Record) -> ClusterInfo {
        cat.next_id = cat.next_id.max(rec.id + 1);
        let cl = Arc::new(Cluster::new(rec));
        let info = cl.info();
        cat.by_name.insert(cl.name.clone(), cl.clone());
        cat.by_id.insert(cl.id, cl);
        info
    }

    /// Clones cluster `src` as `name`: an atomic point-in-time image sharing every page.
    pub fn clone_cluster(&self, src: &str, name: &str) -> Result<ClusterInfo> {
        catalog::validate_name(name)?;
        let info = {
            let _gate = self.change()?;
            let source = self
                .catalog
                .read()
                .unwrap()
                .by_name
                .get(src)
                .cloned()
                .ok_or(Error::NotFound)?;
            // Hold writers off the source for the instant of the clone; the clone
            // takes the times of its in-place overwrites too.
            let mut st = source.state.write().unwrap();
            self.store_times(&source, &mut st)?;
            let mut cat = self.catalog.write().unwrap();
            if cat.by_name.contains_key(name) {
                return Err(Error::AlreadyExists(name.into()));
            }
            if !st.itable.root.is_none() {
                self.eng.store.incref(st.itable.root);
            }
            let rec = Record {
                id: cat.next_id,
                name: name.into(),
                parent: Some(src.into()),
                created: inode::now_ns(),
                itable: st.itable,
                next_ino: st.next_ino,
                orphans: st.orphans,
            };
            self.add_cluster(&mut cat, rec)
        };
        log::info!("cluster {src} cloned as {name}");
        // Files open in the source are not open in the clone: free its orphans.
        self.free_orphans_of(info.id)?;
        Ok(info)
    }

    /// Deletes a cluster and everything in it; its clones keep every page they share.
    pub fn delete_cluster(&self, name: &str) -> Result<()> {
        self.remove_cluster(name, false)
    }

    /// Deletes a cluster only if its root directory is empty (rmdir).
    pub fn remove_empty_cluster(&self, name: &str) -> Result<()> {
        self.remove_cluster(name, true)
    }

    fn remove_cluster(&self, name: &str, only_empty: bool) -> Result<()> {
        let _gate = self.change()?;
        let cl = self
            .catalog
            .read()
            .unwrap()
            .by_name
            .get(name)
            .cloned()
            .ok_or(Error::NotFound)?;
        let mut st = cl.state.write().unwrap();
        if only_empty {
            let root = self.load(&st, Ino::ROOT)?;
            if !self.with_dir(&cl, Ino::ROOT, &root, |idx| Ok(idx.is_empty()))? {
                return Err(Error::NotEmpty);
            }
        }
        let mut cat = self.catalog.write().unwrap();
        cat.by_name.remove(name);
        cat.by_id.remove(&cl.id);
        cat.removed.push(cl.id);
        cl.deleted.store(true, Ordering::Release);
        self.eng.drop_tree(&mut st.itable);
        cl.dirs.lock().unwrap().clear();
        drop(cat);
        drop(st);
        drop(_gate);
        log::info!("cluster {name} deleted");
        // A commit now gives the space back at once, as a user deleting a clone expects.
        self.commit()
    }

    pub fn clusters(&self) -> Vec<ClusterInfo> {
        self.catalog
            .read()
            .unwrap()
            .by_name
            .values()
            .map(|c| c.info())
            .collect()
    }

    pub fn cluster_count(&self) -> usize {
        self.catalog.read().unwrap().by_id.len()
    }

    pub fn cluster_by_name(&self, name: &str) -> Result<ClusterInfo> {
        let cat = self.catalog.read().unwrap();
        cat.by_name
            .get(name)
            .map(|c| c.info())
            .ok_or(Error::NotFound)
    }

    pub fn cluster_info(&self, c: ClusterId) -> Result<ClusterInfo> {
        Ok(self.cluster(c)?.info())
    }

    /// The live clusters cloned from `name`.
    pub fn clones_of(&self, name: &str) -> Vec<ClusterInfo> {
        let cat = self.catalog.read().unwrap();
        cat.by_name
            .values()
            .filter(|c| c.parent.as_deref() == Some(name))
            .map(|c| c.info())
            .collect()
    }

    fn free_orphans(&self) -> Result<()> {
        let ids: Vec<ClusterId> = self.catalog.read().unwrap().by_id.keys().copied().collect();
        for id in ids {
            self.free_orphans_of(id)?;
        }
        Ok(())
    }

    /// Frees inodes of cluster `c` that no directory names and no one has open.
    fn free_orphans_of(&self, c: ClusterId) -> Result<()> {
        let cl = self.cluster(c)?;
        if cl.state.read().unwrap().orphans == 0 {
            return Ok(());
        }
        let _gate = self.change()?;
        let mut st = cl.state.write().unwrap();
        let open: Vec<Ino> = cl.open.lock().unwrap().keys().copied().collect();
        let mut kept = 0;
        for (ino, i) in check::inodes(&self.eng, st.itable)? {
            if i.nlink == 0 {
                if open.contains(&ino) {
                    kept += 1;
                } else {
                    log::info!("cluster {}: freeing orphan inode {ino}", cl.name);
                    self.free_inode(&cl, &mut st, ino, i)?;
                }
            }
        }
        st.orphans = kept;
        cl.dirty.store(true, Ordering::Release);
        Ok(())
    }

    // ---- names ----------------------------------------------------------------

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
            // A change of owner drops setuid and setgid from a file, whoever
            // makes it (as Linux's chown does); a write or truncate by a caller
            // without CAP_FSETID drops them too.
            let chown = (sa.uid.is_some() || sa.gid.is_some()) && i.kind != Kind::Dir;
            if (sa.kill_suidgid || chown) && i.drop_suidgid() {
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
            kill_suidgid: false,
        } = sa
        else {
            return Ok(None);
        };
        let _gate = self.change()?;
        self.read_op(c, |_, st| {
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
    fn wait_times(&self, st: &State, ino: Ino, mtime: i64, ctime: i64) {
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

    // ---- contents -------------------------------------------------------------

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read(&self, c: ClusterId, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.read_op(c, |_, st| {
            let i = self.load(st, ino)?;
            if i.kind == Kind::Dir {
                return Err(Error::IsADirectory);
            }
            if offset >= i.size {
                return Ok(Vec::new());
            }
            let len = (len as u64).min(i.size - offset) as usize;
            let mut buf = vec![0u8; len];
            self.read_into(i.content, offset, &mut buf)?;
            Ok(buf)
        })
    }

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
            let done = self.read_op(c, |_, st| {
                self.overwrite_in_place(st, ino, offset, data, who)
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
            let dropped = who.drop_suidgid && i.drop_suidgid();
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
            || (who.drop_suidgid && i.clone().drop_suidgid())
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

    fn read_bytes(&self, t: Tree, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_into(t, offset, &mut buf)?;
        Ok(buf)
    }

    /// The data pages mapping leaves `[first, first + n)` of a content tree.
    fn map_range(&self, t: Tree, first: u64, n: u64) -> Result<Vec<PageNo>> {
        let fan = self.eng.fanout;
        let mut out = vec![PageNo::NONE; n as usize];
        let mut idx = first;
        while idx < first + n {
            let end = ((idx / fan + 1) * fan).min(first + n);
            if t.height > 0 && idx < self.eng.reach(t.height) {
                let leaf = if t.height == 1 {
                    t.root
                } else {
                    // The level-1 entry that maps this leaf node.
                    self.leaf_node(t, idx)?
                };
                if !leaf.is_none() {
                    self.eng.check_node(leaf, NodeKind::RadixData, Some(0))?;
                    let mut raw = vec![0u8; 8 * (end - idx) as usize];
                    self.eng
                        .store
                        .read(leaf, node::HEADER + 8 * (idx % fan) as usize, &mut raw)?;
                    for (k, c) in raw.chunks_exact(8).enumerate() {
                        out[(idx - first) as usize + k] =
                            PageNo(u64::from_le_bytes(c.try_into().unwrap()));
                    }
                }
            }
            idx = end;
        }
        Ok(out)
    }

    /// The level-0 radix node of a content tree that maps leaf `idx` (NONE if absent).
    fn leaf_node(&self, t: Tree, idx: u64) -> Result<PageNo> {
        let mut node = t.root;
        for level in (1..t.height).rev() {
            self.eng
                .check_node(node, NodeKind::RadixData, Some(level))?;
            node = self
                .eng
                .entry(node, (idx / self.eng.span(level)) % self.eng.fanout)?;
            if node.is_none() {
                break;
            }
        }
        Ok(node)
    }

    fn read_into(&self, t: Tree, offset: u64, buf: &mut [u8]) -> Result<()> {
        let ps = self.eng.ps as u64;
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / ps;
        let last = (offset + buf.len() as u64 - 1) / ps;
        let pages = self.map_range(t, first, last - first + 1)?;
        let mut done = 0usize;
        let mut k = 0usize;
        while k < pages.len() {
            let pos = offset + done as u64;
            let in_page = (pos % ps) as usize;
            // Extend over physically contiguous pages (or a run of holes).
            let mut run = 1;
            while k + run < pages.len()
                && ((pages[k].is_none() && pages[k + run].is_none())
                    || (!pages[k].is_none() && pages[k + run].0 == pages[k].0 + run as u64))
            {
                run += 1;
            }
            let n = (run * ps as usize - in_page).min(buf.len() - done);
            if pages[k].is_none() {
                buf[done..done + n].fill(0);
            } else {
                self.eng
                    .store
                    .read(pages[k], in_page, &mut buf[done..done + n])?;
            }
            done += n;
            k += run;
        }
        Ok(())
    }

    /// Writes `data` at `offset` into content tree `t`, copying shared pages and
    /// mapping new ones in contiguous runs. Returns bytes written (on running out of
    /// space part way, the bytes written so far) and whether any page was remapped
    /// (a hole filled or a shared page copied), which a commit must make durable.
    fn write_bytes(
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

    /// Sets a file's size: unmaps whole pages past it and zeros the tail of the last.
    fn truncate(&self, i: &mut Inode, size: u64) -> Result<()> {
        let ps = self.eng.ps as u64;
        if size < i.size {
            let keep = size.div_ceil(ps);
            let gone =
                self.eng
                    .unmap_range(&mut i.content, NodeKind::RadixData, keep, u64::MAX, true)?;
            // Saturating: a count damaged on disk shows in fsck, not as a panic here.
            i.mapped = i.mapped.saturating_sub(gone);
            self.zero_within(i, size, size.div_ceil(ps) * ps)?;
        } else {
            self.zero_gap(i, size)?;
        }
        i.size = size;
        Ok(())
    }

    /// Zeros what mapped pages hold in `[i.size, to)` before the file grows over it.
    /// Bytes past the end of file must read as zeros, but after a crash they may hold
    /// an in-place write that the last commit did not include (the size rolled back).
    fn zero_gap(&self, i: &mut Inode, to: u64) -> Result<()> {
        let ps = self.eng.ps as u64;
        let mut from = i.size;
        while from < to {
            let Some(p) = self
                .eng
                .seek(i.content, NodeKind::RadixData, from / ps, true)?
            else {
                break;
            };
            let start = (p * ps).max(from);
            if start >= to {
                break;
            }
            let end = ((p + 1) * ps).min(to);
            self.zero_within(i, start, end)?;
            from = end;
        }
        Ok(())
    }

    /// Zeros bytes `[from, to)` of mapped pages (holes stay holes), within one page.
    fn zero_within(&self, i: &mut Inode, from: u64, to: u64) -> Result<()> {
        let ps = self.eng.ps as u64;
        if from >= to {
            return Ok(());
        }
        let idx = from / ps;
        if self
            .eng
            .lookup(i.content, NodeKind::RadixData, idx)?
            .is_none()
        {
            return Ok(());
        }
        let zeros = vec![0u8; (to - from) as usize];
        self.write_bytes(&mut i.content, &mut i.mapped, from, &zeros, true)?;
        Ok(())
    }

    /// Makes a file's data and metadata durable.
    pub fn fsync(&self, c: ClusterId, ino: Ino) -> Result<()> {
        self.getattr(c, ino)?;
        self.commit()
    }

    /// Makes a file's data durable, and the metadata needed to read it back. When
    /// its size and page map are as last committed, its pages were overwritten in
    /// place, so syncing the data pages is enough; otherwise this commits.
    pub fn fdatasync(&self, c: ClusterId, ino: Ino) -> Result<()> {
        let cl = self.cluster(c)?;
        self.getattr(c, ino)?;
        let pending = cl.remapped.lock().unwrap().get(&ino).copied();
        // Read without the commit lock: a commit in flight must not hold up a
        // data-only sync.
        let durable = self.durable.load(Ordering::Acquire);
        match pending {
            Some(e) if e > durable => self.commit(),
            _ => self.eng.store.sync_shared(),
        }
    }

    /// A handle on the file was opened (unlinked files live until the last release).
    pub fn open_file(&self, c: ClusterId, ino: Ino) -> Result<()> {
        self.read_op(c, |cl, st| {
            self.load(st, ino)?;
            *cl.open.lock().unwrap().entry(ino).or_default() += 1;
            Ok(())
        })
    }

    /// The files of cluster `c` that some handle has open.
    pub fn open_files(&self, c: ClusterId) -> Result<Vec<Ino>> {
        Ok(self
            .cluster(c)?
            .open
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect())
    }

    /// A handle on the file was closed.
    pub fn release_file(&self, c: ClusterId, ino: Ino) -> Result<()> {
        let Ok(cl) = self.cluster(c) else {
            return Ok(());
        };
        let last = {
            let mut open = cl.open.lock().unwrap();
            let n = open.entry(ino).or_default();
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&ino);
                true
            } else {
                false
            }
        };
        // Only an unlinked file has anything to free on its last release.
        if !last || self.getattr(c, ino).is_ok_and(|a| a.nlink > 0) {
            return Ok(());
        }
        self.op(c, false, |op| {
            let i = match op.inode(ino) {
                Err(Error::NotFound) => return Ok(()),
                r => r?,
            };
            if i.nlink == 0 && op.cl.open.lock().unwrap().get(&ino).is_none() {
                let i = op.touched.remove(&ino).unwrap();
                self.free_inode(op.cl, op.st, ino, i)?;
                op.st.orphans = op.st.orphans.saturating_sub(1);
            }
            Ok(())
        })
    }

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

    fn write_into(&self, dst: &mut Inode, off: u64, bytes: &[u8]) -> Result<usize> {
        let n = self.write_bytes(&mut dst.content, &mut dst.mapped, off, bytes, false);
        let (n, _) = n?;
        dst.size = dst.size.max(off + n as u64);
        Ok(n)
    }

    // ---- extended attributes ----------------------------------------------------

    fn xattr_list(&self, i: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let raw = self.read_bytes(i.xattrs, 0, i.xattr_len as usize)?;
        let mut out = Vec::new();
        let mut p = 0;
        while p + 5 <= raw.len() {
            let nl = raw[p] as usize;
            let vl = u32::from_le_bytes(raw[p + 1..p + 5].try_into().unwrap()) as usize;
            p += 5;
            if p + nl + vl > raw.len() {
                return Err(Error::Corrupt {
                    page: i.xattrs.root.0,
                    why: "xattr list overruns its length".into(),
                });
            }
            out.push((raw[p..p + nl].to_vec(), raw[p + nl..p + nl + vl].to_vec()));
            p += nl + vl;
        }
        Ok(out)
    }

    pub fn getxattr(&self, c: ClusterId, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.read_op(c, |_, st| {
            let i = self.load(st, ino)?;
            self.xattr_list(&i)?
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or(Error::NoData)
        })
    }

    /// Attribute names, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&self, c: ClusterId, ino: Ino) -> Result<Vec<u8>> {
        self.read_op(c, |_, st| {
            let i = self.load(st, ino)?;
            let mut out = Vec::new();
            for (n, _) in self.xattr_list(&i)? {
                out.extend_from_slice(&n);
                out.push(0);
            }
            Ok(out)
        })
    }

    pub fn setxattr(
        &self,
        c: ClusterId,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> Result<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX || value.len() > XATTR_SIZE_MAX {
            return Err(Error::XattrTooBig);
        }
        self.change_xattrs(c, ino, true, |list| {
            let pos = list.iter().position(|(n, _)| n == name);
            match (pos, mode) {
                (Some(_), XattrMode::Create) => {
                    return Err(Error::AlreadyExists(String::from_utf8_lossy(name).into()))
                }
                (None, XattrMode::Replace) => return Err(Error::NoData),
                (Some(p), _) => list[p].1 = value.to_vec(),
                (None, _) => list.push((name.to_vec(), value.to_vec())),
            }
            Ok(())
        })
    }

    pub fn removexattr(&self, c: ClusterId, ino: Ino, name: &[u8]) -> Result<()> {
        self.change_xattrs(c, ino, false, |list| {
            let p = list
                .iter()
                .position(|(n, _)| n == name)
                .ok_or(Error::NoData)?;
            list.remove(p);
            Ok(())
        })
    }

    fn change_xattrs(
        &self,
        c: ClusterId,
        ino: Ino,
        room: bool,
        f: impl Fn(&mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
    ) -> Result<()> {
        self.op(c, room, |op| {
            let i = op.inode(ino)?;
            let mut list = self.xattr_list(i)?;
            f(&mut list)?;
            let mut raw = Vec::new();
            for (n, v) in &list {
                raw.push(n.len() as u8);
                raw.extend_from_slice(&(v.len() as u32).to_le_bytes());
                raw.extend_from_slice(n);
                raw.extend_from_slice(v);
            }
            let mut scratch = 0;
            if raw.is_empty() {
                self.eng.drop_tree(&mut i.xattrs);
            } else if self
                .write_bytes(&mut i.xattrs, &mut scratch, 0, &raw, true)?
                .0
                < raw.len()
            {
                return Err(Error::NoSpace);
            }
            let ps = self.eng.ps as u64;
            if !raw.is_empty() {
                self.eng.unmap_range(
                    &mut i.xattrs,
                    NodeKind::RadixData,
                    (raw.len() as u64).div_ceil(ps),
                    u64::MAX,
                    true,
                )?;
            }
            i.xattr_len = raw.len() as u64;
            i.ctime = inode::now_ns();
            Ok(())
        })
    }

    // ---- the store ----------------------------------------------------------------

    pub fn statfs(&self) -> StoreSpace {
        self.eng.store.space()
    }

    /// Logical, shared and unique bytes of every cluster (a walk of every tree).
    pub fn space(&self) -> Result<Vec<ClusterSpace>> {
        // The walk needs every tree still: hold changes off for its length (reads
        // go on); walking the committed roots under the commit lock instead would
        // let writers go on too.
        let _gate = self.gate.write().unwrap();
        let trees: Vec<(String, Tree)> = self
            .catalog
            .read()
            .unwrap()
            .by_name
            .values()
            .map(|c| (c.name.clone(), c.state.read().unwrap().itable))
            .collect();
        check::space(&self.eng, &trees)
    }

    /// Checks every tree and every reference count; see [`FsckReport`].
    pub fn fsck(&self) -> Result<FsckReport> {
        for _ in 0..10 {
            self.commit()?;
            self.commit()?;
            let gate = self.gate.write().unwrap();
            if self.read_only || !self.eng.has_pending() {
                let cs = self.commit.lock().unwrap();
                let cat = self.catalog.read().unwrap();
                let clusters: Vec<(String, Tree, u64, u64)> = cat
                    .by_name
                    .values()
                    .map(|c| {
                        let st = c.state.read().unwrap();
                        (c.name.clone(), st.itable, st.next_ino, st.orphans)
                    })
                    .collect();
                let r = check::fsck(&self.eng, cs.tree, &clusters, !self.read_only);
                drop(gate);
                return r;
            }
        }
        Err(Error::InvalidArgument("the store is too busy to check"))
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.stop_timer();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the page size from a store file's superblock before mapping it.
fn probe_page_size(path: &Path) -> Result<usize> {
    use std::io::Read;
    let bad = |why: String| Error::BadStore {
        path: path.to_owned(),
        why,
    };
    let mut f =
        std::fs::File::open(path).map_err(|e| bad(format!("cannot open the store file: {e}")))?;
    let mut b = [0u8; 16];
    f.read_exact(&mut b)
        .map_err(|_| bad("too short to be a clonefs store (no superblock)".into()))?;
    if &b[0..8] != crate::store::MAGIC {
        return Err(bad(
            "not a clonefs store (no clonefs superblock found)".into()
        ));
    }
    let ps = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    if crate::store::valid_page_size(ps) {
        Ok(ps)
    } else {
        // The first copy may be torn; read the second (it sits at the page size,
        // which we do not know: try each valid size).
        for ps in [4096usize, 8192, 16384, 32768, 65536] {
            let mut b2 = vec![0u8; ps + 16];
            let mut f = std::fs::File::open(path)?;
            if f.read_exact(&mut b2).is_ok() && &b2[ps..ps + 8] == crate::store::MAGIC {
                let p2 = u32::from_le_bytes(b2[ps + 12..ps + 16].try_into().unwrap()) as usize;
                if p2 == ps {
                    return Ok(ps);
                }
            }
        }
        Err(bad(format!("bad page size {ps} in the superblock")))
    }
}
#[cfg(test)]
mod tests;
