//! The broker's state, kept behind one mutex: a slab of message slots, the
//! queues that reference them, the dead letters, the remembered revocations
//! and the fencing-token counter. The admin operations are in [`admin`].
//!
//! Every method here is synchronous and short; the async layer in
//! [`crate::broker`] locks, calls one of them, unlocks, then wakes whoever
//! must be woken. Nothing here allocates per message except what the
//! message itself needs.

use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{DeadLetter, Error, ErrorKind, Lease, Message, TaskId};
use chrono::Utc;
use tokio::time::Instant;

use crate::hash::{FastHasher, FastMap, FastSet};
use crate::queue::{Item, Queue, Timed};

mod admin;
mod settle;

/// How many unknown revoked ids are remembered (Celery's worker keeps 50,000).
const REMEMBERED_REVOKES: usize = 50_000;

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// In its queue's ready list.
    Ready,
    /// Waiting for its eta.
    Delayed,
    /// Leased to a fetcher (its deadline is in the queue's lease heap).
    Leased,
}

/// A stored message and its delivery state.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The message; shared so deliveries clone it outside the lock.
    pub message: Arc<Message>,
    /// A hash of the task id, so a revoke scans without chasing pointers.
    id_hash: u64,
    /// Index of its queue.
    queue: u32,
    /// 0..=9, higher first.
    priority: u8,
    phase: Phase,
    /// The fencing token of the latest delivery, 0 when none holds it.
    ///
    /// An expired lease keeps its token until the message is leased again,
    /// so the late attempt may still settle while nobody else has it.
    token: u64,
    /// Deliveries so far.
    deliveries: u32,
    /// Revoked while running: reported by `extend`.
    revoked: bool,
}

/// A slab slot. `version` changes on every state change of its message,
/// which is what makes queue references go stale.
#[derive(Debug)]
struct Slot {
    version: u64,
    entry: Option<Entry>,
}

/// A message ready to be stored: decided outside the lock where possible.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The message.
    pub message: Arc<Message>,
    /// When it becomes ready, if its eta lies in the future.
    pub eta: Option<Instant>,
    /// A hash of the task id.
    pub id_hash: u64,
}

impl Pending {
    /// Wraps a message, turning a future eta into an instant.
    pub fn new(
        message: Message,
        now: Instant,
        now_utc: &mut Option<chrono::DateTime<Utc>>,
    ) -> Self {
        let eta = message.headers.eta.and_then(|eta| {
            let wall = *now_utc.get_or_insert_with(Utc::now);
            // A negative or zero delay means the eta has passed: ready now.
            let delay = (eta - wall).to_std().ok().filter(|d| !d.is_zero())?;
            Some(add(now, delay))
        });
        Pending {
            id_hash: id_hash(message.id()),
            message: Arc::new(message),
            eta,
        }
    }
}

/// One leased message, handed back by [`Store::take`].
#[derive(Debug)]
pub(crate) struct Taken {
    /// The message, shared with the delivery.
    pub message: Arc<Message>,
    /// The lease.
    pub lease: Lease,
    /// Deliveries so far, this one included.
    pub deliveries: u32,
}

/// Whom to wake after a state change, decided under the lock and acted on
/// after it is released.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Wake {
    /// Waiting fetchers (something became ready, or a timer moved earlier).
    pub fetchers: bool,
    /// Callers of `idle()` (the store just became empty).
    pub idle: bool,
}

/// Returns the hash of a task id kept beside each message.
fn id_hash(id: &TaskId) -> u64 {
    BuildHasherDefault::<FastHasher>::default().hash_one(id)
}

