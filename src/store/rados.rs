//! A [`PageDevice`] on Ceph RADOS: the page space striped over fixed-size objects,
//! as RBD stripes an image, and one writer at a time by a lease.
//!
//! Layout: page `p` lives in object `STORE.{p * page_size / OBJECT_SIZE:016x}` at
//! offset `p * page_size % OBJECT_SIZE` of pool `POOL`. Object 0 holds the two
//! superblock copies (pages 0 and 1), the store's geometry (xattr
//! `clonefs.geometry`, written with the object by one exclusive create at mkfs),
//! the writer's lease (cls_lock `clonefs.writer`) and the last writer's address
//! (xattr `clonefs.holder`, removed by a clean close). A missing object, or a
//! missing range of one, reads as zeros.
//!
//! Durability: `write` adds its bytes to a run of contiguous bytes of one object
//! (up to 1 MiB), or sends the run as an asynchronous RADOS write (librados copies
//! the bytes) and starts another, and returns; a read that touches the run, and
//! every sync, send it first; `sync` returns once every write started before it is
//! acknowledged by all the OSDs of its placement group (`rados_aio_flush`), and
//! fails if any of them failed. `commit` syncs first and then writes the
//! superblock synchronously, so a superblock never names a page the OSDs have not
//! acknowledged; a RADOS write is atomic, so a superblock is never torn. Reads see
//! every write started before them: librados sends the operations on one object
//! in order to its primary OSD, which applies them in order.
//!
//! `free` does nothing: freed pages keep their RADOS space until the allocator
//! hands them out again (no trim yet). `allocate` does nothing: a pool is thin.
//!
//! The lease: an exclusive cls_lock with a duration ([`LEASE`]) renewed by a
//! thread every [`RENEW_EVERY`]. A second writer is refused while it lives, with
//! the holder's host. `take_over` fences the holder first: its client address is
//! added to the OSD blocklist through the monitors, then its lock is broken, so a
//! paused writer that wakes gets every operation refused by the OSDs. A holder
//! whose lease ran out without a clean close is fenced the same way by the next
//! writer (its address is in `clonefs.holder`). A writer that fails to renew, or
//! whose last renewal is older than the lease, refuses every write with EIO.

use super::device::PageDevice;
use super::librados::{
    self, ConnectError, Credentials, IoCtx, Locker, Rados, Timeouts, LOCK_MUST_RENEW,
};
use crate::error::{Error, Result};
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes per RADOS object: RBD's default.
pub const OBJECT_SIZE: u64 = 4 << 20;
/// How long a lease lasts after its last renewal.
pub const LEASE: Duration = Duration::from_secs(20);
/// How often the lease is renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(4);
/// Writes in flight before a writer waits for the oldest.
const MAX_IN_FLIGHT: usize = 512;
/// The most bytes one gathered run holds before it is sent.
const MAX_RUN: usize = 1 << 20;
const GEOMETRY: &str = "clonefs.geometry";
const HOLDER: &str = "clonefs.holder";
const LOCK: &str = "clonefs.writer";

/// How the client bounds its waits: a cluster that does not answer is an error
/// after these, never a hang.
pub const TIMEOUTS: Timeouts = Timeouts {
    mount: Duration::from_secs(10),
    mon_op: Duration::from_secs(10),
    osd_op: Duration::from_secs(30),
};

/// Where a RADOS store is and who opens it.
#[derive(Clone, Debug)]
pub struct RadosTarget {
    pub ceph_conf: PathBuf,
    /// The Ceph user (`client.USER`; None: admin) and its keyring (None: the conf's).
    pub ceph_user: Option<String>,
    pub ceph_keyring: Option<PathBuf>,
    pub pool: String,
    pub store: String,
    /// This writer's name in the lease (`--host`).
    pub host: String,
    /// Fence the lease's holder and take the store over.
    pub take_over: bool,
    /// The local anchor file a daemon locks (see `store::addr`); none for mkfs and fsck.
    pub anchor: Option<PathBuf>,
}

