//! FUSE over io_uring (Linux 6.14+, `Documentation/filesystems/fuse-io-uring.rst`).
//!
//! With the classic transport every request costs a `read` and a `writev` on
//! `/dev/fuse`, and the kernel wakes whichever reader thread waits, often on
//! another CPU. Over io_uring the kernel keeps one queue per CPU: a request made on
//! CPU n goes to queue n, whose thread here is pinned to CPU n and answers with one
//! `COMMIT_AND_FETCH` that also waits for the next request. FORGET, INTERRUPT and
//! notifications stay on `/dev/fuse`, where the classic threads still read.
//!
//! Each queue is served by `threads` threads pinned to its CPU, each with an
//! io_uring of its own and one slot registered in the queue: a request header and a
//! payload buffer. The kernel hands a request only to a slot that waits, so a thread
//! that blocks (a write waiting for a commit, an fsync) holds up no other request,
//! as with /dev/fuse's reader threads. The thread builds the classic request bytes
//! from the slot (the in-header, the op header, the payload) so that fuser's parser
//! and dispatch serve it unchanged, and the reply goes back into the same slot with
//! the next `COMMIT_AND_FETCH`. A request with a payload of a page or more (a
//! WRITE's data) is not copied: its headers go into room kept just before the
//! payload, and fuser reads it where the kernel wrote it. A reply may come from
//! another thread later (a file system may answer asynchronously): that thread only
//! queues the commit and wakes the slot's thread through an eventfd, for io_uring
//! ties a command to the task that submits it (its next request arrives as that
//! task's work, and is cancelled when that task exits), so every command goes in
//! from the slot's own thread.

use std::cell::Cell;
use std::cell::UnsafeCell;
use std::io;
use std::io::IoSlice;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::info;
use log::warn;

use crate::Filesystem;
use crate::channel::Channel;
use crate::ll::fuse_abi as abi;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::SessionACL;
use crate::session::SessionEventLoop;

/// Commands of `IORING_OP_URING_CMD` on `/dev/fuse` (`enum fuse_uring_cmd`).
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Slots per ring. One waits for a request at a time, so that the kernel never
/// queues a request behind one its thread is still serving; another is registered
/// each time a request is left for a later reply (a clone that first has the kernel
/// write back dirty pages, whose WRITEs need a slot while the clone's holds its own).
const DEPTH: usize = 4;
const IN_HEADER: usize = size_of::<abi::fuse_in_header>();
const OUT_HEADER: usize = size_of::<abi::fuse_out_header>();
/// `FUSE_URING_OP_IN_OUT_SZ`: room for the op header (`fuse_write_in`, ...).
const OP_IN: usize = 128;
/// Room kept before a slot's payload for the headers of a request read in place.
const LEAD: usize = IN_HEADER + OP_IN;
/// The smallest payload read in place rather than copied.
const IN_PLACE_MIN: usize = 4096;

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
struct EntInOut {
    flags: u64,
    /// The request's unique id, to name it in the commit.
    commit_id: u64,
    /// Bytes of payload: the request's, then the reply's.
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

/// `struct fuse_uring_req_header`.
#[repr(C, align(8))]
struct ReqHeader {
    /// `fuse_in_header` in, `fuse_out_header` out.
    in_out: [u8; 128],
    op_in: [u8; OP_IN],
    ent: EntInOut,
}

/// `struct fuse_uring_cmd_req`, in the SQE's command area.
#[repr(C)]
struct CmdReq {
    flags: u64,
    commit_id: u64,
    qid: u16,
    padding: [u8; 6],
}

/// One registered request buffer. The kernel owns it from a REGISTER or
/// COMMIT_AND_FETCH until its completion; this side from then until the next commit.
struct Slot {
    header: UnsafeCell<ReqHeader>,
    /// `LEAD` bytes of room, then the payload buffer the kernel fills (u64s, so that
    /// a request read in place is aligned as fuser's parser needs). Owned by the slot
    /// (from `Box::into_raw`), and only ever reached through raw pointers, as the
    /// kernel writes it and a request read in place lends it out.
    buf: *mut [u64],
    /// Set while fuser reads a request in place in the payload: a reply given then
    /// keeps its data here until the request's bytes are given back, rather than
    /// writing over bytes the request still lends.
    held: Mutex<Held>,
    iov: UnsafeCell<[libc::iovec; 2]>,
    /// The commit id of the request awaiting its reply here; 0 when there is none,
    /// so that a second reply to one request cannot commit the slot's next one.
    awaiting: AtomicU64,
}

#[derive(Default)]
struct Held {
    lent: bool,
    /// A reply's data, kept while `lent`; empty otherwise.
    data: Vec<u8>,
}

impl Slot {
    /// The payload buffer's first byte.
    fn payload(&self) -> *mut u8 {
        // SAFETY: `buf` holds LEAD bytes before the payload.
        unsafe { self.buf.cast::<u8>().add(LEAD) }
    }

