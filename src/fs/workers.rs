//! Which worker reads the next request: one at a time, the others parked until
//! they are needed.
//!
//! The kernel hands a request to the worker that has waited longest in read(2).
//! With four workers waiting, a program that makes one request after another
//! (tar, `cp -a`, `rm -rf`) is served by each in turn, and each wakes on the CPU it
//! last ran on: a cross-CPU wakeup per request, the largest part of a round trip
//! on a small VM (unpacking 41,874 files: 5.3 s with four workers waiting, 3.9 s
//! with one, median of four runs each). So a worker that finishes a request while
//! another waits in the kernel parks here instead of waiting there too, and in a
//! run of requests one worker serves them all. That is right only while one
//! program makes the requests: once requests of two processes follow each other,
//! no worker parks for [`TOGETHER`] and one is unparked (four fio jobs served by
//! one worker ran at a third to a half of their IOPS). A request that may wait long
//! (fsync, a clone, ...) unparks a worker as it starts, and a watchdog unparks one
//! when every worker outside the park has been busy for [`BUSY`] (a read from a
//! cold disk, a commit). A parked worker goes back to the kernel after
//! [`PARK_MAX`] in any case, so that each sees the end of its session.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long the workers outside the park may all be busy before one is unparked.
const BUSY: Duration = Duration::from_millis(1);
/// How often the watchdog looks while no request has come for a while.
const IDLE_TICK: Duration = Duration::from_millis(50);
/// The longest a worker stays parked.
const PARK_MAX: Duration = Duration::from_millis(100);
/// How long after requests of two processes follow each other no worker parks.
const TOGETHER: Duration = Duration::from_millis(100);

pub(super) struct Workers {
    state: Mutex<State>,
    unparked: Condvar,
    epoch: Instant,
    /// When the latest request started, in microseconds since `epoch`.
    last_start: AtomicU64,
    /// The process that made it.
    last_pid: AtomicU32,
    /// Until when (microseconds since `epoch`) no worker parks: requests of
    /// different processes came one after the other, so they may come at once.
    together_until: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Workers waiting in the kernel for a request (or on their way there).
    reading: usize,
    /// Workers serving a request.
    busy: usize,
    parked: usize,
    /// Parked workers asked to go back to the kernel.
    unpark: usize,
}

/// One worker's request; dropped when its reply has gone.
pub(super) struct Turn<'a>(&'a Workers);

