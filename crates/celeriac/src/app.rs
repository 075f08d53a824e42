//! [`App`]: the broker, the result backend, the registered tasks and the
//! routes, shared by producers and workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use celeriac_core::backend::DynResultBackend;
use celeriac_core::broker::DynBroker;
use celeriac_core::{Error, ErrorKind, Message, Revoked, TaskId, TaskResult};
use celeriac_memory::MemoryBroker;

use crate::registry::Registry;
use crate::result::AsyncResult;
use crate::signature::SendTask;
use crate::task::Task;
use crate::worker::WorkerBuilder;

/// The default limit on an encoded task message: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// What `send` does when a queue is at its maximum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Fail at once with [`ErrorKind::QueueFull`].
    #[default]
    Fail,
    /// Wait, trying again with backoff, up to this long; then fail.
    Wait(Duration),
}

/// The celeriac application: where tasks go, where results live, and
/// which tasks this process can run. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), celeriac::Error> {
/// use celeriac::App;
/// let app = App::builder().broker("memory://").build().await?;
/// assert!(app.backend().is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<dyn DynBroker>,
    backend: Option<Arc<dyn DynResultBackend>>,
    results_in_broker: bool,
    memory: Option<MemoryBroker>,
    registry: Registry,
    routes: Vec<(String, String)>,
    default_queue: String,
    max_payload: usize,
    when_full: WhenFull,
    origin: String,
    broker_url: String,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("broker", &self.inner.broker_url)
            .field("registry", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Returns a builder.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// Returns the broker.
    pub fn broker(&self) -> &Arc<dyn DynBroker> {
        &self.inner.broker
    }

    /// Returns the broker URL the app was built with.
    pub fn broker_url(&self) -> &str {
        &self.inner.broker_url
    }

    /// Returns the result backend, if results are stored.
    pub fn backend(&self) -> Option<&Arc<dyn DynResultBackend>> {
        self.inner.backend.as_ref()
    }

    /// Returns true when the result backend is the broker itself, so a
    /// result is stored in the same step as the acknowledgement.
    pub fn results_in_broker(&self) -> bool {
        self.inner.results_in_broker
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Returns the names of the registered tasks.
    pub fn task_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.registry.names().map(str::to_owned).collect();
        v.sort();
        v
    }

    pub(crate) fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Returns the queue a task named `name` goes to by the routes.
    pub fn route(&self, name: &str) -> String {
        for (pattern, queue) in &self.inner.routes {
            if glob_match(pattern, name) {
                return queue.clone();
            }
        }
        self.inner.default_queue.clone()
    }

    /// Returns a builder for a worker of this app.
    pub fn worker(&self) -> WorkerBuilder {
        WorkerBuilder::new(self.clone())
    }

    /// Starts an untyped call of the task named `name`.
    pub fn send_task(&self, name: impl Into<String>) -> SendTask<'_> {
        SendTask::new(self, name.into())
    }

    /// Returns a handle on the result of task `id`.
    pub fn result<T: serde::de::DeserializeOwned>(&self, id: impl Into<TaskId>) -> AsyncResult<T> {
        AsyncResult::new(self.clone(), id.into())
    }

    /// Sends many calls of one task in one batch (one transaction on SQLite).
    pub async fn send_many<T: Task>(
        &self,
        calls: impl IntoIterator<Item = crate::Signature<T>>,
    ) -> Result<Vec<AsyncResult<T::Output>>, Error> {
        let messages = calls
            .into_iter()
            .map(|s| s.into_message(self))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<(TaskId, bool)> = messages
            .iter()
            .map(|m| (m.id().clone(), m.headers.ignore_result))
            .collect();
        self.publish(messages).await?;
        Ok(ids
            .into_iter()
            .map(|(id, ignored)| AsyncResult::new(self.clone(), id).ignoring(ignored))
            .collect())
    }

    /// Publishes built messages, checking the payload limit (the broker
    /// measures each message as it encodes it, once) and applying the
    /// queue-full policy.
    pub async fn publish(&self, messages: Vec<Message>) -> Result<(), Error> {
        let broker = &self.inner.broker;
        let limit = self.inner.max_payload;
        match self.inner.when_full {
            WhenFull::Fail => broker.publish_checked(messages, limit).await,
            WhenFull::Wait(limit_wait) => {
                let deadline = tokio::time::Instant::now() + limit_wait;
                let mut pause = Duration::from_millis(5);
                loop {
                    match broker.publish_checked(messages.clone(), limit).await {
                        Err(e)
                            if e.kind() == ErrorKind::QueueFull
                                && tokio::time::Instant::now() + pause < deadline =>
                        {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_millis(200));
                        }
                        other => return other,
                    }
                }
            }
        }
    }

    /// Revokes a task: removes it if waiting (storing `REVOKED`), or asks
    /// its worker to cancel it if running.
    pub async fn revoke(&self, id: &TaskId) -> Result<Revoked, Error> {
        let outcome = self.inner.broker.revoke(id).await?;
        if outcome == Revoked::Removed {
            if let Some(b) = self.backend() {
                b.store(TaskResult::revoked(id.clone(), "revoked")).await?;
            }
        }
        Ok(outcome)
    }

    /// Waits until every queued task is done. On the memory backend this
    /// wakes when the broker becomes idle; on others it checks the queue
    /// statistics every 50 ms.
    pub async fn join(&self) -> Result<(), Error> {
        if let Some(m) = &self.inner.memory {
            m.idle().await;
            return Ok(());
        }
        loop {
            let stats = self.inner.broker.queue_stats().await?;
            if stats.iter().all(|s| s.ready + s.delayed + s.leased == 0) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Builds an [`App`].
#[derive(Default)]
pub struct AppBuilder {
    broker_url: Option<String>,
    backend_url: Option<String>,
    broker: Option<Arc<dyn DynBroker>>,
    backend: Option<Option<Arc<dyn DynResultBackend>>>,
    registry: Registry,
    routes: Vec<(String, String)>,
    default_queue: Option<String>,
    max_payload: Option<usize>,
    when_full: WhenFull,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("broker_url", &self.broker_url)
            .field("backend_url", &self.backend_url)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl AppBuilder {
    /// Sets the broker URL: `sqlite://path.db` (the default, `sqlite://celeriac.db`),
    /// `memory://`, or `redis://host:port/db` (feature `redis`).
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.broker_url = Some(url.into());
        self
    }

    /// Returns the broker URL set so far.
    pub fn broker_url(&self) -> Option<&str> {
        self.broker_url.as_deref()
    }

    /// Sets the result backend URL. By default results live in the broker
    /// when it can store them.
    pub fn backend(mut self, url: impl Into<String>) -> Self {
        self.backend_url = Some(url.into());
        self
    }

    /// Uses a broker instance instead of a URL (custom brokers, tests).
    /// When it also stores results, pass it to [`AppBuilder::backend_instance`] too.
    pub fn broker_instance(mut self, broker: Arc<dyn DynBroker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Uses a result backend instance, or none (`None`: no results stored).
    pub fn backend_instance(mut self, backend: Option<Arc<dyn DynResultBackend>>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Registers a task so this process can run it.
    pub fn task<T: Task>(mut self, _task: T) -> Self {
        self.registry.register::<T>();
        self
    }

    /// Registers a task by type.
    pub fn register<T: Task>(mut self) -> Self {
        self.registry.register::<T>();
        self
    }

    /// Routes tasks whose name matches `pattern` (exact, or with `*`
    /// wildcards) to `queue`. The first matching route wins.
    pub fn route(mut self, pattern: impl Into<String>, queue: impl Into<String>) -> Self {
        self.routes.push((pattern.into(), queue.into()));
        self
    }

    /// Sets the queue for tasks no route or option names (default `celery`).
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.default_queue = Some(queue.into());
        self
    }

    /// Sets the largest encoded message `send` accepts (default 1 MiB).
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload = Some(n);
        self
    }

    /// Sets what `send` does when a queue is full (default: fail).
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = policy;
        self
    }

    /// Connects to the broker and the result backend.
    pub async fn build(self) -> Result<App, Error> {
        let broker_url = self
            .broker_url
            .clone()
            .unwrap_or_else(|| "sqlite://celeriac.db".to_owned());
        let mut memory = None;
        let (broker, own_backend): (Arc<dyn DynBroker>, Option<Arc<dyn DynResultBackend>>) =
            match self.broker {
                Some(b) => (b, None),
                None => {
                    let opened = open_url(&broker_url).await?;
                    memory = opened.memory;
                    (opened.broker, opened.backend)
                }
            };
        let (backend, results_in_broker) = match (self.backend, &self.backend_url) {
            (Some(explicit), _) => (explicit, false),
            (None, Some(url)) if *url != broker_url => (Some(open_backend_url(url).await?), false),
            (None, _) => {
                let in_broker = own_backend.is_some() && broker.capabilities().results;
                (own_backend, in_broker)
            }
        };
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        Ok(App {
            inner: Arc::new(Inner {
                broker,
                backend,
                results_in_broker,
                memory,
                registry: self.registry,
                routes: self.routes,
                default_queue: self
                    .default_queue
                    .unwrap_or_else(|| celeriac_core::DEFAULT_QUEUE.to_owned()),
                max_payload: self.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES),
                when_full: self.when_full,
                origin: format!("gen{}@{host}", std::process::id()),
                broker_url,
            }),
        })
    }
}