    fn payload_len(&self) -> usize {
        self.buf.len() * 8 - LEAD
    }

    /// Writes reply data into the payload, or keeps it while the request is lent.
    fn put_reply(&self, data: &[IoSlice<'_>]) {
        let mut held = self.held.lock().unwrap();
        if held.lent {
            held.data.clear();
            data.iter().for_each(|d| held.data.extend_from_slice(d));
            return;
        }
        let mut at = self.payload();
        for d in data {
            // SAFETY: the caller checked the data fits the payload, which no request
            // lends now; the slot is this reply's until its commit.
            unsafe {
                std::ptr::copy_nonoverlapping(d.as_ptr(), at, d.len());
                at = at.add(d.len());
            }
        }
    }

    /// Ends a loan of the request's bytes, writing a reply kept meanwhile.
    fn give_back(&self) {
        let mut held = self.held.lock().unwrap();
        held.lent = false;
        let kept = &mut held.data;
        // SAFETY: the reply was checked to fit the payload; the request no longer
        // borrows it, and the kernel reads it only at this thread's next enter.
        unsafe { std::ptr::copy_nonoverlapping(kept.as_ptr(), self.payload(), kept.len()) };
        kept.clear();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: `buf` came from Box::into_raw and is freed once, here; the kernel is
        // done with the slot, whose queue (and ring) ends first.
        drop(unsafe { Box::from_raw(self.buf) });
    }
}

// SAFETY: a slot's cells are touched by one thread at a time: the kernel hands the
// slot to its queue's thread with a completion, and `awaiting` passes it on to the
// one reply that commits it.
unsafe impl Sync for Slot {}
// SAFETY: as above; the raw pointers in `iov` point into the slot itself.
unsafe impl Send for Slot {}

pub(crate) struct Queue {
    qid: u16,
    ch: Channel,
    ring: IoUring<squeue::Entry128>,
    /// Serialises pushes to the submission queue (its thread and late repliers).
    push: Mutex<()>,
    slots: Box<[Slot]>,
    /// Written by a late reply: wakes the queue's thread to submit its commit.
    wake: std::os::fd::OwnedFd,
}

/// The user data of the eventfd poll, apart from the slots' indices.
const WAKE: u64 = u64::MAX;

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uring queue {}", self.qid)
    }
}

