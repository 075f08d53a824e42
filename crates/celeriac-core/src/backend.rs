//! The result backend seam: store, get, wait, forget.
//!
//! Results expire: each backend is configured with an expiry (Celery's
//! `result_expires`, one day by default) after which a stored result is gone.

use std::future::Future;
use std::time::Duration;

use crate::broker::BoxFuture;
use crate::error::Error;
use crate::id::TaskId;
use crate::result::TaskResult;

/// The default time a stored result is kept: one day, as in Celery.
pub const DEFAULT_RESULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Where task results live.
pub trait ResultBackend: Send + Sync + 'static {
    /// Stores (or replaces) a result.
    fn store(&self, result: TaskResult) -> impl Future<Output = Result<(), Error>> + Send;

    /// Returns the stored result, if any and not expired.
    fn get(&self, id: &TaskId) -> impl Future<Output = Result<Option<TaskResult>, Error>> + Send;

    /// Waits until the result is in a ready state (success, failure,
    /// revoked) or `timeout` passes; returns the latest result either way.
    /// Implementations wake on a store, without busy polling, and also see a
    /// result stored before the wait began.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    fn wait(
        &self,
        id: &TaskId,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<TaskResult>, Error>> + Send;

    /// Deletes a stored result.
    fn forget(&self, id: &TaskId) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The object-safe twin of [`ResultBackend`]. Every `ResultBackend` is one.
#[allow(missing_docs)]
pub trait DynResultBackend: Send + Sync + 'static {
    fn store(&self, result: TaskResult) -> BoxFuture<'_, Result<(), Error>>;
    fn get<'a>(&'a self, id: &'a TaskId) -> BoxFuture<'a, Result<Option<TaskResult>, Error>>;
    fn wait<'a>(
        &'a self,
        id: &'a TaskId,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<TaskResult>, Error>>;
    fn forget<'a>(&'a self, id: &'a TaskId) -> BoxFuture<'a, Result<(), Error>>;
}

impl<R: ResultBackend> DynResultBackend for R {
    fn store(&self, result: TaskResult) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(ResultBackend::store(self, result))
    }
    fn get<'a>(&'a self, id: &'a TaskId) -> BoxFuture<'a, Result<Option<TaskResult>, Error>> {
        Box::pin(ResultBackend::get(self, id))
    }
    fn wait<'a>(
        &'a self,
        id: &'a TaskId,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<TaskResult>, Error>> {
        Box::pin(ResultBackend::wait(self, id, timeout))
    }
    fn forget<'a>(&'a self, id: &'a TaskId) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(ResultBackend::forget(self, id))
    }
}
