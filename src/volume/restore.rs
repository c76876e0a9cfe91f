//! Restore points, restore to a point in time, reset, and a cluster's life cycle
//! (protection, expiry, retention).
//!
//! A restore point is a catalog record holding one more reference to a cluster's
//! inode table as a commit saw it: exactly a clone that nobody mounts. Commits take
//! them ([`Volume::take_points`]) under the exclusive gate, so a point holds every
//! write that completed before it and none after, like a clone; at most one per
//! cluster per [`POINT_INTERVAL`], and only when the cluster changed since its last.
//! Keeping one costs a copy of each page on its first overwrite afterwards. Points
//! are thinned as they age (all of the last [`KEEP_ALL`], then the newest of each
//! minute for a day, then of each hour) and dropped past the cluster's retention;
//! a dropped point's slot is cleared in the same commit that defers its reference
//! drops, so no durable record ever names a freed page.
//!
//! Points and settings are keyed by the cluster's name, not its id: a reset gives
//! the cluster a new id (so the kernel's caches of the old files can never be
//! mistaken for the new ones) and keeps its points, so a reset can be undone.
//! Deleting a cluster drops its points and settings.

use super::catalog::{self, Record, RecordKind, Settings};
use super::commit::ROOM;
use super::inode;
use super::node::{NodeKind, Tree};
use super::{Catalog, Cluster, ClusterInfo, CommitState, Volume};
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const NS: i64 = 1_000_000_000;
/// At most one restore point per cluster in this time.
pub const POINT_INTERVAL: Duration = Duration::from_secs(1);
/// Every point younger than this is kept; older ones are thinned to one per minute,
/// and past a day to one per hour.
pub const KEEP_ALL: Duration = Duration::from_secs(600);
const MINUTELY_FOR: i64 = 24 * 3600 * NS;
/// How long restore points are kept unless `mkfs --retention` says otherwise: a
/// week covers a mistake found after a weekend, and with the thinning above a
/// cluster keeps at most about 2,200 points.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a reset replaces a cluster's contents with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// The parent's current contents.
    Parent,
    /// The newest restore point at or before this time: the parent's, or the
    /// cluster's own when it has no parent.
    Time(SystemTime),
}

/// Where a clone's contents come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloneOptions {
    /// The newest restore point at or before this time (None: the latest state).
    pub at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
}

/// A cluster's restore window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restorable {
    pub earliest: Option<SystemTime>,
    /// The latest restorable time: now, the cluster's current contents.
    pub latest: SystemTime,
    pub points: usize,
    /// Bytes only its restore points hold (what dropping them would free).
    pub restore_only: u64,
}

/// An image of a cluster: what a new or reset cluster starts from.
struct Image {
    itable: Tree,
    next_ino: u64,
    orphans: u64,
    time: i64,
}

impl Image {
    /// An image of `itable`, holding one more reference to its root.
    fn share(vol: &Volume, itable: Tree, next_ino: u64, orphans: u64, time: i64) -> Image {
        if !itable.root.is_none() {
            vol.eng.store.incref(itable.root);
        }
        Image {
            itable,
            next_ino,
            orphans,
            time,
        }
    }
}

fn ns(t: SystemTime) -> i64 {
    inode::from_system_time(t)
}

fn rfc3339(t: i64) -> String {
    humantime::format_rfc3339_micros(inode::to_system_time(t)).to_string()
}

impl Cluster {
    /// Its retention in ns, given the store's defaults.
    pub(super) fn retention_ns(&self, defaults: &Settings) -> i64 {
        let secs = self
            .settings
            .lock()
            .unwrap()
            .retention
            .or(defaults.retention)
            .unwrap_or(DEFAULT_RETENTION.as_secs());
        (secs.min(i64::MAX as u64 / NS as u64) as i64) * NS
    }

    fn newest_point(&self) -> Option<i64> {
        self.points.lock().unwrap().last().map(|p| p.created)
    }

