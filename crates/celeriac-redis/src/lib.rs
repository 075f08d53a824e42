//! Redis broker and result backend for celeriac, wire-compatible with
//! Celery and kombu: Python and Rust producers and workers share one Redis.
//!
//! [`RedisBroker`] is a [`Broker`](celeriac_core::Broker) that keeps
//! kombu's layout (`celery-protocol.md` §4) and a
//! [`ResultBackend`](celeriac_core::ResultBackend) that writes Celery's
//! results (§6) in the same database; [`RedisBackend`] is the result
//! backend alone, for a broker elsewhere.
//!
//! ```no_run
//! use std::time::Duration;
//! use celeriac_core::{Broker, FetchRequest, Message, Settlement, TaskResult};
//! use celeriac_redis::RedisBroker;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), celeriac_core::Error> {
//! let broker = RedisBroker::from_url("redis://127.0.0.1:6379/0?visibility_timeout=3600").await?;
//! let message = Message::new("tasks.add", vec![2.into(), 3.into()], Default::default());
//! let id = message.id().clone();
//! broker.publish(vec![message]).await?;
//!
//! let req = FetchRequest {
//!     queues: vec!["celery".to_owned()].into(),
//!     max: 10,
//!     lease: Duration::from_secs(60),
//!     wait: Duration::from_secs(1),
//! };
//! for d in broker.fetch(&req).await? {
//!     let result = TaskResult::success(id.clone(), 5.into());
//!     broker.settle(&d.lease, Settlement::Ack { result: Some(result) }).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout on the server
//!
//! Exactly kombu's (`celery-protocol.md` §4.1): a list per queue and
//! priority step, consumed from the right; `unacked` (delivery tag →
//! `[envelope, exchange, routing_key]`) and `unacked_index` for every
//! message a worker holds; `_kombu.binding.<queue>` for each queue
//! published to. celeriac adds a few keys of its own beside them
//! (`celeriac.*`): the fencing-token counter, delivery counts of messages
//! that came back, per-queue delayed sets, dead letters and revoked ids.
//!
//! # Where celeriac is stricter than kombu
//!
//! * **Atomic claim.** One Lua script pops up to `max` messages and records
//!   each in `unacked`/`unacked_index` (kombu does `BRPOP` then a `MULTI`,
//!   and loses the message if it dies in between).
//! * **Leases, not just a visibility timeout.** The `unacked_index` score is
//!   written as *lease end − visibility timeout*, so kombu's own sweep (and
//!   celeriac's) restores a message exactly when its lease ends, and
//!   [`extend`](celeriac_core::Broker::extend) moves that score: a long task
//!   is never restored by anyone while its worker lives.
//! * **Fencing.** Every claim takes a fresh token and files the message in
//!   `unacked` under a tag made of it, `celeriac:<token>` (a Python worker
//!   files what it claims under the envelope's delivery tag). The attempt
//!   holds its message exactly while `unacked_index` holds that tag, so
//!   settle and extend scripts check one score and refuse a token whose
//!   attempt no longer holds the message (restored by any sweep, after
//!   which a new claim files it under a new tag). Nothing is written per
//!   message beyond kombu's own two entries.
//! * **Wake-ups without polling.** Idle fetches share one watcher per list
//!   key, a `BLMOVE key key RIGHT RIGHT` (a no-op rotation) blocked on a
//!   dedicated connection that returns when the list is non-empty, as
//!   Python producers only `LPUSH`; see `wake.rs`. The one fetch of a
//!   queue that waits pipelines its claim behind such a `BLMOVE` on the
//!   queue's first list, so Redis runs the claim the moment a message lands
//!   and the answer brings the message (`arm.rs`): an idle task starts
//!   about 0.2 ms after it was sent.
//! * **Durable delays.** A claimed message whose eta lies ahead stays in
//!   `unacked` (kombu's format, so Python tooling sees and can recover it)
//!   and joins `celeriac.delayed.<queue>`, scored by eta; its
//!   `unacked_index` score is set past the eta, so no sweep restores it
//!   early and nobody has to keep it alive. The claim script takes due
//!   ones first. If every Rust worker is gone, a sweep restores it after
//!   its eta and whoever takes it runs it.
//! * **Malformed input** (every row of `celery-protocol.md` §10) is
//!   delivered as `Err` with its lease, for the worker to dead-letter; an
//!   entry that is not a JSON object at all becomes a dead letter in the
//!   claim itself. Nothing loops and nothing stays in `unacked`.
//!
//! # Options
//!
//! In the URL's query, with kombu's names (see [`RedisBrokerBuilder`]):
//! `visibility_timeout`, `global_keyprefix`, `priority_steps`, `sep`,
//! `unacked_key`, `unacked_index_key`, `unacked_mutex_key`,
//! `unacked_mutex_expire`, `result_expires`, `max_queue_length`,
//! `eta_to_list`.
//!
//! Priorities follow kombu: **0 is served first**, and only the steps
//! (0, 3, 6, 9) are told apart ([`PriorityOrder::LowestFirst`](celeriac_core::PriorityOrder)).

pub mod envelope;
mod keys;
pub mod results;
pub use results::RedisBackend;

mod admin;
mod arm;
mod broker;
mod config;
mod conn;
mod fetch;
mod held;
mod publish;
mod scripts;
mod settle;
mod sweep;
mod wake;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::Error;

pub use config::{DEFAULT_PRIORITY_STEPS, DEFAULT_SEP, DEFAULT_VISIBILITY_TIMEOUT};

use config::Config;
use conn::Conn;
use keys::Keys;
use results::ResultStore;

