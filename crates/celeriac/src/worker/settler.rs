//! The hand-off of finished attempts to the broker: settlements are queued
//! and sent in batches ([`Broker::settle_many`](celeriac_core::Broker::settle_many)),
//! by the runners themselves.
//!
//! A runner whose task ended queues its settlement and goes back for its
//! next job at once, instead of waiting a whole broker round trip (on a
//! durable broker, a commit and a disk flush) with nothing to do. At most
//! [`FLUSHERS`] runners at a time *flush*: the runner that queues a
//! settlement while fewer are flushing takes the whole queue, settles it
//! in one call, and keeps going until it finds the queue empty. So every
//! queued settlement always has a flusher coming for it, batches grow with
//! the load by themselves, and an idle worker settles each attempt at once.
//!
//! The queue is bounded: a runner that finds it full while every flusher
//! is busy waits for room, so a slow broker holds the runners back instead
//! of letting settlements pile up.
//!
//! A worker that stops waits for its runners, and so for every flush.
//!
//! Settlements travel boxed (a settlement with its result is a few hundred
//! bytes, and moving it from future to future cost more than a no-op task),
//! and a batch of one is settled with
//! [`Broker::settle`](celeriac_core::Broker::settle), without building a
//! batch.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac_core::broker::DynBroker;
use celeriac_core::{Error, ErrorKind, Lease, Settlement};
use tokio::sync::Notify;

use super::WorkerStats;

/// One settlement on its way: the lease and how the attempt ended.
pub(crate) type Settle = Box<(Lease, Settlement)>;

/// How many batches may be on their way to the broker at once: one being
/// written while the one before it is flushed to disk.
pub(crate) const FLUSHERS: usize = 2;

/// Settlements waiting for a flusher, and the flushers at work.
pub(crate) struct Settler {
    broker: Arc<dyn DynBroker>,
    stats: Arc<WorkerStats>,
    state: Mutex<State>,
    /// The most settlements queued before runners wait.
    max_queued: usize,
    /// Rung when a flusher takes the queue.
    room: Notify,
}

struct State {
    queue: Vec<Settle>,
    flushing: usize,
}