    /// The newest point at or before `t`, as an image with one more reference.
    fn point_at(&self, vol: &Volume, t: i64) -> Result<Image> {
        let points = self.points.lock().unwrap();
        let Some(p) = points.iter().rev().find(|p| p.created <= t) else {
            return Err(Error::BadTime(match points.first() {
                None => format!(
                    "cluster '{}' has no restore points yet (retention off, or nothing \
                     changed since it was made): only its latest state can be restored",
                    self.name
                ),
                Some(first) => format!(
                    "{} is before the restore window of cluster '{}': choose a time from {} \
                     to now",
                    rfc3339(t),
                    self.name,
                    rfc3339(first.created)
                ),
            }));
        };
        Ok(Image::share(
            vol, p.itable, p.next_ino, p.orphans, p.created,
        ))
    }
}

/// Which points to keep, newest first in `times` (ascending input): all younger
/// than [`KEEP_ALL`], then the newest of each minute for a day, then of each hour;
/// none older than `retention`.
pub fn thin(times: &[i64], now: i64, retention: i64) -> Vec<bool> {
    let mut keep = vec![false; times.len()];
    let mut last_bucket = None;
    for (k, &t) in times.iter().enumerate().rev() {
        let age = now.saturating_sub(t);
        if age > retention {
            continue;
        }
        if age < KEEP_ALL.as_nanos() as i64 {
            keep[k] = true;
            continue;
        }
        let width = if age < MINUTELY_FOR {
            60 * NS
        } else {
            3600 * NS
        };
        let bucket = (width, t.div_euclid(width));
        if last_bucket != Some(bucket) {
            keep[k] = true;
            last_bucket = Some(bucket);
        }
    }
    keep
}

impl Catalog {
    /// A slot for a point or settings record.
    fn slot(&mut self) -> u64 {
        self.free_slots.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        })
    }

    pub(super) fn free_slot(&mut self, id: u64) {
        self.removed.push(id);
        self.free_slots.push(id);
    }
}

