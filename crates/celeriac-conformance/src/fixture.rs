//! The [`Fixture`] a backend implements to run the suite: how to open a
//! handle on a fresh, isolated store.

use std::future::Future;
use std::time::Duration;

use celeriac_core::{Broker, ResultBackend};

/// Options a case asks the fixture to apply when it opens a handle.
///
/// Every field maps onto a builder method the backends already have
/// (`max_queue_length(usize)`, `result_expiry(Duration)`); `None` keeps the
/// backend's default. Construct it with [`FixtureOptions::default`] and the
/// `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use celeriac_conformance::FixtureOptions;
///
/// let o = FixtureOptions::default().with_max_queue_length(3);
/// assert_eq!(o.max_queue_length, Some(3));
/// assert_eq!(o.result_expiry, None);
/// assert!(!o.is_default());
/// let o = FixtureOptions::default().with_result_expiry(Duration::from_millis(200));
/// assert_eq!(o.result_expiry, Some(Duration::from_millis(200)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FixtureOptions {
    /// The most messages a queue may hold; a publish beyond it fails with
    /// `ErrorKind::QueueFull`.
    pub max_queue_length: Option<usize>,
    /// How long a stored result is kept.
    pub result_expiry: Option<Duration>,
}

impl FixtureOptions {
    /// Returns these options with a maximum queue length.
    pub fn with_max_queue_length(mut self, n: usize) -> Self {
        self.max_queue_length = Some(n);
        self
    }

    /// Returns these options with a result expiry.
    pub fn with_result_expiry(mut self, expiry: Duration) -> Self {
        self.result_expiry = Some(expiry);
        self
    }

    /// Returns true when no option is set (every backend default applies).
    pub fn is_default(&self) -> bool {
        *self == FixtureOptions::default()
    }
}

/// A backend under test: one isolated store (a temp directory, a fresh
/// in-memory state, a unique key namespace) and a way to open handles on it.
///
/// The suite builds a new fixture for every case, so cases never see each
/// other's queues, results or dead letters.
///
/// ```text
/// struct Mem(MemoryBroker);
///
/// impl Fixture for Mem {
///     type Broker = MemoryBroker;
///     async fn open_with(&self, opts: FixtureOptions) -> MemoryBroker {
///         if opts.is_default() {
///             return self.0.clone();
///         }
///         let mut b = MemoryBroker::builder();
///         if let Some(n) = opts.max_queue_length { b = b.max_queue_length(n); }
///         if let Some(d) = opts.result_expiry { b = b.result_expiry(d); }
///         b.build()
///     }
/// }
/// ```
pub trait Fixture: Send + Sync + 'static {
    /// The backend's handle type. A clone is another handle on the same
    /// store, as a second worker in the same process would hold.
    type Broker: Broker + ResultBackend + Clone;

    /// Returns a new handle on this fixture's store, configured with `opts`.
    ///
    /// With default options every call must reach the *same* store: for a
    /// durable backend a fresh connection, as a restarted or second process
    /// would open (SQLite: a new broker on the same file); for the memory
    /// backend a clone. When a backend can apply `opts` only when a store is
    /// created, it may return a handle on a fresh store for non-default
    /// options; cases that pass options therefore take any further handle
    /// by cloning the one returned, never by calling `open` again.
    ///
    /// Failing to open is a broken test environment, so implementations
    /// may panic.
    fn open_with(&self, opts: FixtureOptions) -> impl Future<Output = Self::Broker> + Send;

    /// Returns a new handle on this fixture's store with default options.
    fn open(&self) -> impl Future<Output = Self::Broker> + Send {
        self.open_with(FixtureOptions::default())
    }
}