thread_local! {
    /// The ring whose thread this is (its address): its replies ride on the
    /// thread's next wait.
    static RING_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Where a reply goes when the request came over io_uring.
#[derive(Debug, Clone)]
pub(crate) struct UringSender {
    queue: Arc<Queue>,
    slot: usize,
    commit_id: u64,
}

impl UringSender {
    /// Writes the reply (`fuse_out_header`, then its data) into the slot and commits it.
    pub(crate) fn send(&self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let slot = &self.queue.slots[self.slot];
        if slot
            .awaiting
            .compare_exchange(self.commit_id, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(io::Error::other(format!(
                "a second reply to request {}",
                self.commit_id
            )));
        }
        // SAFETY: `awaiting` matched: the slot is this reply's until the commit.
        let header = unsafe { &mut *slot.header.get() };
        let (out, data) = bufs
            .split_first()
            .map_or((&[][..], &[][..]), |(o, d)| (&o[..], d));
        let len: usize = data.iter().map(|d| d.len()).sum();
        let mut result = Ok(());
        if out.len() != OUT_HEADER || len > slot.payload_len() {
            // The kernel must still hear of the request, or its caller waits forever.
            result = Err(io::Error::other(format!(
                "reply of {len} bytes does not fit"
            )));
            let h = error_header(self.commit_id);
            header.in_out[..OUT_HEADER].copy_from_slice(zerocopy::IntoBytes::as_bytes(&h));
            header.ent.payload_sz = 0;
        } else {
            header.in_out[..OUT_HEADER].copy_from_slice(out);
            slot.put_reply(data);
            header.ent.payload_sz = len as u32;
        }
        self.queue
            .push(self.slot, CMD_COMMIT_AND_FETCH, self.commit_id)?;
        if RING_THREAD.with(|r| r.get()) != Arc::as_ptr(&self.queue) as usize {
            // SAFETY: writing 8 bytes from a live u64 to an eventfd this queue owns.
            let n = unsafe {
                libc::write(self.queue.wake.as_raw_fd(), (&1u64 as *const u64).cast(), 8)
            };
            if n != 8 {
                return Err(io::Error::last_os_error());
            }
        }
        result
    }
}

impl UringSender {
    /// Answers EIO: the kernel must hear of every request, or its caller waits forever.
    fn fail(&self) {
        let h = error_header(self.commit_id);
        if let Err(e) = self.send(&[IoSlice::new(zerocopy::IntoBytes::as_bytes(&h))]) {
            error!("queue {}: {e}", self.queue.qid);
        }
    }

    pub(crate) fn channel(&self) -> crate::channel::ChannelSender {
        self.queue.ch.sender()
    }
}

impl Queue {
    fn new(qid: u16, ch: Channel, payload_size: usize) -> io::Result<Queue> {
        // One SQE per slot is ever in flight, so DEPTH entries never run short.
        let ring = IoUring::<squeue::Entry128>::builder().build(DEPTH as u32 * 2)?;
        let slots = (0..DEPTH)
            .map(|_| Slot {
                // SAFETY: all-zero bytes are a valid ReqHeader (integers and arrays).
                header: UnsafeCell::new(unsafe { std::mem::zeroed() }),
                buf: Box::into_raw(
                    vec![0u64; (LEAD + payload_size).div_ceil(8)].into_boxed_slice(),
                ),
                held: Mutex::default(),
                iov: UnsafeCell::new(
                    [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; 2],
                ),
                awaiting: AtomicU64::new(0),
            })
            .collect::<Box<[Slot]>>();
        for slot in slots.iter() {
            // SAFETY: no command is in flight yet; the slots live as long as the queue.
            unsafe {
                *slot.iov.get() = [
                    libc::iovec {
                        iov_base: slot.header.get().cast(),
                        iov_len: size_of::<ReqHeader>(),
                    },
                    libc::iovec {
                        iov_base: slot.payload().cast(),
                        iov_len: payload_size,
                    },
                ];
            }
        }
        // SAFETY: eventfd makes a new descriptor, owned here.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Queue {
            qid,
            ch,
            ring,
            push: Mutex::new(()),
            slots,
            // SAFETY: a descriptor just made, owned by nothing else.
            wake: unsafe { std::os::fd::FromRawFd::from_raw_fd(wake) },
        })
    }

    /// Arms a one-shot poll of the eventfd (after draining it).
    fn arm_wake(&self) -> io::Result<()> {
        let mut count = 0u64;
        // SAFETY: reading 8 bytes into a live u64 from a non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        let poll = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE);
        // SAFETY: a poll names no memory.
        unsafe { self.queue_entry(&poll.into()) }
    }

    /// Puts `entry` in the submission queue, for the ring thread's next enter.
    ///
    /// # Safety
    /// The memory `entry` names must outlive the command.
    unsafe fn queue_entry(&self, entry: &squeue::Entry128) -> io::Result<()> {
        let _held = self.push.lock().unwrap();
        // SAFETY: pushes are serialised by `push`; the caller vouches for the memory.
        unsafe {
            let mut sq = self.ring.submission_shared();
            sq.push(entry)
                .map_err(|_| io::Error::other("the submission queue is full"))?;
            sq.sync();
        }
        Ok(())
    }

    /// Queues a REGISTER or COMMIT_AND_FETCH of `slot` (submitted by the next enter).
    fn push(&self, slot: usize, cmd_op: u32, commit_id: u64) -> io::Result<()> {
        let req = CmdReq {
            flags: 0,
            commit_id,
            qid: self.qid,
            padding: [0; 6],
        };
        let mut cmd = [0u8; 80];
        // SAFETY: CmdReq is 24 bytes of plain integers, copied into the 80-byte area.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&req as *const CmdReq).cast::<u8>(),
                cmd.as_mut_ptr(),
                size_of::<CmdReq>(),
            );
        }
        let mut op = opcode::UringCmd80::new(types::Fd(self.ch.as_fd_raw()), cmd_op).cmd(cmd);
        if cmd_op == CMD_REGISTER {
            op = op.addr(Some(self.slots[slot].iov.get() as u64));
        }
        let mut sqe = op.build().user_data(slot as u64);
        if cmd_op == CMD_REGISTER {
            sqe = set_len(sqe, 2);
        }
        // SAFETY: the iovecs and buffers named by the entry live as long as the
        // queue, which outlives its ring.
        unsafe { self.queue_entry(&sqe) }
    }

    /// The classic request bytes of the request in `slot`: in-header, op header,
    /// payload, contiguous, as a `read` of `/dev/fuse` gives them. A payload of a
    /// page or more is lent in place (the headers go into the room before it) until
    /// `Slot::give_back`; anything else is copied into `buf`.
    fn request<'a>(&'a self, slot: usize, buf: &'a mut Vec<u64>) -> Option<&'a [u8]> {
        let slot = &self.slots[slot];
        // SAFETY: the slot's command completed: the kernel wrote it and waits.
        let header = unsafe { &*slot.header.get() };
        let in_h = &header.in_out[..IN_HEADER];
        let len = u32::from_ne_bytes(in_h[..4].try_into().unwrap()) as usize;
        let payload_sz = header.ent.payload_sz as usize;
        let op_len = len.checked_sub(IN_HEADER + payload_sz)?;
        if op_len > OP_IN || payload_sz > slot.payload_len() {
            return None;
        }
        let heads = IN_HEADER + op_len;
        if payload_sz >= IN_PLACE_MIN && heads % 8 == 0 {
            slot.held.lock().unwrap().lent = true;
            // SAFETY: the headers go into the LEAD bytes before the payload, which
            // the kernel never touches; the start stays 8-byte aligned (heads % 8 ==
            // 0), and the bytes are the slot's until its reply is committed.
            unsafe {
                let start = slot.payload().sub(heads);
                std::ptr::copy_nonoverlapping(in_h.as_ptr(), start, IN_HEADER);
                std::ptr::copy_nonoverlapping(header.op_in.as_ptr(), start.add(IN_HEADER), op_len);
                return Some(std::slice::from_raw_parts(start, len));
            }
        }
        buf.resize(len.div_ceil(8), 0);
        // SAFETY: a u64 buffer viewed as bytes, within its length.
        let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) };
        bytes[..IN_HEADER].copy_from_slice(in_h);
        bytes[IN_HEADER..heads].copy_from_slice(&header.op_in[..op_len]);
        // SAFETY: the kernel wrote payload_sz bytes of payload, checked to fit.
        bytes[heads..]
            .copy_from_slice(unsafe { std::slice::from_raw_parts(slot.payload(), payload_sz) });
        Some(bytes)
    }
}

