//! The commit, its timer, and the epoch gate every change passes.
//!
//! Every change holds the gate shared ([`Volume::change`]); a commit holds it
//! exclusively only while it seals the epoch: it stores the times that wait, clears
//! deleted clusters' catalog records, writes the dirty ones and builds the
//! superblock. The checksums, the syncs and the superblock write happen after the
//! gate is released, so writers go on into the next epoch. Reference drops of the
//! sealed epoch are applied only once its superblock is durable; a failed commit
//! requeues them (and its pages' checksums) for the next one. A background thread
//! commits every [`COMMIT_INTERVAL`] when something changed, when times of
//! in-place overwrites have waited [`TIMES_INTERVAL`], or when a restore point is
//! due; it also deletes expired clusters.

use super::catalog::{self};
use super::node::NodeKind;
use super::{check, Catalog, CommitState, Volume};
use crate::error::{Error, Result};
use crate::store::sparse::Counts;
use crate::store::{CountMap, Superblock};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLockReadGuard, Weak};
use std::time::Duration;

/// How often the background thread commits when something changed.
const COMMIT_INTERVAL: Duration = Duration::from_secs(2);
/// How long times of files overwritten in place may wait for a commit when nothing
/// else needs one (the kernel's own writeback of dirty data waits as long).
pub(super) const TIMES_INTERVAL: Duration = Duration::from_secs(30);
/// Pages beyond the reserve an operation that adds metadata wants free.
pub(super) const ROOM: u64 = 16;