impl RadosTarget {
    /// `rados://POOL/STORE`, as errors name the store.
    pub fn shown(&self) -> PathBuf {
        PathBuf::from(format!("rados://{}/{}", self.pool, self.store))
    }
}

pub struct RadosDevice {
    io: Arc<IoCtx>,
    store: String,
    page_size: usize,
    capacity: u64,
    pending: Mutex<Pending>,
    /// The first write that failed; every later sync fails with it.
    failed: Mutex<Option<String>>,
    lease: Lease,
    /// The anchor file, locked while this device lives.
    _anchor: Option<std::fs::File>,
}

/// Writes not yet acknowledged: the run being gathered (contiguous bytes of one
/// object, not yet sent: the engine writes a streaming file page by page, and one
/// RADOS operation per 4 KiB page would cap it at the OSDs' small-write rate), and
/// the writes sent, with their completions.
#[derive(Default)]
struct Pending {
    run: Option<Run>,
    in_flight: Vec<librados::Completion>,
}

struct Run {
    obj: u64,
    off: u64,
    data: Vec<u8>,
}

impl Run {
    fn overlaps(&self, obj: u64, off: u64, len: usize) -> bool {
        self.obj == obj && off < self.off + self.data.len() as u64 && self.off < off + len as u64
    }
}

