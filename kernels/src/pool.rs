//! A small fork-join thread pool tuned for the engine's many short parallel
//! sections (hundreds per generated token).
//!
//! Workers spin briefly between jobs (a dispatch costs about a microsecond
//! while they spin) and then park, so an idle engine uses no CPU. The calling
//! thread takes part in every job, so a pool of `n` threads starts `n - 1`
//! workers.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(300);

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// Incremented once per job; workers watch it.
    epoch: AtomicUsize,
    /// The job of the current epoch, valid while `active > 0`.
    job: UnsafeCell<Option<*const Task>>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that have not yet finished the current epoch.
    active: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleeping: Vec<AtomicBool>,
}

// SAFETY: `job` is written only by the dispatching thread while no worker can
// read it (all workers finished the previous epoch), and read by workers only
// between the epoch increment and their decrement of `active`.
unsafe impl Sync for Shared {}
// SAFETY: see above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fork-join pool; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
    n: usize,
    dispatch: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.n)
            .finish()
    }
}

impl ThreadPool {
    /// A pool that runs jobs on `threads` threads (the caller included).
    /// `0` means the number of available cores.
    pub fn new(threads: usize) -> Self {
        let n = if threads == 0 {
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleeping: (1..n).map(|_| AtomicBool::new(false)).collect(),
        });
        let mut handles = Vec::new();
        for w in 0..n.saturating_sub(1) {
            let shared = shared.clone();
            let h = thread::Builder::new()
                .name(format!("palisade-kernel-{w}"))
                .spawn(move || worker(shared, w))
                .expect("spawning a kernel worker thread");
            handles.push(h);
        }
        let threads = handles.iter().map(|h| h.thread().clone()).collect();
        ThreadPool {
            shared,
            threads,
            handles,
            n,
            dispatch: Mutex::new(()),
        }
    }

    /// Number of threads taking part in a job.
    pub fn threads(&self) -> usize {
        self.n
    }

    /// Runs `f(i)` for every `i` in `0..tasks`, spread over the pool, and
    /// returns when all calls have returned. Panics if a task panicked.
    pub fn run<'a>(&self, tasks: usize, f: &'a (dyn Fn(usize) + Sync + 'a)) {
        if tasks == 0 {
            return;
        }
        if self.n == 1 || tasks == 1 {
            (0..tasks).for_each(f);
            return;
        }
        let _guard = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: only the job pointer's lifetime is erased; `run` does not
        // return until every worker has stopped using it (`active == 0`).
        let ptr: *const Task =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Task>(f) };
        // SAFETY: no worker reads `job` now: all finished the previous epoch.
        unsafe { *s.job.get() = Some(ptr) };
        s.tasks.store(tasks, SeqCst);
        s.next.store(0, SeqCst);
        s.active.store(self.n - 1, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        for (i, t) in self.threads.iter().enumerate() {
            if s.sleeping[i].load(SeqCst) {
                t.unpark();
            }
        }
        let r = catch_unwind(AssertUnwindSafe(|| run_tasks(s, f)));
        while s.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: all workers are done with this epoch.
        unsafe { *s.job.get() = None };
        if r.is_err() || s.panicked.swap(false, SeqCst) {
            panic!("a kernel task panicked");
        }
    }
}

fn run_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    let total = s.tasks.load(SeqCst);
    loop {
        let i = s.next.fetch_add(1, SeqCst);
        if i >= total {
            break;
        }
        f(i);
    }
}

fn worker(s: Arc<Shared>, me: usize) {
    let mut seen = 0usize;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(SeqCst) {
                return;
            }
            if s.epoch.load(SeqCst) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 && start.elapsed() > SPIN {
                s.sleeping[me].store(true, SeqCst);
                if s.epoch.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
                    thread::park();
                }
                s.sleeping[me].store(false, SeqCst);
            } else {
                std::hint::spin_loop();
            }
        }
        seen = s.epoch.load(SeqCst);
        // SAFETY: the dispatcher set `job` before bumping the epoch and keeps
        // it alive until `active` reaches zero, which we only signal below.
        let job = unsafe { *s.job.get() };
        if let Some(ptr) = job {
            // SAFETY: as above.
            let f = unsafe { &*ptr };
            if catch_unwind(AssertUnwindSafe(|| run_tasks(&s, f))).is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A raw pointer that tasks use to write disjoint parts of one output
/// buffer.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);

impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    #[inline]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}
// SAFETY: users write disjoint indices only (each task owns its range).
unsafe impl<T> Sync for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Send for SyncPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_task_once() {
        let pool = ThreadPool::new(3);
        for round in 0..200 {
            let hits: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            pool.run(37, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
            if round % 50 == 0 {
                thread::sleep(Duration::from_millis(2)); // let workers park
            }
        }
    }

    #[test]
    fn task_panic_is_reported_and_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(8, &|i| assert!(i != 5))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(8, &|_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 8);
    }
}
