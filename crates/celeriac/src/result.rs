//! [`AsyncResult`]: a handle on a sent task's outcome.

use std::marker::PhantomData;
use std::time::Duration;

use celeriac_core::{Error, ExceptionInfo, TaskId, TaskResult, TaskState};
use serde::de::DeserializeOwned;

use crate::app::App;

/// Why [`AsyncResult::get`] returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// No ready result arrived in time.
    #[error("no result within {0:?}")]
    Timeout(Duration),
    /// The task failed.
    #[error("task failed: {exception}")]
    Failed {
        /// The exception as stored.
        exception: ExceptionInfo,
        /// Its traceback text.
        traceback: Option<String>,
    },
    /// The task was revoked or expired before it ran.
    #[error("task revoked: {reason}")]
    Revoked {
        /// Why.
        reason: String,
    },
    /// The app has no result backend, or the task ignores its result.
    #[error("results are not stored for this task")]
    NoResults,
    /// The stored value does not decode into the expected type.
    #[error("stored result does not decode")]
    Decode(#[source] serde_json::Error),
    /// The result backend failed.
    #[error("result backend failed")]
    Backend(#[source] Error),
}

/// A handle on a task's result, returned by every send.
///
/// `get` waits for the result without busy polling (the backend wakes it).
#[derive(Debug, Clone)]
pub struct AsyncResult<T> {
    app: App,
    id: TaskId,
    /// The task was sent with `ignore_result`: nothing will be stored.
    ignored: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> AsyncResult<T> {
    pub(crate) fn new(app: App, id: TaskId) -> Self {
        AsyncResult {
            app,
            id,
            ignored: false,
            _t: PhantomData,
        }
    }

    /// Marks the handle of a task sent with `ignore_result`, whose `get`
    /// then fails at once instead of waiting for a result that never comes.
    pub(crate) fn ignoring(mut self, ignored: bool) -> Self {
        self.ignored = ignored;
        self
    }

    /// Returns the task id.
    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// Returns the stored result record, if any.
    pub async fn result(&self) -> Result<Option<TaskResult>, Error> {
        match self.app.backend() {
            Some(b) => b.get(&self.id).await,
            None => Ok(None),
        }
    }

    /// Returns the task's state; `PENDING` when nothing is stored yet.
    pub async fn state(&self) -> Result<TaskState, Error> {
        Ok(self
            .result()
            .await?
            .map_or(TaskState::Pending, |r| r.status))
    }

    /// Returns true once the task is in a final state.
    pub async fn ready(&self) -> Result<bool, Error> {
        Ok(self.state().await?.is_ready())
    }

    /// Waits up to `timeout` for the task to finish and returns its value.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn get(&self, timeout: Duration) -> Result<T, GetError> {
        if self.ignored {
            return Err(GetError::NoResults);
        }
        let backend = self.app.backend().ok_or(GetError::NoResults)?;
        let r = backend
            .wait(&self.id, timeout)
            .await
            .map_err(GetError::Backend)?;
        match r {
            Some(r) if r.status == TaskState::Success => {
                serde_json::from_value(r.result).map_err(GetError::Decode)
            }
            Some(r) if r.status == TaskState::Failure => Err(GetError::Failed {
                exception: r.exception().unwrap_or_else(|| {
                    ExceptionInfo::new("Exception", "builtins", r.result.to_string())
                }),
                traceback: r.traceback,
            }),
            Some(r) if r.status == TaskState::Revoked => Err(GetError::Revoked {
                reason: r
                    .exception()
                    .map_or_else(|| "revoked".to_owned(), |e| e.exc_message),
            }),
            _ => Err(GetError::Timeout(timeout)),
        }
    }

    /// Deletes the stored result.
    pub async fn forget(&self) -> Result<(), Error> {
        match self.app.backend() {
            Some(b) => b.forget(&self.id).await,
            None => Ok(()),
        }
    }

    /// Revokes the task: removes it if waiting, cancels it if running.
    pub async fn revoke(&self) -> Result<celeriac_core::Revoked, Error> {
        self.app.revoke(&self.id).await
    }
}