impl RadosDevice {
    /// Makes a new store (refused if its superblock object exists) and takes its lease.
    pub fn create(t: &RadosTarget, capacity_bytes: u64, page_size: usize) -> Result<RadosDevice> {
        let anchor = t.anchor.as_deref().map(lock_anchor).transpose()?;
        let io = connect(t)?;
        let geometry = format!(
            "page_size={page_size} pages={} object_size={OBJECT_SIZE}",
            capacity_bytes / page_size as u64
        );
        let sb = object_name(&t.store, 0);
        match io.create_exclusive(&sb, GEOMETRY, geometry.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(bad(
                    t,
                    "a store of this name exists already; mkfs never overwrites one".into(),
                ))
            }
            Err(e) => return Err(bad(t, format!("cannot create the store: {}", why(&e)))),
        }
        Self::with_lease(t, io, &geometry, anchor)
    }

    /// Opens an existing store and takes its lease (fencing its holder if `take_over`).
    pub fn open(t: &RadosTarget) -> Result<RadosDevice> {
        let anchor = t.anchor.as_deref().map(lock_anchor).transpose()?;
        let io = connect(t)?;
        let sb = object_name(&t.store, 0);
        let geometry = match io.getxattr(&sb, GEOMETRY) {
            Ok(Some(g)) => String::from_utf8_lossy(&g).into_owned(),
            Ok(None) => return Err(bad(t, "not a clonefs store (no geometry)".into())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(bad(
                    t,
                    format!(
                        "no such store in pool {} (make one with: clonefs mkfs {} --ceph-conf {})",
                        t.pool,
                        t.shown().display(),
                        t.ceph_conf.display()
                    ),
                ))
            }
            Err(e) => return Err(bad(t, format!("cannot read the store: {}", why(&e)))),
        };
        Self::with_lease(t, io, &geometry, anchor)
    }

    fn with_lease(
        t: &RadosTarget,
        io: Arc<IoCtx>,
        geometry: &str,
        anchor: Option<std::fs::File>,
    ) -> Result<RadosDevice> {
        let field = |k: &str| -> Option<u64> {
            geometry
                .split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
        };
        let (Some(ps), Some(pages), Some(OBJECT_SIZE)) =
            (field("page_size"), field("pages"), field("object_size"))
        else {
            return Err(bad(t, format!("unreadable geometry '{geometry}'")));
        };
        let lease = Lease::acquire(&io, t)?;
        Ok(RadosDevice {
            io,
            store: t.store.clone(),
            page_size: ps as usize,
            capacity: pages,
            pending: Mutex::default(),
            failed: Mutex::default(),
            lease,
            _anchor: anchor,
        })
    }

    /// Deletes the store: with its lease held (so no daemon serves it), removes
    /// every data object, then object 0 (the superblocks, the geometry and the
    /// lease go with it). Returns how many objects existed.
    pub fn destroy(self) -> Result<u64> {
        self.lease.stop_renewing();
        let objects = (self.capacity * self.page_size as u64).div_ceil(OBJECT_SIZE);
        let mut removing = Vec::new();
        let mut removed = 0;
        let mut reap = |all: bool, removing: &mut Vec<librados::Completion>| -> Result<()> {
            while removing.len() > if all { 0 } else { MAX_IN_FLIGHT } {
                match removing.remove(0).wait() {
                    Ok(()) => removed += 1,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        return Err(self.io_error(format!("removing an object failed: {}", why(&e))))
                    }
                }
            }
            Ok(())
        };
        for obj in 1..objects {
            let c = self.io.aio_remove(&object_name(&self.store, obj));
            removing.push(c.map_err(|e| self.io_error(format!("cannot remove: {}", why(&e))))?);
            reap(false, &mut removing)?;
        }
        reap(true, &mut removing)?;
        let sb = object_name(&self.store, 0);
        self.io
            .remove(&sb)
            .map_err(|e| self.io_error(format!("removing object 0 failed: {}", why(&e))))?;
        Ok(removed + 1)
    }

    /// Splits the byte range at `page`+`offset` of `len` bytes into per-object pieces:
    /// (object index, offset in it, offset in the caller's buffer, length).
    fn pieces(
        &self,
        page: u64,
        offset: usize,
        len: usize,
    ) -> Result<Vec<(u64, u64, usize, usize)>> {
        let start = page
            .checked_mul(self.page_size as u64)
            .and_then(|b| b.checked_add(offset as u64))
            .filter(|s| {
                s.checked_add(len as u64)
                    .is_some_and(|e| e <= self.capacity * self.page_size as u64)
            });
        match start {
            Some(start) => Ok(split(start, len)),
            None => Err(Error::Corrupt {
                page,
                why: format!(
                    "page lies beyond the end of the store ({} pages)",
                    self.capacity
                ),
            }),
        }
    }

    /// Checks finished writes (all of them when `all`), keeping the first failure.
    fn reap(&self, in_flight: &mut Vec<librados::Completion>, all: bool) {
        let mut failed = self.failed.lock().unwrap();
        in_flight.retain(|c| {
            if !all && !c.is_complete() {
                return true;
            }
            if let Err(e) = c.wait() {
                if failed.is_none() {
                    let msg = format!("a write to RADOS failed: {}", why(&e));
                    log::error!("{msg}; the store refuses writes until it is mounted again");
                    *failed = Some(msg);
                }
            }
            false
        });
    }

    /// Sends the gathered run as one asynchronous write; waits for the oldest
    /// writes while too many are in flight.
    fn send_run(&self, p: &mut Pending) -> Result<()> {
        let Some(run) = p.run.take() else {
            return Ok(());
        };
        let c = self
            .io
            .aio_write(&object_name(&self.store, run.obj), &run.data, run.off)
            .map_err(|e| self.io_error(format!("cannot start a RADOS write: {}", why(&e))))?;
        p.in_flight.push(c);
        if p.in_flight.len() >= MAX_IN_FLIGHT {
            self.reap(&mut p.in_flight, false);
            while p.in_flight.len() >= MAX_IN_FLIGHT {
                let mut oldest = vec![p.in_flight.remove(0)];
                self.reap(&mut oldest, true);
            }
        }
        Ok(())
    }

    fn io_error(&self, msg: String) -> Error {
        Error::Io(io::Error::other(msg))
    }
}

impl PageDevice for RadosDevice {
    fn page_size(&self) -> usize {
        self.page_size
    }

