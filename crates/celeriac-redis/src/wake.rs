//! Waking an idle fetch the moment a message lands, without polling.
//!
//! Lua scripts cannot block, and Python producers only `LPUSH`, so the
//! signal is the list itself: for each list key that idle fetches read, one
//! watcher task of the broker keeps `BLMOVE key key RIGHT RIGHT timeout`
//! blocked on a dedicated connection. With the same key as source and
//! destination it moves the last element onto itself (a no-op that leaves
//! the list as it was), and it returns as soon as the list is non-empty;
//! the watcher then wakes every fetch waiting on that key, which claim with
//! the claim script.
//!
//! The watchers are shared: however many fetches wait, each key has one
//! blocked command, and it stays blocked from one wait to the next instead
//! of being sent and unblocked again around every message. A watcher blocks
//! only while some fetch waits on its key (so it does not spin while its
//! list is non-empty and the fetches are busy claiming), and it ends, closing
//! its connection, once no fetch has waited on its key for [`IDLE_END`].
//!
//! Idle fetches that read the same keys wait one at a time (their *turn*,
//! see [`Watchers::turn`]): a push wakes the one waiting, and the next one
//! claims when that one is done, instead of every fetch racing to claim the
//! same message.
//!
//! A fetch subscribes before it looks at the watcher's state, and a watcher
//! that finds a new waiter sends a fresh command, so a push between a
//! fetch's empty claim and its wait is never missed: the command sent then
//! finds the list non-empty and returns at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use celeriac_core::Error;
use futures::future::select_all;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::Inner;

/// Waits shorter than this are slept, not blocked on.
const MIN_BLOCK: Duration = Duration::from_millis(1);

/// How long one blocked command lasts before the watcher looks again
/// whether anyone still waits (Redis times blocked commands out itself).
const BLOCK_FOR: Duration = Duration::from_secs(5);

/// A watcher nobody waited on for this long ends.
const IDLE_END: Duration = Duration::from_secs(30);

/// How long a watcher backs off after a failed command before it retries.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The watchers of one broker, by list key.
#[derive(Default)]
pub(crate) struct Watchers {
    map: Mutex<HashMap<String, Arc<Watch>>>,
    /// The turn to wait, by the sorted list keys the fetches read.
    turns: Mutex<HashMap<Vec<String>, Arc<tokio::sync::Mutex<()>>>>,
    /// The connection each queue's waiting fetch arms claims on.
    armers: Mutex<HashMap<String, Arc<crate::arm::Armer>>>,
}

/// One key's watcher, as waiting fetches see it.
struct Watch {
    /// Bumped each time the key was seen non-empty.
    seen: watch::Sender<u64>,
    /// Tells the watcher task that a fetch started waiting.
    waiter: Notify,
}

impl Watchers {
    /// Returns the watch on `key`, starting its watcher task if there is none.
    fn watch(&self, inner: &Arc<Inner>, key: &str) -> Arc<Watch> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = map.get(key) {
            return Arc::clone(w);
        }
        let w = Arc::new(Watch {
            seen: watch::Sender::new(0),
            waiter: Notify::new(),
        });
        map.insert(key.to_owned(), Arc::clone(&w));
        tokio::spawn(run(Arc::downgrade(inner), key.to_owned(), Arc::clone(&w)));
        w
    }

    /// Returns the turn that idle fetches reading `keys` take to wait: one
    /// at a time, so that a push wakes one fetch to claim it instead of
    /// every fetch of the worker racing to claim (the losers' empty claims
    /// would queue at Redis beside, often before, the winner's).
    pub(crate) fn turn(&self, keys: &[String]) -> Arc<tokio::sync::Mutex<()>> {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(turns.entry(sorted).or_default())
    }

    /// Returns the armer of `queue` (see `arm.rs`).
    pub(crate) fn armer(&self, queue: &str) -> Arc<crate::arm::Armer> {
        let mut armers = self.armers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = armers.get(queue) {
            return Arc::clone(a);
        }
        let a = Arc::new(crate::arm::Armer::default());
        armers.insert(queue.to_owned(), Arc::clone(&a));
        a
    }

    /// Forgets `key`'s watch if it is still `w` and no one waits on it.
    fn end(&self, key: &str, w: &Arc<Watch>) -> bool {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if w.seen.receiver_count() > 0 {
            return false;
        }
        if map.get(key).is_some_and(|cur| Arc::ptr_eq(cur, w)) {
            map.remove(key);
        }
        true
    }
}

