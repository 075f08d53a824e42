//! Task options and task errors.
//!
//! The `Task` trait itself lives in the `celeriac` facade, beside the
//! runtime context a running task receives.

use std::fmt;
use std::time::Duration;

use crate::result::ExceptionInfo;
use crate::retry::RetryPolicy;

/// Options declared by a task (`#[task(...)]`); a call may override some.
///
/// ```
/// use celeriac_core::TaskOptions;
/// let o = TaskOptions::new("tasks.add").max_retries(3).queue("math");
/// assert_eq!(o.queue.as_deref(), Some("math"));
/// assert!(o.acks_late);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskOptions {
    /// The stable name the task is registered and sent under.
    pub name: String,
    /// The queue it is sent to when the call names none.
    pub queue: Option<String>,
    /// The priority it is sent with when the call names none (0..=9).
    pub priority: Option<u8>,
    /// How many retries are allowed after the first attempt.
    pub max_retries: u32,
    /// Backoff between automatic retries.
    pub retry_policy: RetryPolicy,
    /// When the task's cancellation signal fires (it may finish cleanly).
    pub soft_time_limit: Option<Duration>,
    /// When the task is stopped and fails.
    pub time_limit: Option<Duration>,
    /// Store no result.
    pub ignore_result: bool,
    /// Acknowledge after the task finishes (the default), not before it runs.
    pub acks_late: bool,
    /// Run on the blocking thread pool (for CPU-heavy or blocking code).
    pub blocking: bool,
    /// Store a `STARTED` state (with the worker's pid and name) when an
    /// attempt begins, as Celery's `track_started`.
    pub track_started: bool,
}

impl TaskOptions {
    /// Returns the defaults for a task named `name`: no retries, results
    /// stored, acknowledged late, async.
    pub fn new(name: impl Into<String>) -> Self {
        TaskOptions {
            name: name.into(),
            queue: None,
            priority: None,
            max_retries: 0,
            retry_policy: RetryPolicy::default(),
            soft_time_limit: None,
            time_limit: None,
            ignore_result: false,
            acks_late: true,
            blocking: false,
            track_started: false,
        }
    }

    /// Sets the default queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets the default priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority.min(9));
        self
    }

    /// Sets how many retries are allowed.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the retry backoff.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = policy;
        self
    }

    /// Sets the soft time limit.
    pub fn soft_time_limit(mut self, d: Duration) -> Self {
        self.soft_time_limit = Some(d);
        self
    }

    /// Sets the hard time limit.
    pub fn time_limit(mut self, d: Duration) -> Self {
        self.time_limit = Some(d);
        self
    }

    /// Stores no result.
    pub fn ignore_result(mut self, yes: bool) -> Self {
        self.ignore_result = yes;
        self
    }

    /// Acknowledges late (after running) or early (before running).
    pub fn acks_late(mut self, yes: bool) -> Self {
        self.acks_late = yes;
        self
    }

    /// Runs on the blocking thread pool.
    pub fn blocking(mut self, yes: bool) -> Self {
        self.blocking = yes;
        self
    }

    /// Stores a `STARTED` state when an attempt begins.
    pub fn track_started(mut self, yes: bool) -> Self {
        self.track_started = yes;
        self
    }
}

/// What a failed task asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// An ordinary failure: retried automatically while retries remain
    /// (`max_retries`), with the task's backoff; then `FAILURE`.
    Fail,
    /// Retry explicitly, after the given delay (or the policy's backoff);
    /// `FAILURE` once `max_retries` is spent.
    Retry {
        /// Delay before the new delivery; `None` uses the retry policy.
        after: Option<Duration>,
    },
    /// Fail now, without retrying.
    Permanent,
}

/// The error a task returns; its kind decides what happens next, so no
/// downcast is needed.
///
/// Any `std::error::Error` converts into a [`TaskErrorKind::Fail`] with `?`.
/// The exception type and module are what Python sees in the result
/// (`ValueError` of `builtins` by default is *not* assumed: the default is
/// `TaskError` of module `celeriac`).
///
/// ```
/// use std::time::Duration;
/// use celeriac_core::{TaskError, TaskErrorKind};
///
/// let e = TaskError::retry(Some(Duration::from_millis(100)));
/// assert_eq!(e.kind(), TaskErrorKind::Retry { after: Some(Duration::from_millis(100)) });
///
/// let e = TaskError::permanent("bad input").with_type("ValueError", "builtins");
/// assert_eq!(e.exception().exc_type, "ValueError");
///
/// fn parse(s: &str) -> Result<i64, TaskError> { Ok(s.parse::<i64>()?) }
/// assert_eq!(parse("x").unwrap_err().kind(), TaskErrorKind::Fail);
/// ```
pub struct TaskError {
    kind: TaskErrorKind,
    exception: ExceptionInfo,
    traceback: Option<String>,
}

impl TaskError {
    /// Returns an ordinary failure with a message.
    pub fn fail(message: impl fmt::Display) -> Self {
        Self::of_kind(TaskErrorKind::Fail, message.to_string())
    }

    /// Returns a failure that is never retried.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::of_kind(TaskErrorKind::Permanent, message.to_string())
    }

    /// Returns a request to retry after `after` (or the policy's backoff).
    pub fn retry(after: Option<Duration>) -> Self {
        Self::of_kind(TaskErrorKind::Retry { after }, "retry requested".to_owned())
    }

    fn of_kind(kind: TaskErrorKind, message: String) -> Self {
        TaskError {
            kind,
            exception: ExceptionInfo::new("TaskError", "celeriac", message),
            traceback: None,
        }
    }

    /// Sets the exception class and module Python sees (e.g. `ValueError`,
    /// `builtins`).
    pub fn with_type(mut self, exc_type: &str, exc_module: &str) -> Self {
        self.exception.exc_type = exc_type.to_owned();
        self.exception.exc_module = exc_module.to_owned();
        self
    }

    /// Sets the message.
    pub fn with_message(mut self, message: impl fmt::Display) -> Self {
        self.exception.exc_message = message.to_string();
        self
    }

    /// Sets the traceback text stored with the result.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }

    /// Returns what this error asks for next.
    pub fn kind(&self) -> TaskErrorKind {
        self.kind
    }

    /// Returns the exception as stored in the result.
    pub fn exception(&self) -> &ExceptionInfo {
        &self.exception
    }

    /// Returns the traceback text, if any.
    pub fn traceback(&self) -> Option<&str> {
        self.traceback.as_deref()
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("kind", &self.kind)
            .field("exception", &self.exception)
            .finish()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.exception, f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        let mut text = e.to_string();
        let mut cur = e.source();
        while let Some(s) = cur {
            text.push_str(": ");
            text.push_str(&s.to_string());
            cur = s.source();
        }
        TaskError::fail(text)
    }
}