    fn capacity_pages(&self) -> u64 {
        self.capacity
    }

    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<()> {
        let pieces = self.pieces(page, offset, buf.len())?;
        {
            // A read after a write sees it: a gathered run it touches is sent first
            // (RADOS orders the operations on one object).
            let mut p = self.pending.lock().unwrap();
            let touched = p.run.as_ref().is_some_and(|r| {
                pieces
                    .iter()
                    .any(|&(obj, off, _, n)| r.overlaps(obj, off, n))
            });
            if touched {
                self.send_run(&mut p)?;
            }
        }
        for (obj, off, at, n) in pieces {
            let dst = &mut buf[at..at + n];
            let got = match self.io.read(&object_name(&self.store, obj), dst, off) {
                Ok(got) => got,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => 0,
                Err(e) => {
                    return Err(self.io_error(format!(
                        "reading object {obj} of store {} failed: {}",
                        self.store,
                        why(&e)
                    )))
                }
            };
            dst[got..].fill(0);
        }
        Ok(())
    }

    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<()> {
        self.lease.check().map_err(|m| self.io_error(m))?;
        let pieces = self.pieces(page, offset, data.len())?;
        let mut p = self.pending.lock().unwrap();
        for (obj, off, at, n) in pieces {
            let bytes = &data[at..at + n];
            // Into the run when it extends or rewrites it (a metadata record
            // rewritten between syncs); otherwise the run goes, and a new one starts.
            if let Some(run) = p.run.as_mut() {
                let end = run.off + run.data.len() as u64;
                if run.obj == obj
                    && run.off <= off
                    && off <= end
                    && (off - run.off) as usize + n <= MAX_RUN
                {
                    let from = (off - run.off) as usize;
                    if from + n > run.data.len() {
                        run.data.resize(from + n, 0);
                    }
                    run.data[from..from + n].copy_from_slice(bytes);
                    continue;
                }
            }
            self.send_run(&mut p)?;
            p.run = Some(Run {
                obj,
                off,
                data: bytes.to_vec(),
            });
        }
        Ok(())
    }

    fn allocate(&self, _start: u64, _count: u64) -> Result<()> {
        Ok(())
    }

    /// Gives the freed pages' space back to Ceph, as RBD's discard does: objects
    /// they cover whole are removed, the rest zeroed (BlueStore frees zeroed
    /// extents). Object 0 (the superblocks) is only ever zeroed. The pages are
    /// unreachable from every committed tree, so nothing reads them, and a later
    /// write to one comes after this in RADOS's per-object order. Not waited for:
    /// a trim that fails leaves only space behind.
    fn free(&self, start: u64, count: u64) {
        let ps = self.page_size as u64;
        let Some(pieces) = start
            .checked_mul(ps)
            .zip(usize::try_from(count * ps).ok())
            .map(|(at, len)| split(at, len))
        else {
            return;
        };
        log::debug!("trimming pages {start}+{count}");
        let mut p = self.pending.lock().unwrap();
        let touched = p.run.as_ref().is_some_and(|r| {
            pieces
                .iter()
                .any(|&(obj, off, _, n)| r.overlaps(obj, off, n))
        });
        // Its freed bytes, sent first, go with the trim rather than after it.
        if touched && self.send_run(&mut p).is_err() {
            return;
        }
        for (obj, off, _, n) in pieces {
            let oid = object_name(&self.store, obj);
            let started = if obj > 0 && off == 0 && n as u64 == OBJECT_SIZE {
                self.io.aio_remove(&oid)
            } else {
                self.io.aio_zero(&oid, off, n as u64)
            };
            if let Err(e) = started {
                log::debug!("trimming object {obj} failed: {}", why(&e));
                return;
            }
        }
    }