impl Volume {
    pub(super) fn start_timer(vol: &Arc<Volume>) {
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
                if let Err(e) = vol.expire() {
                    log::error!("deleting expired clusters failed: {e}");
                }
                if vol.eng.has_pending()
                    || vol.any_dirty()
                    || vol.times_waited(TIMES_INTERVAL)
                    || vol.points_due()
                    || vol.thinning_due()
                {
                    if let Err(e) = vol.commit() {
                        log::error!("background commit failed: {e}");
                    }
                }
            })
            .expect("spawning the commit thread");
    }

    /// Have times of in-place overwrites waited for a commit at least `d`?
    pub(super) fn times_waited(&self, d: Duration) -> bool {
        self.times_since
            .lock()
            .unwrap()
            .is_some_and(|t| t.elapsed() >= d)
    }

    pub(super) fn any_dirty(&self) -> bool {
        let cat = self.catalog.read().unwrap();
        !cat.removed.is_empty()
            || cat.defaults_dirty
            || cat.by_id.values().any(|c| c.dirty.load(Ordering::Relaxed))
    }

    pub(super) fn stop_timer(&self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    /// The generation of the last durable commit.
    pub fn durable_generation(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
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
        if !self.eng.has_pending()
            && !self.any_dirty()
            && !self.times_waited(Duration::ZERO)
            && !self.points_due()
            && !self.thinning_due()
        {
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
            self.take_points(&mut cat, &mut cs)?;
            // Each removal and dirty flag is cleared only once its record is written:
            // a commit that fails here (no space) leaves them for the next one.
            while let Some(&id) = cat.removed.last() {
                self.eng.write_record(
                    &mut cs.tree,
                    NodeKind::RadixCatalog,
                    id,
                    &[0; catalog::RECORD_BYTES],
                    true,
                )?;
                cat.removed.pop();
            }
            if cat.defaults_dirty {
                let mut defaults = cat.defaults.clone();
                self.store_settings(&mut cat, &mut cs, &mut defaults)?;
                cat.defaults = defaults;
                cat.defaults_dirty = false;
            }
            let clusters: Vec<_> = cat.by_id.values().cloned().collect();
            for cl in clusters {
                if cl.dirty.load(Ordering::Acquire) {
                    let rec = cl.record(&cl.state.read().unwrap()).encode();
                    self.eng.write_record(
                        &mut cs.tree,
                        NodeKind::RadixCatalog,
                        cl.id.0,
                        &rec,
                        true,
                    )?;
                    let mut settings = cl.settings.lock().unwrap().clone();
                    settings.name = cl.name.clone();
                    self.store_settings(&mut cat, &mut cs, &mut settings)?;
                    cl.settings.lock().unwrap().id = settings.id;
                    cl.dirty.store(false, Ordering::Release);
                }
            }
            let sb = self.superblock(&cs, &cat, None);
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

    /// The superblock that commits the current epoch with catalog `cs.tree`.
    fn superblock(&self, cs: &CommitState, cat: &Catalog, counts: Option<CountMap>) -> Superblock {
        Superblock {
            page_size: self.eng.ps as u32,
            capacity_pages: self.eng.store.capacity_pages(),
            generation: self.eng.epoch(),
            catalog_root: cs.tree.root,
            catalog_height: cs.tree.height as u32,
            next_cluster_id: cat.next_id,
            created: cs.created,
            counts,
        }
    }

    /// For a store at rest (nothing changed since the last commit, nothing will
    /// before it closes): saves every reference count in the store and commits a
    /// superblock naming them, so the next open reads them instead of recounting
    /// every tree. Does nothing if a change slipped in, or the store has no room
    /// for them; the next open then recounts, as after a crash.
    pub(super) fn commit_at_rest(&self) -> Result<()> {
        let cs = self.commit.lock().unwrap();
        let _gate = self.gate.write().unwrap();
        let cat = self.catalog.read().unwrap();
        if self.eng.has_pending() || self.any_dirty() || self.times_waited(Duration::ZERO) {
            log::warn!("the store changed while closing: its counts are not saved");
            return Ok(());
        }
        if self.eng.counts_suspect.load(Ordering::Relaxed) {
            log::warn!("a damaged page was freed: the next open recounts every reference");
            return Ok(());
        }
        // Check the counts held against a recount of the committed trees before
        // the next open trusts them (a shutdown can afford one walk; a mount is
        // spared it): a count that drifted is logged and corrected, not kept.
        let truth = Counts::new(self.eng.store.capacity_pages());
        check::recount_into(&self.eng, cs.tree, &truth)?;
        let wrong = self.eng.store.correct_counts(&truth);
        if !wrong.is_empty() {
            log::error!(
                "{} pages had a reference count other than the trees hold, now corrected \
                 (page, count, references): {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(20)]
            );
        }
        let Some(map) = self.eng.store.save_counts()? else {
            log::warn!("no run of free pages to save the reference counts in");
            return Ok(());
        };
        let sb = self.superblock(&cs, &cat, Some(map));
        self.eng.seal_epoch();
        self.eng.store.sync()?;
        self.eng.store.commit(&sb)?;
        self.durable.store(sb.generation, Ordering::Release);
        log::info!(
            "saved the reference counts in {} pages at {}",
            map.pages,
            map.first
        );
        Ok(())
    }

    pub(super) fn change(&self) -> Result<RwLockReadGuard<'_, ()>> {
        if self.read_only {
            return Err(Error::NotPermitted("the store is open read-only"));
        }
        Ok(self.gate.read().unwrap())
    }

    pub(super) fn room(&self) -> Result<()> {
        if self.eng.store.has_room(ROOM) {
            Ok(())
        } else {
            Err(Error::NoSpace)
        }
    }

    /// Runs a change; on `NoSpace` with frees pending, commits (releasing them) and
    /// tries again, twice at most (a commit defers frees of its own); then gives up
    /// the older half of the restore points and starts over: live data always comes
    /// before history. Each round of shedding drops a point, so this ends.
    pub(super) fn with_room<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut commits = 0;
        loop {
            match f() {
                Err(Error::NoSpace) if commits < 2 && self.eng.has_pending() => {
                    commits += 1;
                    // A space walk holds drops back: the writer needs them now.
                    self.cancel_space_walk();
                    self.commit()?
                }
                Err(Error::NoSpace) if self.shed_points()? => {
                    commits = 0;
                    self.cancel_space_walk();
                    self.commit()?
                }
                r => return r,
            }
        }
    }
}
