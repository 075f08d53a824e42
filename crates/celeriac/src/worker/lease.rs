//! The table of leases this worker holds, and the heartbeat that renews
//! them so a long task never runs twice.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac_core::broker::DynBroker;
use celeriac_core::{Delivery, Error, Lease, LeaseStatus, Message};
use tokio_util::sync::CancellationToken;

/// One held delivery, from its fetch to its settlement: what the runners
/// take, and what the heartbeat renews. One allocation per delivery; the
/// lease is moved in, not cloned.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) lease: Lease,
    /// The message, or why it could not be decoded.
    pub(crate) message: Result<Arc<Message>, Error>,
    /// Deliveries so far, this one included.
    pub(crate) deliveries: u32,
    /// The task's cancellation signal.
    pub(crate) cancel: CancellationToken,
    /// Set when the broker reports the task revoked.
    pub(crate) revoked: AtomicBool,
    /// Set when the broker reports the lease lost.
    pub(crate) lost: AtomicBool,
}

/// Hashes a fencing token. Tokens are distinct integers handed out by the
/// broker, so one multiply spreads them well; SipHash cost more per task
/// than the rest of the table's work.
#[derive(Debug, Default)]
struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Map = HashMap<u64, Arc<Held>, BuildHasherDefault<TokenHasher>>;

/// Leases held by this worker, keyed by fencing token.
#[derive(Debug, Clone, Default)]
pub(crate) struct LeaseTable {
    inner: Arc<Mutex<Map>>,
}

impl LeaseTable {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert, remove or clone).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a batch of fresh deliveries, each with its own cancellation
    /// signal, under one lock, and returns them in order.
    pub(crate) fn insert_many(&self, deliveries: impl Iterator<Item = Delivery>) -> Vec<Arc<Held>> {
        // Built before the lock, which runners settling tasks also take.
        let held: Vec<Arc<Held>> = deliveries
            .map(|d| {
                Arc::new(Held {
                    lease: d.lease,
                    message: d.message,
                    deliveries: d.deliveries,
                    cancel: CancellationToken::new(),
                    revoked: AtomicBool::new(false),
                    lost: AtomicBool::new(false),
                })
            })
            .collect();
        let mut table = self.lock();
        for h in &held {
            table.insert(h.lease.token, h.clone());
        }
        drop(table);
        held
    }

    pub(crate) fn remove(&self, token: u64) {
        self.lock().remove(&token);
    }

    pub(crate) fn snapshot(&self) -> Vec<Arc<Held>> {
        self.lock().values().cloned().collect()
    }
}

/// Renews every held lease each third of the lease length, until aborted.
/// A lost lease cancels its task (its settle would be refused anyway); a
/// revoked one cancels it with the revoked flag set.
pub(crate) async fn heartbeat(broker: Arc<dyn DynBroker>, table: LeaseTable, lease: Duration) {
    let period = lease / 3;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let held = table.snapshot();
        if held.is_empty() {
            continue;
        }
        let leases: Vec<Lease> = held.iter().map(|h| h.lease.clone()).collect();
        match broker.extend(&leases, lease).await {
            Ok(statuses) => {
                for (h, status) in held.iter().zip(statuses) {
                    match status {
                        LeaseStatus::Held => {}
                        LeaseStatus::Revoked => {
                            tracing::info!(task_id = %h.lease.id, "task revoked while running");
                            h.revoked.store(true, Ordering::Release);
                            h.cancel.cancel();
                        }
                        LeaseStatus::Lost => {
                            tracing::warn!(task_id = %h.lease.id, "lease lost: another attempt owns the task");
                            h.lost.store(true, Ordering::Release);
                            h.cancel.cancel();
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.chain_text(), "lease renewal failed; will try again");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use celeriac_core::TaskId;

    fn delivery(token: u64) -> Delivery {
        Delivery {
            message: Ok(Arc::new(Message::new("t", vec![], Default::default()))),
            lease: Lease {
                id: TaskId::new(),
                queue: Arc::from("q"),
                token,
                receipt: token,
            },
            deliveries: 1,
        }
    }

    #[test]
    fn insert_many_keeps_order_and_each_entry_is_removable() {
        let table = LeaseTable::new();
        let held = table.insert_many((1..=3).map(delivery));
        let tokens: Vec<u64> = held.iter().map(|h| h.lease.token).collect();
        assert_eq!(tokens, vec![1, 2, 3]);
        assert_eq!(table.snapshot().len(), 3);
        table.remove(2);
        let mut left: Vec<u64> = table.snapshot().iter().map(|h| h.lease.token).collect();
        left.sort_unstable();
        assert_eq!(left, vec![1, 3]);
        // Each attempt has its own cancellation signal.
        held[0].cancel.cancel();
        assert!(!held[2].cancel.is_cancelled());
    }
}
