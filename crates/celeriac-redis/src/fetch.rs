//! Fetching: claim (one script), decode, hold what is not due yet, drop
//! what was revoked, and wait for more without polling when nothing is
//! ready.
//!
//! The loop: run the claim script over the request's queues (rotated one
//! step per call for fairness). Claimed messages with a future eta are
//! handed to `defer.lua` (held in the delayed set), revoked ones are acked
//! with a `REVOKED` result; the rest are delivered. When the claim reports
//! ended leases it runs the visibility sweep and claims again. When nothing
//! was claimed it waits, in [`crate::wake`], until a list it reads becomes
//! non-empty or the next eta or lease end comes, then claims again; a fetch
//! of one queue arms its next claim behind a blocked `BLMOVE` on the
//! queue's first list instead ([`crate::arm`]), so Redis runs it the moment
//! a message lands.
//!
//! Cancel safety: the claim is one script; a fetch dropped before its reply
//! leaves leases that no one holds, which end after `req.lease` and are
//! restored by the next sweep. A fetch dropped while waiting leases nothing.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{Delivery, Error, FetchRequest, Lease, Message, TaskId, TaskResult};
use chrono::Utc;
use redis::Value;
use tokio::time::Instant;

use crate::conn::redis_error;
use crate::publish::unix;
use crate::scripts::{invocation, scripts};
use crate::settle::{settle_many, Op};
use crate::{arm, envelope, sweep, wake, Inner};

/// The least time a fetch waits before claiming again when a sweep had
/// nothing to do (its lock was held elsewhere), so it does not spin.
const MIN_RECHECK: Duration = Duration::from_millis(5);

/// One claimed message, as the claim script returned it.
pub(crate) struct Claimed {
    queue: usize,
    pub(crate) token: u64,
    deliveries: u32,
    /// The envelope (or, when wrapped, the unacked value around it).
    payload: Vec<u8>,
    wrapped: bool,
}

/// What one claim returned.
pub(crate) struct Claim {
    pub(crate) items: Vec<Claimed>,
    /// When something may become claimable by itself (unix seconds).
    next_due: Option<f64>,
    restore_due: bool,
    revoked: bool,
}

/// Leases up to `req.max` messages (see the module docs).
pub(crate) async fn fetch(inner: &Arc<Inner>, req: &FetchRequest) -> Result<Vec<Delivery>, Error> {
    if req.queues.is_empty() || req.max == 0 {
        return Ok(Vec::new());
    }
    if !inner.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
        // kombu sweeps once at worker start; so does the first fetch.
        if let Err(e) = sweep::sweep(inner).await {
            tracing::warn!(error = %e.chain_text(), "visibility sweep at start failed");
        }
    }
    let deadline = Instant::now()
        .checked_add(req.wait)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
    let n = req.queues.len();
    let start = inner
        .rotation
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        % n;
    let queues: Vec<&str> = (0..n)
        .map(|i| req.queues[(start + i) % n].as_str())
        .collect();
    let names: Vec<Arc<str>> = queues.iter().map(|q| Arc::from(*q)).collect();
    // This fetch's turn to wait, once it has to (see `Watchers::turn`).
    let mut turn: Option<tokio::sync::OwnedMutexGuard<()>> = None;
    // What an armed claim took while this fetch waited.
    let mut armed_claim: Option<Claim> = None;
    loop {
        let claim = match armed_claim.take() {
            Some(c) => c,
            None => claim(inner, &queues, req.max, req.lease).await?,
        };
        let claimed = claim.items.len();
        let mut swept = 0;
        if claim.restore_due {
            swept = match sweep::sweep(inner).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e.chain_text(), "visibility sweep failed");
                    0
                }
            };
        }
        let out = deliver(inner, claim.items, &names, claim.revoked).await?;
        if !out.is_empty() {
            return Ok(out);
        }
        if claimed > 0 || swept > 0 {
            // Everything claimed was held back, or a sweep restored some:
            // look again at once.
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Vec::new());
        }
        let mut until = deadline;
        if let Some(due) = claim.next_due {
            let ahead = due - unix(Utc::now());
            let at = now + Duration::try_from_secs_f64(ahead).unwrap_or(Duration::ZERO);
            until = until.min(at.max(now + MIN_RECHECK));
        }
        let keys: Vec<String> = queues
            .iter()
            .flat_map(|q| {
                let mut k = inner.keys.lists(q);
                k.push(inner.keys.wake(q));
                k
            })
            .collect();
        if turn.is_none() {
            let waiting = inner.watchers.turn(&keys);
            match waiting.clone().try_lock_owned() {
                Ok(mine) => turn = Some(mine),
                Err(_) => {
                    // Another fetch waits: queue behind it, then claim
                    // again, since what came meanwhile went to that one.
                    match tokio::time::timeout_at(deadline, waiting.lock_owned()).await {
                        Ok(mine) => turn = Some(mine),
                        Err(_) => return Ok(Vec::new()),
                    }
                    continue;
                }
            }
        }
        if let [queue] = queues[..] {
            // The claim goes ahead of the message (see `arm.rs`); the
            // watchers still wake this fetch for the queue's other lists.
            let armer = inner.watchers.armer(queue);
            if let Some(mut armed) = arm::arm(inner, &armer, queue, req.max, req.lease, until).await
            {
                let first = inner.keys.list(queue, 0);
                let others: Vec<String> = keys.into_iter().filter(|k| *k != first).collect();
                let answered = tokio::select! {
                    got = armed.reply() => Some(got),
                    woke = wake::wait(inner, &others, until) => {
                        woke?;
                        None
                    }
                };
                armed_claim = match answered {
                    Some(got) => got,
                    None => armed.disarm(inner).await?,
                };
                continue;
            }
        }
        wake::wait(inner, &keys, until).await?;
    }
}

