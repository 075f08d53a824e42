//! Waking an idle fetch the moment a message lands, without polling.
//!
//! Lua scripts cannot block, and Python producers only `LPUSH`, so the
//! signal is the list itself: for each list key a fetch reads, a dedicated
//! connection runs `BLMOVE key key RIGHT RIGHT timeout`. With the same key
//! as source and destination it moves the last element onto itself (a
//! no-op that leaves the list as it was), and it returns as soon as the
//! list is non-empty. The first one to return wakes the fetch, which claims
//! with the claim script; the others are released with `CLIENT UNBLOCK`.
//! A timer bounds the wait (the next eta or lease end, or the fetch's own
//! deadline).
//!
//! The connections come from a pool and go back to it once their command
//! has completed; a wait that is cancelled drops its connections instead
//! (closing them ends their blocked commands on the server).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::Error;
use futures::future::{join_all, select_all};
use tokio::time::Instant;

use crate::conn::Blocker;
use crate::Inner;

/// Waits shorter than this are slept, not blocked on.
const MIN_BLOCK: Duration = Duration::from_millis(2);

/// How long past the timer the blocked commands may take to come back
/// once unblocked before their connections are given up.
const UNBLOCK_GRACE: Duration = Duration::from_secs(2);

type Blocked = Pin<Box<dyn Future<Output = bool> + Send>>;

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
    let mut blockers: Vec<Blocker> = Vec::with_capacity(keys.len());
    for _ in keys {
        blockers.push(inner.conn.blocker().await?);
    }
    // Redis takes fractional seconds and times blocked commands out to the
    // millisecond; the timer is only a safety net for a server that does
    // not answer.
    let secs = (until - Instant::now()).as_secs_f64().max(0.001);
    let futs: Vec<Blocked> = blockers
        .iter()
        .zip(keys)
        .map(|(b, key)| {
            let mut conn = b.conn.clone();
            let mut cmd = redis::cmd("BLMOVE");
            cmd.arg(key).arg(key).arg("RIGHT").arg("RIGHT").arg(secs);
            Box::pin(async move { cmd.query_async::<Option<Vec<u8>>>(&mut conn).await.is_ok() })
                as Blocked
        })
        .collect();
    let mut rest;
    let mut healthy = vec![true; blockers.len()];
    let woke_first;
    tokio::select! {
        (ok, idx, others) = select_all(futs) => {
            healthy[idx] = ok;
            rest = others;
            woke_first = Some(idx);
        }
        () = tokio::time::sleep_until(until + UNBLOCK_GRACE) => {
            rest = Vec::new();
            woke_first = None;
        }
    }
    let Some(first) = woke_first else {
        // The server did not answer in time: unblock every command and
        // give up the connections (their replies are still due on them).
        unblock(inner, blockers.iter().map(|b| b.id)).await;
        return Ok(());
    };
    // The fetch goes on at once; the other commands are unblocked and
    // their connections pooled again in the background.
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        let others: Vec<usize> = (0..blockers.len()).filter(|i| *i != first).collect();
        if !others.is_empty() {
            unblock(&inner, others.iter().map(|i| blockers[*i].id)).await;
            let done = tokio::time::timeout(UNBLOCK_GRACE, join_all(rest.drain(..))).await;
            match done {
                Ok(results) => {
                    for (i, ok) in others.iter().zip(results) {
                        healthy[*i] = ok;
                    }
                }
                Err(_) => {
                    for i in &others {
                        healthy[*i] = false;
                    }
                }
            }
        }
        for (b, ok) in blockers.into_iter().zip(healthy) {
            if ok {
                inner.conn.give_back(b);
            }
        }
    });
    Ok(())
}

/// Ends blocked commands early (`CLIENT UNBLOCK`), in one round trip.
async fn unblock(inner: &Inner, ids: impl Iterator<Item = i64>) {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("CLIENT").arg("UNBLOCK").arg(id).ignore();
    }
    let mut conn = inner.conn.manager();
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        tracing::debug!(error = %e, "CLIENT UNBLOCK failed; the blocked commands time out instead");
    }
}
