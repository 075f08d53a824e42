//! Task states, spelled as Celery spells them.

use serde::{Deserialize, Serialize};

/// A task's state, with Celery's uppercase names on the wire.
///
/// See `docs/task-lifecycle.md` for who may make each transition.
///
/// ```
/// use celeriac_core::TaskState;
/// assert_eq!(serde_json::to_string(&TaskState::Success).unwrap(), "\"SUCCESS\"");
/// assert!(TaskState::Revoked.is_ready());
/// assert!(!TaskState::Retry.is_ready());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    /// Unknown to the result store: queued, or never sent.
    Pending,
    /// Taken by a worker, not yet started.
    Received,
    /// Running.
    Started,
    /// Finished with a value.
    Success,
    /// Finished with an error (also: hard time limit, panic, bad arguments).
    Failure,
    /// Failed an attempt; a new delivery is scheduled.
    Retry,
    /// Revoked or expired before it ran; it will not run.
    Revoked,
}

impl TaskState {
    /// Returns true for the final states: success, failure and revoked.
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failure | TaskState::Revoked
        )
    }

    /// Returns the uppercase name Celery uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Received => "RECEIVED",
            TaskState::Started => "STARTED",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Retry => "RETRY",
            TaskState::Revoked => "REVOKED",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
