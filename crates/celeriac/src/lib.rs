//! celeriac: a distributed, asynchronous task queue, wire-compatible with
//! Python Celery.
//!
//! Producers send tasks; workers run them concurrently with leases, retries
//! and time limits; results come back by id. It starts on an embedded
//! durable store (one SQLite file, no server) and scales out by changing a
//! URL.
//!
//! ```no_run
//! use std::time::Duration;
//! use celeriac::{App, TaskError};
//!
//! #[celeriac::task(name = "tasks.add", max_retries = 3)]
//! async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
//!     Ok(x + y)
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::builder().broker("sqlite://jobs.db").task(add).build().await?;
//! let r = add::delay(&app, 2, 3).await?;
//! let worker = app.worker().concurrency(64).spawn();
//! assert_eq!(r.get(Duration::from_secs(5)).await?, 5);
//! worker.stop();
//! worker.join().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`app`] | [`App`] and its builder: broker, results, tasks, routes |
//! | [`mod@task`] | the [`Task`] trait and the [`TaskContext`] a task receives |
//! | [`signature`] | [`Signature`]: a call with per-call options (`apply_async`) |
//! | [`result`] | [`AsyncResult`]: await a task's outcome by id |
//! | [`worker`] | the worker runtime: fetch, lease renewal, execution, shutdown |
//! | [`cli`] | `worker` / `send` / `result` commands for the user's binary |
//!
//! # Backends
//!
//! | URL | feature | crate |
//! |---|---|---|
//! | `sqlite://path.db` | `sqlite` (default) | [`celeriac_sqlite`](https://docs.rs/celeriac-sqlite) |
//! | `memory://` or `memory://name` | always | [`memory`] |
//! | `redis://host:port/db`, `rediss://` | `redis` | [`celeriac_redis`](https://docs.rs/celeriac-redis): broker + results, or results only (`.backend(url)`), wire-compatible with Celery |
//!
//! The message model is Celery's protocol v2 ([`Message`]), the same on
//! every backend.

pub mod app;
pub mod cli;
mod registry;
pub mod result;
pub mod signature;
pub mod task;
pub mod worker;

pub use app::{App, AppBuilder, WhenFull};
pub use celeriac_core::{
    Error, ErrorKind, ExceptionInfo, Message, RetryPolicy, Revoked, TaskError, TaskErrorKind,
    TaskId, TaskOptions, TaskResult, TaskState,
};
pub use result::{AsyncResult, GetError};
pub use signature::{CallOptions, SendTask, Signature};
pub use task::{Task, TaskContext};
pub use worker::{WorkerBuilder, WorkerHandle, WorkerStats};

/// The vocabulary crate, for backends and advanced use.
pub use celeriac_core as core;

/// The in-process backend (`memory://`).
pub use celeriac_memory as memory;

/// The embedded SQLite backend (`sqlite://`).
#[cfg(feature = "sqlite")]
pub use celeriac_sqlite as sqlite;

/// The Redis backend (`redis://`, `rediss://`), wire-compatible with Celery.
#[cfg(feature = "redis")]
pub use celeriac_redis as redis;

/// The `#[task]` attribute: turns an `async fn` (or a `blocking` plain fn)
/// into a [`Task`].
#[cfg(feature = "macros")]
pub use celeriac_macros::task;

#[doc(hidden)]
pub mod __private {
    pub use celeriac_core::args::{encode_arg, ArgReader, ArgsError};
    pub use celeriac_core::{FromArgs, IntoArgs, RetryPolicy, TaskError, TaskOptions};
    pub use serde_json::{self, Map, Value};
    pub use std::time::Duration;

    /// Runs blocking code on the blocking thread pool; a panic becomes a
    /// task error.
    pub async fn run_blocking<F, T>(f: F) -> Result<T, TaskError>
    where
        F: FnOnce() -> Result<T, TaskError> + Send + 'static,
        T: Send + 'static,
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let text = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic with a non-text payload".to_owned());
                Err(TaskError::fail(format!("blocking task panicked: {text}"))
                    .with_type("Panic", "celeriac"))
            }
            Err(e) => Err(TaskError::fail(format!("blocking task was cancelled: {e}"))),
        }
    }
}
