//! Clusters: create, clone, delete, list, and the orphans a crash leaves.
//!
//! A clone is a new catalog entry whose inode table is the source's root with one
//! more reference: O(1) whatever the data size (made in `restore.rs`, which also
//! clones from restore points). Deleting a cluster drops its root's reference and
//! its restore points and commits at once, so the pages only it held come back; its
//! clones keep every page they share. A protected cluster refuses deletion. Names follow the DB-cluster identifier rules
//! ([`catalog::validate_name`]).

use super::catalog::{self, Record, RecordKind, Settings};
use super::check;
use super::inode::{self, Ino, Inode, Kind};
use super::node::{NodeKind, Tree};
use super::{
    Catalog, CloneOptions, Cluster, ClusterId, ClusterInfo, ClusterSummary, Event, NewInode, State,
    Volume,
};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

impl Cluster {
    pub(super) fn new(rec: Record) -> Cluster {
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
            changed: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            settings: Mutex::default(),
            points: Mutex::default(),
        }
    }

    pub(super) fn info(&self, defaults: &Settings) -> ClusterInfo {
        let retention = Duration::from_nanos(self.retention_ns(defaults) as u64);
        let s = self.settings.lock().unwrap();
        ClusterInfo {
            id: self.id,
            name: self.name.clone(),
            parent: self.parent.clone(),
            created: inode::to_system_time(self.created),
            protected: s.protected,
            expires_at: s.expires_at.map(inode::to_system_time),
            retention,
            restore_points: self
                .points
                .lock()
                .unwrap()
                .iter()
                .map(|p| inode::to_system_time(p.created))
                .collect(),
        }
    }

    pub(super) fn summary(self: &Arc<Self>, defaults: &Settings) -> ClusterSummary {
        let retention = Duration::from_nanos(self.retention_ns(defaults) as u64);
        let s = self.settings.lock().unwrap();
        let points = self.points.lock().unwrap();
        ClusterSummary {
            cluster: self.clone(),
            protected: s.protected,
            expires_at: s.expires_at.map(inode::to_system_time),
            retention,
            restore_points: points.len(),
            earliest_point: points.first().map(|p| inode::to_system_time(p.created)),
        }
    }

    pub(super) fn record(&self, st: &State) -> Record {
        Record {
            kind: RecordKind::Cluster,
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

impl Volume {
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
                kind: RecordKind::Cluster,
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
        .inspect(|info| self.notify(Event::Created(info.name.clone())))
    }

    pub(super) fn add_cluster(&self, cat: &mut Catalog, rec: Record) -> ClusterInfo {
        cat.next_id = cat.next_id.max(rec.id + 1);
        let cl = Arc::new(Cluster::new(rec));
        let info = cl.info(&cat.defaults);
        cat.by_name.insert(cl.name.clone(), cl.clone());
        cat.by_id.insert(cl.id, cl);
        info
    }

    /// Clones cluster `src` as `name`: an atomic point-in-time image sharing every page.
    pub fn clone_cluster(&self, src: &str, name: &str) -> Result<ClusterInfo> {
        Ok(self.clone_with(src, name, &CloneOptions::default())?.0)
    }

    /// Deletes a cluster and everything in it; its clones keep every page they share.
    pub fn delete_cluster(&self, name: &str) -> Result<()> {
        self.remove_cluster(name, false)?;
        self.notify(Event::Deleted(name.into()));
        Ok(())
    }

    /// Deletes a cluster only if its root directory is empty (rmdir).
    pub fn remove_empty_cluster(&self, name: &str) -> Result<()> {
        self.remove_cluster(name, true)?;
        self.notify(Event::Deleted(name.into()));
        Ok(())
    }

    pub(super) fn remove_cluster(&self, name: &str, only_empty: bool) -> Result<()> {
        let _gate = self.change()?;
        let cl = self
            .catalog
            .read()
            .unwrap()
            .by_name
            .get(name)
            .cloned()
            .ok_or(Error::NotFound)?;
        if cl.settings.lock().unwrap().protected {
            return Err(Error::Protected(name.into()));
        }
        self.refuse_if_mounted(&cl)?;
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
        cat.removed.push(cl.id.0);
        cl.deleted.store(true, Ordering::Release);
        self.eng.drop_tree(&mut st.itable);
        self.drop_points(&mut cat, &cl);
        let settings = cl.settings.lock().unwrap().id;
        if settings != 0 {
            cat.free_slot(settings);
        }
        cl.dirs.lock().unwrap().clear();
        drop(cat);
        drop(st);
        drop(_gate);
        log::info!("cluster {name} deleted");
        // A commit now gives the space back at once, as a user deleting a clone expects.
        self.commit()
    }

    pub fn clusters(&self) -> Vec<ClusterInfo> {
        let cat = self.catalog.read().unwrap();
        cat.by_name
            .values()
            .map(|c| c.info(&cat.defaults))
            .collect()
    }

    /// Every cluster, by name, as [`Volume::clusters`] gives them but without
    /// copying a name or listing a restore point.
    pub fn cluster_summaries(&self) -> Vec<ClusterSummary> {
        let cat = self.catalog.read().unwrap();
        cat.by_name
            .values()
            .map(|c| c.summary(&cat.defaults))
            .collect()
    }

    /// The summary of the cluster named `name`.
    pub fn cluster_summary(&self, name: &str) -> Result<ClusterSummary> {
        let cat = self.catalog.read().unwrap();
        cat.by_name
            .get(name)
            .map(|c| c.summary(&cat.defaults))
            .ok_or(Error::NotFound)
    }

    pub fn cluster_count(&self) -> usize {
        self.catalog.read().unwrap().by_id.len()
    }

    pub fn cluster_by_name(&self, name: &str) -> Result<ClusterInfo> {
        let cat = self.catalog.read().unwrap();
        cat.by_name
            .get(name)
            .map(|c| c.info(&cat.defaults))
            .ok_or(Error::NotFound)
    }

    pub fn cluster_info(&self, c: ClusterId) -> Result<ClusterInfo> {
        let cl = self.cluster(c)?;
        Ok(cl.info(&self.catalog.read().unwrap().defaults))
    }

    /// The live clusters cloned from `name`.
    pub fn clones_of(&self, name: &str) -> Vec<ClusterInfo> {
        let cat = self.catalog.read().unwrap();
        cat.by_name
            .values()
            .filter(|c| c.parent.as_deref() == Some(name))
            .map(|c| c.info(&cat.defaults))
            .collect()
    }

    /// Tells every watcher of `e`; watchers that went away are forgotten.
    pub(super) fn notify(&self, e: Event) {
        self.watchers
            .lock()
            .unwrap()
            .retain(|w| w.send(e.clone()).is_ok());
    }

    /// A stream of changes to the set of clusters.
    pub fn watch(&self) -> crossbeam::channel::Receiver<Event> {
        let (tx, rx) = crossbeam::channel::unbounded();
        self.watchers.lock().unwrap().push(tx);
        rx
    }

    pub(super) fn free_orphans(&self) -> Result<()> {
        let ids: Vec<ClusterId> = self.catalog.read().unwrap().by_id.keys().copied().collect();
        for id in ids {
            self.free_orphans_of(id)?;
        }
        Ok(())
    }

    /// Frees inodes of cluster `c` that no directory names and no one has open.
    pub(super) fn free_orphans_of(&self, c: ClusterId) -> Result<()> {
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
}
