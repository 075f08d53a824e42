//! Operator commands: revoke, queue statistics, purge and dead letters.
//! None is on the publish, claim or settle path; several scan.
//!
//! A dead letter is one entry of the `celeriac.dead` list: a line of JSON
//! metadata (`id`, `queue`, `reason`, `at`, `wrapped`), a newline, then the
//! bytes as they were held: kombu's unacked value
//! `[envelope, exchange, routing_key]` when `wrapped`, else the raw list
//! entry (one that was not even JSON).

use std::collections::{BTreeSet, HashMap};

use celeriac_core::{codec, DeadLetter, Error, ErrorKind, QueueStats, Revoked, TaskId};
use chrono::DateTime;
use redis::Value;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::conn::redis_error;
use crate::fetch::{bytes, int, unwrap_value};
use crate::scripts::{invocation, scripts};
use crate::{envelope, Inner};

/// How long a revocation of a running or unknown task is remembered
/// (Celery's worker keeps revoked ids three hours).
const REMEMBER_SECS: u64 = 3 * 3600;

/// The most revocations remembered (Celery's worker keeps 50,000).
const REMEMBER_MAX: u64 = 50_000;

/// Runs `admin.lua` with a command and its arguments.
async fn admin(inner: &Inner, args: &[&[u8]]) -> Result<Value, Error> {
    let s = scripts();
    let mut inv = invocation(
        &s.admin,
        &inner.keys,
        inner.cfg.visibility_timeout.as_secs_f64(),
    );
    for a in args {
        inv.arg(*a);
    }
    let mut conn = inner.conn.manager();
    inv.invoke_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "running an admin command"))
}

fn count(v: &Value) -> Result<u64, Error> {
    int(v)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| Error::new(ErrorKind::Other, "unexpected reply from admin.lua"))
}

/// Returns every queue known here: those celeriac published to or read
/// from, and those with a kombu binding table.
pub(crate) async fn known_queues(inner: &Inner) -> Result<Vec<String>, Error> {
    let mut conn = inner.conn.manager();
    let mut out: BTreeSet<String> = redis::cmd("SMEMBERS")
        .arg(&inner.keys.queues)
        .query_async::<Vec<String>>(&mut conn)
        .await
        .map_err(|e| redis_error(e, "listing queues"))?
        .into_iter()
        .collect();
    let pattern = inner.keys.binding_pattern();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, "scanning binding tables"))?;
        for k in &keys {
            if let Some(q) = inner.keys.queue_of_binding(k) {
                if !q.ends_with(".reply.celery.pidbox") && !q.contains("celery.pidbox") {
                    out.insert(q.to_owned());
                }
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(out.into_iter().collect())
}

/// Revokes a task (see `admin.lua`).
pub(crate) async fn revoke(inner: &Inner, id: &TaskId) -> Result<Revoked, Error> {
    let queues = known_queues(inner).await?;
    let remember = REMEMBER_SECS.to_string();
    let cap = REMEMBER_MAX.to_string();
    let mut args: Vec<&[u8]> = vec![
        b"revoke",
        id.as_str().as_bytes(),
        remember.as_bytes(),
        cap.as_bytes(),
    ];
    args.extend(queues.iter().map(|q| q.as_bytes()));
    Ok(match count(&admin(inner, &args).await?)? {
        2 => Revoked::Running,
        1 => Revoked::Removed,
        _ => Revoked::Unknown,
    })
}

/// Removes a queue's waiting messages.
pub(crate) async fn purge(inner: &Inner, queue: &str) -> Result<u64, Error> {
    count(&admin(inner, &[b"purge", queue.as_bytes()]).await?)
}

/// Returns every known queue's depth.
pub(crate) async fn queue_stats(inner: &Inner) -> Result<Vec<QueueStats>, Error> {
    let queues = known_queues(inner).await?;
    let mut conn = inner.conn.manager();
    let mut pipe = redis::pipe();
    for q in &queues {
        for key in inner.keys.lists(q) {
            pipe.cmd("LLEN").arg(key);
        }
        pipe.cmd("ZCARD").arg(inner.keys.delayed(q));
    }
    let counts: Vec<u64> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "counting queues"))?;
    // Messages held (leased or waiting for their eta), by routing key.
    let mut held: HashMap<String, u64> = HashMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, entries): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(&inner.keys.unacked)
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, "scanning unacked"))?;
        for value in entries.iter().skip(1).step_by(2) {
            if let Ok((_, _, rk)) = serde_json::from_slice::<(&RawValue, String, String)>(value) {
                *held.entry(rk).or_default() += 1;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let per = inner.keys.steps.len() + 1;
    Ok(queues
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let c = &counts[i * per..(i + 1) * per];
            let ready: u64 = c[..per - 1].iter().sum();
            let delayed = c[per - 1];
            let leased = held.get(q).copied().unwrap_or(0).saturating_sub(delayed);
            QueueStats {
                queue: q.clone(),
                ready,
                delayed,
                leased,
            }
        })
        .collect())
}