impl Channel {
    fn as_fd_raw(&self) -> i32 {
        std::os::fd::AsFd::as_fd(self).as_raw_fd()
    }
}

/// Sets an entry's `len` (iovec count), which `UringCmd80` leaves 0.
fn set_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is the 64-byte SQE then 64 bytes of command; `len` is at
    // offset 24 of the SQE (`struct io_uring_sqe`).
    unsafe {
        let mut raw: [u8; 128] = std::mem::transmute(sqe);
        raw[24..28].copy_from_slice(&len.to_ne_bytes());
        std::mem::transmute(raw)
    }
}

/// The number of possible CPUs: the kernel makes one queue for each.
fn possible_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    n.max(1) as usize
}

/// What a queue's threads need to serve requests.
pub(crate) struct Serving<FS: Filesystem> {
    pub(crate) ch: Channel,
    pub(crate) filesystem: Arc<FilesystemHolder<FS>>,
    pub(crate) allowed: SessionACL,
    pub(crate) session_owner: nix::unistd::Uid,
}

impl<FS: Filesystem> Serving<FS> {
    fn event_loop(&self, name: String) -> SessionEventLoop<FS> {
        SessionEventLoop {
            thread_name: name,
            ch: self.ch.clone(),
            filesystem: self.filesystem.clone(),
            allowed: self.allowed,
            session_owner: self.session_owner,
        }
    }
}

