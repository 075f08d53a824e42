//! kombu's visibility sweep: messages whose lease ended go back to the
//! front of their lists, marked redelivered.
//!
//! It runs under kombu's lock (`SET unacked_mutex <token> NX PX <expire>`,
//! released by compare-and-delete), at the first fetch of a handle and
//! whenever a claim reports an ended lease. It reads the due entries
//! (`due.lua`), decides in Rust what each needs, and applies the decisions
//! with `restore.lua`, which re-checks each entry's score so that a claim,
//! ack or extend in between always wins.
//!
//! Decisions, per due entry:
//!
//! * its message has an eta still ahead: someone (a Python worker, say) is
//!   holding it for its eta, so the entry is re-scored to expire only after
//!   that eta; it is not restored (this is what keeps a long ETA from being
//!   run twice, `celery-protocol.md` §4.5 and test plan P9);
//! * otherwise it is restored with kombu's rules: `headers.redelivered` and
//!   `delivery_info.redelivered` set, pushed with `RPUSH` onto the list of
//!   its priority for each queue its exchange routes to (the anonymous
//!   exchange routes to the queue named by the routing key);
//! * an entry whose value is missing is dropped; one that is not
//!   `[envelope, exchange, routing_key]` becomes a dead letter.

use celeriac_core::{Error, ErrorKind};
use chrono::Utc;
use redis::Value;
use serde_json::value::RawValue;

use crate::conn::redis_error;
use crate::fetch::bytes;
use crate::publish::{held_score, unix};
use crate::scripts::{invocation, scripts};
use crate::{envelope, Inner};

/// Due entries handled per round trip.
const BATCH: usize = 200;

/// Runs the sweep; returns how many entries it acted on (0 when another
/// process holds the lock).
pub(crate) async fn sweep(inner: &Inner) -> Result<u64, Error> {
    let token = uuid::Uuid::new_v4().to_string();
    let expire_ms = u64::try_from(inner.cfg.unacked_mutex_expire.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut conn = inner.conn.manager();
    let got: Option<String> = redis::cmd("SET")
        .arg(&inner.keys.unacked_mutex)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(expire_ms)
        .query_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "taking the restore lock"))?;
    if got.is_none() {
        return Ok(0);
    }
    let swept = restore_all(inner).await;
    let unlocked: Result<i64, _> = scripts()
        .unlock
        .key(&inner.keys.unacked_mutex)
        .arg(&token)
        .invoke_async(&mut conn)
        .await;
    if let Err(e) = unlocked {
        tracing::warn!(error = %e, "releasing the restore lock failed; it expires by itself");
    }
    swept
}

async fn restore_all(inner: &Inner) -> Result<u64, Error> {
    let mut total = 0u64;
    loop {
        let due = due(inner).await?;
        if due.is_empty() {
            return Ok(total);
        }
        let full = due.len() >= BATCH;
        let mut args: Vec<Vec<u8>> = Vec::new();
        for (tag, score, value) in due {
            decide(inner, &mut args, tag, score, &value).await?;
        }
        let s = scripts();
        let mut inv = invocation(
            &s.restore,
            &inner.keys,
            inner.cfg.visibility_timeout.as_secs_f64(),
        );
        for a in &args {
            inv.arg(a);
        }
        let mut conn = inner.conn.manager();
        let n: u64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, "restoring messages"))?;
        total += n;
        if !full || n == 0 {
            return Ok(total);
        }
    }
}

/// Returns up to [`BATCH`] due entries: (tag, score, value).
async fn due(inner: &Inner) -> Result<Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>, Error> {
    let s = scripts();
    let mut inv = invocation(
        &s.due,
        &inner.keys,
        inner.cfg.visibility_timeout.as_secs_f64(),
    );
    inv.arg(BATCH);
    let mut conn = inner.conn.manager();
    let reply: Value = inv
        .invoke_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "reading ended leases"))?;
    let Value::Array(parts) = reply else {
        return Err(Error::new(
            ErrorKind::Other,
            "unexpected reply from due.lua",
        ));
    };
    let mut it = parts.into_iter().map(|v| bytes(v).unwrap_or_default());
    let mut out = Vec::new();
    while let (Some(tag), Some(score), Some(value)) = (it.next(), it.next(), it.next()) {
        out.push((tag, score, value));
    }
    Ok(out)
}

/// Appends `restore.lua`'s arguments for one due entry.
async fn decide(
    inner: &Inner,
    args: &mut Vec<Vec<u8>>,
    tag: Vec<u8>,
    score: Vec<u8>,
    value: &[u8],
) -> Result<(), Error> {
    let mut push = |rescore: String, env: Vec<u8>, meta: String, dq: String, lists: Vec<String>| {
        args.push(tag.clone());
        args.push(score.clone());
        args.push(rescore.into_bytes());
        args.push(env);
        args.push(meta.into_bytes());
        args.push(dq.into_bytes());
        args.push(lists.len().to_string().into_bytes());
        args.extend(lists.into_iter().map(String::into_bytes));
    };
    if value.is_empty() {
        push(
            String::new(),
            Vec::new(),
            String::new(),
            String::new(),
            Vec::new(),
        );
        return Ok(());
    }
    let Ok((env, exchange, routing_key)) =
        serde_json::from_slice::<(&RawValue, String, String)>(value)
    else {
        let meta = serde_json::json!({
            "queue": "",
            "reason": "an unacked entry is not [envelope, exchange, routing_key]",
            "at": unix(Utc::now()),
            "wrapped": false,
        });
        push(
            String::new(),
            Vec::new(),
            meta.to_string(),
            String::new(),
            Vec::new(),
        );
        return Ok(());
    };
    let env = env.get().as_bytes();
    let decoded = envelope::decode(env, &routing_key);
    let now = Utc::now();
    let rescore = match &decoded.message {
        Ok(m) => m
            .headers
            .eta
            .filter(|eta| *eta > now)
            .map(|eta| format!("{:.6}", held_score(unix(eta), inner.cfg.visibility_timeout)))
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let queues = route(inner, &exchange, &routing_key).await?;
    let lists = queues
        .iter()
        .map(|q| inner.keys.list_for(q, decoded.priority))
        .collect();
    let again = envelope::redelivered(env).unwrap_or_else(|| env.to_vec());
    push(rescore, again, String::new(), routing_key, lists);
    Ok(())
}

/// Returns the queues a message published to `exchange` with
/// `routing_key` goes to (kombu's `_lookup`).
async fn route(inner: &Inner, exchange: &str, routing_key: &str) -> Result<Vec<String>, Error> {
    if exchange.is_empty() {
        return Ok(vec![routing_key.to_owned()]);
    }
    let mut conn = inner.conn.manager();
    let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
        .arg(inner.keys.binding(exchange))
        .query_async(&mut conn)
        .await
        .map_err(|e| redis_error(e, "reading a binding table"))?;
    let sep = inner.keys.sep.as_bytes();
    let mut all = Vec::new();
    let mut matching = Vec::new();
    for m in &members {
        let m = String::from_utf8_lossy(m);
        let parts: Vec<&str> = m
            .split(std::str::from_utf8(sep).unwrap_or("\x06\x16"))
            .collect();
        if let [rk, _pattern, queue] = parts[..] {
            all.push(queue.to_owned());
            if rk == routing_key {
                matching.push(queue.to_owned());
            }
        }
    }
    Ok(if !matching.is_empty() {
        matching
    } else if !all.is_empty() {
        all
    } else {
        vec![routing_key.to_owned()]
    })
}