    fn sync(&self) -> Result<()> {
        self.send_run(&mut self.pending.lock().unwrap())?;
        // Every write started before this line is acknowledged when flush returns;
        // their results are checked under the lock, so a failure seen by a
        // concurrent sync is recorded before this one looks.
        self.io
            .flush()
            .map_err(|e| self.io_error(format!("RADOS flush failed: {}", why(&e))))?;
        self.reap(&mut self.pending.lock().unwrap().in_flight, false);
        if let Some(msg) = self.failed.lock().unwrap().clone() {
            return Err(self.io_error(msg));
        }
        self.lease.check().map_err(|m| self.io_error(m))
    }

    fn commit(&self, page: u64, bytes: &[u8]) -> Result<()> {
        self.sync()?;
        self.lease.check().map_err(|m| self.io_error(m))?;
        let [(obj, off, _, n)] = self.pieces(page, 0, bytes.len())?[..] else {
            return Err(self.io_error("a superblock spans two objects".into()));
        };
        self.io
            .write(&object_name(&self.store, obj), &bytes[..n], off)
            .map_err(|e| self.io_error(format!("writing the superblock failed: {}", why(&e))))
    }

    fn release(&self) -> Result<()> {
        self.sync()?;
        self.lease.release();
        Ok(())
    }
}

impl Drop for RadosDevice {
    fn drop(&mut self) {
        // A clean close released the lease already; otherwise it simply runs out.
        self.lease.stop_renewing();
    }
}

/// The byte range `[start, start + len)` of the page space as per-object pieces:
/// (object index, offset in the object, offset in the caller's buffer, length).
fn split(start: u64, len: usize) -> Vec<(u64, u64, usize, usize)> {
    let mut out = Vec::with_capacity(1);
    let mut done = 0usize;
    while done < len {
        let at = start + done as u64;
        let in_obj = at % OBJECT_SIZE;
        let n = ((OBJECT_SIZE - in_obj) as usize).min(len - done);
        out.push((at / OBJECT_SIZE, in_obj, done, n));
        done += n;
    }
    out
}

/// `STORE.0000000000000000`: object `idx` of `store`.
pub fn object_name(store: &str, idx: u64) -> CString {
    CString::new(format!("{store}.{idx:016x}")).expect("store names hold no NUL")
}

fn bad(t: &RadosTarget, why: String) -> Error {
    Error::BadStore {
        path: t.shown(),
        why,
    }
}

/// An errno from librados, in words, with what it usually means here.
fn why(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ESHUTDOWN) => format!(
            "{e} (this client is blocklisted: another host took the store over with \
             clonefs mount --take-over)"
        ),
        Some(libc::ETIMEDOUT) => format!("{e} (the cluster did not answer in time)"),
        _ => e.to_string(),
    }
}

/// Why a connect failed, in the user's terms: no monitor named, no key, a key
/// refused, or a cluster that did not answer.
fn connect_failed(t: &RadosTarget, e: &ConnectError) -> String {
    let conf = t.ceph_conf.display();
    let user = format!("client.{}", t.ceph_user.as_deref().unwrap_or("admin"));
    let errno = e.err.raw_os_error();
    if e.mon_host.trim().is_empty() {
        return format!("{conf} names no monitor: set 'mon host' there ({})", e.err);
    }
    match errno {
        Some(libc::ENOENT) if e.auth.contains("cephx") => format!(
            "no key for {user}: the keyring ({}) is missing or holds no key for that user, \
             and the configuration asks for cephx; pass --ceph-keyring FILE or --ceph-user NAME",
            if e.keyring.is_empty() {
                "none set"
            } else {
                &e.keyring
            }
        ),
        Some(libc::EOPNOTSUPP) => format!(
            "the Ceph cluster of {conf} and this client share no way to authenticate: the \
             configuration asks for '{}' ('auth client required'), the cluster offers another",
            e.auth
        ),
        Some(libc::EACCES | libc::EPERM) => format!(
            "the Ceph cluster of {conf} refused {user}: a wrong key, or a user the cluster \
             does not know; check --ceph-user and the keyring ({})",
            e.keyring
        ),
        _ => format!(
            "cannot reach the Ceph cluster of {conf} within {} s: {}; check that its \
             monitors run and that 'mon host' there ({}) is right",
            TIMEOUTS.mount.as_secs(),
            why(&e.err),
            e.mon_host
        ),
    }
}