/// A queue's thread, started before INIT is answered, waiting for the session to run.
pub(crate) struct Waiting<FS: Filesystem> {
    name: String,
    thread: JoinHandle<()>,
    start: mpsc::Sender<SessionEventLoop<FS>>,
}

/// The rings of every queue, `per_queue` for each CPU, and a thread for each, made
/// before INIT is answered: once the kernel is told io_uring, it holds every request
/// until each queue has a slot registered, so a ring or a thread that cannot be made
/// must mean no io_uring at all. Threads made so far end when the error drops them.
pub(crate) fn make_rings<FS: Filesystem>(
    ch: &Channel,
    payload_size: usize,
    per_queue: usize,
) -> io::Result<Vec<Waiting<FS>>> {
    let n = possible_cpus() * per_queue;
    let mut made = Vec::with_capacity(n);
    for i in 0..n {
        let qid = (i / per_queue) as u16;
        let queue = Arc::new(Queue::new(qid, ch.clone(), payload_size)?);
        let (start, go) = mpsc::channel::<SessionEventLoop<FS>>();
        let name = format!("fuser-ring-{qid}.{i}");
        let thread = thread::Builder::new().name(name.clone()).spawn(move || {
            // A session dropped before it runs ends the thread here.
            if let Ok(se) = go.recv() {
                serve(queue, se);
            }
        })?;
        made.push(Waiting {
            name,
            thread,
            start,
        });
    }
    Ok(made)
}

impl<FS: Filesystem> std::fmt::Debug for Waiting<FS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (waiting)", self.name)
    }
}

