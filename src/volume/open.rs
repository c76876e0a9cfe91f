//! Making a store, opening it, and closing it.
//!
//! Opening takes the reference counts a clean close saved, or recounts every
//! reference from the committed trees (see `check::recount`); then it loads the
//! catalog, frees the inodes a crash left orphaned (unlinked while open) and starts the commit timer; a store opened
//! read-only (fsck) writes nothing and starts no timer. `close` commits twice, so
//! the first commit's deferred frees are applied and the store's counts match its
//! trees at rest, and then saves those counts (`Volume::commit_at_rest`): the next
//! open reads them instead of recounting, unless a crash came between.

use super::catalog::{RecordKind, Slot};
use super::check;
use super::node::{Deferred, Engine, Tree};
use super::{Catalog, Cluster, CommitState, Volume, RECORDS};
use crate::error::{Error, Result};
use crate::store::addr::{StoreAddr, StoreOptions};
use crate::store::memdev::MemDevice;
use crate::store::{MmapDevice, PageDevice, PageNo, Store};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime};

impl Volume {
    /// Creates a store file at `path` and an empty volume in it.
    pub fn mkfs(path: &Path, capacity: u64, page_size: usize) -> Result<()> {
        let capacity = check_geometry(capacity, page_size)?;
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

    /// Opens the store at `addr`: a store file, or a RADOS store (whose daemon locks
    /// its local anchor unless `read_only`, and takes its lease either way).
    pub fn open_store(
        addr: &StoreAddr,
        opts: &StoreOptions,
        read_only: bool,
    ) -> Result<Arc<Volume>> {
        match addr {
            StoreAddr::File(p) => Self::open_path_mode(p, read_only),
            StoreAddr::Rados { pool, name } => rados::open(pool, name, opts, read_only),
        }
    }

    /// Deletes the store at `addr` with every cluster in it, once it is sure it is
    /// a store and nobody serves it (the file's lock, the RADOS lease). Returns
    /// how many clusters it held.
    pub fn delete_store(addr: &StoreAddr, opts: &StoreOptions) -> Result<usize> {
        match addr {
            StoreAddr::File(p) => {
                let clusters = Self::open_path_mode(p, true)?.cluster_count();
                std::fs::remove_file(p)?;
                Ok(clusters)
            }
            StoreAddr::Rados { pool, name } => rados::delete(pool, name, opts),
        }
    }

    /// Makes a new store at `addr` and sets how long it keeps restore points.
    pub fn mkfs_store(
        addr: &StoreAddr,
        opts: &StoreOptions,
        capacity: u64,
        page_size: usize,
        retention: Duration,
    ) -> Result<()> {
        let (pool, name) = match addr {
            StoreAddr::File(p) => {
                Self::mkfs(p, capacity, page_size)?;
                let set = Volume::open_path(p).and_then(|v| {
                    v.set_store_retention(retention)?;
                    v.close()
                });
                if set.is_err() {
                    let _ = std::fs::remove_file(p);
                }
                return set;
            }
            StoreAddr::Rados { pool, name } => (pool, name),
        };
        let capacity = check_geometry(capacity, page_size)?;
        rados::mkfs(pool, name, opts, capacity, page_size, retention)
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
        let eng = Engine::new(store, sb.generation + 1, RECORDS);
        let cat_tree = Tree {
            root: sb.catalog_root,
            height: sb.catalog_height as u8,
        };
        let saved = sb.counts.filter(|_| !read_only);
        let loaded = saved.and_then(|map| match eng.store.load_counts(map) {
            Ok(()) => Some(map),
            Err(why) => {
                log::warn!(
                    "the reference counts saved at the last close are unusable ({why}): recounting"
                );
                None
            }
        });
        if loaded.is_none() {
            check::recount(&eng, cat_tree)?;
        }
        eng.store.recount_done();
        if let Some(map) = loaded {
            // Their pages go at the first commit, which no longer names them.
            for p in map.first.0..map.first.0 + map.pages {
                eng.defer(Deferred::Dec(PageNo(p), false));
            }
        }
        let mut catalog = Catalog {
            next_id: sb.next_cluster_id,
            ..Default::default()
        };
        let mut points = Vec::new();
        let mut settings = Vec::new();
        for slot in check::catalog_records(&eng, cat_tree)? {
            match slot {
                Slot::Record(rec) if rec.kind == RecordKind::Cluster => {
                    let cl = Arc::new(Cluster::new(rec));
                    cl.dirty.store(false, Ordering::Relaxed);
                    catalog.by_name.insert(cl.name.clone(), cl.clone());
                    catalog.by_id.insert(cl.id, cl);
                }
                Slot::Record(point) => points.push(point),
                Slot::Settings(s) if s.name.is_empty() => catalog.defaults = s,
                Slot::Settings(s) => settings.push(s),
            }
        }
        points.sort_by_key(|p| p.created);
        let mut stray = Vec::new();
        for p in points {
            match catalog.by_name.get(&p.name) {
                Some(cl) => cl.points.lock().unwrap().push(p),
                None => stray.push(p),
            }
        }
        for s in settings {
            match catalog.by_name.get(&s.name) {
                Some(cl) => *cl.settings.lock().unwrap() = s,
                None => catalog.free_slot(s.id),
            }
        }
        for mut p in stray {
            log::warn!(
                "a restore point of cluster {}, which no longer exists: dropped",
                p.name
            );
            if !read_only {
                eng.drop_tree(&mut p.itable);
                catalog.free_slot(p.id);
            }
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
            watchers: Mutex::default(),
            point_interval: AtomicU64::new(super::restore::POINT_INTERVAL.as_nanos() as u64),
            counts_were_saved: loaded.is_some(),
            saved_counts: sb.counts,
            space: Default::default(),
            mounts: Mutex::default(),
        });
        if !read_only {
            vol.free_orphans()?;
            vol.commit()?;
            Self::start_timer(&vol);
            Self::start_space_walker(&vol);
        }
        Ok(vol)
    }

