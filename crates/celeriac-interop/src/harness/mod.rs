//! The interop test harness: finds the Python venvs and Redis, gives each
//! test case a Redis database of its own, and runs Python clients, Python
//! workers and Rust workers that are killed when dropped.
//!
//! # Isolation
//!
//! Every case runs in its own Redis database, leased from the range
//! [`DBS`] (10 to 15, reserved for these tests) and flushed when leased, so
//! the broker keys shared by all queues of a database (`unacked`,
//! `unacked_index`, bindings) hold only that case's data and cases run in
//! parallel. A lease is a key in the database itself, so test processes
//! running at once share the range safely.
//!
//! # Environment
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `CELERIAC_CELERY_VENVS` | venv directories, `:`-separated | `target/interop/celery-5.7.0` and `celery-5.4.0`, those that exist |
//! | `CELERIAC_INTEROP_REDIS` | Redis server, without a database | `redis://127.0.0.1:6379` |
//! | `CELERIAC_REQUIRE_SERVICES` | `1`: a missing venv or Redis fails instead of skipping | unset |

mod db;
mod python;
mod rust;
mod wire;

pub use db::{DbLease, DBS};
pub use python::{Outcome, PyClient, PyWorker, PyWorkerOptions};
pub use rust::{child_worker_entry, RustProcess, RustWorker, CHILD_ENV};
pub use wire::{Envelope, Monitor, MonitorCommand, Published, Wire, SEP};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use celeriac::{App, AppBuilder};
use celeriac_conformance::service::{note, services_required};

/// How long one case may take on one venv before it fails.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a single wait (a result, a condition) may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A Python virtualenv with Celery installed.
#[derive(Debug, Clone)]
pub struct Venv {
    /// Its directory name, e.g. `celery-5.7.0`, used in messages.
    pub name: String,
    /// Its `bin/python`.
    pub python: PathBuf,
}

/// Returns the crate's directory (where `examples/` and `python/` are).
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Returns the workspace's `target/interop` directory, where the setup
/// script puts the venvs and the tests their logs.
pub fn interop_dir() -> PathBuf {
    match std::env::var_os("CELERIAC_INTEROP_DIR") {
        Some(d) => PathBuf::from(d),
        None => crate_dir().join("../../target/interop"),
    }
}

