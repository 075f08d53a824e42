//! The Redis result backend, wire-compatible with Celery's
//! (`celery-protocol.md` §6).
//!
//! A task's result is the Redis string `<prefix>celery-task-meta-<id>`
//! holding Celery's JSON (`status`, `result`, `traceback`, `children`,
//! `date_done`, `task_id`). Every store publishes the same JSON on the
//! Pub/Sub channel of the same name, so Python's `AsyncResult.get()` and
//! celeriac's `wait` wake at once; a stored `SUCCESS` is never overwritten
//! (Celery's guard against late duplicates). Results expire after
//! `result_expires` (one day by default).
//!
//! `wait` subscribes first, then reads the key, then listens — the order
//! Celery's client uses — over **one** Pub/Sub connection per handle shared
//! by every concurrent waiter. That connection reconnects by itself and
//! re-reads every waited key after a reconnection.
//!
//! # URL
//!
//! `redis://[user:password@]host[:port][/db][?result_expires=SECS&global_keyprefix=P]`,
//! or `rediss://` for TLS (rustls with the system's roots;
//! `rediss://host/#insecure` is not supported). `result_expires=0` keeps
//! results forever. `global_keyprefix` is Celery's
//! `result_backend_transport_options["global_keyprefix"]`: `_` is appended
//! unless it ends in one of `:_-.`, as Celery does.
//!
//! # Example
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), celeriac_core::Error> {
//! use std::time::Duration;
//! use celeriac_core::{ResultBackend, TaskId, TaskResult, TaskState};
//! use celeriac_redis::RedisBackend;
//!
//! let results = RedisBackend::from_url("redis://127.0.0.1:6379/1?result_expires=3600").await?;
//! let id = TaskId::new();
//! results.store(TaskResult::success(id.clone(), serde_json::json!(5))).await?;
//! let r = results.wait(&id, Duration::from_secs(5)).await?;
//! assert_eq!(r.map(|r| r.status), Some(TaskState::Success));
//! # Ok(()) }
//! ```
//!
//! # Storing a result from another Lua script (for the broker)
//!
//! The broker writes a result in the same script as the acknowledgement.
//! It keeps a `ResultStore` built with `ResultStore::new` (its own
//! `ConnectionManager`, a `redis::Client` for Pub/Sub, the result
//! `global_keyprefix` and the expiry) and:
//!
//! 1. embeds `script::STORE_RESULT_LUA` at the top of its script source
//!    (it defines the local function
//!    `celeriac_store_result(key, payload, expiry_ms)`, returning `1` when
//!    written and published, `0` when a stored `SUCCESS` was kept);
//! 2. passes `ResultStore::key(&id)` as one of its `KEYS`,
//!    `codec::encode_result(&result)?` and `ResultStore::expiry_ms()` as
//!    `ARGV` entries, and calls
//!    `celeriac_store_result(KEYS[k], ARGV[p], tonumber(ARGV[e]))` after its
//!    own checks (fencing) succeed;
//! 3. uses `ResultStore::get`, `ResultStore::wait` and
//!    `ResultStore::forget` for the rest of `ResultBackend`.
//!
//! A settle without a result passes nothing and skips the call.

pub(crate) mod codec;
mod hub;
pub(crate) mod script;
pub(crate) mod store;

use std::time::Duration;

use celeriac_core::backend::DEFAULT_RESULT_EXPIRY;
use celeriac_core::{Error, ErrorKind, ResultBackend, TaskId, TaskResult};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub(crate) use store::ResultStore;

/// How long one Redis command may take before it counts as failed. Long
/// enough for multi-megabyte results on a busy server.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a failed (re)connection is retried, with backoff from 100 ms,
/// before a command fails with a transient error (about 0.7 s in all).
const CONNECT_RETRIES: usize = 3;

/// A Celery-compatible Redis result backend.
///
/// Cheap to clone: clones share the connection and the Pub/Sub connection
/// used by [`ResultBackend::wait`]. See the [module docs](self) for the URL
/// and an example.
#[derive(Clone, Debug)]
pub struct RedisBackend {
    store: ResultStore,
}

impl RedisBackend {
    /// Connects to the result database at `url` (see the module docs for
    /// the options it reads).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bad URL or option,
    /// [`ErrorKind::Transient`] when the server cannot be reached.
    pub async fn from_url(url: &str) -> Result<Self, Error> {
        Self::builder(url).open().await
    }

    /// Returns a builder, to override what the URL says.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            result_expires: None,
            global_keyprefix: None,
        }
    }

    /// Returns how long results are kept (`None`: forever).
    pub fn result_expires(&self) -> Option<Duration> {
        self.store.expiry()
    }

    /// Returns the Redis key (and Pub/Sub channel) of task `id`'s result.
    pub fn key(&self, id: &TaskId) -> String {
        self.store.key(id)
    }

    /// Returns how many Pub/Sub connections this handle has opened for
    /// `wait`: `0` before the first wait, `1` after, plus one per
    /// reconnection. However many waits run at once, they share one.
    pub fn pubsub_connects(&self) -> u64 {
        self.store.pubsub_connects()
    }
}