    /// Sets how long the store keeps restore points of clusters that do not say
    /// otherwise (`mkfs --retention`); zero keeps none.
    pub fn set_store_retention(&self, retention: Duration) -> Result<()> {
        {
            let _gate = self.change()?;
            let mut cat = self.catalog.write().unwrap();
            cat.defaults.retention = Some(retention.as_secs());
            cat.defaults_dirty = true;
            let clusters: Vec<_> = cat.by_id.values().cloned().collect();
            for cl in clusters {
                if cl.retention_ns(&cat.defaults) == 0 {
                    self.drop_points(&mut cat, &cl);
                }
            }
        }
        self.commit()
    }

    /// Commits everything and stops the commit timer: a clean shutdown.
    pub fn close(&self) -> Result<()> {
        self.stop_timer();
        self.stop_space_walker(true);
        if self.read_only {
            return self.eng.store.let_go();
        }
        self.commit()?;
        // A second commit applies the first one's deferred frees, so the store's
        // counts match its trees at rest; then they are saved for the next open.
        self.commit()?;
        self.commit_at_rest()?;
        self.eng.store.let_go()
    }

    /// Did this open take the reference counts a clean close saved (rather than
    /// recount them from every tree)?
    pub fn counts_were_saved(&self) -> bool {
        self.counts_were_saved
    }

    pub fn page_size(&self) -> usize {
        self.eng.ps
    }

    pub fn path(&self) -> &Path {
        self.eng.store.path()
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.stop_timer();
        self.stop_space_walker(false);
    }
}

/// The capacity rounded down to whole pages, or why the geometry cannot be.
fn check_geometry(capacity: u64, page_size: usize) -> Result<u64> {
    if !crate::store::valid_page_size(page_size) {
        return Err(Error::InvalidArgument(
            "page size must be a power of two from 4 KiB to 64 KiB",
        ));
    }
    let capacity = capacity / page_size as u64 * page_size as u64;
    if capacity < 64 * page_size as u64 {
        return Err(Error::InvalidArgument("a store needs at least 64 pages"));
    }
    Ok(capacity)
}

/// RADOS stores (`store::rados`), reached through [`Volume::open_store`].
mod rados {
    use super::*;
    use crate::store::cache::CachedDevice;
    use crate::store::rados::{RadosDevice, RadosTarget};

    fn target(pool: &str, name: &str, opts: &StoreOptions, anchored: bool) -> RadosTarget {
        let host = opts.host();
        RadosTarget {
            ceph_conf: opts.ceph_conf(),
            ceph_user: opts.ceph_user.clone(),
            ceph_keyring: opts.ceph_keyring.clone(),
            pool: pool.into(),
            store: name.into(),
            anchor: anchored.then(|| crate::store::addr::anchor_path(pool, name, &host)),
            host,
            take_over: opts.take_over,
        }
    }

    /// A daemon (not `read_only`) locks the store's local anchor and names the
    /// volume by it, so the API socket and the mount's source sit beside it.
    pub fn open(
        pool: &str,
        name: &str,
        opts: &StoreOptions,
        read_only: bool,
    ) -> Result<Arc<Volume>> {
        let t = target(pool, name, opts, !read_only);
        let path = t.anchor.clone().unwrap_or_else(|| t.shown());
        let dev = RadosDevice::open(&t)?;
        if read_only || opts.cache_size == 0 {
            return Volume::open_device(Arc::new(dev), &path, read_only);
        }
        let file = opts.cache_file(pool, name, &t.host);
        let dev = CachedDevice::new(dev, &file, opts.cache_size)?;
        Volume::open_device(Arc::new(dev), &path, read_only)
    }

    pub fn delete(pool: &str, name: &str, opts: &StoreOptions) -> Result<usize> {
        let t = target(pool, name, opts, false);
        let vol = Volume::open_device(Arc::new(RadosDevice::open(&t)?), &t.shown(), true)?;
        let clusters = vol.cluster_count();
        vol.close()?; // lets go of the lease, which destroy takes again
        let objects = RadosDevice::open(&t)?.destroy()?;
        log::info!("removed {objects} objects of {}", t.shown().display());
        Ok(clusters)
    }

    pub fn mkfs(
        pool: &str,
        name: &str,
        opts: &StoreOptions,
        capacity: u64,
        page_size: usize,
        retention: Duration,
    ) -> Result<()> {
        let t = target(pool, name, opts, false);
        let dev = Arc::new(RadosDevice::create(&t, capacity, page_size)?);
        Store::format(dev.as_ref(), unix_now())?;
        dev.sync()?;
        let vol = Volume::open_device(dev, &t.shown(), false)?;
        vol.set_store_retention(retention)?;
        vol.close()
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
