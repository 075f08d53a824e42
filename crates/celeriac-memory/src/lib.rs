//! The in-process backend of celeriac: a [`MemoryBroker`] that is both a
//! [`Broker`](celeriac_core::Broker) and a
//! [`ResultBackend`](celeriac_core::ResultBackend), with everything kept in
//! this process's memory.
//!
//! It serves two purposes: tests (of tasks, of the worker, of the whole
//! app) without any server or file, and a plain thread-pool-like queue,
//! where `app.join()` waits for [`MemoryBroker::idle`]. It keeps the whole
//! contract of the broker seam (leases with fencing tokens, redelivery after
//! a lease ends, delayed messages, priorities, fair fetching across queues,
//! revocation, dead letters, results with an expiry) except durability:
//! nothing survives the process.
//!
//! A clone is another handle on the same broker, as a second worker in the
//! same process would hold.
//!
//! ```
//! use std::time::Duration;
//! use celeriac_core::{Broker, FetchRequest, Message, ResultBackend, Settlement, TaskResult};
//! use celeriac_memory::MemoryBroker;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), celeriac_core::Error> {
//! let broker = MemoryBroker::new();
//! let message = Message::new("tasks.add", vec![2.into(), 3.into()], Default::default());
//! let id = message.id().clone();
//! broker.publish(vec![message]).await?;
//!
//! let req = FetchRequest {
//!     queues: vec!["celery".to_owned()].into(),
//!     max: 10,
//!     lease: Duration::from_secs(30),
//!     wait: Duration::from_secs(1),
//! };
//! let delivery = broker.fetch(&req).await?.pop().expect("one message");
//! assert_eq!(delivery.deliveries, 1);
//! let result = TaskResult::success(id.clone(), 5.into());
//! broker.settle(&delivery.lease, Settlement::Ack { result: Some(result) }).await?;
//!
//! let stored = broker.wait(&id, Duration::from_secs(1)).await?;
//! assert_eq!(stored.map(|r| r.result), Some(5.into()));
//! assert!(broker.is_idle());
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `store` | the state behind the broker's one lock: message slots, queues, dead letters, revocations; `store::settle` ends attempts and extends leases, `store::admin` holds revoke, statistics, purge and dead letters |
//! | `queue` | one queue: ready messages by priority, delayed ones by eta, leases by deadline |
//! | `broker` | the [`Broker`](celeriac_core::Broker) implementation: locking, waiting and waking |
//! | `results` and `backend` | stored results with an expiry, and the [`ResultBackend`](celeriac_core::ResultBackend) implementation |
//! | `hash` | a fast hash for the in-process maps |
//!
//! # How it stays fast
//!
//! One `std::sync::Mutex` guards the broker state and is never held across
//! an `.await`; every operation is a short, allocation-light critical
//! section (messages are shared behind an `Arc`, cloned into deliveries and
//! dropped after the lock is released). Removing a message from the middle
//! of a queue is O(1): queues hold versioned references that go stale and
//! are skipped. Waiting fetchers sleep on a [`tokio::sync::Notify`] and a
//! timer set to the earliest eta or lease deadline of their queues, so a
//! publish, a release or an expired lease wakes them without any polling.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use celeriac_core::backend::DEFAULT_RESULT_EXPIRY;
use tokio::sync::Notify;

mod backend;
mod broker;
mod hash;
mod queue;
mod results;
mod store;

use results::Results;
use store::{Store, Wake};

/// An in-process broker and result backend. Cheap to clone: clones share
/// one state.
///
/// Its capabilities: delayed messages, priorities, push wake-ups, results,
/// revoke, maximum queue length and admin operations; not durable.
///
/// ```
/// use std::time::Duration;
/// use celeriac_memory::MemoryBroker;
///
/// let broker = MemoryBroker::builder()
///     .max_queue_length(10_000)
///     .result_expiry(Duration::from_secs(3600))
///     .build();
/// let second_handle = broker.clone();
/// assert!(second_handle.is_idle());
/// ```
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

/// The state every clone shares.
struct Shared {
    store: Mutex<Store>,
    /// Locked only after `store` when both are needed, never before it.
    results: Mutex<Results>,
    /// Wakes fetchers waiting for a message.
    fetchers: Notify,
    /// Wakes callers of `idle()`.
    idle: Notify,
    max_queue_length: Option<usize>,
    result_expiry: Duration,
}

impl Shared {
    /// Locks the broker state.
    ///
    /// A panic while the lock was held cannot leave a half-written message
    /// behind (each section writes its fields before anything can panic),
    /// so a poisoned lock is taken over rather than failing every later call.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the results.
    fn results(&self) -> MutexGuard<'_, Results> {
        self.results.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes whoever a state change concerns. Call with no lock held.
    fn wake(&self, wake: Wake) {
        if wake.fetchers {
            self.fetchers.notify_waiters();
        }
        if wake.idle {
            self.idle.notify_waiters();
        }
    }
}

impl MemoryBroker {
    /// Returns a broker with default options: no queue length limit, and
    /// results kept for [`DEFAULT_RESULT_EXPIRY`].
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Returns a builder for a broker with options.
    pub fn builder() -> MemoryBrokerBuilder {
        MemoryBrokerBuilder::default()
    }

    /// Returns true when no message is ready, delayed or leased in any queue.
    /// Dead letters and stored results do not count.
    pub fn is_idle(&self) -> bool {
        self.shared.store().is_idle()
    }

    /// Returns a future that resolves once the broker is idle (see
    /// [`is_idle`](Self::is_idle)): at once if it already is, otherwise when
    /// the last message is settled, revoked or purged. It wakes on that
    /// event, without polling.
    ///
    /// Delayed messages keep the broker busy until they have run, so with
    /// an eta far off this waits that long.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub fn idle(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            loop {
                // Registered before the check, so an idle moment between the
                // check and the await still wakes this future.
                let notified = shared.idle.notified();
                tokio::pin!(notified);
                if shared.store().is_idle() {
                    return;
                }
                notified.await;
            }
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("max_queue_length", &self.shared.max_queue_length)
            .field("result_expiry", &self.shared.result_expiry)
            .finish_non_exhaustive()
    }
}

/// Options for a [`MemoryBroker`].
///
/// ```
/// use celeriac_memory::MemoryBroker;
/// let broker = MemoryBroker::builder().max_queue_length(2).build();
/// # let _ = broker;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryBrokerBuilder {
    max_queue_length: Option<usize>,
    result_expiry: Option<Duration>,
}

impl MemoryBrokerBuilder {
    /// Sets the most messages any one queue may hold waiting (ready or
    /// delayed; leased messages do not count, as in RabbitMQ). A publish that
    /// would go over it fails whole with `ErrorKind::QueueFull`.
    pub fn max_queue_length(mut self, limit: usize) -> Self {
        self.max_queue_length = Some(limit);
        self
    }

    /// Sets how long a stored result is kept (default
    /// [`DEFAULT_RESULT_EXPIRY`], one day).
    pub fn result_expiry(mut self, expiry: Duration) -> Self {
        self.result_expiry = Some(expiry);
        self
    }

    /// Returns the broker.
    pub fn build(self) -> MemoryBroker {
        let result_expiry = self.result_expiry.unwrap_or(DEFAULT_RESULT_EXPIRY);
        MemoryBroker {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new(self.max_queue_length)),
                results: Mutex::new(Results::new(result_expiry)),
                fetchers: Notify::new(),
                idle: Notify::new(),
                max_queue_length: self.max_queue_length,
                result_expiry,
            }),
        }
    }
}