/// Runs the claim script.
async fn claim(
    inner: &Inner,
    queues: &[&str],
    max: usize,
    lease: Duration,
) -> Result<Claim, Error> {
    let s = scripts();
    let mut inv = invocation(
        &s.claim,
        &inner.keys,
        inner.cfg.visibility_timeout.as_secs_f64(),
    );
    inv.arg(lease.as_secs_f64()).arg(max).arg("");
    for q in queues {
        inv.arg(*q);
    }
    let mut conn = inner.conn.manager();
    let reply: Value = inv
        .invoke_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "claiming messages"))?;
    parse_claim(reply)
}

fn bad_reply(what: &str) -> Error {
    Error::new(
        celeriac_core::ErrorKind::Other,
        format!("unexpected reply from the claim script: {what}"),
    )
}

/// Reads an integer (or a string holding one).
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Takes the bytes of a string reply.
pub(crate) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

pub(crate) fn parse_claim(reply: Value) -> Result<Claim, Error> {
    let Value::Array(parts) = reply else {
        return Err(bad_reply("not an array"));
    };
    let mut it = parts.into_iter();
    let n = it
        .next()
        .as_ref()
        .and_then(int)
        .ok_or_else(|| bad_reply("count"))?;
    let next_due = it
        .next()
        .and_then(bytes)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<f64>().ok());
    let restore_due = it.next().as_ref().and_then(int) == Some(1);
    let revoked = it.next().as_ref().and_then(int) == Some(1);
    let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let queue = it.next().as_ref().and_then(int);
        let token = it.next().as_ref().and_then(int);
        let deliveries = it.next().as_ref().and_then(int);
        let wrapped = it.next().as_ref().and_then(int);
        let payload = it.next().and_then(bytes);
        let (Some(queue), Some(token), Some(deliveries), Some(wrapped), Some(payload)) =
            (queue, token, deliveries, wrapped, payload)
        else {
            return Err(bad_reply("a claimed message"));
        };
        items.push(Claimed {
            queue: usize::try_from(queue - 1).map_err(|_| bad_reply("queue index"))?,
            token: u64::try_from(token).map_err(|_| bad_reply("token"))?,
            deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
            payload,
            wrapped: wrapped == 1,
        });
    }
    Ok(Claim {
        items,
        next_due,
        restore_due,
        revoked,
    })
}

/// Returns the envelope inside an unacked value `[envelope, exchange,
/// routing_key]` (the whole value when it is not one).
pub(crate) fn unwrap_value(value: &[u8]) -> &[u8] {
    match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(value) {
        Ok(parts) if !parts.is_empty() => {
            let raw = parts[0].get().as_bytes();
            // The raw value borrows from `value`; find it there.
            let start = raw.as_ptr() as usize - value.as_ptr() as usize;
            &value[start..start + raw.len()]
        }
        _ => value,
    }
}

