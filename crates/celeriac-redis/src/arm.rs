//! Armed claims: the claim of an idle fetch, sent ahead of the message.
//!
//! A fetch that waits for a queue would otherwise learn of a push from its
//! watcher (a blocked `BLMOVE`, see [`crate::wake`]) and only then send the
//! claim: one more round trip to a Redis that has gone back to sleep. The
//! fetch whose turn it is to wait for one queue instead *arms* a claim: it
//! sets an arm key (`SET <arm key> 1 PX <ttl>`, answered before anything
//! else is sent), then on a connection of its own pipelines
//!
//! ```text
//! BLMOVE <queue> <queue> RIGHT RIGHT <block>   -- a no-op rotation
//! EVALSHA <claim> ... <arm key> <queue>
//! ```
//!
//! Redis keeps the claim in the connection's buffer while `BLMOVE` blocks,
//! and runs it the moment a message lands on the queue's first list (or when
//! the block times out), in the same pass: the answer brings the claimed
//! messages.
//!
//! The claim script claims only if the arm key is still there, and deletes
//! it. A fetch woken by something else (another list, a delayed message, its
//! own deadline) disarms with `DEL <arm key>`: 1 means the claim has not run
//! and will claim nothing; 0 means it ran, and its answer is awaited and
//! used. So what an armed claim takes always reaches a fetch, except when
//! the fetch was dropped meanwhile: then the claimed messages are released
//! at once (back to the front of their list, as a restore does).

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use celeriac_core::{Error, Lease, TaskId};
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::conn::redis_error;
use crate::fetch::{parse_claim, Claim};
use crate::scripts::{command, scripts};
use crate::settle::{settle_many, Op};
use crate::Inner;

/// The longest one armed `BLMOVE` blocks; a longer wait arms again.
const BLOCK_FOR: Duration = Duration::from_secs(5);

/// Waits shorter than this are not armed.
const MIN_BLOCK: Duration = Duration::from_millis(20);

/// How long an arm key outlives its block (it is deleted by the claim or
/// the disarm long before, unless the connection died).
const ARM_GRACE: Duration = Duration::from_secs(10);

/// The connection a queue's waiting fetch arms claims on.
#[derive(Default)]
pub(crate) struct Armer {
    slot: Mutex<Slot>,
}

#[derive(Default)]
enum Slot {
    /// No connection yet (or the last one failed).
    #[default]
    Closed,
    /// Free to arm.
    Free(MultiplexedConnection),
    /// An armed pipeline is under way on it.
    Busy,
}

impl Armer {
    fn take(&self) -> Option<Option<MultiplexedConnection>> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *slot, Slot::Busy) {
            Slot::Closed => Some(None),
            Slot::Free(c) => Some(Some(c)),
            Slot::Busy => None,
        }
    }

    fn put(&self, conn: Option<MultiplexedConnection>) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = conn.map_or(Slot::Closed, Slot::Free);
    }
}

/// A taken slot, given back when dropped unless handed over to an armed
/// claim's task.
struct Taken<'a> {
    armer: &'a Armer,
    conn: Option<MultiplexedConnection>,
    handed_over: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.armer.put(self.conn.take());
        }
    }
}

/// An armed claim under way.
pub(crate) struct Armed {
    inner: Weak<Inner>,
    key: String,
    reply: Option<oneshot::Receiver<Result<Claim, Error>>>,
}

