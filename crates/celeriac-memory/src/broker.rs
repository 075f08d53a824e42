//! The [`Broker`] implementation: each call locks the store once, does its
//! work in a short critical section, unlocks, then wakes whoever the change
//! concerns.
//!
//! A fetch that finds nothing waits on the shared [`Notify`](tokio::sync::Notify)
//! and on a timer set to the earliest eta or lease deadline of its queues.
//! It registers itself as a waiter while holding the lock, and creates its
//! `Notified` future before taking the lock, so a publish that lands after
//! its check always wakes it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{
    Broker, Capabilities, DeadLetter, Delivery, Error, ErrorKind, FetchRequest, Lease, LeaseStatus,
    Message, QueueStats, Revoked, Settlement, TaskId, TaskResult,
};
use tokio::time::Instant;

use crate::store::{add, Entry, Pending, Store, Taken, Wake};
use crate::{MemoryBroker, Shared};

impl Broker for MemoryBroker {
    fn capabilities(&self) -> Capabilities {
        // Everything but durability: the state lives in this process.
        let mut c = Capabilities::all();
        c.durable = false;
        c
    }

    /// Publishes messages to their queues: ready at once, or delayed until
    /// a future `eta`. All or none: with a maximum queue length set, a batch
    /// that would push any queue over it fails whole with `QueueFull`.
    async fn publish(&self, messages: Vec<Message>) -> Result<(), Error> {
        publish(&self.shared, messages)
    }

    /// Leases up to `req.max` ready messages, taking round-robin across
    /// `req.queues` from a starting queue that moves on every call; waits up
    /// to `req.wait` for one when none is ready.
    ///
    /// Needs a Tokio runtime with timers when it has to wait.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: messages are leased in the same poll that returns them,
    /// so a dropped fetch has leased nothing.
    fn fetch(
        &self,
        req: &FetchRequest,
    ) -> impl Future<Output = Result<Vec<Delivery>, Error>> + Send {
        let queues = req.queues.clone();
        let (max, lease, wait) = (req.max, req.lease, req.wait);
        async move { Ok(fetch(&self.shared, queues, max, lease, wait).await) }
    }

    async fn settle(&self, lease: &Lease, settlement: Settlement) -> Result<(), Error> {
        settle(&self.shared, lease, settlement)
    }

    /// Settles a batch under one lock of the store (and at most one of the
    /// results), each settlement fenced by its own token.
    async fn settle_many(&self, settles: &[(Lease, Settlement)]) -> Vec<Result<(), Error>> {
        settle_many(&self.shared, settles)
    }

    fn extend(
        &self,
        leases: &[Lease],
        by: Duration,
    ) -> impl Future<Output = Result<Vec<LeaseStatus>, Error>> + Send {
        let held: Vec<(u64, u64)> = leases.iter().map(|l| (l.receipt, l.token)).collect();
        async move {
            let (statuses, wake) = self.shared.store().extend(&held, by, Instant::now());
            self.shared.wake(wake);
            Ok(statuses)
        }
    }

    /// Revokes a task: removes it if waiting, flags it if leased (the next
    /// `extend` reports `Revoked`), and otherwise remembers the id (the
    /// latest 50,000), so a message with that id published later is
    /// discarded on arrival, with a `REVOKED` result stored for it.
    ///
    /// It scans the stored messages, comparing an inline hash of each id:
    /// an admin operation, kept off the publish and settle path.
    fn revoke(&self, id: &TaskId) -> impl Future<Output = Result<Revoked, Error>> + Send {
        let id = id.clone();
        async move {
            let (outcome, removed, wake) = self.shared.store().revoke(&id);
            self.shared.wake(wake);
            drop(removed);
            Ok(outcome)
        }
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        let (stats, wake) = self.shared.store().stats(Instant::now());
        self.shared.wake(wake);
        Ok(stats)
    }

