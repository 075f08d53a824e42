//! How an attempt ends or goes on: the fencing check, ack, retry,
//! release, dead-letter, and extending leases.

use std::time::Duration;

use celeriac_core::{codec, DeadLetter, Error, LeaseStatus};
use chrono::Utc;
use tokio::time::Instant;

use super::{add, Entry, Pending, Phase, Store, Wake};

impl Store {
    /// Returns the slot a lease (`receipt`, `token`) still holds.
    pub fn holder(&self, receipt: u64, token: u64) -> Option<u32> {
        u32::try_from(receipt).ok().filter(|&slot| {
            self.slots
                .get(slot as usize)
                .and_then(|s| s.entry.as_ref())
                .is_some_and(|e| e.token != 0 && e.token == token)
        })
    }

    /// Acknowledges: removes the message. Returns it (to drop unlocked).
    pub fn ack(&mut self, slot: u32) -> (Option<Entry>, Wake) {
        let entry = self.remove(slot);
        (entry, self.idle_wake())
    }

    /// Replaces the message by `next`, in one step.
    pub fn retry(&mut self, slot: u32, next: Pending) -> (Option<Entry>, Wake) {
        let old = self.remove(slot);
        let revoked = old.as_ref().is_some_and(|e| e.revoked);
        let q = self.queue_id(next.message.queue());
        let wake = self.insert(next, q, revoked);
        (old, wake)
    }

    /// Hands the message back: ready now, at the front of its level.
    pub fn release(&mut self, slot: u32) -> Wake {
        if let Some(entry) = self.entry_mut(slot) {
            // The attempt is over: its token no longer holds anything.
            entry.token = 0;
        }
        self.make_ready_front(slot);
        Wake {
            fetchers: self.waiters > 0,
            idle: false,
        }
    }

    /// Moves the message to the dead-letter list. Encodes it first, so a
    /// failure to encode changes nothing.
    pub fn dead_letter(
        &mut self,
        slot: u32,
        reason: String,
    ) -> Result<(Option<Entry>, Wake), Error> {
        let raw = match self.slots.get(slot as usize).and_then(|s| s.entry.as_ref()) {
            Some(e) => codec::encode(&e.message)?,
            None => Vec::new(),
        };
        let entry = self.remove(slot);
        if let Some(e) = &entry {
            self.dead.push_back(DeadLetter {
                id: e.message.id().clone(),
                task: e.message.headers.task.clone(),
                queue: self.queues[e.queue as usize].name.to_string(),
                reason,
                at: Utc::now(),
                raw,
            });
        }
        Ok((entry, self.idle_wake()))
    }

    /// Extends each lease still held to `now + by`.
    pub fn extend(
        &mut self,
        leases: &[(u64, u64)],
        by: Duration,
        now: Instant,
    ) -> (Vec<LeaseStatus>, Wake) {
        let deadline = add(now, by);
        let mut out = Vec::with_capacity(leases.len());
        let mut extended = false;
        for &(receipt, token) in leases {
            let Some(slot) = self.holder(receipt, token) else {
                out.push(LeaseStatus::Lost);
                continue;
            };
            let Some(entry) = self.entry_mut(slot) else {
                out.push(LeaseStatus::Lost);
                continue;
            };
            let (q, was, revoked) = (entry.queue, entry.phase, entry.revoked);
            entry.phase = Phase::Leased;
            let item = self.bump(slot);
            // An expired lease that was reclaimed but not yet leased again is
            // still this attempt's: take it back out of the ready list.
            if was == Phase::Ready {
                let queue = &mut self.queues[q as usize];
                queue.ready -= 1;
                queue.leased += 1;
            }
            self.push_lease(q, deadline, token, item);
            extended = true;
            out.push(if revoked {
                LeaseStatus::Revoked
            } else {
                LeaseStatus::Held
            });
        }
        let wake = Wake {
            fetchers: extended && self.wakes_at(deadline),
            idle: false,
        };
        (out, wake)
    }
}
