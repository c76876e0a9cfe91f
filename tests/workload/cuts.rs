//! Power cuts in a random workload, on any device that can cut its power (the
//! in-memory device of `tests/powercut.rs`, the RADOS device of `tests/ceph.rs`):
//! one round of operations and syncs ending in a cut, and the check of the volume
//! reopened after it. `tests/powercut.rs` says what the check accepts.

use super::*;
use clonefs::error::{Error, Result};
use clonefs::volume::{ClusterId, Ino, Volume};

/// A device whose power a round can cut. After a cut the device drops every
/// write and sync without an error, as a dead host's would, and the live volume
/// goes on unaware; what it does then is ignored.
pub trait Power {
    /// Cuts the power after `n` more device writes or syncs.
    fn cut_after(&self, n: u64, seed: u64);
    /// Cuts the power now.
    fn cut_now(&self, seed: u64);
    fn is_cut(&self) -> bool;
}

/// What a sync promised.
pub enum Synced {
    /// Everything (`commit` or `fsync`).
    All,
    /// The data of one file (`fdatasync`): its bytes as of now.
    Data(String, String),
}

/// A sync through `commit`, or `fsync` or `fdatasync` of a random file.
fn sync(v: &Volume, rng: &mut Rng, m: &State) -> Result<Synced> {
    let files: Vec<(String, String)> = m
        .clusters
        .iter()
        .flat_map(|(c, cl)| cl.files.keys().map(move |p| (c.clone(), p.clone())))
        .collect();
    if files.is_empty() || rng.chance(30) {
        return v.commit().map(|_| Synced::All);
    }
    let (c, p) = rng.pick(&files).clone();
    let (id, ino) = file_ino(v, &c, &p)?;
    if rng.chance(50) {
        v.fsync(id, ino).map(|_| Synced::All)
    } else {
        v.fdatasync(id, ino).map(|_| Synced::Data(c, p))
    }
}

#[derive(Default)]
pub struct Stats {
    pub rounds: u64,
    pub scheduled_cuts: u64,
    pub cuts_mid_op: u64,
    pub exact_sync_state: u64,
    pub later_state: u64,
    pub bytes: u64,
    pub ops: u64,
    pub syncs: u64,
    pub datasyncs: u64,
    pub nospace: u64,
    pub short_writes: u64,
}

/// What one round left: the model at the last sync that returned with the power
/// on, the operations issued since, the `fdatasync`s among them, and the seed of
/// the cut (which bytes a cut device keeps).
pub struct Round {
    pub synced: State,
    pub since: Vec<Op>,
    pub datasyncs: Vec<DataSync>,
    pub cut_seed: u64,
}

