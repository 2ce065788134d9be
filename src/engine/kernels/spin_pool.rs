//! The threads our operators run on in a session whose graph uses them: the caller and a few
//! helper threads that wait for work by spinning a bounded moment, then sleep.
//!
//! Why not ONNX Runtime's intra-op pool: at 16 rows a decode step ran 151 of our products and
//! attentions through it (`KernelContext_ParallelFor`) and its own small nodes (layer norms,
//! split, activation) through its cost model, each ~18-32 µs for ~1 µs of work; a session that
//! uses our operators runs ONNX Runtime's nodes on one thread instead and hands our operators'
//! shares to this pool, whose hand-off is one lock and one atomic. The shares are the same, so
//! the numbers are too (every output element is computed by one thread whichever thread it is).
//! The caller also runs work of its own on it between model calls (the sampler's rows).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::int4_layout::ParallelFor;

/// How long a helper spins for the next job before it sleeps: longer than the gaps between the
/// parallel nodes of a model call and than the sampling between two decode steps (so that a
/// generation keeps its helpers awake), short enough that an idle session gives the cores back
/// at once.
const SPIN: Duration = Duration::from_millis(2);

/// The caller's thread and `threads - 1` helpers.
pub struct SpinPool {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One job at a time (a session runs its nodes one after another; this holds any other
    /// caller back until the job at hand is done).
    running: Mutex<()>,
}

/// A job's task, its lifetime erased: valid while its job is the current one (see `run`).
#[derive(Clone, Copy)]
struct TaskPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the task is `Sync`; the pointer is only dereferenced while `run` keeps it alive.
unsafe impl Send for TaskPtr {}

struct Job {
    /// Bumped by every job, and by the pool's end.
    epoch: u64,
    task: Option<TaskPtr>,
    tasks: usize,
    next: usize,
    stop: bool,
}

struct Shared {
    job: Mutex<Job>,
    /// `job.epoch`, for helpers to spin on without the lock.
    epoch: AtomicU64,
    wake: Condvar,
    sleeping: AtomicUsize,
    /// Tasks of the current job that have returned (or panicked).
    finished: AtomicUsize,
    panicked: AtomicBool,
}

impl Shared {
    fn job(&self) -> MutexGuard<'_, Job> {
        self.job.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next task of job `epoch`, when it is still current and has one left.
    fn claim(&self, epoch: u64) -> Option<(TaskPtr, usize)> {
        let mut job = self.job();
        if job.epoch != epoch || job.next >= job.tasks {
            return None;
        }
        let i = job.next;
        job.next += 1;
        job.task.map(|task| (task, i))
    }

    /// Runs the claimed tasks of job `epoch` until none is left.
    fn work(&self, epoch: u64) {
        while let Some((task, i)) = self.claim(epoch) {
            // SAFETY: a task claimed while its job is current stays alive until `finished`
            // counts it: `run` returns only after every task of its job has.
            let task = unsafe { &*task.0 };
            if catch_unwind(AssertUnwindSafe(|| task(i))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.finished.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl SpinPool {
    /// A pool of `threads` threads, the caller's included (1: no helpers; work runs on the
    /// caller). `name` names the helpers.
    pub fn new(threads: usize, name: &str) -> std::io::Result<SpinPool> {
        let shared = Arc::new(Shared {
            job: Mutex::new(Job { epoch: 0, task: None, tasks: 0, next: 0, stop: false }),
            epoch: AtomicU64::new(0),
            wake: Condvar::new(),
            sleeping: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let mut pool = SpinPool { shared, helpers: Vec::new(), running: Mutex::new(()) };
        for _ in 1..threads.max(1) {
            let shared = pool.shared.clone();
            // On failure the helpers made so far stop as the pool drops.
            pool.helpers.push(std::thread::Builder::new().name(name.to_string()).spawn(move || helper(&shared))?);
        }
        Ok(pool)
    }
}

/// A helper's life: wait for a job (spinning, then sleeping), work on it, again.
fn helper(shared: &Shared) {
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while shared.epoch.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let mut job = shared.job();
                shared.sleeping.fetch_add(1, Ordering::AcqRel);
                while job.epoch == seen {
                    job = shared.wake.wait(job).unwrap_or_else(PoisonError::into_inner);
                }
                shared.sleeping.fetch_sub(1, Ordering::AcqRel);
                break;
            }
        }
        let epoch = shared.epoch.load(Ordering::Acquire);
        if shared.job().stop {
            return;
        }
        seen = epoch;
        shared.work(epoch);
    }
}

impl ParallelFor for SpinPool {
    fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() || tasks <= 1 {
            (0..tasks).for_each(task);
            return;
        }
        let _one = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased. Helpers dereference the pointer only for tasks
        // they claim while this job is current, and this function returns (or unwinds) only
        // after `finished` has counted every task of the job, so never after `task` is gone.
        let erased: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(task) };
        let epoch = {
            let mut job = shared.job();
            job.epoch += 1;
            job.task = Some(TaskPtr(erased));
            job.tasks = tasks;
            job.next = 0;
            shared.finished.store(0, Ordering::Release);
            shared.panicked.store(false, Ordering::Release);
            shared.epoch.store(job.epoch, Ordering::Release);
            job.epoch
        };
        if shared.sleeping.load(Ordering::Acquire) > 0 {
            shared.wake.notify_all();
        }
        shared.work(epoch);
        while shared.finished.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        shared.job().task = None;
        if shared.panicked.load(Ordering::Acquire) {
            resume_unwind(Box::new("a task on the kernels' threads panicked"));
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        {
            let mut job = self.shared.job();
            job.stop = true;
            job.epoch += 1;
            self.shared.epoch.store(job.epoch, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_task_runs_once_on_any_number_of_threads_and_jobs() {
        for threads in [1, 2, 3, 5] {
            let pool = SpinPool::new(threads, "test-pool").unwrap();
            assert_eq!(pool.threads(), threads);
            for tasks in [0, 1, 2, 3, 7, 64] {
                for _ in 0..50 {
                    let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                    pool.run(tasks, &|i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{threads} threads, {tasks} tasks");
                }
            }
        }
    }

    #[test]
    fn helpers_that_slept_wake_for_the_next_job() {
        let pool = SpinPool::new(2, "test-pool").unwrap();
        let helper_ran = AtomicBool::new(false);
        let main = std::thread::current().id();
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            // The caller's task waits for the helper to take the other, so both must run.
            let took = AtomicUsize::new(0);
            pool.run(2, &|_| {
                took.fetch_add(1, Ordering::AcqRel);
                if std::thread::current().id() != main {
                    helper_ran.store(true, Ordering::Release);
                }
                while took.load(Ordering::Acquire) < 2 {
                    std::hint::spin_loop();
                }
            });
        }
        assert!(helper_ran.load(Ordering::Acquire));
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_others_finished() {
        let pool = SpinPool::new(3, "test-pool").unwrap();
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("task 5");
                }
                std::thread::sleep(Duration::from_millis(2));
                done.fetch_add(1, Ordering::AcqRel);
            })
        }));
        assert!(result.is_err());
        assert_eq!(done.load(Ordering::Acquire), 7);
        // The pool still works.
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
