//! The threads that run NFS and MOUNT calls (file system work must stay off the async
//! workers). Tokio's own blocking pool would do, but its idle threads wait on one condition
//! variable that is signalled while the pool's mutex is held: the woken thread blocks on that
//! mutex at once, and a server on one CPU pays two more context switches and four more futex
//! calls per call (strace of one GETATTR). Here each idle thread parks on its own, the
//! submitter takes one off the idle stack under the lock and wakes it after releasing the lock:
//! one wake-up per call. The most recently idle thread is woken first (its stack and the
//! caches are warm); threads idle for longer than the keep-alive exit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A bounded pool of threads started on demand.
#[derive(Debug, Clone)]
pub struct CallPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    max_threads: usize,
    keep_alive: Duration,
    name: &'static str,
}

struct State {
    queue: VecDeque<Job>,
    /// Parked threads, most recently idle last.
    idle: Vec<Thread>,
    threads: usize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queued", &self.queue.len())
            .field("idle", &self.idle.len())
            .field("threads", &self.threads)
            .finish()
    }
}

impl CallPool {
    /// A pool of at most `max_threads` threads named `name`, each exiting after `keep_alive`
    /// without work.
    pub fn new(name: &'static str, max_threads: usize, keep_alive: Duration) -> CallPool {
        CallPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    idle: Vec::new(),
                    threads: 0,
                }),
                max_threads: max_threads.max(1),
                keep_alive,
                name,
            }),
        }
    }

    /// Runs `job` on a pool thread: an idle one, a new one, or (all `max_threads` busy) the
    /// first to finish. A thread that cannot be started leaves the job queued for a running
    /// one; with none running, it runs on the caller's thread.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        let mut state = self.inner.lock();
        state.queue.push_back(Box::new(job));
        if let Some(thread) = state.idle.pop() {
            drop(state);
            thread.unpark();
            return;
        }
        if state.threads >= self.inner.max_threads {
            return;
        }
        state.threads += 1;
        drop(state);
        let inner = self.inner.clone();
        let started = thread::Builder::new()
            .name(self.inner.name.to_owned())
            .spawn(move || inner.work());
        if let Err(error) = started {
            let mut state = self.inner.lock();
            state.threads -= 1;
            tracing::warn!(%error, "cannot start a call thread");
            if state.threads == 0 {
                let jobs: Vec<Job> = state.queue.drain(..).collect();
                drop(state);
                jobs.into_iter().for_each(|job| job());
            }
        }
    }

    /// Threads running now (busy or idle).
    pub fn threads(&self) -> usize {
        self.inner.lock().threads
    }

    /// Threads waiting for work now.
    pub fn idle(&self) -> usize {
        self.inner.lock().idle.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock; nothing panics while it is held.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pool thread: runs queued jobs, parks when there are none, exits after the keep-alive.
    fn work(&self) {
        let me = thread::current();
        let mut state = self.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                drop(state);
                // Jobs catch their own panics; one that escapes must not cost the pool a thread
                // it still counts.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a call job panicked");
                }
                state = self.lock();
                continue;
            }
            state.idle.push(me.clone());
            drop(state);
            let deadline = Instant::now() + self.keep_alive;
            loop {
                thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
                state = self.lock();
                let still_idle = state.idle.iter().any(|thread| thread.id() == me.id());
                if !still_idle {
                    // Taken off the idle stack: a job is queued for this thread.
                    break;
                }
                if Instant::now() >= deadline {
                    state.idle.retain(|thread| thread.id() != me.id());
                    state.threads -= 1;
                    return;
                }
                // A spurious wake-up.
                drop(state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    /// Polls `condition` every millisecond for up to five seconds.
    fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "never: {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn jobs_one_after_another_reuse_one_thread() {
        let pool = CallPool::new("test-call", 8, Duration::from_secs(60));
        let (sender, receiver) = mpsc::channel();
        let mut names = std::collections::HashSet::new();
        for index in 0..200 {
            let sender = sender.clone();
            pool.execute(move || {
                sender.send((index, thread::current().id())).unwrap();
            });
            let (done, id) = receiver.recv().unwrap();
            assert_eq!(done, index);
            names.insert(id);
            // As with a client's next call, which comes after the reply went out.
            eventually("the thread is idle again", || pool.idle() == 1);
        }
        assert_eq!(names.len(), 1, "one thread at a time is enough");
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn concurrent_jobs_get_threads_up_to_the_bound_and_all_run() {
        let pool = CallPool::new("test-call", 4, Duration::from_secs(60));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        for _ in 0..40 {
            let (running, most, done, gate) =
                (running.clone(), most.clone(), done.clone(), gate.clone());
            pool.execute(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                gate.lock().unwrap().recv().unwrap();
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        eventually("four jobs run at once", || {
            running.load(Ordering::SeqCst) == 4
        });
        for _ in 0..40 {
            release.send(()).unwrap();
        }
        eventually("every job ran", || done.load(Ordering::SeqCst) == 40);
        assert_eq!(most.load(Ordering::SeqCst), 4);
        assert_eq!(pool.threads(), 4);
    }

    #[test]
    fn idle_threads_exit_after_the_keep_alive_and_come_back() {
        let pool = CallPool::new("test-call", 4, Duration::from_millis(30));
        let (sender, receiver) = mpsc::channel();
        for _ in 0..3 {
            let sender = sender.clone();
            pool.execute(move || {
                thread::sleep(Duration::from_millis(5));
                sender.send(()).unwrap();
            });
        }
        for _ in 0..3 {
            receiver.recv().unwrap();
        }
        eventually("idle threads exit", || pool.threads() == 0);
        pool.execute(move || sender.send(()).unwrap());
        receiver.recv().unwrap();
    }
}
