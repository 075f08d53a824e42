//! The hand-off from the fetch loop to the runners: fetched deliveries
//! waiting for a runner, and the runners waiting for a delivery, under one
//! lock.
//!
//! It wakes at most one idle runner at a time (the *searcher*), as Tokio's
//! scheduler wakes its worker threads: a runner that takes a job while
//! more wait, and no searcher is on its way, wakes the next one. So every
//! queued job always has a runner coming for it, while a burst of short
//! tasks is run by the runners already awake instead of costing one
//! wake-up (and often a thread unpark) per task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::lease::Held;

/// One fetched delivery, shared with the lease table: moving a pointer is
/// cheaper than moving a delivery at each step.
pub(crate) type Job = Arc<Held>;

/// The queue between the fetch loop and the runners, and the count of
/// free slots (messages the worker may still take on).
pub(crate) struct Jobs {
    state: Mutex<State>,
    /// One wake-up signal per runner, by runner number.
    bells: Box<[Notify]>,
    /// Slots neither reserved by the fetch loop nor held by a job. Only the
    /// fetch loop takes from it; runners give back one slot per job. An
    /// atomic rather than a semaphore: a semaphore's release takes its
    /// mutex, once per task, shared by every runner.
    free: AtomicUsize,
    /// The fewest free slots worth a fetch.
    refill: usize,
    /// Rung when the free slots reach `refill`.
    room: Notify,
}

struct State {
    queue: VecDeque<Job>,
    /// Runners waiting for a job, by number.
    idle: Vec<usize>,
    /// An idle runner was woken and has not looked at the queue yet.
    searching: bool,
    /// No more jobs will come; runners end once the queue is empty.
    closed: bool,
}

impl Jobs {
    /// Returns a queue for `runners` runners, numbered from 0, with
    /// `capacity` slots, that lets the fetch loop reserve slots once at
    /// least `refill` are free.
    pub(crate) fn new(runners: usize, capacity: usize, refill: usize) -> Self {
        Jobs {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                idle: Vec::with_capacity(runners),
                searching: false,
                closed: false,
            }),
            bells: (0..runners).map(|_| Notify::new()).collect(),
            free: AtomicUsize::new(capacity),
            refill: refill.clamp(1, capacity.max(1)),
            room: Notify::new(),
        }
    }

    /// Waits until at least `refill` slots are free, then reserves every
    /// free slot (at most `max`) and returns how many.
    ///
    /// Cancel safe: it reserves nothing until it returns. Only one caller
    /// (the fetch loop) may wait at a time.
    pub(crate) async fn reserve(&self, max: usize) -> usize {
        loop {
            let free = self.free.load(Ordering::Acquire);
            if free >= self.refill {
                // Runners only add, so at least `free` are still there.
                let n = free.min(max.max(1));
                self.free.fetch_sub(n, Ordering::AcqRel);
                return n;
            }
            // A ring between the check and this await is kept as a permit.
            self.room.notified().await;
        }
    }

    /// Gives back reserved slots that did not become jobs.
    pub(crate) fn unreserve(&self, n: usize) {
        self.free.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back the slot of a finished job.
    pub(crate) fn done(&self) {
        let free = self.free.fetch_add(1, Ordering::AcqRel) + 1;
        // Runners add one at a time, so they pass the mark exactly here.
        if free == self.refill {
            self.room.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every section below leaves the state whole before anything that
        // could panic, so a poisoned lock is taken over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a batch of jobs, waking an idle runner unless one is already
    /// on its way.
    pub(crate) fn push(&self, jobs: impl IntoIterator<Item = Job>) {
        let bell = {
            let mut s = self.lock();
            s.queue.extend(jobs);
            s.wake_one()
        };
        if let Some(i) = bell {
            self.ring(i);
        }
    }

    /// Stops the queue: runners take what is left, then end.
    pub(crate) fn close(&self) {
        let idle = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.idle)
        };
        for i in idle {
            self.ring(i);
        }
    }

    /// Returns the next job for runner `me`, waiting while there is none;
    /// `None` once the queue is closed and empty.
    ///
    /// Not cancel safe: a runner dropped while waiting stays listed as idle.
    pub(crate) async fn next(&self, me: usize) -> Option<Job> {
        let mut woken = false;
        loop {
            {
                let mut s = self.lock();
                if woken {
                    // Only the searcher (or everyone, on close) is woken.
                    s.searching = false;
                }
                match s.queue.pop_front() {
                    Some(job) => {
                        let bell = s.wake_one();
                        drop(s);
                        if let Some(i) = bell {
                            self.ring(i);
                        }
                        return Some(job);
                    }
                    None if s.closed => return None,
                    None => s.idle.push(me),
                }
            }
            // A ring that lands before this await is kept as a permit.
            self.bells.get(me)?.notified().await;
            woken = true;
        }
    }

    fn ring(&self, i: usize) {
        if let Some(b) = self.bells.get(i) {
            b.notify_one();
        }
    }
}