impl Workers {
    /// The workers of a session of `threads` threads, all in the kernel at first,
    /// and the watchdog thread (which ends when the workers are dropped).
    pub(super) fn start(threads: usize) -> Arc<Workers> {
        let workers = Arc::new(Workers {
            state: Mutex::new(State {
                reading: threads,
                ..State::default()
            }),
            unparked: Condvar::new(),
            epoch: Instant::now(),
            last_start: AtomicU64::new(0),
            last_pid: AtomicU32::new(0),
            together_until: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&workers);
        if threads > 1 {
            let spawned = std::thread::Builder::new()
                .name("clonefs-workers".into())
                .spawn(move || watch(weak));
            if let Err(e) = spawned {
                // Without the watchdog no worker parks (see `Turn::drop`).
                log::warn!("no watchdog for the FUSE workers: {e}");
                workers.state.lock().unwrap().reading = usize::MAX / 2;
            }
        }
        workers
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A worker starts a request of process `pid`; `may_wait` if it may take long.
    pub(super) fn start_request(&self, pid: u32, may_wait: bool) -> Turn<'_> {
        let now = self.now_us();
        self.last_start.store(now, Ordering::Relaxed);
        // Requests the kernel makes itself (pid 0) say nothing about programs.
        let prev = match pid {
            0 => 0,
            _ => self.last_pid.swap(pid, Ordering::Relaxed),
        };
        let other = prev != 0 && prev != pid;
        if other {
            let until = now + TOGETHER.as_micros() as u64;
            self.together_until.store(until, Ordering::Relaxed);
        }
        let mut st = self.state.lock().unwrap();
        st.reading = st.reading.saturating_sub(1);
        st.busy += 1;
        if (may_wait || other) && st.reading == 0 {
            self.unpark_one(&mut st);
        }
        Turn(self)
    }

    /// Whether requests of one process alone have come for a while.
    fn alone(&self) -> bool {
        self.now_us() >= self.together_until.load(Ordering::Relaxed)
    }

    fn unpark_one(&self, st: &mut State) {
        if st.parked > st.unpark {
            st.unpark += 1;
            self.unparked.notify_one();
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let w = self.0;
        let mut st = w.state.lock().unwrap();
        st.busy -= 1;
        if st.reading > 0 && w.alone() {
            st.parked += 1;
            let since = Instant::now();
            loop {
                let left = PARK_MAX.saturating_sub(since.elapsed());
                let (s, timeout) = w.unparked.wait_timeout(st, left).unwrap();
                st = s;
                if st.unpark > 0 {
                    st.unpark -= 1;
                    break;
                }
                if timeout.timed_out() {
                    break;
                }
            }
            st.parked -= 1;
            st.unpark = st.unpark.min(st.parked);
        }
        st.reading += 1;
    }
}

/// Unparks a worker whenever every worker outside the park has been busy for
/// [`BUSY`]; looks every [`BUSY`] while requests come, every [`IDLE_TICK`] otherwise.
fn watch(workers: Weak<Workers>) {
    loop {
        let Some(w) = workers.upgrade() else { return };
        let since_start = w
            .now_us()
            .saturating_sub(w.last_start.load(Ordering::Relaxed));
        let tick = if since_start > 100_000 {
            IDLE_TICK
        } else {
            BUSY
        };
        {
            let mut st = w.state.lock().unwrap();
            if st.reading == 0 && st.busy > 0 && since_start >= BUSY.as_micros() as u64 {
                w.unpark_one(&mut st);
            }
        }
        drop(w);
        std::thread::sleep(tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_parks_while_another_reads_and_comes_back_when_asked() {
        let w = Workers::start(2);
        let w2 = w.clone();
        // Worker A takes a request and, finishing it while B reads, parks.
        let a = std::thread::spawn(move || drop(w2.start_request(7, false)));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(w.state.lock().unwrap().parked, 1);
        // B takes a request that may wait: A is unparked at once.
        let turn = w.start_request(7, true);
        a.join().unwrap();
        let st = w.state.lock().unwrap();
        assert_eq!((st.parked, st.reading, st.busy), (0, 1, 1));
        drop(st);
        drop(turn);
    }

    #[test]
    fn no_worker_parks_while_two_programs_make_requests() {
        let w = Workers::start(2);
        let w2 = w.clone();
        drop(w.start_request(7, false));
        // A request of another process: the worker goes back to the kernel.
        let t = Instant::now();
        std::thread::spawn(move || drop(w2.start_request(8, false)))
            .join()
            .unwrap();
        assert!(t.elapsed() < PARK_MAX / 2);
        assert_eq!(w.state.lock().unwrap().reading, 2);
    }

    #[test]
    fn the_watchdog_unparks_a_worker_when_the_reader_stays_busy() {
        let w = Workers::start(2);
        let w2 = w.clone();
        let a = std::thread::spawn(move || drop(w2.start_request(7, false)));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(w.state.lock().unwrap().parked, 1);
        // B is busy with a request that was not expected to wait.
        let turn = w.start_request(7, false);
        let t = Instant::now();
        a.join().unwrap();
        assert!(
            t.elapsed() < PARK_MAX,
            "unparked by the watchdog, not the timeout"
        );
        assert_eq!(w.state.lock().unwrap().reading, 1);
        drop(turn);
    }

    #[test]
    fn a_parked_worker_goes_back_to_the_kernel_in_time() {
        let w = Workers::start(1);
        // One worker: nobody else reads, so it never parks.
        let t = Instant::now();
        drop(w.start_request(7, false));
        assert!(t.elapsed() < Duration::from_millis(10));
        let w = Workers::start(3);
        let w2 = w.clone();
        let t = Instant::now();
        std::thread::spawn(move || drop(w2.start_request(7, false)))
            .join()
            .unwrap();
        let waited = t.elapsed();
        assert!(waited >= PARK_MAX && waited < PARK_MAX * 3, "{waited:?}");
    }
}