/// Arms a claim of up to `max` messages of `queue` for the waiting fetch,
/// blocking until a message lands on the queue's first list or until
/// `until`. `None` when there is no time worth arming for, or the queue's
/// connection is still busy with an earlier armed claim (the caller then
/// waits as before).
pub(crate) async fn arm(
    inner: &Arc<Inner>,
    armer: &Arc<Armer>,
    queue: &str,
    max: usize,
    lease: Duration,
    until: Instant,
) -> Option<Armed> {
    let left = until.checked_duration_since(Instant::now())?;
    if left < MIN_BLOCK {
        return None;
    }
    let block = left.min(BLOCK_FOR);
    // The slot is busy from here; the guard frees it again (with the
    // connection, if there is one) unless the armed claim takes it, also
    // when this future is dropped at an await.
    let mut slot = Taken {
        armer,
        conn: armer.take()?,
        handed_over: false,
    };
    if slot.conn.is_none() {
        match inner.conn.blocker().await {
            Ok(c) => slot.conn = Some(c),
            Err(e) => {
                tracing::debug!(error = %e.chain_text(), "cannot open a connection to arm claims on");
                return None;
            }
        }
    }
    let key = format!(
        "{}celeriac.armed.{}",
        inner.keys.prefix,
        uuid::Uuid::new_v4().simple()
    );
    // Set before the claim is sent, so that a disarm's `DEL` answering 0
    // always means the claim ran.
    let ttl = u64::try_from((block + ARM_GRACE).as_millis()).unwrap_or(u64::MAX);
    let set: Result<(), _> = redis::cmd("SET")
        .arg(&key)
        .arg(1)
        .arg("PX")
        .arg(ttl)
        .query_async(&mut inner.conn.manager())
        .await;
    if let Err(e) = set {
        tracing::debug!(error = %e, "cannot arm a claim");
        return None;
    }
    let mut conn = slot.conn.take()?;
    // The armed claim's task gives the slot back when it is done.
    slot.handed_over = true;
    drop(slot);
    let list = inner.keys.list(queue, 0);
    let mut claim = command(
        &scripts().claim,
        &inner.keys,
        inner.cfg.visibility_timeout.as_secs_f64(),
    );
    claim.arg(lease.as_secs_f64()).arg(max).arg(&key).arg(queue);
    let mut pipe = redis::pipe();
    pipe.cmd("BLMOVE")
        .arg(&list)
        .arg(&list)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(block.as_secs_f64())
        .ignore()
        .add_command(claim);
    let (tx, rx) = oneshot::channel();
    let weak = Arc::downgrade(inner);
    let armer = Arc::clone(armer);
    let queue: Arc<str> = Arc::from(queue);
    tokio::spawn(async move {
        // The server times the block out; the timer is a safety net for a
        // connection that does not answer.
        let answer = tokio::time::timeout(
            block + Duration::from_secs(10),
            pipe.query_async::<(Value,)>(&mut conn),
        )
        .await;
        let out = match answer {
            Ok(Ok((reply,))) => {
                armer.put(Some(conn));
                parse_claim(reply)
            }
            Ok(Err(e)) => {
                armer.put(None);
                Err(redis_error(e, "an armed claim"))
            }
            Err(_) => {
                armer.put(None);
                Err(Error::new(
                    celeriac_core::ErrorKind::Transient,
                    "an armed claim did not answer",
                ))
            }
        };
        if let Err(Ok(orphan)) = tx.send(out) {
            release(weak, &queue, orphan).await;
        }
    });
    Some(Armed {
        inner: Arc::downgrade(inner),
        key,
        reply: Some(rx),
    })
}

impl Armed {
    /// Waits for the armed claim's answer. `None` when it failed (the
    /// caller claims as usual; a failed connection is opened again).
    pub(crate) async fn reply(&mut self) -> Option<Claim> {
        let rx = self.reply.as_mut()?;
        let got = rx.await;
        self.reply = None;
        match got {
            Ok(Ok(claim)) => Some(claim),
            Ok(Err(e)) => {
                tracing::debug!(error = %e.chain_text(), "armed claim failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Disarms: returns what the claim took if it already ran (`None` when
    /// it had not, and so will claim nothing).
    pub(crate) async fn disarm(mut self, inner: &Inner) -> Result<Option<Claim>, Error> {
        let mut conn = inner.conn.manager();
        let deleted: i64 = redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, "disarming a claim"))?;
        if deleted == 1 {
            // Not run: it will claim nothing; its answer is not needed.
            self.reply = None;
            return Ok(None);
        }
        Ok(self.reply().await)
    }
}

impl Drop for Armed {
    /// A fetch dropped while armed disarms in the background (what the
    /// claim took meanwhile is released by its task).
    fn drop(&mut self) {
        if self.reply.is_none() {
            return;
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut conn = inner.conn.manager();
                let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
            });
        }
    }
}

/// Hands back what an armed claim took for a fetch that is gone.
async fn release(inner: Weak<Inner>, queue: &Arc<str>, orphan: Claim) {
    let Some(inner) = inner.upgrade() else { return };
    if orphan.items.is_empty() {
        return;
    }
    let ops: Vec<(Lease, Op)> = orphan
        .items
        .iter()
        .map(|c| {
            (
                Lease {
                    id: TaskId::from(""),
                    queue: Arc::clone(queue),
                    token: c.token,
                    receipt: c.token,
                },
                Op::Release,
            )
        })
        .collect();
    if let Err(e) = settle_many(&inner, ops).await {
        tracing::warn!(error = %e.chain_text(), "releasing an orphaned armed claim failed; its leases will run out");
    }
}