/// One round: random operations and syncs on `v`, whose device is `power`, then a
/// power cut, scheduled after a few device writes (often in the middle of an
/// operation or a commit) or taken between two operations.
pub fn run_round(
    v: &Volume,
    power: &dyn Power,
    model: &mut State,
    rng: &mut Rng,
    counter: &mut u32,
    stats: &mut Stats,
) -> std::result::Result<Round, String> {
    let nops = 10 + rng.below(90);
    let cut_at = rng.below(nops + 1);
    let scheduled = rng.chance(60);
    let cut_seed = rng.next();
    let mut synced = model.clone();
    let mut since = Vec::new();
    let mut datasyncs = Vec::new();
    let mut handles = Vec::new();
    for i in 0..nops {
        if i == cut_at {
            if scheduled {
                stats.scheduled_cuts += 1;
                power.cut_after(rng.below(48), cut_seed);
            } else {
                power.cut_now(cut_seed);
                break;
            }
        }
        if rng.chance(12) {
            stats.syncs += 1;
            let r = guarded(|| sync(v, rng, model));
            if power.is_cut() {
                break;
            }
            match r
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| format!("sync failed with the power on: {e}"))?
            {
                Synced::All => {
                    synced = model.clone();
                    since.clear();
                    datasyncs.clear();
                }
                Synced::Data(c, p) => {
                    stats.datasyncs += 1;
                    let fid = model.clusters[&c].files[&p];
                    datasyncs.push(DataSync {
                        fid,
                        at: since.len(),
                        bytes: model.files[&fid].clone(),
                    });
                }
            }
        } else {
            if rng.chance(6) {
                // Open a file or close a handle: unlinking an open file leaves an
                // orphan, which its last release or (after a cut) the mount frees.
                let r = guarded(|| handle(v, rng, model, &mut handles));
                if power.is_cut() {
                    break;
                }
                r.and_then(|r| r.map_err(|e| e.to_string()))
                    .map_err(|e| format!("open/release with the power on: {e}"))?;
                continue;
            }
            let mut op = random_op(rng, model, counter);
            stats.ops += 1;
            let r = guarded(|| exec(v, &op));
            if std::env::var("CLONEFS_POWERCUT_PARANOID").is_ok() {
                println!("op {op:?} -> {r:?}");
            }
            if let (Ok(Ok(n)), Op::Write { len, .. }) = (&r, &mut op) {
                if *n < *len {
                    stats.short_writes += 1;
                    *len = *n;
                }
            }
            if power.is_cut() {
                model.apply(&op);
                since.push(op);
                stats.cuts_mid_op += 1;
                break;
            }
            match r.map_err(|e| format!("{op:?} panicked with the power on: {e}"))? {
                Ok(_) => {
                    model.apply(&op);
                    since.push(op.clone());
                }
                Err(Error::NoSpace) => {
                    // Decided before anything changed: the volume is as before.
                    stats.nospace += 1;
                    let a = read_actual(v)?;
                    check(model, &[], &a)
                        .map_err(|e| format!("{op:?} failed with NoSpace but changed: {e}"))?;
                    continue;
                }
                Err(e) => return Err(format!("{op:?} failed with the power on: {e}")),
            }
            if std::env::var("CLONEFS_POWERCUT_PARANOID").is_ok() {
                let a = read_actual(v)?;
                check(model, &[], &a).map_err(|e| format!("live after {op:?}: {e}"))?;
            }
        }
    }
    if !power.is_cut() {
        power.cut_now(cut_seed);
    }
    Ok(Round {
        cut_seed,
        synced,
        since,
        datasyncs,
    })
}

/// Opens a random file (keeping the handle) or releases a random handle.
fn handle(v: &Volume, rng: &mut Rng, m: &State, handles: &mut Vec<(ClusterId, Ino)>) -> Result<()> {
    if !handles.is_empty() && rng.chance(50) {
        let (c, ino) = handles.swap_remove(rng.below(handles.len() as u64) as usize);
        return v.release_file(c, ino);
    }
    let files: Vec<(&String, &String)> = m
        .clusters
        .iter()
        .flat_map(|(c, cl)| cl.files.keys().map(move |p| (c, p)))
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    let (c, p) = *rng.pick(&files);
    let (c, ino) = file_ino(v, c, p)?;
    v.open_file(c, ino)?;
    handles.push((c, ino));
    Ok(())
}

/// Runs `f`, turning a panic into an error. Once the power is cut the device drops
/// writes, so the live process may read pages it never wrote: what it does then
/// does not matter (a real process would be dead), but with the power on a panic
/// is a failure like any other.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<Result<T>, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(p) => Err(format!(
            "panic: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// Checks a volume reopened after a round's cut: its state is one the round may
/// leave (see `check_states`), and fsck is clean. Returns what it holds.
pub fn check_recovered(
    round: &Round,
    v: &Volume,
    stats: &mut Stats,
) -> std::result::Result<Actual, String> {
    let actual = read_actual(v)?;
    let k = check_states(&round.synced, &round.since, &round.datasyncs, &actual, None)?;
    if k == 0 {
        stats.exact_sync_state += 1;
    } else {
        stats.later_state += 1;
    }
    stats.bytes += actual.bytes();
    let r = v.fsck().map_err(|e| format!("fsck: {e}"))?;
    if !r.is_clean() {
        return Err(format!("fsck after the cut:\n{r}"));
    }
    Ok(actual)
}

impl Stats {
    pub fn summary(&self) -> String {
        format!(
            "{} power cuts ({} scheduled by device writes, {} observed in an operation), {} ops \
             ({} refused with NoSpace, {} short writes), {} syncs ({} fdatasync); the recovered \
             state was the synced one {} times, only a later one {} times; {} bytes verified",
            self.rounds,
            self.scheduled_cuts,
            self.cuts_mid_op,
            self.ops,
            self.nospace,
            self.short_writes,
            self.syncs,
            self.datasyncs,
            self.exact_sync_state,
            self.later_state,
            self.bytes,
        )
    }
}