/// Waits until one of `keys` is non-empty or `until` comes.
pub(crate) async fn wait(inner: &Arc<Inner>, keys: &[String], until: Instant) -> Result<(), Error> {
    let now = Instant::now();
    if until <= now {
        return Ok(());
    }
    if until - now < MIN_BLOCK || keys.is_empty() {
        tokio::time::sleep_until(until).await;
        return Ok(());
    }
    // Subscribe first, then tell each watcher: it sends a fresh command,
    // which sees any push made since the caller's empty claim.
    let mut subs: Vec<watch::Receiver<u64>> = Vec::with_capacity(keys.len());
    for key in keys {
        let w = inner.watchers.watch(inner, key);
        let mut rx = w.seen.subscribe();
        rx.mark_unchanged();
        subs.push(rx);
        w.waiter.notify_one();
    }
    let changed = select_all(subs.iter_mut().map(|rx| Box::pin(rx.changed())));
    tokio::select! {
        _ = changed => {}
        () = tokio::time::sleep_until(until) => {}
    }
    Ok(())
}

/// One key's watcher task (see the module docs).
///
/// Each command it sends answers the fetches that subscribed before the
/// answer came; a fetch that starts waiting later leaves a permit on
/// `waiter`, which makes the watcher send the next one. So it never sends
/// a command no fetch waits for, and never spins on a non-empty list.
async fn run(inner: Weak<Inner>, key: String, w: Arc<Watch>) {
    let mut blocker: Option<redis::aio::MultiplexedConnection> = None;
    let mut idle_since = Instant::now();
    loop {
        let asked = tokio::time::timeout_at(idle_since + IDLE_END, w.waiter.notified()).await;
        if asked.is_err() {
            // Nobody waited for a while: end, unless someone just came.
            let Some(inner) = inner.upgrade() else { return };
            if inner.watchers.end(&key, &w) {
                return;
            }
            idle_since = Instant::now();
            continue;
        }
        if w.seen.receiver_count() == 0 {
            idle_since = Instant::now();
            continue;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let mut conn = match blocker.take() {
            Some(b) => b,
            None => match strong.conn.blocker().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e.chain_text(), "cannot open a wake-up connection; retrying");
                    drop(strong);
                    // Wake the waiters: their claim reports the outage.
                    w.seen.send_modify(|n| *n = n.wrapping_add(1));
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            },
        };
        drop(strong);
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&key)
            .arg(&key)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(BLOCK_FOR.as_secs_f64());
        // The server times the command out; the local timer is a safety net
        // for one that does not answer.
        let reply = tokio::time::timeout(
            BLOCK_FOR + Duration::from_secs(5),
            cmd.query_async::<Option<Vec<u8>>>(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok(Some(_))) => {
                w.seen.send_modify(|n| *n = n.wrapping_add(1));
                blocker = Some(conn);
            }
            Ok(Ok(None)) => {
                // Timed out on the server: serve whoever still waits.
                blocker = Some(conn);
                w.waiter.notify_one();
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, key, "wake-up command failed; reconnecting");
                // The connection is given up; waiters are woken so they
                // claim (and see the error there, if the server is gone).
                w.seen.send_modify(|n| *n = n.wrapping_add(1));
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(_) => {
                // No answer in time: give the connection up.
                w.seen.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        idle_since = Instant::now();
    }
}
