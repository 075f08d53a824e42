//! The store's admin operations: revoke, queue statistics, purge and the
//! dead-letter list. None of them is on the publish, fetch or settle path.

use std::sync::Arc;

use celeriac_core::{codec, DeadLetter, Error, Message, QueueStats, Revoked, TaskId};
use tokio::time::Instant;

use super::{Entry, Pending, Phase, Store, Wake, REMEMBERED_REVOKES};
use crate::hash::FastSet;

impl Store {
    /// Revokes every stored message with this id.
    pub fn revoke(&mut self, id: &TaskId) -> (Revoked, Vec<Entry>, Wake) {
        let mut removed = Vec::new();
        let mut running = false;
        for slot in self.slots_of(id) {
            let Some(entry) = self.entry_mut(slot) else {
                continue;
            };
            match entry.phase {
                Phase::Leased => {
                    entry.revoked = true;
                    running = true;
                }
                Phase::Ready | Phase::Delayed => removed.extend(self.remove(slot)),
            }
        }
        let outcome = if running {
            Revoked::Running
        } else if !removed.is_empty() {
            Revoked::Removed
        } else {
            self.remember(id);
            Revoked::Unknown
        };
        (outcome, removed, self.idle_wake())
    }

    fn remember(&mut self, id: &TaskId) {
        if self.remembered.insert(id.clone()) {
            self.remembered_order.push_back(id.clone());
            if self.remembered_order.len() > REMEMBERED_REVOKES {
                if let Some(old) = self.remembered_order.pop_front() {
                    self.remembered.remove(&old);
                }
            }
        }
    }

    /// Returns every queue's depth, reclaiming expired leases first so the
    /// numbers are current.
    pub fn stats(&mut self, now: Instant) -> (Vec<QueueStats>, Wake) {
        let mut moved = 0;
        for q in 0..self.queues.len() as u32 {
            moved += self.promote(q, now);
        }
        let stats = self
            .queues
            .iter()
            .map(|q| QueueStats {
                queue: q.name.to_string(),
                ready: q.ready as u64,
                delayed: q.delayed as u64,
                leased: q.leased as u64,
            })
            .collect();
        let wake = Wake {
            fetchers: moved > 0 && self.waiters > 0,
            idle: false,
        };
        (stats, wake)
    }

    /// Removes the ready and delayed messages of a queue (not leased ones).
    pub fn purge(&mut self, name: &str, now: Instant) -> (u64, Vec<Entry>, Wake) {
        let Some(&q) = self.queue_ids.get(name) else {
            return (0, Vec::new(), Wake::default());
        };
        self.promote(q, now);
        let queue = &mut self.queues[q as usize];
        let mut items = queue.drain_ready();
        items.extend(queue.drain_delays());
        let mut removed = Vec::new();
        for item in items {
            if Self::version_of(&self.slots, item) {
                removed.extend(self.remove(item.slot));
            }
        }
        (removed.len() as u64, removed, self.idle_wake())
    }

    /// Lists up to `limit` dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Vec<DeadLetter> {
        self.dead.iter().take(limit).cloned().collect()
    }

    /// Puts dead letters back on their queues (all of them for `None`).
    ///
    /// A dead letter whose bytes do not decode stays where it is. The
    /// republish is all or none, like any publish.
    pub fn replay(
        &mut self,
        ids: Option<&[TaskId]>,
        now: Instant,
    ) -> Result<(u64, Wake, Vec<Arc<Message>>), Error> {
        let wanted: Option<FastSet<&TaskId>> = ids.map(|ids| ids.iter().collect());
        let mut picked = Vec::new();
        let mut batch = Vec::new();
        let mut now_utc = None;
        for (i, dl) in self.dead.iter().enumerate() {
            if wanted.as_ref().is_some_and(|w| !w.contains(&dl.id)) {
                continue;
            }
            let Ok(mut message) = codec::decode(&dl.raw) else {
                continue;
            };
            message.set_queue(dl.queue.clone());
            picked.push(i);
            batch.push(Pending::new(message, now, &mut now_utc));
        }
        let count = batch.len() as u64;
        let (wake, discarded) = self.publish(&mut batch)?;
        // Remove the replayed ones, back to front so indices stay valid.
        for i in picked.into_iter().rev() {
            self.dead.remove(i);
        }
        Ok((count, wake, discarded))
    }

    /// Deletes every dead letter.
    pub fn purge_dead_letters(&mut self) -> u64 {
        let n = self.dead.len() as u64;
        self.dead.clear();
        n
    }
}