/// A Celery-compatible Redis broker and result backend. Cheap to clone:
/// clones share the connections.
///
/// Capabilities: durable (the state lives in Redis; surviving a restart of
/// the *server* needs Redis persistence, AOF or RDB), delayed messages,
/// priorities (kombu's order), push wake-ups, results, revoke, maximum
/// queue length and admin operations.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

/// What every clone shares.
struct Inner {
    cfg: Config,
    keys: Keys,
    conn: Conn,
    results: ResultStore,
    /// Rotates the first queue of each fetch.
    rotation: AtomicUsize,
    /// Set once the start-up sweep ran.
    swept: std::sync::atomic::AtomicBool,
    /// Settlements waiting to be sent together.
    batcher: settle::Batcher,
    /// The envelope tags of this process's attempts that are redeliveries.
    held: held::Held,
    /// The watchers that wake idle fetches.
    watchers: wake::Watchers,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &config::redact(&self.inner.cfg.url))
            .field("global_keyprefix", &self.inner.cfg.global_keyprefix)
            .field("visibility_timeout", &self.inner.cfg.visibility_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to the broker at `url` (options in its query; see the
    /// [crate docs](crate)).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad URL or option, `Transient` when the server
    /// cannot be reached.
    pub async fn from_url(url: &str) -> Result<RedisBroker, Error> {
        Self::builder(url).build().await
    }

    /// Returns a builder: the URL's options, overridable one by one.
    pub fn builder(url: impl Into<String>) -> RedisBrokerBuilder {
        RedisBrokerBuilder {
            url: url.into(),
            overrides: Vec::new(),
        }
    }

    /// Restores every message whose lease has ended (kombu's visibility
    /// sweep, under kombu's `unacked_mutex`), returning how many entries it
    /// acted on. Fetches run it when needed; this is for operators.
    pub async fn restore_visible(&self) -> Result<u64, Error> {
        sweep::sweep(&self.inner).await
    }

    /// Returns the global key prefix every key of this broker starts with.
    pub fn global_keyprefix(&self) -> &str {
        &self.inner.cfg.global_keyprefix
    }
}

/// Options of a [`RedisBroker`]; each overrides what the URL says.
///
/// ```
/// use std::time::Duration;
/// use celeriac_redis::RedisBroker;
///
/// let builder = RedisBroker::builder("redis://127.0.0.1:6379/0")
///     .visibility_timeout(Duration::from_secs(600))
///     .global_keyprefix("app:")
///     .max_queue_length(100_000);
/// # let _ = builder;
/// ```
#[derive(Debug, Clone)]
pub struct RedisBrokerBuilder {
    url: String,
    overrides: Vec<(&'static str, String)>,
}

impl RedisBrokerBuilder {
    fn set(mut self, name: &'static str, value: String) -> Self {
        self.overrides.push((name, value));
        self
    }

    /// Sets kombu's `visibility_timeout` (default one hour): after it, an
    /// unacknowledged message taken by a Python worker is restored. Python
    /// and Rust sides of one deployment must agree on it.
    pub fn visibility_timeout(self, t: Duration) -> Self {
        self.set("visibility_timeout", t.as_secs_f64().to_string())
    }

    /// Sets kombu's `global_keyprefix`, put before every key.
    pub fn global_keyprefix(self, prefix: impl Into<String>) -> Self {
        self.set("global_keyprefix", prefix.into())
    }

    /// Sets kombu's `priority_steps` (default 0, 3, 6, 9).
    pub fn priority_steps(self, steps: &[u8]) -> Self {
        let csv = steps
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.set("priority_steps", csv)
    }

    /// Sets kombu's `sep` between a queue name and its priority step
    /// (default `"\x06\x16"`).
    pub fn sep(self, sep: impl Into<String>) -> Self {
        self.set("sep", sep.into())
    }

    /// Sets how long results are kept (Celery's `result_expires`, default
    /// one day).
    pub fn result_expiry(self, expiry: Duration) -> Self {
        self.set("result_expires", expiry.as_secs_f64().to_string())
    }

    /// Sets the most waiting (ready and delayed) messages a queue may hold;
    /// a publish beyond it fails whole with `ErrorKind::QueueFull`.
    pub fn max_queue_length(self, n: usize) -> Self {
        self.set("max_queue_length", n.to_string())
    }

    /// Publishes messages with a future eta to the queue list, as Python
    /// producers do (for queues that Python workers consume, which hold such
    /// messages themselves), instead of straight into the delayed set
    /// (the default, best for Rust workers: exact and held by Redis alone).
    pub fn eta_to_list(self, yes: bool) -> Self {
        self.set("eta_to_list", yes.to_string())
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad URL or option, `Transient` when the server
    /// cannot be reached.
    pub async fn build(self) -> Result<RedisBroker, Error> {
        let mut cfg = Config::from_url(&self.url)?;
        for (name, value) in &self.overrides {
            cfg.apply(name, value)?;
        }
        let keys = Keys::new(&cfg);
        let held = held::Held::new(&cfg.url, &keys.prefix);
        let conn = Conn::open(&cfg).await?;
        let results = ResultStore::new(
            conn.manager(),
            conn.client(),
            &cfg.global_keyprefix,
            Some(cfg.result_expires),
        );
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                cfg,
                keys,
                conn,
                results,
                rotation: AtomicUsize::new(0),
                swept: std::sync::atomic::AtomicBool::new(false),
                batcher: settle::Batcher::default(),
                held,
                watchers: wake::Watchers::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<RedisBroker>();
    }
}