/// Sets each ring's thread serving. The threads end once the kernel ends their slots
/// (at unmount, or at once if it refuses the registration, when every request keeps
/// going through `/dev/fuse`).
pub(crate) fn start<FS: Filesystem>(
    serving: &Serving<FS>,
    rings: Vec<Waiting<FS>>,
) -> Vec<JoinHandle<()>> {
    info!("FUSE over io_uring: {} threads", rings.len());
    rings
        .into_iter()
        .map(|w| {
            // The thread waits in `recv` until this, and only ends after it.
            let _ = w.start.send(serving.event_loop(w.name));
            w.thread
        })
        .collect()
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity touch only it
    // and this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            debug!(
                "cannot pin the ring thread to CPU {cpu}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

fn serve<FS: Filesystem>(queue: Arc<Queue>, se: SessionEventLoop<FS>) {
    pin_to_cpu(queue.qid as usize);
    RING_THREAD.with(|r| r.set(Arc::as_ptr(&queue) as usize));
    let registered = queue.push(0, CMD_REGISTER, 0);
    // Slots not yet registered: the next one goes in when a reply is left for later.
    let mut spare = 1..DEPTH;
    // The slots the kernel holds or this side serves; the thread ends with the last.
    let mut live = match registered.and_then(|_| queue.arm_wake()) {
        Ok(()) => 1,
        Err(e) => {
            error!("queue {}: {e}", queue.qid);
            0
        }
    };
    let mut buf: Vec<u64> = Vec::new();
    let mut done = Vec::with_capacity(DEPTH);
    while live > 0 {
        match queue.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                error!("queue {}: io_uring_enter: {e}", queue.qid);
                break;
            }
        }
        // SAFETY: only this thread reads the completion queue.
        done.extend(unsafe { queue.ring.completion_shared() }.map(|c| (c.user_data(), c.result())));
        for (slot, res) in done.drain(..) {
            if slot == WAKE {
                // A late reply queued its commit: the next enter submits it.
                if let Err(e) = queue.arm_wake() {
                    error!("queue {}: {e}", queue.qid);
                }
                continue;
            }
            let slot = slot as usize;
            match -res {
                0 => {
                    serve_one(&queue, slot, &mut buf, &se);
                    let answered = queue.slots[slot].awaiting.load(Ordering::Acquire) == 0;
                    if !answered && let Some(next) = spare.next() {
                        match queue.push(next, CMD_REGISTER, 0) {
                            Ok(()) => live += 1,
                            Err(e) => error!("queue {}: {e}", queue.qid),
                        }
                    }
                }
                libc::EAGAIN | libc::EINTR => {
                    // Not taken yet (the connection was not initialised): again.
                    if let Err(e) = queue.push(slot, CMD_REGISTER, 0) {
                        error!("queue {}: {e}", queue.qid);
                        live -= 1;
                    }
                }
                libc::ENOTCONN | libc::ECANCELED | libc::ENODEV => live -= 1,
                e => {
                    live -= 1;
                    warn!(
                        "queue {}: the kernel ended a request slot: {}; requests go through /dev/fuse",
                        queue.qid,
                        io::Error::from_raw_os_error(e)
                    );
                }
            }
        }
    }
    debug!("queue {} ended", queue.qid);
}

fn serve_one<FS: Filesystem>(
    queue: &Arc<Queue>,
    slot: usize,
    buf: &mut Vec<u64>,
    se: &SessionEventLoop<FS>,
) {
    // SAFETY: the slot's command completed: it is ours until committed.
    let unique = unsafe { (*queue.slots[slot].header.get()).ent.commit_id };
    queue.slots[slot].awaiting.store(unique, Ordering::Release);
    let sender = UringSender {
        queue: queue.clone(),
        slot,
        commit_id: unique,
    };
    let Some(bytes) = queue.request(slot, buf) else {
        error!("queue {}: request {unique} does not parse", queue.qid);
        return sender.fail();
    };
    match RequestWithSender::new(sender.clone().into(), bytes) {
        Some(req) => req.dispatch(se),
        None => sender.fail(),
    }
    queue.slots[slot].give_back();
}

/// A reply header that fails request `unique` with EIO.
fn error_header(unique: u64) -> abi::fuse_out_header {
    abi::fuse_out_header {
        len: OUT_HEADER as u32,
        error: -libc::EIO,
        unique,
    }
}
