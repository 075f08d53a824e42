//! Stored task results with an expiry, and the waiters woken when one is
//! stored.
//!
//! Results expire a fixed time after they are stored, so the order in which
//! they were stored is also the order in which they expire: a FIFO of
//! `(expiry, id)` sweeps them in O(1) per store, with no scan.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{TaskId, TaskResult};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::hash::FastMap;
use crate::store::add;

#[derive(Debug)]
struct Stored {
    result: TaskResult,
    expires: Instant,
}

/// The result store: results by id, their expiry order, and the waiters.
#[derive(Debug)]
pub(crate) struct Results {
    expiry: Duration,
    map: FastMap<TaskId, Stored>,
    /// Store order, which is expiry order; entries of results since
    /// replaced or forgotten are skipped when they come up.
    order: VecDeque<(Instant, TaskId)>,
    /// One notifier per id somebody waits on, with the number of waiters.
    waiters: FastMap<TaskId, (Arc<Notify>, usize)>,
}

impl Results {
    /// Returns an empty store whose results live for `expiry`.
    pub fn new(expiry: Duration) -> Self {
        Results {
            expiry,
            map: FastMap::default(),
            order: VecDeque::new(),
            waiters: FastMap::default(),
        }
    }

    /// Stores (or replaces) a result. Returns the notifier to wake, if
    /// somebody waits on this id; wake it after releasing the lock.
    pub fn insert(&mut self, result: TaskResult, now: Instant) -> Option<Arc<Notify>> {
        self.sweep(now);
        let expires = add(now, self.expiry);
        let id = result.task_id.clone();
        self.order.push_back((expires, id.clone()));
        let waiter = self.waiters.get(&id).map(|(n, _)| n.clone());
        self.map.insert(id, Stored { result, expires });
        waiter
    }

    /// Returns the result, if stored and not expired.
    pub fn get(&mut self, id: &TaskId, now: Instant) -> Option<TaskResult> {
        match self.map.get(id) {
            Some(s) if s.expires > now => Some(s.result.clone()),
            Some(_) => {
                self.map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Deletes a result.
    pub fn remove(&mut self, id: &TaskId) {
        self.map.remove(id);
    }

    /// Registers a waiter on `id`, returning the notifier it listens to.
    pub fn register(&mut self, id: &TaskId) -> Arc<Notify> {
        let (n, count) = self
            .waiters
            .entry(id.clone())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        *count += 1;
        n.clone()
    }

    /// Unregisters a waiter on `id`, dropping the notifier with the last one.
    pub fn unregister(&mut self, id: &TaskId) {
        if let Some((_, count)) = self.waiters.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                self.waiters.remove(id);
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            if let Some((at, id)) = self.order.pop_front() {
                // Only the entry of the latest store of this id expires it.
                if self.map.get(&id).is_some_and(|s| s.expires == at) {
                    self.map.remove(&id);
                }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn expired_results_are_swept_on_store() {
        let mut r = Results::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..100 {
            r.insert(
                TaskResult::success(TaskId::from(format!("a{i}")), 1.into()),
                t0,
            );
        }
        assert_eq!(r.len(), 100);
        let later = t0 + Duration::from_secs(11);
        r.insert(TaskResult::success(TaskId::from("b"), 1.into()), later);
        assert_eq!(r.len(), 1);
        assert!(r.get(&TaskId::from("b"), later).is_some());
        assert!(r.get(&TaskId::from("a1"), later).is_none());
    }

    #[test]
    fn replacing_keeps_the_newer_expiry() {
        let mut r = Results::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let id = TaskId::from("x");
        r.insert(TaskResult::success(id.clone(), 1.into()), t0);
        let t1 = t0 + Duration::from_secs(5);
        r.insert(TaskResult::success(id.clone(), 2.into()), t1);
        // The first store's expiry passes; the replacement must survive it.
        let t2 = t0 + Duration::from_secs(12);
        r.insert(TaskResult::success(TaskId::from("y"), 1.into()), t2);
        assert_eq!(r.get(&id, t2).map(|x| x.result), Some(2.into()));
        assert!(r.get(&id, t1 + Duration::from_secs(10)).is_none());
    }
}
