//! [`ResultStore`]: store, get, wait and forget over one Redis database.
//!
//! Shared by [`RedisBackend`](super::RedisBackend) and the broker (which
//! stores results in its own database): both build one from a connection
//! manager, a client for Pub/Sub, the Celery `global_keyprefix` and the
//! expiry.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{Error, ErrorKind, TaskId, TaskResult};
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use super::codec::{decode_result, encode_result, result_key, result_key_prefix};
use super::hub::{Event, Hub};
use super::script::store_script;

/// Results in one Redis database, written and read as Celery does.
/// Cheap to clone: clones share the connection and the Pub/Sub hub.
#[derive(Clone)]
pub(crate) struct ResultStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    key_prefix: String,
    expiry: Option<Duration>,
    script: redis::Script,
    hub: Hub,
}

impl std::fmt::Debug for ResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStore")
            .field("key_prefix", &self.inner.key_prefix)
            .field("expiry", &self.inner.expiry)
            .finish_non_exhaustive()
    }
}

impl ResultStore {
    /// Returns a store over `conn`'s database.
    ///
    /// * `pubsub_client` opens the one Pub/Sub connection `wait` uses (on
    ///   the first wait); it must point at the same server and database.
    /// * `global_keyprefix` is Celery's
    ///   `result_backend_transport_options["global_keyprefix"]` (`""` for
    ///   none); `_` is appended unless it ends in `:_-.`, as Celery does.
    /// * `expiry` is Celery's `result_expires`; `None` (or zero) keeps
    ///   results forever.
    pub(crate) fn new(
        conn: ConnectionManager,
        pubsub_client: redis::Client,
        global_keyprefix: &str,
        expiry: Option<Duration>,
    ) -> Self {
        ResultStore {
            inner: Arc::new(Inner {
                conn,
                key_prefix: result_key_prefix(global_keyprefix),
                expiry: expiry.filter(|d| !d.is_zero()),
                script: store_script(),
                hub: Hub::new(pubsub_client),
            }),
        }
    }

    /// Returns the key (and channel) of task `id`'s result.
    pub(crate) fn key(&self, id: &TaskId) -> String {
        result_key(&self.inner.key_prefix, id)
    }

    /// Returns the expiry in milliseconds, `0` for none: the third argument
    /// of `celeriac_store_result` in Lua.
    pub(crate) fn expiry_ms(&self) -> u64 {
        self.inner.expiry.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        })
    }

    /// Returns the configured expiry (`None`: results are kept).
    pub(crate) fn expiry(&self) -> Option<Duration> {
        self.inner.expiry
    }

    /// Returns how many Pub/Sub connections `wait` has opened so far.
    pub(crate) fn pubsub_connects(&self) -> u64 {
        self.inner.hub.connects()
    }

    /// Stores `r` (§6.3): unless a `SUCCESS` is already stored, writes it
    /// with the expiry and publishes it, atomically. Returns `false` when
    /// the guard kept a stored `SUCCESS`.
    pub(crate) async fn store(&self, r: &TaskResult) -> Result<bool, Error> {
        let payload = encode_result(r)?;
        let key = self.key(&r.task_id);
        let mut conn = self.inner.conn.clone();
        let wrote: i64 = self
            .inner
            .script
            .key(&key)
            .arg(payload)
            .arg(self.expiry_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, format!("storing the result of task {}", r.task_id)))?;
        Ok(wrote == 1)
    }

    /// Reads task `id`'s result; `None` when nothing is stored (`PENDING`).
    pub(crate) async fn get(&self, id: &TaskId) -> Result<Option<TaskResult>, Error> {
        let mut conn = self.inner.conn.clone();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.key(id))
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, format!("reading the result of task {id}")))?;
        raw.map(|raw| decode_result(&raw).map_err(|e| in_key(e, id)))
            .transpose()
    }

    /// Deletes task `id`'s result.
    pub(crate) async fn forget(&self, id: &TaskId) -> Result<(), Error> {
        let mut conn = self.inner.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.key(id))
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, format!("deleting the result of task {id}")))?;
        Ok(())
    }

    /// Waits for a ready result as Celery's client does (§6.4): subscribe
    /// to the key's channel first, then `GET` (a result stored before the
    /// wait), then read messages until a ready state or the timeout. After
    /// a reconnection of the Pub/Sub connection it reads the key again.
    ///
    /// Returns the latest result seen when the time runs out (or `None`).
    /// Values that do not decode (a Python custom state, say) do not end
    /// the wait; the final read at a timeout reports them.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads; dropping it deregisters the waiter.
    pub(crate) async fn wait(
        &self,
        id: &TaskId,
        timeout: Duration,
    ) -> Result<Option<TaskResult>, Error> {
        let deadline = Instant::now() + timeout;
        let mut watch = self.inner.hub.watch(&self.key(id));
        let mut latest: Option<TaskResult> = None;
        // True once a GET succeeded after the latest (re)subscription, so
        // nothing can have been missed since.
        let mut synced = false;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, watch.recv()).await {
            match event {
                Event::Subscribed => match tokio::time::timeout_at(deadline, self.get(id)).await {
                    Ok(Ok(found)) => {
                        synced = true;
                        if let Some(r) = found {
                            if r.status.is_ready() {
                                return Ok(Some(r));
                            }
                            latest = Some(r);
                        }
                    }
                    Ok(Err(e)) => {
                        synced = false;
                        tracing::debug!(task = %id, error = %e.chain_text(), "result read during wait failed");
                    }
                    Err(_) => break,
                },
                Event::Message(payload) => match decode_result(&payload) {
                    Ok(r) if r.task_id == *id => {
                        if r.status.is_ready() {
                            return Ok(Some(r));
                        }
                        latest = Some(r);
                    }
                    Ok(r) => {
                        tracing::debug!(task = %id, other = %r.task_id, "ignoring a result for another task on this channel");
                    }
                    Err(e) => {
                        tracing::warn!(task = %id, error = %e.chain_text(), "ignoring an unreadable result message");
                    }
                },
            }
        }
        drop(watch);
        if synced {
            return Ok(latest);
        }
        // Never got a consistent view (not connected, or the read failed):
        // one last read says what is stored, or why it cannot be read.
        match self.get(id).await {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => Ok(latest),
            Err(e) if latest.is_some() => {
                tracing::debug!(task = %id, error = %e.chain_text(), "final result read failed");
                Ok(latest)
            }
            Err(e) => Err(e),
        }
    }
}

/// Adds the task id to a decoding error.
fn in_key(e: Error, id: &TaskId) -> Error {
    let kind = e.kind();
    Error::with_source(kind, format!("result of task {id} cannot be read"), e)
}

/// Maps a Redis error: connection problems are transient.
pub(crate) fn redis_error(e: redis::RedisError, doing: String) -> Error {
    let kind = if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Io
                | redis::ErrorKind::Server(
                    redis::ServerErrorKind::BusyLoading
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::ClusterDown
                        | redis::ServerErrorKind::MasterDown
                        | redis::ServerErrorKind::ReadOnly
                )
        ) {
        ErrorKind::Transient
    } else {
        ErrorKind::Other
    };
    Error::with_source(kind, format!("redis: {doing} failed"), e)
}