struct Opened {
    broker: Arc<dyn DynBroker>,
    backend: Option<Arc<dyn DynResultBackend>>,
    memory: Option<MemoryBroker>,
}

fn named_memory(name: &str) -> MemoryBroker {
    static NAMED: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
    let map = NAMED.get_or_init(Default::default);
    let mut map = match map.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(name.to_owned())
        .or_insert_with(MemoryBroker::new)
        .clone()
}

async fn open_url(url: &str) -> Result<Opened, Error> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("`{url}` is not a URL (expected e.g. sqlite://jobs.db or memory://)"),
        )
    })?;
    match scheme {
        "memory" => {
            let m = if rest.is_empty() {
                MemoryBroker::new()
            } else {
                named_memory(rest)
            };
            let shared = Arc::new(m.clone());
            Ok(Opened {
                broker: shared.clone(),
                backend: Some(shared),
                memory: Some(m),
            })
        }
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let s = Arc::new(celeriac_sqlite::SqliteBroker::from_url(url).await?);
            Ok(Opened {
                broker: s.clone(),
                backend: Some(s),
                memory: None,
            })
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let r = Arc::new(celeriac_redis::RedisBroker::from_url(url).await?);
            Ok(Opened {
                broker: r.clone(),
                backend: Some(r),
                memory: None,
            })
        }
        other => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "unsupported backend `{other}://` (this build supports {})",
                supported_schemes()
            ),
        )),
    }
}

/// Opens a results-only URL (`.backend(url)` naming another place than
/// the broker). A Redis URL opens just the result backend, not a broker.
async fn open_backend_url(url: &str) -> Result<Arc<dyn DynResultBackend>, Error> {
    #[cfg(feature = "redis")]
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Arc::new(celeriac_redis::RedisBackend::from_url(url).await?));
    }
    open_url(url).await?.backend.ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("`{url}` cannot store results"),
        )
    })
}

fn supported_schemes() -> String {
    let mut schemes = Vec::new();
    if cfg!(feature = "sqlite") {
        schemes.push("sqlite://");
    }
    if cfg!(feature = "redis") {
        schemes.push("redis://");
        schemes.push("rediss://");
    }
    schemes.push("memory://");
    schemes.join(", ")
}

/// Matches `name` against a pattern where `*` matches any run of characters.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("tasks.add", "tasks.add"));
        assert!(!glob_match("tasks.add", "tasks.addx"));
        assert!(glob_match("emails.*", "emails.send"));
        assert!(!glob_match("emails.*", "tasks.send"));
        assert!(glob_match("*.send", "emails.send"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abcdf"));
    }
}
