//! Publishing: each message gets a fresh delivery tag and kombu's envelope,
//! and the whole batch goes to the server in one script call, or, when
//! every message is ready and no queue length is capped, in one
//! `MULTI`/`EXEC` of plain commands (as atomic, and it spares the server
//! copying and hashing every envelope into Lua).
//!
//! A ready message is `LPUSH`ed onto its queue's list for its priority step,
//! as kombu does. A message whose eta lies ahead goes straight into its
//! queue's delayed set and kombu's `unacked` (see the crate docs), unless
//! `eta_to_list` is set: then it is `LPUSH`ed like any other, as Python
//! producers do, and a celeriac fetch moves it to the delayed set on claim.

use std::time::Duration;

use celeriac_core::{Error, ErrorKind, Message};
use chrono::{DateTime, Utc};

use crate::conn::redis_error;
use crate::keys::Keys;
use crate::scripts::{invocation, scripts};
use crate::{envelope, Inner};

/// The most messages one script call carries; a larger batch is published
/// in several calls (each all or none).
const CHUNK: usize = 20_000;

/// How long past its eta a held delayed message waits for a celeriac fetch
/// before any sweep (kombu's or celeriac's) restores it to its list.
pub(crate) const DELAY_GRACE: Duration = Duration::from_secs(10);

/// One message, ready for the script.
struct Item {
    kind: &'static str,
    key: String,
    tag: String,
    eta: String,
    index_score: String,
    value: Vec<u8>,
}

/// Returns the unacked value kombu keeps for a message it holds:
/// `[envelope, exchange, routing_key]`.
pub(crate) fn unacked_value(env: &[u8], exchange: &str, routing_key: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(env.len() + exchange.len() + routing_key.len() + 12);
    v.push(b'[');
    v.extend_from_slice(env);
    v.extend_from_slice(b", ");
    // Serializing a &str cannot fail.
    let _ = serde_json::to_writer(&mut v, exchange);
    v.extend_from_slice(b", ");
    let _ = serde_json::to_writer(&mut v, routing_key);
    v.push(b']');
    v
}

/// Returns unix seconds with microseconds.
pub(crate) fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

/// Returns the unacked_index score that keeps a delayed message from any
/// sweep until `grace` past its eta.
pub(crate) fn held_score(eta: f64, vt: Duration) -> f64 {
    (eta + DELAY_GRACE.as_secs_f64() - vt.as_secs_f64()).ceil()
}

/// Prepares one message for publish.lua (or as a retry in settle.lua).
pub(crate) fn prepare(
    inner: &Inner,
    m: &Message,
    now: DateTime<Utc>,
) -> Result<[Vec<u8>; 6], Error> {
    let it = item(&inner.keys, inner, m, now)?;
    Ok([
        it.kind.as_bytes().to_vec(),
        it.key.into_bytes(),
        it.tag.into_bytes(),
        it.eta.into_bytes(),
        it.index_score.into_bytes(),
        it.value,
    ])
}

fn item(keys: &Keys, inner: &Inner, m: &Message, now: DateTime<Utc>) -> Result<Item, Error> {
    let queue = m.queue();
    if queue.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("task {} has no queue (empty routing key)", m.id()),
        ));
    }
    let tag = uuid::Uuid::new_v4().to_string();
    let env = envelope::encode(m, &tag)?;
    match m.headers.eta.filter(|eta| *eta > now) {
        Some(eta) if !inner.cfg.eta_to_list => {
            let eta = unix(eta);
            Ok(Item {
                kind: "d",
                key: keys.delayed(queue),
                tag,
                eta: format!("{eta:.6}"),
                index_score: format!("{:.6}", held_score(eta, inner.cfg.visibility_timeout)),
                value: unacked_value(&env, &m.properties.delivery_info.exchange, queue),
            })
        }
        _ => Ok(Item {
            kind: "r",
            key: keys.list_for(queue, m.priority()),
            tag,
            eta: String::new(),
            index_score: String::new(),
            value: env,
        }),
    }
}

/// Publishes ready messages with one `MULTI`/`EXEC`: what publish.lua
/// writes for them (kombu's bindings, the queue set, one `LPUSH` per run
/// of messages to the same list, so they are consumed in order).
async fn publish_ready(
    inner: &Inner,
    queues: &[(&str, usize)],
    items: &[Item],
) -> Result<(), Error> {
    let keys = &inner.keys;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (q, _) in queues {
        // kombu's anonymous-exchange binding (celery-protocol.md 4.3).
        let member = format!("{q}{sep}{sep}{q}", sep = keys.sep);
        pipe.sadd(keys.binding(q), &member).ignore();
        pipe.sadd(keys.binding_permanent(q), &member).ignore();
        pipe.sadd(&keys.queues, *q).ignore();
    }
    let mut start = 0;
    while start < items.len() {
        let key = &items[start].key;
        let end = items[start..]
            .iter()
            .position(|it| it.key != *key)
            .map_or(items.len(), |n| start + n);
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(key);
        for it in &items[start..end] {
            cmd.arg(&it.value);
        }
        pipe.add_command(cmd).ignore();
        start = end;
    }
    let mut conn = inner.conn.manager();
    let () = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "publishing"))?;
    Ok(())
}

/// Publishes a batch (see the module docs).
pub(crate) async fn publish(inner: &Inner, messages: Vec<Message>) -> Result<(), Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    for chunk in messages.chunks(CHUNK) {
        // Queues in first-seen order, with their counts.
        let mut queues: Vec<(&str, usize)> = Vec::new();
        for m in chunk {
            match queues.iter_mut().find(|(q, _)| *q == m.queue()) {
                Some((_, n)) => *n += 1,
                None => queues.push((m.queue(), 1)),
            }
        }
        let items = chunk
            .iter()
            .map(|m| item(&inner.keys, inner, m, now))
            .collect::<Result<Vec<_>, _>>()?;
        if inner.cfg.max_queue_length.is_none() && items.iter().all(|it| it.kind == "r") {
            publish_ready(inner, &queues, &items).await?;
            continue;
        }
        let s = scripts();
        let mut inv = invocation(
            &s.publish,
            &inner.keys,
            inner.cfg.visibility_timeout.as_secs_f64(),
        );
        inv.arg(inner.cfg.max_queue_length.unwrap_or(0))
            .arg(queues.len());
        for (q, n) in &queues {
            inv.arg(*q).arg(*n);
        }
        for it in &items {
            inv.arg(it.kind)
                .arg(&it.key)
                .arg(&it.tag)
                .arg(&it.eta)
                .arg(&it.index_score)
                .arg(&it.value);
        }
        let mut conn = inner.conn.manager();
        let reply: redis::Value = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, "publishing"))?;
        if let redis::Value::Array(full) = reply {
            let queue: String = full
                .first()
                .and_then(|v| redis::from_redis_value(v.clone()).ok())
                .unwrap_or_default();
            let waiting: u64 = full
                .get(1)
                .and_then(|v| redis::from_redis_value(v.clone()).ok())
                .unwrap_or(0);
            let limit = inner.cfg.max_queue_length.unwrap_or(0);
            return Err(Error::new(
                ErrorKind::QueueFull,
                format!(
                    "queue `{queue}` is full: it holds {waiting} of at most {limit} messages, \
                     and the batch would add more"
                ),
            ));
        }
    }
    Ok(())
}