fn connect(t: &RadosTarget) -> Result<Arc<IoCtx>> {
    if !t.ceph_conf.is_file() {
        return Err(bad(
            t,
            format!(
                "no Ceph configuration at {} (pass --ceph-conf FILE)",
                t.ceph_conf.display()
            ),
        ));
    }
    crate::store::librados::load().map_err(|e| bad(t, e.to_string()))?;
    log::debug!(
        "connecting to the Ceph cluster of {}",
        t.ceph_conf.display()
    );
    let who = Credentials {
        user: t.ceph_user.as_deref(),
        keyring: t.ceph_keyring.as_deref(),
    };
    let cluster =
        Rados::connect(&t.ceph_conf, who, TIMEOUTS).map_err(|e| bad(t, connect_failed(t, &e)))?;
    match cluster.pool(&t.pool) {
        Ok(io) => Ok(Arc::new(io)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(bad(
            t,
            format!(
                "the cluster has no pool '{}' (make one with: ceph osd pool create {})",
                t.pool, t.pool
            ),
        )),
        Err(e) => Err(bad(t, format!("cannot open pool {}: {}", t.pool, why(&e)))),
    }
}

/// The writer's lease on the superblock object, and the thread that renews it.
struct Lease {
    io: Arc<IoCtx>,
    oid: CString,
    cookie: String,
    desc: String,
    state: Arc<LeaseState>,
    renewer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct LeaseState {
    /// Set when a renewal failed: the reason.
    lost: Mutex<Option<String>>,
    lost_flag: AtomicBool,
    /// When the last renewal was sent (ms since `epoch`): the lease holds until
    /// `LEASE` after that, as far as this process can know.
    renewed_ms: AtomicU64,
    epoch: Instant,
    stop: (Mutex<bool>, Condvar),
}

impl LeaseState {
    fn lose(&self, why: String) {
        let mut lost = self.lost.lock().unwrap();
        if lost.is_none() {
            log::error!("{why}: every write to the store now fails with EIO");
            *lost = Some(why);
        }
        self.lost_flag.store(true, Ordering::Release);
    }
}

/// "host NAME (pid P)" from a cookie "NAME/P/NONCE".
fn holder_name(l: &Locker) -> String {
    let mut parts = l.cookie.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(host), Some(pid)) => {
            format!("host {host} (pid {pid}, {} at {})", l.client, l.addr)
        }
        _ => format!("{} at {} (cookie {})", l.client, l.addr, l.cookie),
    }
}