    fn purge(&self, queue: &str) -> impl Future<Output = Result<u64, Error>> + Send {
        let queue = queue.to_owned();
        async move {
            let (count, removed, wake) = self.shared.store().purge(&queue, Instant::now());
            self.shared.wake(wake);
            drop(removed);
            Ok(count)
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        Ok(self.shared.store().dead_letters(limit))
    }

    fn replay_dead_letters(
        &self,
        ids: Option<&[TaskId]>,
    ) -> impl Future<Output = Result<u64, Error>> + Send {
        let ids: Option<Vec<TaskId>> = ids.map(<[TaskId]>::to_vec);
        async move {
            let replayed = self.shared.store().replay(ids.as_deref(), Instant::now());
            let (count, wake, discarded) = replayed?;
            self.shared.wake(wake);
            record_revoked(&self.shared, discarded);
            Ok(count)
        }
    }

    async fn purge_dead_letters(&self) -> Result<u64, Error> {
        Ok(self.shared.store().purge_dead_letters())
    }
}

fn publish(shared: &Shared, messages: Vec<Message>) -> Result<(), Error> {
    if messages.is_empty() {
        return Ok(());
    }
    // Boxing each message and reading its eta happen before the lock.
    let now = Instant::now();
    let mut now_utc = None;
    // A fresh vector, not one collected in place: the messages' own
    // buffer (large) is freed here, not under the lock.
    let mut batch = Vec::with_capacity(messages.len());
    for m in messages {
        batch.push(Pending::new(m, now, &mut now_utc));
    }
    let published = shared.store().publish(&mut batch);
    let (wake, discarded) = published?;
    shared.wake(wake);
    drop(batch);
    record_revoked(shared, discarded);
    Ok(())
}

/// Stores a `REVOKED` result for each message discarded because its id was
/// revoked before it arrived, as Celery's worker does when it discards one,
/// so whoever waits on the result learns its fate.
fn record_revoked(shared: &Shared, discarded: Vec<Arc<Message>>) {
    if discarded.is_empty() {
        return;
    }
    let now = Instant::now();
    let waiters: Vec<_> = {
        let mut results = shared.results();
        discarded
            .iter()
            .filter(|m| !m.headers.ignore_result)
            .filter_map(|m| results.insert(TaskResult::revoked(m.id().clone(), "revoked"), now))
            .collect()
    };
    for n in waiters {
        n.notify_waiters();
    }
}

/// A fetcher's registration as a waiter; undone on drop, so a fetch that
/// is cancelled while waiting leaves nothing behind.
struct Waiting<'a> {
    shared: &'a Shared,
    joined: bool,
}

impl Waiting<'_> {
    fn join(&mut self, store: &mut Store, until: Instant) {
        store.join_waiters(until);
        self.joined = true;
    }

    fn leave(&mut self, store: &mut Store) {
        if self.joined {
            store.leave_waiters();
            self.joined = false;
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.joined {
            self.shared.store().leave_waiters();
        }
    }
}

async fn fetch(
    shared: &Shared,
    queues: Arc<[String]>,
    max: usize,
    lease: Duration,
    wait: Duration,
) -> Vec<Delivery> {
    if max == 0 || queues.is_empty() {
        return Vec::new();
    }
    let until = add(Instant::now(), wait);
    let mut waiting = Waiting {
        shared,
        joined: false,
    };
    let mut qs = Vec::new();
    loop {
        // Created before the check below: `notify_waiters` wakes every
        // `Notified` that exists when it is called, polled or not.
        let notified = shared.fetchers.notified();
        tokio::pin!(notified);
        let target = {
            let mut store = shared.store();
            waiting.leave(&mut store);
            if qs.is_empty() {
                qs = store.queue_ids(&queues);
            }
            let now = Instant::now();
            let (taken, wake) = store.take(&qs, max, lease, now);
            if !taken.is_empty() {
                drop(store);
                shared.wake(wake);
                return deliveries(taken);
            }
            if now >= until {
                return Vec::new();
            }
            let target = store.next_due(&qs).map_or(until, |due| due.min(until));
            waiting.join(&mut store, target);
            target
        };
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(target) => {}
        }
    }
}