impl Volume {
    /// Sets the least time between two restore points of a cluster ([`POINT_INTERVAL`]
    /// unless set; zero: a point at every commit that changed the cluster).
    pub fn set_point_interval(&self, d: Duration) {
        self.point_interval
            .store(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Is a restore point due for some cluster (for the commit timer)?
    pub(super) fn points_due(&self) -> bool {
        let now = inode::now_ns();
        let cat = self.catalog.read().unwrap();
        cat.by_id
            .values()
            .any(|cl| self.point_due(cl, &cat.defaults, now))
    }

    /// Would thinning drop a point now (for the commit timer: points age out of an
    /// idle store too)?
    pub(super) fn thinning_due(&self) -> bool {
        let now = inode::now_ns();
        let cat = self.catalog.read().unwrap();
        cat.by_id.values().any(|cl| {
            let times: Vec<i64> = cl
                .points
                .lock()
                .unwrap()
                .iter()
                .map(|p| p.created)
                .collect();
            thin(&times, now, cl.retention_ns(&cat.defaults))
                .iter()
                .any(|k| !k)
        })
    }

    fn point_due(&self, cl: &Cluster, defaults: &Settings, now: i64) -> bool {
        cl.changed.load(Ordering::Acquire)
            && cl.retention_ns(defaults) > 0
            && cl
                .newest_point()
                .is_none_or(|t| now - t >= self.point_interval.load(Ordering::Relaxed) as i64)
    }

    /// In a commit, under the exclusive gate: takes a point of every cluster that
    /// changed since its last (and may take one), and thins every cluster's points.
    /// The caller clears `cat.removed` after this, in the same commit.
    pub(super) fn take_points(&self, cat: &mut Catalog, cs: &mut CommitState) -> Result<()> {
        let now = inode::now_ns();
        let clusters: Vec<Arc<Cluster>> = cat.by_id.values().cloned().collect();
        for cl in clusters {
            let retention = cl.retention_ns(&cat.defaults);
            // A point needs catalog pages; on a store without room beyond its
            // reserve (kept for the commit itself) none is taken until there is.
            if self.point_due(&cl, &cat.defaults, now) && self.eng.store.has_room(ROOM) {
                let st = cl.state.read().unwrap();
                let rec = Record {
                    kind: RecordKind::Point,
                    id: cat.slot(),
                    name: cl.name.clone(),
                    parent: None,
                    created: now,
                    itable: st.itable,
                    next_ino: st.next_ino,
                    orphans: st.orphans,
                };
                drop(st);
                self.eng.write_record(
                    &mut cs.tree,
                    NodeKind::RadixCatalog,
                    rec.id,
                    &rec.encode(),
                    true,
                )?;
                if !rec.itable.root.is_none() {
                    self.eng.store.incref(rec.itable.root);
                }
                cl.points.lock().unwrap().push(rec);
                cl.changed.store(false, Ordering::Release);
            }
            let mut points = cl.points.lock().unwrap();
            let times: Vec<i64> = points.iter().map(|p| p.created).collect();
            let keep = thin(&times, now, retention);
            if keep.iter().all(|k| *k) {
                continue;
            }
            let mut k = keep.into_iter();
            let mut dropped = Vec::new();
            points.retain(|p| {
                let kept = k.next().unwrap();
                if !kept {
                    dropped.push(p.clone());
                }
                kept
            });
            drop(points);
            for mut p in dropped {
                self.eng.drop_tree(&mut p.itable);
                cat.free_slot(p.id);
            }
        }
        Ok(())
    }

    /// The store is full: drops the older half of every cluster's restore points
    /// (at least one), logging it. False if there were none to drop.
    pub(super) fn shed_points(&self) -> Result<bool> {
        let _gate = self.change()?;
        let mut cat = self.catalog.write().unwrap();
        let mut times: Vec<i64> = cat
            .by_id
            .values()
            .flat_map(|cl| {
                cl.points
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|p| p.created)
                    .collect::<Vec<_>>()
            })
            .collect();
        if times.is_empty() {
            return Ok(false);
        }
        times.sort_unstable();
        let cutoff = times[(times.len() - 1) / 2];
        let clusters: Vec<Arc<Cluster>> = cat.by_id.values().cloned().collect();
        let mut dropped = 0;
        for cl in clusters {
            let old: Vec<Record> = {
                let mut points = cl.points.lock().unwrap();
                let keep = points
                    .iter()
                    .position(|p| p.created > cutoff)
                    .unwrap_or(points.len());
                points.drain(..keep).collect()
            };
            for mut p in old {
                self.eng.drop_tree(&mut p.itable);
                cat.free_slot(p.id);
                dropped += 1;
            }
        }
        log::warn!(
            "the store is full: dropped {dropped} restore points taken at or before {} \
             to make room for live data",
            rfc3339(cutoff)
        );
        Ok(true)
    }

    /// Drops every restore point of `cl` (it is being deleted, or its retention is 0).
    pub(super) fn drop_points(&self, cat: &mut Catalog, cl: &Cluster) {
        for mut p in std::mem::take(&mut *cl.points.lock().unwrap()) {
            self.eng.drop_tree(&mut p.itable);
            cat.free_slot(p.id);
        }
    }

    /// In a commit: writes (or clears) the settings record of a dirty cluster.
    pub(super) fn store_settings(
        &self,
        cat: &mut Catalog,
        cs: &mut CommitState,
        s: &mut Settings,
    ) -> Result<()> {
        if s.is_default() && !s.name.is_empty() {
            if s.id != 0 {
                self.eng.write_record(
                    &mut cs.tree,
                    NodeKind::RadixCatalog,
                    s.id,
                    &[0; catalog::RECORD_BYTES],
                    true,
                )?;
                cat.free_slots.push(s.id);
                s.id = 0;
            }
            return Ok(());
        }
        if s.id == 0 {
            s.id = cat.slot();
        }
        self.eng.write_record(
            &mut cs.tree,
            NodeKind::RadixCatalog,
            s.id,
            &s.encode(),
            true,
        )
    }

    /// Clones `src` as `name` from its latest state or a restore point, with an
    /// optional expiry; returns the new cluster and the time of the image it holds.
    pub fn clone_with(
        &self,
        src: &str,
        name: &str,
        opts: &CloneOptions,
    ) -> Result<(ClusterInfo, SystemTime)> {
        catalog::validate_name(name)?;
        let now = inode::now_ns();
        let expires_at = opts.expires_at.map(ns);
        if let Some(e) = expires_at {
            if e <= now {
                return Err(Error::BadTime(format!(
                    "the expiry {} is in the past: give a later time or a duration",
                    rfc3339(e)
                )));
            }
        }
        if let Some(t) = opts.at {
            if ns(t) > now {
                return Err(Error::BadTime(format!(
                    "{} is in the future: the latest restorable time is now",
                    rfc3339(ns(t))
                )));
            }
        }
        let (info, time) = {
            let _gate = self.change()?;
            let source = self.cluster_named(src)?;
            let image = match opts.at {
                Some(t) => source.point_at(self, ns(t))?,
                None => self.latest_image(&source)?,
            };
            let mut cat = self.catalog.write().unwrap();
            if cat.by_name.contains_key(name) {
                drop(cat);
                self.drop_image(image);
                return Err(Error::AlreadyExists(name.into()));
            }
            let rec = Record {
                kind: RecordKind::Cluster,
                id: cat.next_id,
                name: name.into(),
                parent: Some(src.into()),
                created: now,
                itable: image.itable,
                next_ino: image.next_ino,
                orphans: image.orphans,
            };
            let info = self.add_cluster(&mut cat, rec);
            let cl = cat.by_id[&info.id].clone();
            cl.settings.lock().unwrap().expires_at = expires_at;
            (cl.info(&cat.defaults), image.time)
        };
        match opts.at {
            Some(_) => log::info!("cluster {src} restored to {} as {name}", rfc3339(time)),
            None => log::info!("cluster {src} cloned as {name}"),
        }
        self.notify(super::Event::Created(info.name.clone()));
        // Files open in the source are not open in the clone: free its orphans.
        self.free_orphans_of(info.id)?;
        Ok((info, inode::to_system_time(time)))
    }

    /// The current contents of `cl`, with one more reference. Holds writers off
    /// for the instant it takes, and stores the times of in-place overwrites first.
    fn latest_image(&self, cl: &Cluster) -> Result<Image> {
        let mut st = cl.state.write().unwrap();
        self.store_times(cl, &mut st)?;
        Ok(Image::share(
            self,
            st.itable,
            st.next_ino,
            st.orphans,
            inode::now_ns(),
        ))
    }

    fn drop_image(&self, mut image: Image) {
        self.eng.drop_tree(&mut image.itable);
    }

    pub(super) fn cluster_named(&self, name: &str) -> Result<Arc<Cluster>> {
        self.catalog
            .read()
            .unwrap()
            .by_name
            .get(name)
            .cloned()
            .ok_or(Error::NotFound)
    }

    /// Replaces the contents of cluster `name` at once, keeping its name, parent,
    /// settings and restore points. It gets a new cluster id: files of the old
    /// contents still open fail from then on. Refused for a protected cluster; who
    /// uses the cluster is the caller's to ask (processes are not the volume's).
    pub fn reset_cluster(&self, name: &str, to: ResetTo) -> Result<ClusterInfo> {
        let info = {
            let _gate = self.change()?;
            let old = self.cluster_named(name)?;
            if old.settings.lock().unwrap().protected {
                return Err(Error::Protected(name.into()));
            }
            self.refuse_if_mounted(&old)?;
            let parent = old.parent.as_deref().map(|p| self.cluster_named(p));
            let image = match (to, parent) {
                (ResetTo::Parent, Some(Ok(p))) => self.latest_image(&p)?,
                (ResetTo::Parent, Some(Err(_))) => {
                    return Err(Error::InvalidArgument(
                        "the cluster's parent no longer exists: reset it with \
                         --restore-to-time to one of its own restore points",
                    ))
                }
                (ResetTo::Parent, None) => {
                    return Err(Error::InvalidArgument(
                        "the cluster has no parent: reset it with --restore-to-time to one \
                         of its own restore points",
                    ))
                }
                (ResetTo::Time(t), Some(Ok(p))) => p.point_at(self, ns(t))?,
                (ResetTo::Time(t), _) => old.point_at(self, ns(t))?,
            };
            let mut st = old.state.write().unwrap();
            let mut cat = self.catalog.write().unwrap();
            let rec = Record {
                kind: RecordKind::Cluster,
                id: cat.next_id,
                name: name.into(),
                parent: old.parent.clone(),
                created: old.created,
                itable: image.itable,
                next_ino: image.next_ino,
                orphans: image.orphans,
            };
            cat.by_name.remove(name);
            cat.by_id.remove(&old.id);
            cat.removed.push(old.id.0);
            old.deleted.store(true, Ordering::Release);
            self.eng.drop_tree(&mut st.itable);
            old.dirs.lock().unwrap().clear();
            let info = self.add_cluster(&mut cat, rec);
            let new = cat.by_id[&info.id].clone();
            *new.settings.lock().unwrap() = old.settings.lock().unwrap().clone();
            *new.points.lock().unwrap() = std::mem::take(&mut *old.points.lock().unwrap());
            new.info(&cat.defaults)
        };
        log::info!("cluster {name} reset");
        self.notify(super::Event::Reset(name.into()));
        self.free_orphans_of(info.id)?;
        self.commit()?;
        Ok(info)
    }

    /// Changes a cluster's settings and commits them.
    fn settle(
        &self,
        name: &str,
        f: impl FnOnce(&mut Settings) -> Result<()>,
    ) -> Result<ClusterInfo> {
        let info = {
            let _gate = self.change()?;
            let mut cat = self.catalog.write().unwrap();
            let cl = cat.by_name.get(name).cloned().ok_or(Error::NotFound)?;
            f(&mut cl.settings.lock().unwrap())?;
            cl.dirty.store(true, Ordering::Release);
            if cl.retention_ns(&cat.defaults) == 0 {
                self.drop_points(&mut cat, &cl);
            }
            cl.info(&cat.defaults)
        };
        self.commit()?;
        self.notify(super::Event::Modified(name.into()));
        Ok(info)
    }

    /// Protects a cluster from deletion, reset and the removal of any name in it.
    pub fn set_protected(&self, name: &str, protected: bool) -> Result<ClusterInfo> {
        let info = self.settle(name, |s| {
            s.protected = protected;
            Ok(())
        })?;
        log::info!(
            "cluster {name} {}",
            if protected {
                "protected"
            } else {
                "unprotected"
            }
        );
        Ok(info)
    }

    /// When the daemon deletes the cluster (None: never).
    pub fn set_expiry(&self, name: &str, at: Option<SystemTime>) -> Result<ClusterInfo> {
        let at = at.map(ns);
        if let Some(e) = at {
            if e <= inode::now_ns() {
                return Err(Error::BadTime(format!(
                    "the expiry {} is in the past: give a later time",
                    rfc3339(e)
                )));
            }
        }
        self.settle(name, |s| {
            s.expires_at = at;
            Ok(())
        })
    }

    /// How long the cluster's restore points are kept (zero: none, and the ones
    /// it has are dropped).
    pub fn set_retention(&self, name: &str, retention: Duration) -> Result<ClusterInfo> {
        self.settle(name, |s| {
            s.retention = Some(retention.as_secs());
            Ok(())
        })
    }

    /// The restore window of cluster `name`.
    pub fn restorable(&self, name: &str) -> Result<Restorable> {
        let cl = self.cluster_named(name)?;
        let (earliest, points) = {
            let p = cl.points.lock().unwrap();
            (p.first().map(|p| p.created), p.len())
        };
        let restore_only = self
            .space_report(crate::status::SPACE_WAIT)
            .and_then(|r| r.clusters.iter().find(|s| s.name == name).cloned())
            .map_or(0, |s| s.restore_only);
        Ok(Restorable {
            earliest: earliest.map(inode::to_system_time),
            latest: SystemTime::now(),
            points,
            restore_only,
        })
    }

    /// Deletes every cluster whose expiry has passed, unless it is protected.
    pub(super) fn expire(&self) -> Result<()> {
        let now = inode::now_ns();
        let due: Vec<(String, i64)> = {
            let cat = self.catalog.read().unwrap();
            cat.by_name
                .values()
                .filter_map(|cl| {
                    let s = cl.settings.lock().unwrap();
                    let e = s.expires_at?;
                    // A cluster mounted on its own waits for its unmount.
                    (e <= now && !s.protected && self.mounted_at(cl.id).is_empty())
                        .then(|| (cl.name.clone(), e))
                })
                .collect()
        };
        for (name, at) in due {
            match self.remove_cluster(&name, false) {
                Ok(()) => {
                    log::info!("cluster {name} expired at {}: deleted", rfc3339(at));
                    self.notify(super::Event::Expired(name));
                }
                Err(Error::NotFound) => {}
                Err(e) => log::warn!("cluster {name} expired, but deleting it failed: {e}"),
            }
        }
        Ok(())
    }

    /// Fails if cluster `c` is protected: no name in it may be removed.
    pub(super) fn refuse_if_protected(&self, cl: &Cluster) -> Result<()> {
        if cl.settings.lock().unwrap().protected {
            return Err(Error::Protected(cl.name.clone()));
        }
        Ok(())
    }
}

/// A time: RFC 3339 (`2026-11-30T09:50:00Z`), or relative to now (`-10m`, `+2h`).
pub fn parse_time(s: &str) -> std::result::Result<SystemTime, String> {
    let s = s.trim();
    let relative = |d: &str| {
        humantime::parse_duration(d).map_err(|e| {
            format!("bad time '{s}': {e}; give RFC 3339 like 2026-11-30T09:50:00Z or -10m")
        })
    };
    if let Some(d) = s.strip_prefix('-') {
        return Ok(SystemTime::now() - relative(d)?);
    }
    if let Some(d) = s.strip_prefix('+') {
        return Ok(SystemTime::now() + relative(d)?);
    }
    humantime::parse_rfc3339_weak(s).map_err(|e| {
        format!("bad time '{s}': {e}; give RFC 3339 like 2026-11-30T09:50:00Z or -10m")
    })
}

/// A duration like `2h`, `30m`, `7d` or `0`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("bad duration '{s}': {e}; give one like 90s, 30m, 2h or 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_recent_points_then_one_per_minute_then_per_hour() {
        let now = 30 * 24 * 3600 * NS;
        let times: Vec<i64> = (0..(3 * 24 * 3600))
            .step_by(7)
            .map(|s| now - s as i64 * NS)
            .rev()
            .collect();
        let keep = thin(&times, now, 2 * 24 * 3600 * NS);
        let kept: Vec<i64> = times
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(t, _)| now - t)
            .collect();
        let recent = kept.iter().filter(|a| **a < 600 * NS).count();
        assert_eq!(
            recent,
            times.iter().filter(|t| now - **t < 600 * NS).count()
        );
        let minutely = kept
            .iter()
            .filter(|a| **a >= 600 * NS && **a < 24 * 3600 * NS)
            .count();
        assert!((1420..=1440).contains(&minutely), "{minutely}");
        let hourly = kept.iter().filter(|a| **a >= 24 * 3600 * NS).count();
        assert!((23..=25).contains(&hourly), "{hourly}");
        assert!(kept.iter().all(|a| *a <= 2 * 24 * 3600 * NS));
        // The newest of each bucket is kept, so thinning again keeps the same set.
        let again: Vec<i64> = times
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(t, _)| *t)
            .collect();
        assert!(thin(&again, now, 2 * 24 * 3600 * NS).iter().all(|k| *k));
    }
}
