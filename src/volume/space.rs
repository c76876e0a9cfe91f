//! Space per cluster without holding writers off: a background thread walks the
//! trees of the last durable commit, pinned ([`Engine::pin`]) so that nothing they
//! reach is freed or changed in place under the walk, while writers go on into
//! later epochs. Readers ([`Volume::space_report`]) get the latest figures, with
//! the commit they are of and their age; a reader that finds them older than the
//! last commit asks for a new walk, and waits for it if walks are cheap (a small
//! store), or not at all if not (a large one: it gets the previous figures).
//! Frees wait while a walk runs, so space comes back up to one walk late.
//!
//! The figures are exact for their commit: once the store is quiet they are the
//! store's. Walks are spaced so that they take at most a fifth of one CPU: a new
//! one starts only after 4x the last one's duration has passed since it ended,
//! and the walker runs at the lowest CPU priority.
//!
//! `Volume::space` (a walk of the live trees, holding writers off) stays for
//! fsck-style checks and tests that want the figures of this instant.

use super::check;
use super::node::Tree;
use super::{catalog::RecordKind, catalog::Slot, ClusterSpace, Volume};
use crate::error::Result;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// A walk this quick is worth waiting for (see [`Volume::space_report`]).
pub const CHEAP_WALK: Duration = Duration::from_millis(100);

/// Space figures of every cluster as of one commit.
#[derive(Clone, Debug)]
pub struct SpaceReport {
    /// The commit (generation) whose trees were walked.
    pub generation: u64,
    /// When the walk ended.
    pub as_of: SystemTime,
    /// How long it took.
    pub took: Duration,
    /// Of the last durable commit, with nothing changed since: the store's figures.
    pub current: bool,
    /// Clusters of that commit, sorted by name (one made later is not among
    /// them). Shared by every reader (a store may hold 10,000 clusters).
    pub clusters: Arc<Vec<ClusterSpace>>,
}

impl SpaceReport {
    /// The figures of the cluster named `name`, if it was in the commit.
    pub fn of_cluster(&self, name: &str) -> Option<&ClusterSpace> {
        let i = self
            .clusters
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()?;
        Some(&self.clusters[i])
    }
}

/// The walker's state, shared with readers.
#[derive(Default)]
pub(super) struct SpaceState {
    last: Option<SpaceReport>,
    /// A reader wants figures newer than `last`.
    wanted: bool,
    running: bool,
    /// When the running walk started.
    started: Option<Instant>,
    /// Bumped to make a running walk give up (close, fsck, a full store).
    pub(super) cancel: u64,
    ended: Option<Instant>,
    stop: bool,
}

pub(super) type SpaceShared = Arc<(Mutex<SpaceState>, Condvar)>;