/// Returns `now + d`, saturating at a far but representable instant.
pub(crate) fn add(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

/// The whole broker state.
#[derive(Debug)]
pub(crate) struct Store {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Messages stored, in every phase.
    live: usize,
    queues: Vec<Queue>,
    queue_ids: FastMap<Arc<str>, u32>,
    /// Revocations of ids that were not found, oldest first.
    remembered: FastSet<TaskId>,
    remembered_order: VecDeque<TaskId>,
    dead: VecDeque<DeadLetter>,
    /// The last fencing token handed out.
    last_token: u64,
    /// Publish order, to keep delayed messages with one eta in order.
    seq: u64,
    /// Counts messages leased, to order queues by when they were last served.
    served: u64,
    max_len: Option<usize>,
    /// Scratch space for reclaimed leases, kept to avoid allocating.
    scratch: Vec<Item>,
    /// Fetchers currently waiting.
    waiters: usize,
    /// The latest instant any current waiter sleeps until: a new eta or
    /// lease deadline before it must wake them so they re-arm their timers.
    horizon: Option<Instant>,
}

impl Store {
    /// Returns an empty store.
    pub fn new(max_len: Option<usize>) -> Self {
        Store {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            queues: Vec::new(),
            queue_ids: FastMap::default(),
            remembered: FastSet::default(),
            remembered_order: VecDeque::new(),
            dead: VecDeque::new(),
            last_token: 0,
            seq: 0,
            served: 0,
            max_len,
            scratch: Vec::new(),
            waiters: 0,
            horizon: None,
        }
    }

    /// Returns true when no message is stored (ready, delayed or leased).
    pub fn is_idle(&self) -> bool {
        self.live == 0
    }

    /// Returns the index of a queue, creating it if it is new.
    pub fn queue_id(&mut self, name: &str) -> u32 {
        if let Some(&q) = self.queue_ids.get(name) {
            return q;
        }
        let name: Arc<str> = Arc::from(name);
        let q = self.queues.len() as u32;
        self.queues.push(Queue::new(name.clone()));
        self.queue_ids.insert(name, q);
        q
    }

    /// Returns the indices of queues, creating the new ones (a consumer
    /// declares the queues it reads, as with AMQP).
    pub fn queue_ids(&mut self, names: &[String]) -> Vec<u32> {
        names.iter().map(|n| self.queue_id(n)).collect()
    }

    // ----- waiting fetchers -------------------------------------------------

    /// Records a fetcher that sleeps until `until` unless woken.
    pub fn join_waiters(&mut self, until: Instant) {
        self.waiters += 1;
        self.horizon = Some(self.horizon.map_or(until, |h| h.max(until)));
    }

    /// Forgets a waiting fetcher.
    pub fn leave_waiters(&mut self) {
        self.waiters = self.waiters.saturating_sub(1);
        if self.waiters == 0 {
            self.horizon = None;
        }
    }

    /// Returns true if a waiter may sleep past `at` and must be woken.
    fn wakes_at(&self, at: Instant) -> bool {
        self.waiters > 0 && self.horizon.is_some_and(|h| at < h)
    }

    // ----- slots ------------------------------------------------------------

    /// Records a lease deadline for `item` in queue `q`, so the lease comes
    /// due (and is reclaimed) at `deadline`.
    fn push_lease(&mut self, q: u32, deadline: Instant, token: u64, item: Item) {
        let slots = &self.slots;
        self.queues[q as usize].push_lease(
            Timed {
                at: deadline,
                seq: token,
                item,
            },
            |i| Self::version_of(slots, i),
        );
    }

    fn version_of(slots: &[Slot], item: Item) -> bool {
        slots
            .get(item.slot as usize)
            .is_some_and(|s| s.version == item.version)
    }

    fn alloc(&mut self, entry: Entry) -> Item {
        self.live += 1;
        match self.free.pop() {
            Some(slot) => {
                let s = &mut self.slots[slot as usize];
                s.version += 1;
                s.entry = Some(entry);
                Item {
                    slot,
                    version: s.version,
                }
            }
            None => {
                let slot = self.slots.len() as u32;
                self.slots.push(Slot {
                    version: 0,
                    entry: Some(entry),
                });
                Item { slot, version: 0 }
            }
        }
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    /// Bumps a slot's version, invalidating every reference to it.
    fn bump(&mut self, slot: u32) -> Item {
        let s = &mut self.slots[slot as usize];
        s.version += 1;
        Item {
            slot,
            version: s.version,
        }
    }

    /// Returns the slots holding messages with this id.
    ///
    /// A scan of the slab, comparing a hash kept inline before the id
    /// itself: revoking is rare, and a task-id index would cost two hash
    /// table writes (each a likely cache miss) on every publish and settle.
    fn slots_of(&self, id: &TaskId) -> Vec<u32> {
        let hash = id_hash(id);
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let e = s.entry.as_ref()?;
                (e.id_hash == hash && e.message.id() == id).then_some(i as u32)
            })
            .collect()
    }

    // ----- insert and remove ------------------------------------------------

    /// Stores one message in queue `q`, ready or delayed. Returns whom to wake.
    fn insert(&mut self, p: Pending, q: u32, revoked: bool) -> Wake {
        let priority = p.message.priority();
        let phase = if p.eta.is_some() {
            Phase::Delayed
        } else {
            Phase::Ready
        };
        let item = self.alloc(Entry {
            message: p.message,
            id_hash: p.id_hash,
            queue: q,
            priority,
            phase,
            token: 0,
            deliveries: 0,
            revoked,
        });
        let slots = &self.slots;
        let queue = &mut self.queues[q as usize];
        match p.eta {
            None => {
                queue.ready += 1;
                queue.push_back(priority, item, |i| Self::version_of(slots, i));
                Wake {
                    fetchers: self.waiters > 0,
                    idle: false,
                }
            }
            Some(at) => {
                self.seq += 1;
                queue.delayed += 1;
                queue.push_delay(
                    Timed {
                        at,
                        seq: self.seq,
                        item,
                    },
                    |i| Self::version_of(slots, i),
                );
                Wake {
                    fetchers: self.wakes_at(at),
                    idle: false,
                }
            }
        }
    }

    /// Removes a message wherever it is, returning it so the caller can
    /// drop it after releasing the lock.
    fn remove(&mut self, slot: u32) -> Option<Entry> {
        let entry = self.slots.get_mut(slot as usize)?.entry.take()?;
        self.bump(slot);
        self.free.push(slot);
        self.live -= 1;
        let queue = &mut self.queues[entry.queue as usize];
        match entry.phase {
            Phase::Ready => queue.ready -= 1,
            Phase::Delayed => queue.delayed -= 1,
            Phase::Leased => queue.leased -= 1,
        }
        Some(entry)
    }

    /// Returns a wake-up for `idle()` callers if nothing is stored now.
    fn idle_wake(&self) -> Wake {
        Wake {
            fetchers: false,
            idle: self.live == 0,
        }
    }

    /// Makes a stored message ready again at the front of its level.
    fn make_ready_front(&mut self, slot: u32) {
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        let (q, priority, was) = (entry.queue, entry.priority, entry.phase);
        entry.phase = Phase::Ready;
        let item = self.bump(slot);
        let slots = &self.slots;
        let queue = &mut self.queues[q as usize];
        match was {
            Phase::Ready => queue.ready -= 1,
            Phase::Delayed => queue.delayed -= 1,
            Phase::Leased => queue.leased -= 1,
        }
        queue.ready += 1;
        queue.push_front(priority, item, |i| Self::version_of(slots, i));
    }

    // ----- publish ----------------------------------------------------------

    /// Publishes a batch, all or none. Drains `batch` on success and leaves
    /// its buffer to the caller, to free once the lock is released.
    ///
    /// A message whose id was revoked before it was published is discarded,
    /// as Celery's worker discards it on receipt; the discarded messages are
    /// returned so the caller can record them as revoked.
    pub fn publish(
        &mut self,
        batch: &mut Vec<Pending>,
    ) -> Result<(Wake, Vec<Arc<Message>>), Error> {
        // Resolve queues once per batch, remembering the last name since a
        // batch almost always goes to one queue.
        let mut qids = Vec::with_capacity(batch.len());
        let mut last: Option<(&str, u32)> = None;
        for p in batch.iter() {
            let name = p.message.queue();
            let q = match last {
                Some((n, q)) if n == name => q,
                _ => self.queue_id(name),
            };
            last = Some((name, q));
            qids.push(q);
        }
        if let Some(limit) = self.max_len {
            let mut counts: Vec<(u32, usize)> = Vec::new();
            for &q in &qids {
                match counts.iter_mut().find(|(c, _)| *c == q) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((q, 1)),
                }
            }
            for (q, n) in counts {
                let queue = &self.queues[q as usize];
                if queue.waiting() + n > limit {
                    return Err(Error::new(
                        ErrorKind::QueueFull,
                        format!(
                            "queue `{}` is full: it holds {} of at most {limit} messages, \
                             and {n} more were published",
                            queue.name,
                            queue.waiting()
                        ),
                    ));
                }
            }
        }
        let mut wake = Wake::default();
        let mut discarded = Vec::new();
        for (p, q) in batch.drain(..).zip(qids) {
            if !self.remembered.is_empty() && self.remembered.contains(p.message.id()) {
                discarded.push(p.message);
                continue;
            }
            wake.fetchers |= self.insert(p, q, false).fetchers;
        }
        Ok((wake, discarded))
    }

    // ----- fetch ------------------------------------------------------------

    /// Moves due delayed messages and expired leases of queue `q` to ready.
    /// Returns how many became ready.
    fn promote(&mut self, q: u32, now: Instant) -> usize {
        let mut moved = 0;
        while let Some(item) = self.queues[q as usize].pop_due_delay(now) {
            if !Self::version_of(&self.slots, item) {
                continue;
            }
            let Some(entry) = self.entry_mut(item.slot) else {
                continue;
            };
            entry.phase = Phase::Ready;
            let priority = entry.priority;
            let item = self.bump(item.slot);
            let slots = &self.slots;
            let queue = &mut self.queues[q as usize];
            queue.delayed -= 1;
            queue.ready += 1;
            queue.push_back(priority, item, |i| Self::version_of(slots, i));
            moved += 1;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(item) = self.queues[q as usize].pop_due_lease(now) {
            if Self::version_of(&self.slots, item) {
                scratch.push(item);
            }
        }
        // Reclaimed messages go back to the front, earliest deadline first,
        // since they were published before anything now waiting.
        for item in scratch.drain(..).rev() {
            self.make_ready_front(item.slot);
            moved += 1;
        }
        self.scratch = scratch;
        moved
    }

    /// Leases up to `max` ready messages from `qs`, one queue at a time in
    /// turn, starting from the queue served least recently.
    ///
    /// Ordering by last service rather than by a per-call counter keeps
    /// every queue's turn however the calls of several fetchers interleave:
    /// a single fetcher alternates its starting queue, and a queue that had
    /// nothing for a while goes first when it has something again.
    pub fn take(
        &mut self,
        qs: &[u32],
        max: usize,
        lease: Duration,
        now: Instant,
    ) -> (Vec<Taken>, Wake) {
        let mut available = 0;
        for &q in qs {
            self.promote(q, now);
            available += self.queues[q as usize].ready;
        }
        if available == 0 || qs.is_empty() {
            return (Vec::new(), Wake::default());
        }
        let deadline = add(now, lease);
        let mut order: Vec<u32> = qs
            .iter()
            .copied()
            .filter(|&q| self.queues[q as usize].ready > 0)
            .collect();
        // A stable sort: queues never served keep the order of the request.
        order.sort_by_key(|&q| self.queues[q as usize].served);
        let mut out = Vec::with_capacity(max.min(available));
        let mut progress = true;
        while progress && out.len() < max {
            progress = false;
            for &q in &order {
                if let Some(t) = self.lease_one(q, deadline) {
                    self.served += 1;
                    self.queues[q as usize].served = self.served;
                    out.push(t);
                    progress = true;
                    if out.len() == max {
                        break;
                    }
                }
            }
        }
        let left = qs.iter().any(|&q| self.queues[q as usize].ready > 0);
        let wake = Wake {
            fetchers: self.waiters > 0 && (left || self.wakes_at(deadline)),
            idle: false,
        };
        (out, wake)
    }

    fn lease_one(&mut self, q: u32, deadline: Instant) -> Option<Taken> {
        let slots = &self.slots;
        let item = self.queues[q as usize].pop_ready(|i| Self::version_of(slots, i))?;
        self.last_token += 1;
        let token = self.last_token;
        let entry = self.slots[item.slot as usize].entry.as_mut()?;
        entry.phase = Phase::Leased;
        entry.token = token;
        entry.deliveries = entry.deliveries.saturating_add(1);
        let taken_message = entry.message.clone();
        let deliveries = entry.deliveries;
        let item = self.bump(item.slot);
        let queue = &mut self.queues[q as usize];
        queue.ready -= 1;
        queue.leased += 1;
        let name = queue.name.clone();
        self.push_lease(q, deadline, token, item);
        Some(Taken {
            lease: Lease {
                id: taken_message.id().clone(),
                queue: name,
                token,
                receipt: u64::from(item.slot),
            },
            message: taken_message,
            deliveries,
        })
    }

    /// Returns the earliest instant a message of `qs` may become ready by
    /// itself (an eta or a lease deadline).
    pub fn next_due(&self, qs: &[u32]) -> Option<Instant> {
        qs.iter()
            .filter_map(|&q| self.queues[q as usize].next_due())
            .min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use celeriac_core::Revoked;

    fn pending(queue: &str) -> Pending {
        let mut m = Message::new("t", vec![], Default::default());
        m.set_queue(queue);
        Pending::new(m, Instant::now(), &mut None)
    }

    #[test]
    fn lease_heap_stays_bounded_under_many_settles() {
        let mut s = Store::new(None);
        let q = s.queue_id("q");
        for _ in 0..10_000 {
            s.publish(&mut vec![pending("q")]).unwrap();
            let (taken, _) = s.take(&[q], 1, Duration::from_secs(60), Instant::now());
            let lease = &taken[0].lease;
            let slot = s.holder(lease.receipt, lease.token).unwrap();
            s.ack(slot);
        }
        // Each settle leaves a stale lease reference behind until compaction.
        assert!(s.queues[q as usize].next_due().is_some());
        assert_eq!(s.slots.len(), 1, "slots are reused");
        assert!(s.is_idle());
    }

    #[test]
    fn revoke_finds_every_message_with_the_id() {
        let mut s = Store::new(None);
        let m = Message::new("t", vec![], Default::default());
        let id = m.id().clone();
        let now = Instant::now();
        s.publish(&mut vec![
            Pending::new(m.clone(), now, &mut None),
            Pending::new(m, now, &mut None),
        ])
        .unwrap();
        assert_eq!(s.slots_of(&id).len(), 2);
        let (outcome, removed, wake) = s.revoke(&id);
        assert_eq!(outcome, Revoked::Removed);
        assert_eq!(removed.len(), 2);
        assert!(wake.idle);
        assert!(s.slots_of(&id).is_empty());
        assert_eq!(s.revoke(&id).0, Revoked::Unknown);
    }
}