/// Turns leased messages into deliveries; each shares the stored message.
fn deliveries(taken: Vec<Taken>) -> Vec<Delivery> {
    taken
        .into_iter()
        .map(|t| Delivery {
            message: Ok(t.message),
            lease: t.lease,
            deliveries: t.deliveries,
        })
        .collect()
}

/// What a settlement does, prepared before the lock is taken.
enum Op {
    Ack,
    Retry(Pending),
    Release,
    DeadLetter(String),
}

/// Splits a settlement into what it does to the message and the result it
/// stores. `now` is read only when something needs the clock (a plain ack,
/// the common case, does not).
fn prepare(
    settlement: Settlement,
    now: &mut impl FnMut() -> Instant,
) -> Result<(Op, Option<TaskResult>), Error> {
    Ok(match settlement {
        Settlement::Ack { result } => (Op::Ack, result),
        Settlement::Retry { message, result } => {
            (Op::Retry(Pending::new(*message, now(), &mut None)), result)
        }
        Settlement::Release => (Op::Release, None),
        Settlement::DeadLetter { reason, result } => (Op::DeadLetter(reason), result),
        _ => return Err(Error::unsupported("this kind of settlement")),
    })
}

/// Applies one prepared settlement under the store lock, if `lease` still
/// holds its message. Returns the removed entry, to drop unlocked.
fn apply(store: &mut Store, lease: &Lease, op: Op) -> Result<(Option<Entry>, Wake), Error> {
    let Some(slot) = store.holder(lease.receipt, lease.token) else {
        return Err(Error::new(
            ErrorKind::LeaseLost,
            format!(
                "the lease on task {} (token {}) is no longer held",
                lease.id, lease.token
            ),
        ));
    };
    Ok(match op {
        Op::Ack => store.ack(slot),
        Op::Retry(next) => store.retry(slot, next),
        Op::Release => (None, store.release(slot)),
        Op::DeadLetter(reason) => store.dead_letter(slot, reason)?,
    })
}

fn settle(shared: &Shared, lease: &Lease, settlement: Settlement) -> Result<(), Error> {
    let mut now = None;
    let mut now = || *now.get_or_insert_with(Instant::now);
    let (op, result) = prepare(settlement, &mut now)?;
    let mut store = shared.store();
    let (removed, wake) = apply(&mut store, lease, op)?;
    // The result is stored before the store lock is released, so whoever
    // sees the message gone (or the broker idle) also sees its result.
    let result_waiter = result.and_then(|r| shared.results().insert(r, now()));
    drop(store);
    shared.wake(wake);
    if let Some(n) = result_waiter {
        n.notify_waiters();
    }
    drop(removed);
    Ok(())
}

fn settle_many(shared: &Shared, settles: &[(Lease, Settlement)]) -> Vec<Result<(), Error>> {
    let mut now = None;
    let mut now = || *now.get_or_insert_with(Instant::now);
    // Cloned because the batch is borrowed: a plain ack clones for free.
    let prepared: Vec<_> = settles
        .iter()
        .map(|(_, s)| prepare(s.clone(), &mut now))
        .collect();
    let mut out = Vec::with_capacity(settles.len());
    let mut removed = Vec::with_capacity(settles.len());
    let mut waiters = Vec::new();
    let mut wake = Wake::default();
    {
        let mut store = shared.store();
        let mut results = None;
        for ((lease, _), p) in settles.iter().zip(prepared) {
            let applied = p.and_then(|(op, result)| {
                let (entry, w) = apply(&mut store, lease, op)?;
                Ok((entry, w, result))
            });
            match applied {
                Ok((entry, w, result)) => {
                    wake.fetchers |= w.fetchers;
                    wake.idle |= w.idle;
                    removed.extend(entry);
                    if let Some(r) = result {
                        // Stored under the store lock, as in `settle`.
                        let results = results.get_or_insert_with(|| shared.results());
                        waiters.extend(results.insert(r, now()));
                    }
                    out.push(Ok(()));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        // A later settlement of the batch may have stored a message again.
        wake.idle &= store.is_idle();
    }
    shared.wake(wake);
    for n in waiters {
        n.notify_waiters();
    }
    drop(removed);
    out
}