impl Lease {
    fn acquire(io: &Arc<IoCtx>, t: &RadosTarget) -> Result<Lease> {
        log::debug!("taking the lease of {}", t.shown().display());
        let oid = object_name(&t.store, 0);
        let pid = std::process::id();
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let cookie = format!("{}/{pid}/{nonce:x}", t.host);
        let desc = format!("clonefs writer on host {} (pid {pid})", t.host);
        let lock = || io.lock_exclusive(&oid, LOCK, &cookie, &desc, LEASE, 0);
        let fail = |what: &str, e: &io::Error| bad(t, format!("{what}: {}", why(e)));
        let mut tries = 0;
        let mut fenced = None;
        loop {
            tries += 1;
            let e = match lock() {
                Ok(()) => break,
                Err(e) => e,
            };
            if !matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) || tries > 3 {
                return Err(fail("cannot take the store's lease", &e));
            }
            let holders = io
                .lockers(&oid, LOCK)
                .map_err(|e| fail("cannot list the lease's holder", &e))?;
            let Some(h) = holders.first() else {
                continue; // it expired in between
            };
            if !t.take_over {
                return Err(Error::Locked {
                    path: t.shown(),
                    holder: format!(
                        "{}, whose lease lasts {} s past its last renewal; if that writer is \
                         gone or stuck, mount with --take-over (it fences the holder first)",
                        holder_name(h),
                        LEASE.as_secs()
                    ),
                });
            }
            log::warn!("taking the store over from {}", holder_name(h));
            fence(io, &h.addr).map_err(|m| bad(t, m))?;
            fenced = Some(h.addr.clone());
            match io.break_lock(&oid, LOCK, h) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(fail("cannot break the old holder's lock", &e)),
            }
        }
        let mine = io
            .lockers(&oid, LOCK)
            .map_err(|e| fail("cannot read the lease back", &e))?
            .into_iter()
            .find(|l| l.cookie == cookie)
            .ok_or_else(|| bad(t, "the lease vanished as it was taken".into()))?;
        // A writer whose lease ran out without a clean close may only be paused:
        // fence it before writing anything.
        if let Ok(Some(prev)) = io.getxattr(&oid, HOLDER) {
            let prev = String::from_utf8_lossy(&prev).into_owned();
            if let Some(addr) = prev.split_whitespace().next() {
                if addr != mine.addr && fenced.as_deref() != Some(addr) {
                    log::warn!("the last writer ({prev}) did not close the store: fencing it");
                    fence(io, addr).map_err(|m| bad(t, m))?;
                }
            }
        }
        io.cluster()
            .wait_for_latest_osdmap()
            .map_err(|e| fail("cannot get the newest OSD map", &e))?;
        io.setxattr(&oid, HOLDER, format!("{} {}", mine.addr, cookie).as_bytes())
            .map_err(|e| fail("cannot record this writer", &e))?;
        let state = Arc::new(LeaseState {
            lost: Mutex::default(),
            lost_flag: AtomicBool::new(false),
            renewed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stop: (Mutex::new(false), Condvar::new()),
        });
        let lease = Lease {
            io: io.clone(),
            oid,
            cookie,
            desc,
            state,
            renewer: Mutex::default(),
        };
        lease.start_renewing();
        Ok(lease)
    }

    fn start_renewing(&self) {
        let (io, oid, cookie, desc, st) = (
            self.io.clone(),
            self.oid.clone(),
            self.cookie.clone(),
            self.desc.clone(),
            self.state.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("clonefs-lease".into())
            .spawn(move || loop {
                {
                    let stop = st.stop.0.lock().unwrap();
                    let (stop, _) = st.stop.1.wait_timeout(stop, RENEW_EVERY).unwrap();
                    if *stop {
                        return;
                    }
                }
                let sent = st.epoch.elapsed().as_millis() as u64;
                match io.lock_exclusive(&oid, LOCK, &cookie, &desc, LEASE, LOCK_MUST_RENEW) {
                    Ok(()) => st.renewed_ms.store(sent, Ordering::Release),
                    Err(e) => {
                        st.lose(format!(
                            "the store's lease could not be renewed: {}",
                            why(&e)
                        ));
                        return;
                    }
                }
            });
        match spawned {
            Ok(h) => *self.renewer.lock().unwrap() = Some(h),
            Err(e) => self
                .state
                .lose(format!("no thread to renew the lease: {e}")),
        }
    }

    /// Ok while the lease holds as far as this process can tell.
    fn check(&self) -> std::result::Result<(), String> {
        if self.state.lost_flag.load(Ordering::Acquire) {
            let why = self.state.lost.lock().unwrap().clone().unwrap_or_default();
            return Err(format!("the store's lease is lost ({why})"));
        }
        let now = self.state.epoch.elapsed().as_millis() as u64;
        let renewed = self.state.renewed_ms.load(Ordering::Acquire);
        // A margin for clocks: stop writing a second before the OSDs would let go.
        if now.saturating_sub(renewed) + 1000 > LEASE.as_millis() as u64 {
            let why = format!(
                "the lease was last renewed {} ms ago, longer than it lasts (was this process paused?)",
                now - renewed
            );
            self.state.lose(why.clone());
            return Err(format!("the store's lease is lost ({why})"));
        }
        Ok(())
    }

    fn stop_renewing(&self) {
        *self.state.stop.0.lock().unwrap() = true;
        self.state.stop.1.notify_all();
        if let Some(h) = self.renewer.lock().unwrap().take() {
            let _ = h.join();
        }
    }

    /// A clean close: the holder record goes, then the lock.
    fn release(&self) {
        self.stop_renewing();
        if self.state.lost_flag.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.io.rmxattr(&self.oid, HOLDER) {
            log::warn!("cannot clear the store's writer record: {}", why(&e));
        }
        if let Err(e) = self.io.unlock(&self.oid, LOCK, &self.cookie) {
            log::warn!("cannot release the store's lease: {}", why(&e));
        }
        *self.state.lost.lock().unwrap() = Some("the store was closed".into());
        self.state.lost_flag.store(true, Ordering::Release);
    }
}