impl Settler {
    /// Returns a settler for `broker` that queues at most `max_queued`
    /// settlements.
    pub(crate) fn new(
        broker: Arc<dyn DynBroker>,
        stats: Arc<WorkerStats>,
        max_queued: usize,
    ) -> Self {
        Settler {
            broker,
            stats,
            state: Mutex::new(State {
                queue: Vec::new(),
                flushing: 0,
            }),
            max_queued: max_queued.max(1),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every section below leaves the state whole before anything that
        // could panic, so a poisoned lock is taken over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a settlement. Returns once it is queued, or, when this
    /// runner becomes a flusher, once the queue is empty.
    pub(crate) async fn submit(&self, settle: Settle) {
        let mut item = Some(settle);
        let (own, batch) = loop {
            let room = self.room.notified();
            tokio::pin!(room);
            {
                let mut s = self.lock();
                if s.flushing < FLUSHERS {
                    s.flushing += 1;
                    // Taking an empty queue allocates nothing: a worker
                    // that keeps up settles each attempt on its own.
                    break (item.take(), std::mem::take(&mut s.queue));
                }
                if s.queue.len() < self.max_queued {
                    s.queue.extend(item.take());
                    return;
                }
                // Full, and every flusher busy: wait for one to take it.
                room.as_mut().enable();
            }
            room.await;
        };
        if !batch.is_empty() {
            self.room.notify_waiters();
        }
        self.flush(own, batch).await;
    }

    /// Settles `own` with `batch`, then whatever was queued meanwhile,
    /// until the queue is empty.
    async fn flush(&self, mut own: Option<Settle>, mut batch: Vec<Settle>) {
        loop {
            if batch.is_empty() {
                if let Some(own) = own.take() {
                    let (lease, settlement) = *own;
                    self.settle_one(&lease, settlement).await;
                }
            } else if batch.len() == 1 && own.is_none() {
                if let Some(one) = batch.pop() {
                    let (lease, settlement) = *one;
                    self.settle_one(&lease, settlement).await;
                }
            } else {
                let settles: Vec<(Lease, Settlement)> =
                    batch.drain(..).chain(own.take()).map(|b| *b).collect();
                self.settle(&settles).await;
            }
            {
                let mut s = self.lock();
                if s.queue.is_empty() {
                    s.flushing -= 1;
                    return;
                }
                std::mem::swap(&mut batch, &mut s.queue);
            }
            self.room.notify_waiters();
        }
    }

    /// Settles one batch; settlements that failed for a passing reason are
    /// tried again one by one.
    async fn settle(&self, batch: &[(Lease, Settlement)]) {
        let outcomes = self.broker.settle_many(batch).await;
        for ((lease, settlement), outcome) in batch.iter().zip(outcomes) {
            if let Err(e) = outcome {
                if e.kind().is_transient() {
                    tracing::warn!(task_id = %lease.id, error = %e.chain_text(), "settle failed; trying again");
                    self.settle_again(lease, settlement).await;
                } else {
                    self.failed(lease, &e);
                }
            }
        }
    }

    /// Settles one attempt, trying again if it fails for a passing reason.
    async fn settle_one(&self, lease: &Lease, settlement: Settlement) {
        // Cloned only while it may be needed again: a plain ack is cheap.
        match self.broker.settle(lease, settlement.clone()).await {
            Ok(()) => {}
            Err(e) if e.kind().is_transient() => {
                tracing::warn!(task_id = %lease.id, error = %e.chain_text(), "settle failed; trying again");
                self.settle_again(lease, &settlement).await;
            }
            Err(e) => self.failed(lease, &e),
        }
    }

    /// Tries a settlement again a few times, with a growing pause.
    async fn settle_again(&self, lease: &Lease, settlement: &Settlement) {
        let mut pause = Duration::from_millis(20);
        for attempt in 0..4 {
            tokio::time::sleep(pause).await;
            pause *= 2;
            match self.broker.settle(lease, settlement.clone()).await {
                Ok(()) => return,
                Err(e) if attempt < 3 && e.kind().is_transient() => {
                    tracing::warn!(task_id = %lease.id, error = %e.chain_text(), "settle failed; trying again");
                }
                Err(e) => return self.failed(lease, &e),
            }
        }
    }

    fn failed(&self, lease: &Lease, e: &Error) {
        if e.kind() == ErrorKind::LeaseLost {
            self.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(task_id = %lease.id, "settle refused: the lease was lost to another attempt");
        } else {
            // The lease will run out and the message be delivered again.
            tracing::error!(task_id = %lease.id, error = %e.chain_text(), "settle failed; the task will be redelivered");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use celeriac_core::{
        Broker, Capabilities, Delivery, FetchRequest, LeaseStatus, Message, TaskId,
    };
    use tokio::sync::Semaphore;

    use super::*;

    /// Records each batch it is asked to settle; every call waits for a
    /// permit first, so a test decides when the broker answers.
    struct Gated {
        gate: Arc<Semaphore>,
        batches: StdMutex<Vec<Vec<u64>>>,
    }

    impl Broker for Gated {
        fn capabilities(&self) -> Capabilities {
            Capabilities::none()
        }
        async fn publish(&self, _: Vec<Message>) -> Result<(), Error> {
            Ok(())
        }
        async fn fetch(&self, _: &FetchRequest) -> Result<Vec<Delivery>, Error> {
            Ok(Vec::new())
        }
        async fn settle(&self, lease: &Lease, _: Settlement) -> Result<(), Error> {
            self.gate.acquire().await.unwrap().forget();
            self.batches.lock().unwrap().push(vec![lease.token]);
            Ok(())
        }
        async fn settle_many(&self, settles: &[(Lease, Settlement)]) -> Vec<Result<(), Error>> {
            self.gate.acquire().await.unwrap().forget();
            let tokens = settles.iter().map(|(l, _)| l.token).collect();
            self.batches.lock().unwrap().push(tokens);
            settles.iter().map(|_| Ok(())).collect()
        }
        async fn extend(&self, leases: &[Lease], _: Duration) -> Result<Vec<LeaseStatus>, Error> {
            Ok(vec![LeaseStatus::Held; leases.len()])
        }
    }

    fn lease(token: u64) -> Lease {
        Lease {
            id: TaskId::new(),
            queue: Arc::from("q"),
            token,
            receipt: token,
        }
    }

    #[tokio::test]
    async fn settlements_queue_behind_busy_flushers_and_go_in_batches() {
        let broker = Arc::new(Gated {
            gate: Arc::new(Semaphore::new(0)),
            batches: StdMutex::default(),
        });
        let gate = broker.gate.clone();
        let settler = Arc::new(Settler::new(broker.clone(), Arc::default(), 3));
        let submit = |token: u64| {
            let settler = settler.clone();
            tokio::spawn(async move {
                settler
                    .submit(Box::new((lease(token), Settlement::Ack { result: None })))
                    .await;
            })
        };
        // The first two become the flushers, and wait on the broker.
        let flushers = [submit(1), submit(2)];
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(settler.lock().flushing, FLUSHERS);
        // The next three are queued and their runners go on at once.
        for token in 3..=5 {
            submit(token).await.unwrap();
        }
        // The queue is full: the next runner waits for room.
        let waiting = submit(6);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        gate.add_permits(100);
        for f in flushers {
            f.await.unwrap();
        }
        waiting.await.unwrap();
        let batches = broker.batches.lock().unwrap().clone();
        let mut all: Vec<u64> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            vec![1, 2, 3, 4, 5, 6],
            "each settled once: {batches:?}"
        );
        assert!(
            batches.iter().any(|b| b.len() >= 3),
            "the queued ones went together: {batches:?}"
        );
        let s = settler.lock();
        assert_eq!((s.flushing, s.queue.len()), (0, 0));
    }
}
