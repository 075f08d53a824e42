//! The [`Task`] trait and the [`TaskContext`] a running task receives.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{FromArgs, IntoArgs, TaskError, TaskId, TaskOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::signature::Signature;

/// A task: a stable name, typed arguments, a typed result and options.
///
/// Usually written with the `#[celeriac::task]` attribute; implementing it by
/// hand looks like this:
///
/// ```
/// use celeriac::{Task, TaskContext, TaskError};
///
/// struct Add;
/// impl Task for Add {
///     const NAME: &'static str = "tasks.add";
///     type Args = (i64, i64);
///     type Output = i64;
///     async fn run(_ctx: TaskContext, (x, y): (i64, i64)) -> Result<i64, TaskError> {
///         Ok(x + y)
///     }
/// }
/// ```
pub trait Task: Send + Sync + 'static {
    /// The stable name the task is registered and sent under. Never derived
    /// from a Rust type name, so moving or renaming code strands no work.
    const NAME: &'static str;
    /// The arguments, read from Celery's positional args and kwargs.
    type Args: FromArgs + IntoArgs + Send + 'static;
    /// The return value, stored as JSON.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Returns the task's declared options.
    fn options() -> TaskOptions {
        TaskOptions::new(Self::NAME)
    }

    /// Runs the task.
    fn run(
        ctx: TaskContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Output, TaskError>> + Send + 'static;

    /// Returns a signature of this task with `args`, to set per-call options
    /// and send.
    fn s(args: Self::Args) -> Signature<Self>
    where
        Self: Sized,
    {
        Signature::new(args)
    }
}

/// What a running task knows about its attempt, and its cancellation signal.
///
/// The signal fires on the soft time limit, on revoke, and on a hard
/// shutdown; a task that watches it can stop cleanly.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) id: TaskId,
    pub(crate) name: &'static str,
    pub(crate) retries: u32,
    pub(crate) deliveries: u32,
    pub(crate) queue: Arc<str>,
    pub(crate) cancel: CancellationToken,
    pub(crate) app: App,
}

impl TaskContext {
    /// Returns the task id.
    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// Returns the task name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// Returns how many times this task was retried before this attempt.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Returns how many times this message was delivered, this one included
    /// (more than one after a worker died mid-task).
    pub fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// Returns the queue the task came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Returns true once the task has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Waits until the task is asked to stop (soft time limit, revoke,
    /// hard shutdown).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Returns a clone of the cancellation token, for blocking code.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Returns the app, to send further tasks.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Returns a retry request after `after`, for `return Err(ctx.retry(..))`.
    pub fn retry(&self, after: Option<Duration>) -> TaskError {
        TaskError::retry(after)
    }
}