/// Adds `addr` to the OSD blocklist, so the OSDs refuse every operation from it.
fn fence(io: &IoCtx, addr: &str) -> std::result::Result<(), String> {
    let cmd = format!(r#"{{"prefix":"osd blocklist","blocklistop":"add","addr":"{addr}"}}"#);
    match io.cluster().mon_command(&cmd) {
        Ok(status) => {
            log::info!("fenced {addr}: {}", status.trim());
            Ok(())
        }
        Err((e, status)) => Err(format!(
            "cannot fence the old writer {addr} (ceph osd blocklist add): {} {}",
            why(&e),
            status.trim()
        )),
    }
}

/// Makes the anchor's directory and file and locks it for this process.
pub fn lock_anchor(anchor: &Path) -> Result<std::fs::File> {
    if let Some(dir) = anchor.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::BadStore {
                path: dir.to_owned(),
                why: format!("cannot make the local run directory: {e}"),
            })?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(anchor)
        .map_err(|e| Error::BadStore {
            path: anchor.to_owned(),
            why: format!("cannot make the local anchor file: {e}"),
        })?;
    super::device::open_locked(anchor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_at_object_boundaries() {
        let o = OBJECT_SIZE;
        assert_eq!(split(4096, 8192), vec![(0, 4096, 0, 8192)]);
        assert_eq!(
            split(o - 4096, 8192),
            vec![(0, o - 4096, 0, 4096), (1, 0, 4096, 4096)]
        );
        let long = split(o / 2, 2 * o as usize);
        assert_eq!(
            long,
            vec![
                (0, o / 2, 0, (o / 2) as usize),
                (1, 0, (o / 2) as usize, o as usize),
                (2, 0, (o + o / 2) as usize, (o / 2) as usize)
            ]
        );
        assert!(split(0, 0).is_empty());
        assert_eq!(
            object_name("prod", 0x1f).to_str().unwrap(),
            "prod.000000000000001f"
        );
    }

    #[test]
    fn a_run_overlaps_only_its_own_bytes() {
        let run = Run {
            obj: 3,
            off: 8192,
            data: vec![0; 4096],
        };
        assert!(run.overlaps(3, 8192, 1));
        assert!(run.overlaps(3, 4096, 4097));
        assert!(run.overlaps(3, 12287, 10));
        assert!(!run.overlaps(3, 12288, 4096));
        assert!(!run.overlaps(3, 4096, 4096));
        assert!(!run.overlaps(2, 8192, 4096));
    }

    #[test]
    fn holders_are_named_by_host_and_pid() {
        let l = Locker {
            client: "client.4148".into(),
            cookie: "db1/4242/18ed06fe".into(),
            addr: "v1:10.0.0.5:0/26".into(),
        };
        assert_eq!(
            holder_name(&l),
            "host db1 (pid 4242, client.4148 at v1:10.0.0.5:0/26)"
        );
    }
}