/// The metadata line of a dead letter.
#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    at: f64,
    #[serde(default)]
    wrapped: bool,
}

/// One dead letter as stored, read back.
struct Stored {
    entry: Vec<u8>,
    letter: DeadLetter,
    /// The envelope, when it decodes to a message (replayable).
    envelope: Option<Vec<u8>>,
    priority: u8,
}

fn read(entry: Vec<u8>) -> Stored {
    let split = entry
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(entry.len());
    let meta: Meta = serde_json::from_slice(&entry[..split]).unwrap_or(Meta {
        id: None,
        queue: String::new(),
        reason: "unreadable dead letter".to_owned(),
        at: 0.0,
        wrapped: false,
    });
    let rest = entry.get(split + 1..).unwrap_or(&[]);
    let env = if meta.wrapped {
        unwrap_value(rest)
    } else {
        rest
    };
    let decoded = envelope::decode(env, &meta.queue);
    let at = DateTime::from_timestamp_micros((meta.at * 1e6) as i64).unwrap_or_default();
    let (id, task, raw, replayable) = match &decoded.message {
        Ok(m) => (
            m.id().clone(),
            m.headers.task.clone(),
            codec::encode(m).unwrap_or_else(|_| env.to_vec()),
            true,
        ),
        Err(_) => (
            decoded
                .id
                .clone()
                .or(meta.id.map(TaskId::from))
                .unwrap_or_else(|| TaskId::from("")),
            decoded.task.clone().unwrap_or_default(),
            env.to_vec(),
            false,
        ),
    };
    let envelope = replayable.then(|| env.to_vec());
    Stored {
        letter: DeadLetter {
            id,
            task,
            queue: meta.queue,
            reason: meta.reason,
            at,
            raw,
        },
        envelope,
        priority: decoded.priority,
        entry,
    }
}

async fn stored(inner: &Inner, limit: usize) -> Result<Vec<Stored>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let stop = i64::try_from(limit).map_or(-1, |n| n - 1);
    let mut conn = inner.conn.manager();
    let entries: Vec<Value> = redis::cmd("LRANGE")
        .arg(&inner.keys.dead)
        .arg(0)
        .arg(stop)
        .query_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "listing dead letters"))?;
    Ok(entries.into_iter().filter_map(bytes).map(read).collect())
}

/// Lists up to `limit` dead letters, oldest first.
pub(crate) async fn dead_letters(inner: &Inner, limit: usize) -> Result<Vec<DeadLetter>, Error> {
    Ok(stored(inner, limit)
        .await?
        .into_iter()
        .map(|s| s.letter)
        .collect())
}

/// Puts dead letters back on their queues.
pub(crate) async fn replay(inner: &Inner, ids: Option<&[TaskId]>) -> Result<u64, Error> {
    let all = stored(inner, usize::MAX).await?;
    let mut args: Vec<Vec<u8>> = vec![b"dead_replay".to_vec()];
    for s in all {
        if ids.is_some_and(|ids| !ids.contains(&s.letter.id)) {
            continue;
        }
        let Some(env) = s.envelope else { continue };
        if s.letter.queue.is_empty() {
            continue;
        }
        args.push(s.entry);
        args.push(
            inner
                .keys
                .list_for(&s.letter.queue, s.priority)
                .into_bytes(),
        );
        args.push(env);
    }
    if args.len() == 1 {
        return Ok(0);
    }
    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    count(&admin(inner, &refs).await?)
}

/// Deletes every dead letter.
pub(crate) async fn purge_dead_letters(inner: &Inner) -> Result<u64, Error> {
    count(&admin(inner, &[b"dead_purge"]).await?)
}