impl State {
    /// Picks an idle runner to wake when jobs wait and no searcher is on
    /// its way.
    fn wake_one(&mut self) -> Option<usize> {
        if self.searching || self.queue.is_empty() {
            return None;
        }
        let i = self.idle.pop()?;
        self.searching = true;
        Some(i)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use celeriac_core::{Delivery, Lease, Message};

    use super::super::lease::LeaseTable;
    use super::*;

    fn jobs(n: u64) -> Vec<Job> {
        let table = LeaseTable::new();
        table.insert_many((1..=n).map(|token| Delivery {
            message: Ok(Arc::new(Message::new("t", vec![], Default::default()))),
            lease: Lease {
                id: celeriac_core::TaskId::new(),
                queue: Arc::from("q"),
                token,
                receipt: token,
            },
            deliveries: 1,
        }))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_reaches_exactly_one_runner_and_close_ends_them() {
        let q = Arc::new(Jobs::new(8, 1000, 1));
        let mut runners = Vec::new();
        for me in 0..8 {
            let q = q.clone();
            runners.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(job) = q.next(me).await {
                    got.push(job.lease.token);
                    tokio::task::yield_now().await;
                }
                got
            }));
        }
        let all = jobs(1000);
        let mut it = all.into_iter();
        loop {
            let batch: Vec<Job> = it.by_ref().take(37).collect();
            if batch.is_empty() {
                break;
            }
            q.push(batch);
            tokio::task::yield_now().await;
        }
        q.close();
        let mut tokens = Vec::new();
        for r in runners {
            let got = tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .unwrap()
                .unwrap();
            tokens.extend(got);
        }
        tokens.sort_unstable();
        assert_eq!(tokens, (1..=1000).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_busy_runner_does_not_hold_up_queued_jobs() {
        let q = Arc::new(Jobs::new(3, 3, 1));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for me in 0..3 {
            let q = q.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(job) = q.next(me).await {
                    tx.send(job.lease.token).unwrap();
                    // Each runner keeps its first job forever, as a long
                    // task would.
                    std::future::pending::<()>().await;
                }
            });
        }
        // Lets every runner go idle first, so the push must wake them.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(q.lock().idle.len(), 3);
        q.push(jobs(3));
        let mut got = Vec::new();
        for _ in 0..3 {
            let t = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            got.push(t);
        }
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn reserve_waits_for_the_refill_mark_then_takes_every_free_slot() {
        let q = Arc::new(Jobs::new(1, 10, 4));
        assert_eq!(q.reserve(512).await, 10);
        q.unreserve(2);
        // Two free, below the mark of four: the fetch loop waits.
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.reserve(512).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        q.done();
        q.done();
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 4);
        // At most `max` at once.
        for _ in 0..10 {
            q.done();
        }
        assert_eq!(q.reserve(3).await, 3);
    }
}