/// A claimed message whose eta lies ahead, to be held until then.
struct Early {
    token: u64,
    /// The envelope's delivery tag, when the claim counted a redelivery.
    etag: Option<Arc<str>>,
    queue: Arc<str>,
    /// Unix seconds.
    eta: f64,
}

/// Turns claimed messages into deliveries, holding back those whose eta
/// lies ahead and settling those that were revoked.
async fn deliver(
    inner: &Inner,
    items: Vec<Claimed>,
    names: &[Arc<str>],
    revoked_known: bool,
) -> Result<Vec<Delivery>, Error> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let mut out = Vec::with_capacity(items.len());
    let mut hold: Vec<Early> = Vec::new();
    let mut redelivered = Vec::new();
    for c in items {
        let queue = names
            .get(c.queue)
            .cloned()
            .ok_or_else(|| bad_reply("queue index out of range"))?;
        let env = if c.wrapped {
            unwrap_value(&c.payload)
        } else {
            &c.payload[..]
        };
        let decoded = envelope::decode(env, &queue);
        let id = decoded.id.clone().unwrap_or_else(|| TaskId::from(""));
        // A redelivery's counter is keyed by the envelope's tag.
        let etag = (c.deliveries > 1)
            .then(|| decoded.delivery_tag.as_deref().map(Arc::<str>::from))
            .flatten();
        let message = decoded.message.map(Arc::new);
        if let Ok(m) = &message {
            if let Some(eta) = m.headers.eta.filter(|eta| *eta > now) {
                hold.push(Early {
                    token: c.token,
                    etag,
                    queue,
                    eta: unix(eta),
                });
                continue;
            }
        }
        if let Some(etag) = etag {
            redelivered.push((c.token, etag));
        }
        out.push(Delivery {
            message,
            lease: Lease {
                id,
                queue,
                token: c.token,
                receipt: c.token,
            },
            deliveries: c.deliveries,
        });
    }
    if !redelivered.is_empty() {
        inner.held.insert_all(redelivered);
    }
    if !hold.is_empty() {
        defer(inner, &hold).await?;
    }
    if revoked_known && !out.is_empty() {
        out = drop_revoked(inner, out).await?;
    }
    Ok(out)
}

/// Holds claimed messages until their eta (`defer.lua`).
async fn defer(inner: &Inner, hold: &[Early]) -> Result<(), Error> {
    let s = scripts();
    let mut inv = invocation(
        &s.defer,
        &inner.keys,
        inner.cfg.visibility_timeout.as_secs_f64(),
    );
    inv.arg(crate::publish::DELAY_GRACE.as_secs_f64());
    for e in hold {
        inv.arg(e.token)
            .arg(e.etag.as_deref().unwrap_or(""))
            .arg(&*e.queue)
            .arg(format!("{:.6}", e.eta));
    }
    let mut conn = inner.conn.manager();
    let _: Value = inv
        .invoke_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "holding delayed messages"))?;
    Ok(())
}

/// Acks revoked messages with a `REVOKED` result instead of delivering
/// them (as Celery's worker discards a revoked task on receipt).
async fn drop_revoked(inner: &Inner, out: Vec<Delivery>) -> Result<Vec<Delivery>, Error> {
    let mut cmd = redis::cmd("ZMSCORE");
    cmd.arg(&inner.keys.revoked);
    for d in &out {
        cmd.arg(d.lease.id.as_str());
    }
    let mut conn = inner.conn.manager();
    let scores: Vec<Option<f64>> = cmd
        .query_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "checking revoked ids"))?;
    let mut keep = Vec::with_capacity(out.len());
    let mut revoked = Vec::new();
    for (d, score) in out.into_iter().zip(scores) {
        if score.is_some() && !d.lease.id.as_str().is_empty() {
            let ignore = d
                .message
                .as_ref()
                .is_ok_and(|m: &Arc<Message>| m.headers.ignore_result);
            let result = (!ignore).then(|| TaskResult::revoked(d.lease.id.clone(), "revoked"));
            revoked.push((d.lease, Op::Ack(result)));
        } else {
            keep.push(d);
        }
    }
    if !revoked.is_empty() {
        for (lease, _) in &revoked {
            tracing::info!(task_id = %lease.id, "discarding a revoked task");
        }
        settle_many(inner, revoked).await?;
    }
    Ok(keep)
}
