//! One named queue: ready messages by priority, delayed messages by eta and
//! leased messages by deadline.
//!
//! The queue holds only references into the store's slots: `(slot, version)`
//! pairs. A slot's version changes on every state change of its message, so
//! an entry whose version no longer matches is stale and is skipped when it
//! surfaces. That makes removal from the middle (settle, revoke) O(1): the
//! stale entry is left behind and compacted away once stale entries
//! outnumber live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

/// The number of priority levels, 0 (lowest) to 9 (highest).
pub(crate) const LEVELS: usize = 10;

/// Stale entries tolerated before a compaction, on top of twice the live ones.
const SLACK: usize = 64;

/// A reference to a slot as it was when the reference was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Item {
    /// The slot index in the store.
    pub slot: u32,
    /// The slot's version when this reference was made.
    pub version: u64,
}

/// A reference due at an instant; `seq` orders equal instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timed {
    /// When it is due.
    pub at: Instant,
    /// Publish order (delays) or fencing token (leases), for a stable order.
    pub seq: u64,
    /// The slot and version.
    pub item: Item,
}

/// A queue's messages, by state. The counters count live messages only.
#[derive(Debug)]
pub(crate) struct Queue {
    /// The queue name, shared with every lease handed out.
    pub name: Arc<str>,
    /// Ready messages, one FIFO per priority level.
    levels: [VecDeque<Item>; LEVELS],
    /// Bit `p` is set when `levels[p]` may be non-empty.
    mask: u16,
    /// Entries in `levels`, stale ones included.
    items: usize,
    /// Delayed messages, earliest eta first.
    delays: BinaryHeap<Reverse<Timed>>,
    /// Leased messages, earliest deadline first.
    leases: BinaryHeap<Reverse<Timed>>,
    /// Live ready messages.
    pub ready: usize,
    /// Live delayed messages.
    pub delayed: usize,
    /// Live leased messages.
    pub leased: usize,
    /// When a message was last leased from this queue (the store's count of
    /// leases at that moment); 0 if never.
    pub served: u64,
}

impl Queue {
    /// Returns an empty queue.
    pub fn new(name: Arc<str>) -> Self {
        Queue {
            name,
            levels: Default::default(),
            mask: 0,
            items: 0,
            delays: BinaryHeap::new(),
            leases: BinaryHeap::new(),
            ready: 0,
            delayed: 0,
            leased: 0,
            served: 0,
        }
    }

    /// Returns the messages waiting to run (ready and delayed).
    pub fn waiting(&self) -> usize {
        self.ready + self.delayed
    }

    /// Appends a ready reference at the back of its priority level.
    pub fn push_back(&mut self, priority: u8, item: Item, valid: impl Fn(Item) -> bool) {
        let p = usize::from(priority).min(LEVELS - 1);
        self.levels[p].push_back(item);
        self.mask |= 1 << p;
        self.items += 1;
        self.compact_ready(valid);
    }

    /// Puts a ready reference at the front of its priority level.
    pub fn push_front(&mut self, priority: u8, item: Item, valid: impl Fn(Item) -> bool) {
        let p = usize::from(priority).min(LEVELS - 1);
        self.levels[p].push_front(item);
        self.mask |= 1 << p;
        self.items += 1;
        self.compact_ready(valid);
    }

    /// Pops the first valid ready reference, highest priority first.
    ///
    /// Stale references met on the way are dropped.
    pub fn pop_ready(&mut self, valid: impl Fn(Item) -> bool) -> Option<Item> {
        while self.mask != 0 {
            let p = (15 - self.mask.leading_zeros()) as usize;
            let level = &mut self.levels[p];
            match level.pop_front() {
                Some(item) => {
                    self.items -= 1;
                    if level.is_empty() {
                        self.mask &= !(1 << p);
                    }
                    if valid(item) {
                        return Some(item);
                    }
                }
                None => self.mask &= !(1 << p),
            }
        }
        None
    }

    /// Takes every ready reference out (stale ones included), for a purge.
    pub fn drain_ready(&mut self) -> Vec<Item> {
        let mut out = Vec::with_capacity(self.items);
        for level in &mut self.levels {
            out.extend(level.drain(..));
        }
        self.mask = 0;
        self.items = 0;
        out
    }

