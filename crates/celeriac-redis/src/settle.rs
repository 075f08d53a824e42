//! Ending and extending attempts: `settle.lua` and `extend.lua`, fenced by
//! the attempt's token (its tag in `unacked_index`), with the result
//! written in the same script.
//!
//! A release needs the envelope marked as redelivered (kombu's restore
//! does that), which is done here in Rust: the held value is read first
//! (`peek.lua`), then the release script checks the token again and moves
//! it. Releases are rare (shutdown, extra deliveries), so the second round
//! trip is no cost worth a JSON rewrite in Lua.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use celeriac_core::{Error, ErrorKind, Lease, LeaseStatus, Message, Settlement, TaskResult};
use chrono::Utc;
use redis::Value;
use tokio::sync::oneshot;

use crate::conn::redis_error;
use crate::fetch::{bytes, int, unwrap_value};
use crate::publish::{prepare, unix};
use crate::results::codec::encode_result;
use crate::scripts::{invocation, scripts};
use crate::{envelope, Inner};

/// What one settlement does.
#[derive(Debug)]
pub(crate) enum Op {
    Ack(Option<TaskResult>),
    Retry(Box<Message>, Option<TaskResult>),
    Release,
    DeadLetter(String, Option<TaskResult>),
}

impl Op {
    /// Returns the operation a settlement asks for.
    pub fn of(s: Settlement) -> Result<Op, Error> {
        Ok(match s {
            Settlement::Ack { result } => Op::Ack(result),
            Settlement::Retry { message, result } => Op::Retry(message, result),
            Settlement::Release => Op::Release,
            Settlement::DeadLetter { reason, result } => Op::DeadLetter(reason, result),
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("unknown settlement {other:?}"),
                ))
            }
        })
    }
}

/// Returns the `LeaseLost` error for a lease.
pub(crate) fn lease_lost(lease: &Lease) -> Error {
    Error::new(
        ErrorKind::LeaseLost,
        format!(
            "the lease on task {} (token {}) is no longer held",
            lease.id, lease.token
        ),
    )
}

/// The most settlements one script call carries.
const BATCH_MAX: usize = 512;

type Reply = oneshot::Sender<Result<bool, Error>>;

/// Settlements waiting for the flusher, shared by a broker's clones.
///
/// Settles that arrive together (a worker finishing many tasks at once)
/// go to the server in one script call: the first one to find no flusher
/// running spawns one, which takes everything queued, settles it, and
/// goes on until the queue is empty. A lone settle costs one task hop.
#[derive(Default)]
pub(crate) struct Batcher {
    queue: Mutex<Queued>,
}

#[derive(Default)]
struct Queued {
    items: Vec<(Lease, Op, Reply)>,
    flushing: bool,
}

/// Settles one attempt (batched with others in flight).
pub(crate) async fn settle(inner: &Arc<Inner>, lease: &Lease, s: Settlement) -> Result<(), Error> {
    let op = Op::of(s)?;
    let (tx, rx) = oneshot::channel();
    let spawn = {
        let mut q = inner
            .batcher
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        q.items.push((lease.clone(), op, tx));
        !std::mem::replace(&mut q.flushing, true)
    };
    if spawn {
        tokio::spawn(flush(Arc::clone(inner)));
    }
    match rx.await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(lease_lost(lease)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::new(
            ErrorKind::Transient,
            "the settle was abandoned (the runtime is shutting down)",
        )),
    }
}

/// Settles a batch the caller gathered (the worker's settler): one script
/// call per [`BATCH_MAX`] settlements, each outcome in order.
pub(crate) async fn settle_batch(
    inner: &Inner,
    settles: &[(Lease, Settlement)],
) -> Vec<Result<(), Error>> {
    let mut out = Vec::with_capacity(settles.len());
    for chunk in settles.chunks(BATCH_MAX) {
        // Unknown settlements fail alone; the others go in one call.
        let mut ops = Vec::with_capacity(chunk.len());
        let mut slots = Vec::with_capacity(chunk.len());
        for (lease, s) in chunk {
            match Op::of(s.clone()) {
                Ok(op) => {
                    slots.push(Ok(ops.len()));
                    ops.push((lease.clone(), op));
                }
                Err(e) => slots.push(Err(e)),
            }
        }
        let done = if ops.is_empty() {
            Ok(Vec::new())
        } else {
            settle_many(inner, ops).await
        };
        for ((lease, _), slot) in chunk.iter().zip(slots) {
            out.push(match (slot, &done) {
                (Err(e), _) => Err(e),
                (Ok(i), Ok(held)) => match held.get(i) {
                    Some(true) => Ok(()),
                    _ => Err(lease_lost(lease)),
                },
                (Ok(_), Err(e)) => Err(Error::new(e.kind(), e.chain_text())),
            });
        }
    }
    out
}

/// Settles queued settlements until none is left.
async fn flush(inner: Arc<Inner>) {
    loop {
        // Let the settles of tasks finishing right now join this batch.
        tokio::task::yield_now().await;
        let batch: Vec<(Lease, Op, Reply)> = {
            let mut q = inner
                .batcher
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if q.items.is_empty() {
                q.flushing = false;
                return;
            }
            let take = q.items.len().min(BATCH_MAX);
            q.items.drain(..take).collect()
        };
        let (ops, replies): (Vec<(Lease, Op)>, Vec<Reply>) =
            batch.into_iter().map(|(l, o, r)| ((l, o), r)).unzip();
        match settle_many(&inner, ops).await {
            Ok(done) => {
                for (r, d) in replies
                    .into_iter()
                    .zip(done.into_iter().chain(std::iter::repeat(false)))
                {
                    let _ = r.send(Ok(d));
                }
            }
            Err(e) => {
                let (kind, text) = (e.kind(), e.chain_text());
                for r in replies {
                    let _ = r.send(Err(Error::new(kind, text.clone())));
                }
            }
        }
    }
}