/// Builds a [`RedisBackend`]; settings here override the URL's.
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    url: String,
    result_expires: Option<Option<Duration>>,
    global_keyprefix: Option<String>,
}

impl RedisBackendBuilder {
    /// Sets how long results are kept (`None` or zero: forever). Default:
    /// the URL's `result_expires`, else one day.
    pub fn result_expires(mut self, expiry: Option<Duration>) -> Self {
        self.result_expires = Some(expiry);
        self
    }

    /// Sets Celery's `global_keyprefix` for result keys. Default: the
    /// URL's `global_keyprefix`, else none.
    pub fn global_keyprefix(mut self, prefix: impl Into<String>) -> Self {
        self.global_keyprefix = Some(prefix.into());
        self
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bad URL or option,
    /// [`ErrorKind::Transient`] when the server cannot be reached.
    pub async fn open(self) -> Result<RedisBackend, Error> {
        let opts = ResultOptions::from_url(&self.url)?;
        let expiry = self.result_expires.unwrap_or(opts.result_expires);
        let prefix = self.global_keyprefix.unwrap_or(opts.global_keyprefix);
        let shown = redact(&self.url);
        if opts.tls {
            install_tls_provider();
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidInput,
                format!("`{shown}` is not a usable Redis URL"),
                e,
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(CONNECT_RETRIES)
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| store::redis_error(e, format!("connecting to {shown}")))?;
        Ok(RedisBackend {
            store: ResultStore::new(conn, client, &prefix, expiry),
        })
    }
}

/// The result options a URL carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResultOptions {
    /// `result_expires` (`None`: forever).
    pub(crate) result_expires: Option<Duration>,
    /// `global_keyprefix`, as given.
    pub(crate) global_keyprefix: String,
    /// True for `rediss://`.
    pub(crate) tls: bool,
}

impl ResultOptions {
    /// Reads `result_expires` (seconds; fractions allowed; `0`: forever)
    /// and `global_keyprefix` from a `redis://` or `rediss://` URL's query.
    pub(crate) fn from_url(raw: &str) -> Result<Self, Error> {
        let shown = redact(raw);
        let url = url::Url::parse(raw).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidInput,
                format!("`{shown}` is not a URL"),
                e,
            )
        })?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("`{shown}`: expected redis:// or rediss://, not {other}://"),
                ))
            }
        };
        let mut opts = ResultOptions {
            result_expires: Some(DEFAULT_RESULT_EXPIRY),
            global_keyprefix: String::new(),
            tls,
        };
        for (k, v) in url.query_pairs() {
            match &*k {
                "result_expires" => {
                    let secs: f64 = v.trim().parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0).ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidInput,
                            format!("`{shown}`: result_expires must be a number of seconds >= 0, not `{v}`"),
                        )
                    })?;
                    opts.result_expires = Duration::try_from_secs_f64(secs)
                        .ok()
                        .filter(|d| !d.is_zero());
                }
                "global_keyprefix" => opts.global_keyprefix = v.into_owned(),
                _ => {}
            }
        }
        Ok(opts)
    }
}

/// Returns the URL with its password hidden, for messages.
pub(crate) fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => raw.to_owned(),
    }
}

/// Makes rustls use *ring* unless the process chose a provider already.
fn install_tls_provider() {
    // An error means a provider is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ResultBackend for RedisBackend {
    async fn store(&self, result: TaskResult) -> Result<(), Error> {
        self.store.store(&result).await.map(|_| ())
    }

    async fn get(&self, id: &TaskId) -> Result<Option<TaskResult>, Error> {
        self.store.get(id).await
    }

    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<Option<TaskResult>, Error> {
        self.store.wait(id, timeout).await
    }

    async fn forget(&self, id: &TaskId) -> Result<(), Error> {
        self.store.forget(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_url_options() {
        let o = ResultOptions::from_url("redis://h:1/2").unwrap();
        assert_eq!(o.result_expires, Some(DEFAULT_RESULT_EXPIRY));
        assert_eq!(o.global_keyprefix, "");
        assert!(!o.tls);
        let o = ResultOptions::from_url(
            "rediss://:pw@h/0?result_expires=60&global_keyprefix=app%3A&x=1",
        )
        .unwrap();
        assert_eq!(o.result_expires, Some(Duration::from_secs(60)));
        assert_eq!(o.global_keyprefix, "app:");
        assert!(o.tls);
        let o = ResultOptions::from_url("redis://h?result_expires=0").unwrap();
        assert_eq!(o.result_expires, None);
        let o = ResultOptions::from_url("redis://h?result_expires=0.25").unwrap();
        assert_eq!(o.result_expires, Some(Duration::from_millis(250)));
        for bad in [
            "redis://h?result_expires=-1",
            "redis://h?result_expires=x",
            "amqp://h",
            "nope",
        ] {
            let e = ResultOptions::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<RedisBackend>();
    }
}