    /// Schedules a delayed reference.
    pub fn push_delay(&mut self, timed: Timed, valid: impl Fn(Item) -> bool) {
        self.delays.push(Reverse(timed));
        if self.delays.len() > 2 * self.delayed + SLACK {
            self.delays.retain(|Reverse(t)| valid(t.item));
        }
    }

    /// Pops the earliest delayed reference due at `now`, stale or not.
    pub fn pop_due_delay(&mut self, now: Instant) -> Option<Item> {
        match self.delays.peek() {
            Some(Reverse(t)) if t.at <= now => self.delays.pop().map(|Reverse(t)| t.item),
            _ => None,
        }
    }

    /// Takes every delayed reference out (stale ones included), for a purge.
    pub fn drain_delays(&mut self) -> Vec<Item> {
        self.delays.drain().map(|Reverse(t)| t.item).collect()
    }

    /// Records a lease deadline.
    pub fn push_lease(&mut self, timed: Timed, valid: impl Fn(Item) -> bool) {
        self.leases.push(Reverse(timed));
        if self.leases.len() > 2 * self.leased + SLACK {
            self.leases.retain(|Reverse(t)| valid(t.item));
        }
    }

    /// Pops the earliest lease deadline passed at `now`, stale or not.
    pub fn pop_due_lease(&mut self, now: Instant) -> Option<Item> {
        match self.leases.peek() {
            Some(Reverse(t)) if t.at <= now => self.leases.pop().map(|Reverse(t)| t.item),
            _ => None,
        }
    }

    /// Returns the earliest eta or lease deadline recorded, possibly stale:
    /// the next instant something may become ready by itself.
    pub fn next_due(&self) -> Option<Instant> {
        let d = self.delays.peek().map(|Reverse(t)| t.at);
        let l = self.leases.peek().map(|Reverse(t)| t.at);
        match (d, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn compact_ready(&mut self, valid: impl Fn(Item) -> bool) {
        // Stale references come only from revokes and settles of reclaimed
        // leases, so this runs rarely; amortised over the pushes that grew
        // the slack it costs O(1) each.
        if self.items > 2 * self.ready + SLACK {
            self.mask = 0;
            self.items = 0;
            for (p, level) in self.levels.iter_mut().enumerate() {
                level.retain(|&i| valid(i));
                if !level.is_empty() {
                    self.mask |= 1 << p;
                    self.items += level.len();
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn item(slot: u32) -> Item {
        Item { slot, version: 0 }
    }

    #[test]
    fn pops_highest_priority_first_then_fifo() {
        let mut q = Queue::new(Arc::from("q"));
        q.push_back(0, item(1), |_| true);
        q.push_back(5, item(2), |_| true);
        q.push_back(5, item(3), |_| true);
        q.push_back(9, item(4), |_| true);
        q.push_front(5, item(5), |_| true);
        let order: Vec<u32> =
            std::iter::from_fn(|| q.pop_ready(|_| true).map(|i| i.slot)).collect();
        assert_eq!(order, vec![4, 5, 2, 3, 1]);
    }

    #[test]
    fn skips_stale_references() {
        let mut q = Queue::new(Arc::from("q"));
        q.push_back(0, item(1), |_| true);
        q.push_back(0, item(2), |_| true);
        assert_eq!(q.pop_ready(|i| i.slot != 1).map(|i| i.slot), Some(2));
        assert_eq!(q.pop_ready(|_| true), None);
    }

    #[test]
    fn compacts_when_stale_references_pile_up() {
        let mut q = Queue::new(Arc::from("q"));
        for s in 0..1000 {
            q.push_back(3, item(s), |i| i.slot % 100 == 0);
        }
        // Only every hundredth reference is live; compaction keeps the
        // levels near the live count however many stale ones were pushed.
        q.ready = 10;
        q.push_back(3, item(2000), |i| i.slot % 100 == 0);
        assert!(q.items <= 2 * q.ready + SLACK, "{} items", q.items);
    }
}