/// Returns the venvs to test against: `CELERIAC_CELERY_VENVS`, or the
/// default ones the setup script creates, those that exist.
pub fn venvs() -> Vec<Venv> {
    let dirs: Vec<PathBuf> = match std::env::var("CELERIAC_CELERY_VENVS") {
        Ok(v) if !v.trim().is_empty() => v.split(':').map(PathBuf::from).collect(),
        _ => ["celery-5.7.0", "celery-5.4.0"]
            .iter()
            .map(|n| interop_dir().join(n))
            .collect(),
    };
    dirs.into_iter()
        .filter_map(|d| {
            let python = d.join("bin/python");
            python.exists().then(|| Venv {
                name: d.file_name().map_or_else(
                    || d.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                python,
            })
        })
        .collect()
}

/// Returns the Redis server URL without a database.
pub fn redis_base() -> String {
    std::env::var("CELERIAC_INTEROP_REDIS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// Prints a SKIP line, or panics when services are required.
fn skip(case: &str, why: &str) {
    if services_required() {
        panic!("{case}: {why}, and CELERIAC_REQUIRE_SERVICES=1 requires it");
    }
    note(&format!("SKIP interop {case}: {why}"));
}

async fn redis_reachable(base: &str) -> Result<(), String> {
    let client = redis::Client::open(format!("{base}/0")).map_err(|e| e.to_string())?;
    let ping = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".to_owned()),
    }
}

/// Runs `f` once per venv found, each time in a freshly leased Redis
/// database; prints a SKIP line and returns when the venvs or Redis are
/// missing (or panics when services are required). Each run may take
/// [`CASE_TIMEOUT`].
pub async fn each_venv<F, Fut>(case: &str, f: F)
where
    F: Fn(Case) -> Fut,
    Fut: Future<Output = ()>,
{
    each_venv_within(case, CASE_TIMEOUT, f).await;
}

/// [`each_venv`] with another time limit per venv.
pub async fn each_venv_within<F, Fut>(case: &str, limit: Duration, f: F)
where
    F: Fn(Case) -> Fut,
    Fut: Future<Output = ()>,
{
    let venvs = venvs();
    if venvs.is_empty() {
        skip(
            case,
            "no Python Celery venv (run crates/celeriac-interop/python/setup.sh, or set CELERIAC_CELERY_VENVS)",
        );
        return;
    }
    let base = redis_base();
    if let Err(e) = redis_reachable(&base).await {
        skip(case, &format!("Redis at {base} is not reachable ({e})"));
        return;
    }
    for venv in venvs {
        let lease = DbLease::acquire(&base).await;
        let db = lease.db();
        let c = Case::new(case, venv.clone(), base.clone(), lease).await;
        note(&format!("interop {case} on {}: redis db {db}", venv.name));
        if tokio::time::timeout(limit, f(c)).await.is_err() {
            panic!("{case} on {}: no end within {limit:?}", venv.name);
        }
    }
}

/// One case on one venv: its Redis database, its logs, and factories for
/// the processes it runs.
#[derive(Debug)]
pub struct Case {
    /// The case id, e.g. `p01_add_delay_get`.
    pub name: String,
    /// The venv this run uses.
    pub venv: Venv,
    base: String,
    lease: DbLease,
    /// Raw access to the case's database.
    pub wire: Wire,
    seq: AtomicUsize,
}

impl Case {
    async fn new(name: &str, venv: Venv, base: String, lease: DbLease) -> Case {
        let wire = Wire::connect(&base, lease.db()).await;
        Case {
            name: name.to_owned(),
            venv,
            base,
            lease,
            wire,
            seq: AtomicUsize::new(0),
        }
    }

    /// Returns the case's Redis database number.
    pub fn db(&self) -> u8 {
        self.lease.db()
    }

    /// Returns the Redis server URL without a database.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Returns the URL of the case's database, the broker and result
    /// backend of both sides.
    pub fn url(&self) -> String {
        format!("{}/{}", self.base, self.db())
    }

    /// Returns a fresh log file path for a process in `role`.
    pub fn log_path(&self, role: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let dir = interop_dir().join("logs");
        let _ = std::fs::create_dir_all(&dir);
        dir.join(format!("{}-{}-{role}-{n}.log", self.name, self.venv.name))
    }

    /// Returns the fixture's app builder on `url`.
    pub fn builder_on(&self, url: &str) -> AppBuilder {
        crate::app_builder().broker(url)
    }

    /// Builds a Rust app (producer, result client, worker) on the case's
    /// database.
    pub async fn app(&self) -> App {
        self.app_on(&self.url()).await
    }

    /// Builds a Rust app on `url` (e.g. the case's URL with options).
    pub async fn app_on(&self, url: &str) -> App {
        match self.builder_on(url).build().await {
            Ok(app) => app,
            Err(e) => panic!("celeriac app on {url}: {e}"),
        }
    }

    /// Starts an in-process Rust worker of `app` on `queues`.
    pub fn rust_worker(&self, app: &App, queues: &[&str], concurrency: usize) -> RustWorker {
        RustWorker::spawn(app, queues, concurrency)
    }

    /// Starts a Rust worker process (the `celery_worker` example's code,
    /// run by the current test binary) on `url` and `queues`. The test
    /// binary must call [`child_worker_entry`] from a test named
    /// `child_worker`.
    pub fn rust_process(&self, url: &str, queues: &[&str], concurrency: usize) -> RustProcess {
        RustProcess::spawn(url, queues, concurrency, &self.log_path("rust-worker"))
    }

    /// Starts a Python client (`python/client.py serve`) on the case's
    /// database.
    pub async fn py_client(&self) -> PyClient {
        self.py_client_with(&[]).await
    }

    /// Starts a Python client with extra environment variables.
    pub async fn py_client_with(&self, env: &[(&str, &str)]) -> PyClient {
        PyClient::spawn(&self.venv, &self.url(), env, &self.log_path("py-client")).await
    }

    /// Starts a Python worker on `queues` and waits until it is ready.
    pub async fn py_worker(&self, queues: &[&str], options: PyWorkerOptions) -> PyWorker {
        PyWorker::spawn(
            &self.venv,
            &self.url(),
            queues,
            options,
            &self.log_path("py-worker"),
        )
        .await
    }

    /// Returns a key name unique to this case, for `tasks.track`.
    pub fn key(&self, what: &str) -> String {
        format!("interop:{}:{what}", self.name)
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most
/// `timeout`; panics with `what` when time runs out.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("waited {timeout:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns a fresh task id (a UUID4 text, as Celery makes them).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