/// Settles attempts in one script call, returning for each whether its
/// lease was held (and it is now settled).
pub(crate) async fn settle_many(inner: &Inner, ops: Vec<(Lease, Op)>) -> Result<Vec<bool>, Error> {
    // The envelope tag of each redelivery, whose counter goes with it.
    let etags = inner.held.get_all(ops.iter().map(|(l, _)| l.token));
    // Releases first read what they hand back.
    let releases: Vec<u64> = ops
        .iter()
        .filter(|(_, op)| matches!(op, Op::Release))
        .map(|(l, _)| l.token)
        .collect();
    let mut held_values = if releases.is_empty() {
        Vec::new()
    } else {
        peek(inner, &releases).await?
    }
    .into_iter();

    let now = Utc::now();
    let s = scripts();
    let mut inv = invocation(
        &s.settle,
        &inner.keys,
        inner.cfg.visibility_timeout.as_secs_f64(),
    );
    for ((lease, op), etag) in ops.iter().zip(&etags) {
        let (kind, result) = match op {
            Op::Ack(r) => ('a', r.as_ref()),
            Op::Retry(_, r) => ('r', r.as_ref()),
            Op::Release => ('l', None),
            Op::DeadLetter(_, r) => ('d', r.as_ref()),
        };
        // Upper case: a result follows.
        let kind = if result.is_some() {
            kind.to_ascii_uppercase()
        } else {
            kind
        };
        inv.arg(kind.encode_utf8(&mut [0; 4]).as_bytes())
            .arg(lease.token)
            .arg(etag.as_deref().unwrap_or(""));
        if let Some(r) = result {
            inv.arg(inner.results.key(&r.task_id))
                .arg(inner.results.expiry_ms())
                .arg(encode_result(r)?);
        }
        match op {
            Op::Ack(_) => {}
            Op::Retry(next, _) => {
                for part in prepare(inner, next, now)? {
                    inv.arg(part);
                }
            }
            Op::Release => {
                let value = held_values.next().unwrap_or_default();
                let (key, env) = if value.is_empty() {
                    // Not held: the script will refuse it anyway.
                    (String::new(), Vec::new())
                } else {
                    let env = unwrap_value(&value);
                    let priority = envelope::decode(env, &lease.queue).priority;
                    let again = envelope::redelivered(env).unwrap_or_else(|| env.to_vec());
                    (inner.keys.list_for(&lease.queue, priority), again)
                };
                inv.arg(key).arg(env);
            }
            Op::DeadLetter(reason, _) => {
                let meta = serde_json::json!({
                    "id": lease.id.as_str(),
                    "queue": &*lease.queue,
                    "reason": reason,
                    "at": unix(now),
                    "wrapped": true,
                });
                inv.arg(meta.to_string());
            }
        }
    }
    let mut conn = inner.conn.manager();
    let reply: Vec<i64> = inv
        .invoke_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "settling"))?;
    // Settled or not held: either way the attempt is over.
    inner.held.remove_all(ops.iter().map(|(l, _)| l.token));
    Ok(reply.into_iter().map(|n| n == 1).collect())
}

/// Returns the unacked value each attempt (by token) holds (empty when not
/// held).
async fn peek(inner: &Inner, tokens: &[u64]) -> Result<Vec<Vec<u8>>, Error> {
    let s = scripts();
    let mut inv = invocation(
        &s.peek,
        &inner.keys,
        inner.cfg.visibility_timeout.as_secs_f64(),
    );
    for token in tokens {
        inv.arg(*token);
    }
    let mut conn = inner.conn.manager();
    let reply: Value = inv
        .invoke_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "reading held messages"))?;
    let Value::Array(parts) = reply else {
        return Ok(Vec::new());
    };
    Ok(parts
        .into_iter()
        .map(|v| bytes(v).unwrap_or_default())
        .collect())
}

/// Extends leases by `by` from now.
pub(crate) async fn extend(
    inner: &Inner,
    leases: &[Lease],
    by: Duration,
) -> Result<Vec<LeaseStatus>, Error> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let s = scripts();
    let mut inv = invocation(
        &s.extend,
        &inner.keys,
        inner.cfg.visibility_timeout.as_secs_f64(),
    );
    inv.arg(by.as_secs_f64());
    for l in leases {
        inv.arg(l.token).arg(l.id.as_str());
    }
    let mut conn = inner.conn.manager();
    let reply: Value = inv
        .invoke_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "extending leases"))?;
    let Value::Array(parts) = reply else {
        return Err(Error::new(ErrorKind::Other, "unexpected reply from extend"));
    };
    Ok(parts
        .iter()
        .map(|v| match int(v) {
            Some(1) => LeaseStatus::Held,
            Some(2) => LeaseStatus::Revoked,
            _ => LeaseStatus::Lost,
        })
        .collect())
}