impl Volume {
    /// The latest space figures, asking for newer ones if a commit came since.
    /// When walks are cheap (the last took under [`CHEAP_WALK`]: a small store),
    /// waits up to `patience` for the new figures; otherwise not at all: a reader
    /// of a large store gets the previous figures at once. None before the first
    /// walk ends.
    pub fn space_report(&self, patience: Duration) -> Option<SpaceReport> {
        let durable = self.durable_generation();
        let (lock, cv) = &*self.space;
        let mut st = lock.lock().unwrap();
        // A walk already running longer than a cheap one is not cheap either
        // (the first walk of a large store).
        let long_running = st.running && st.started.is_some_and(|t| t.elapsed() >= CHEAP_WALK);
        let cheap = st.last.as_ref().is_none_or(|r| r.took < CHEAP_WALK) && !long_running;
        let wait = if cheap { patience } else { Duration::ZERO };
        let deadline = Instant::now() + wait;
        loop {
            let fresh = st.last.as_ref().is_some_and(|r| r.generation >= durable);
            if fresh {
                break;
            }
            if !st.wanted {
                st.wanted = true;
                cv.notify_all();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = cv.wait_timeout(st, left).unwrap().0;
        }
        let mut report = st.last.clone()?;
        drop(st);
        report.current = report.generation == self.durable_generation()
            && !self.eng.has_pending()
            && !self.any_dirty();
        Some(report)
    }

    /// Asks for a walk of the last commit's trees now, without waiting for it (a
    /// daemon does at mount, so the first reader finds figures).
    pub fn request_space_walk(&self) {
        let (lock, cv) = &*self.space;
        lock.lock().unwrap().wanted = true;
        cv.notify_all();
    }

    /// Starts the walker thread of an open, writable volume; it walks only when
    /// asked. (A walk holds frees back while it runs, so none runs unasked.)
    pub(super) fn start_space_walker(vol: &Arc<Volume>) {
        let weak: Weak<Volume> = Arc::downgrade(vol);
        let shared = vol.space.clone();
        std::thread::Builder::new()
            .name("clonefs-space".into())
            .spawn(move || walker(weak, shared))
            .expect("spawning the space walker");
    }

    /// Stops the walker: a walk under way gives up; with `wait`, returns once it
    /// has (not from `drop`, which may run on the walker's own thread).
    pub(super) fn stop_space_walker(&self, wait: bool) {
        let (lock, cv) = &*self.space;
        let mut st = lock.lock().unwrap();
        st.stop = true;
        st.cancel += 1;
        cv.notify_all();
        while wait && st.running {
            st = cv.wait(st).unwrap();
        }
    }

    /// Makes a walk under way give up and waits until it has, so the drops it held
    /// back are applied (a full store wants its space now; fsck would see them as
    /// leaks). The next reader asks for a new walk. The caller holds no lock the
    /// walker takes (the commit lock).
    pub(super) fn cancel_space_walk(&self) {
        let (lock, cv) = &*self.space;
        let mut st = lock.lock().unwrap();
        if !st.running {
            return;
        }
        st.cancel += 1;
        cv.notify_all();
        while st.running {
            st = cv.wait(st).unwrap();
        }
    }

    /// Walks the trees of the last durable commit; None if cancelled.
    pub(super) fn walk_committed(&self, cancel_at: u64) -> Result<Option<SpaceReport>> {
        let started = Instant::now();
        let cs = self.commit.lock().unwrap();
        let generation = self.durable_generation();
        let catalog = cs.tree;
        let pin = self.eng.pin();
        drop(cs);
        let mut trees: BTreeMap<String, (Tree, Vec<Tree>)> = BTreeMap::new();
        let mut points = Vec::new();
        for slot in check::catalog_records(&self.eng, catalog)? {
            match slot {
                Slot::Record(r) if r.kind == RecordKind::Cluster => {
                    trees.entry(r.name).or_default().0 = r.itable;
                }
                Slot::Record(p) => points.push(p),
                Slot::Settings(_) => {}
            }
        }
        for p in points {
            if let Some(t) = trees.get_mut(&p.name) {
                t.1.push(p.itable);
            }
        }
        let trees: Vec<(String, Tree, Vec<Tree>)> =
            trees.into_iter().map(|(n, (t, p))| (n, t, p)).collect();
        let space = self.space.clone();
        let keep_going = move || space.0.lock().unwrap().cancel == cancel_at;
        let figures = check::space(&self.eng, &trees, &keep_going)?;
        drop(pin);
        Ok(figures.map(|clusters| SpaceReport {
            generation,
            as_of: SystemTime::now(),
            took: started.elapsed(),
            current: false,
            clusters: Arc::new(clusters),
        }))
    }
}

fn walker(vol: Weak<Volume>, shared: SpaceShared) {
    lowest_priority();
    let (lock, cv) = &*shared;
    loop {
        let cancel_at = {
            let mut st = lock.lock().unwrap();
            loop {
                if st.stop {
                    return;
                }
                // Rest 4x the last walk's length after it before the next.
                let rest = match (&st.last, st.ended) {
                    (Some(r), Some(ended)) => (r.took * 4).saturating_sub(ended.elapsed()),
                    _ => Duration::ZERO,
                };
                st = match (st.wanted, rest.is_zero()) {
                    (true, true) => break,
                    (true, false) => cv.wait_timeout(st, rest).unwrap().0,
                    (false, _) => cv.wait(st).unwrap(),
                };
            }
            st.wanted = false;
            st.running = true;
            st.started = Some(Instant::now());
            st.cancel
        };
        let Some(v) = vol.upgrade() else { return };
        let result = v.walk_committed(cancel_at);
        drop(v);
        let mut st = lock.lock().unwrap();
        st.running = false;
        st.ended = Some(Instant::now());
        match result {
            Ok(Some(report)) => st.last = Some(report),
            Ok(None) => {}
            Err(e) => log::error!("walking the trees for space figures: {e}"),
        }
        cv.notify_all();
    }
}

/// Space figures are for people and dashboards: the walker yields the CPU to
/// everything else (nice 19 for this thread).
fn lowest_priority() {
    // SAFETY: setpriority on this thread's own id changes only its scheduling.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if r != 0 {
        log::debug!(
            "could not lower the space walker's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
