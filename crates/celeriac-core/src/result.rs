//! The stored outcome of a task, in Celery's result layout.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::id::TaskId;
use crate::state::TaskState;

/// A task's stored outcome: the JSON Celery writes to
/// `celery-task-meta-<id>` (`celery-protocol.md` §6).
///
/// For `FAILURE`, `RETRY` and `REVOKED` the `result` is an exception object
/// `{"exc_type", "exc_message", "exc_module"}` (see [`ExceptionInfo`]).
///
/// ```
/// use celeriac_core::{TaskId, TaskResult, TaskState};
/// let r = TaskResult::success(TaskId::from("t1"), serde_json::json!(5));
/// assert_eq!(r.status, TaskState::Success);
/// let text = serde_json::to_string(&r).unwrap();
/// assert!(text.contains("\"status\":\"SUCCESS\""));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's state.
    pub status: TaskState,
    /// The return value, or the exception object.
    #[serde(default)]
    pub result: Value,
    /// Traceback text for failures.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Ids (or signatures) of tasks this one sent.
    #[serde(default)]
    pub children: Vec<Value>,
    /// When the task reached this state.
    #[serde(default)]
    pub date_done: Option<DateTime<Utc>>,
    /// The task id, always present.
    pub task_id: TaskId,
    /// Task name (Celery's extended results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Retries spent when this state was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The worker that stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The group the task ran in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The task that sent this one, if any (a retried task's own id, as
    /// Celery writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<TaskId>,
}

impl TaskResult {
    /// Returns a `SUCCESS` result.
    pub fn success(task_id: TaskId, value: Value) -> Self {
        Self::new(task_id, TaskState::Success, value, None)
    }

    /// Returns a `FAILURE` result for an exception.
    ///
    /// Without a traceback of its own, the result gets a short one in
    /// Python's shape, ending in `ExcType: message`, because Celery's
    /// clients show `AsyncResult.traceback` and expect text there.
    ///
    /// ```
    /// use celeriac_core::{ExceptionInfo, TaskId, TaskResult};
    /// let exc = ExceptionInfo::new("ValueError", "builtins", "boom");
    /// let r = TaskResult::failure(TaskId::from("t1"), &exc, None);
    /// assert!(r.traceback.unwrap().ends_with("ValueError: boom\n"));
    /// ```
    pub fn failure(task_id: TaskId, exc: &ExceptionInfo, traceback: Option<String>) -> Self {
        let traceback = traceback.unwrap_or_else(|| {
            format!(
                "Traceback (most recent call last):\n  (a celeriac task; no Python frames)\n{}: {}\n",
                exc.exc_type, exc.exc_message
            )
        });
        Self::new(task_id, TaskState::Failure, exc.to_value(), Some(traceback))
    }

    /// Returns a `REVOKED` result with a reason (`"revoked"`, `"expired"`).
    pub fn revoked(task_id: TaskId, reason: &str) -> Self {
        let exc = ExceptionInfo::new("TaskRevokedError", "celery.exceptions", reason);
        Self::new(task_id, TaskState::Revoked, exc.to_value(), None)
    }

    /// Returns a result in `state` with `value`, dated now.
    pub fn new(
        task_id: TaskId,
        status: TaskState,
        result: Value,
        traceback: Option<String>,
    ) -> Self {
        TaskResult {
            status,
            result,
            traceback,
            children: Vec::new(),
            date_done: Some(Utc::now()),
            task_id,
            name: None,
            retries: None,
            worker: None,
            group_id: None,
            parent_id: None,
        }
    }

    /// Returns the exception, when the result holds one.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        match self.status {
            TaskState::Failure | TaskState::Retry | TaskState::Revoked => {
                ExceptionInfo::from_value(&self.result)
            }
            _ => None,
        }
    }
}

/// An exception as Celery stores it, so Python can rebuild the class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// Class name, e.g. `ValueError`.
    pub exc_type: String,
    /// Module of the class, e.g. `builtins`.
    pub exc_module: String,
    /// The message.
    pub exc_message: String,
}

impl ExceptionInfo {
    /// Returns an exception description.
    pub fn new(exc_type: &str, exc_module: &str, message: impl Into<String>) -> Self {
        ExceptionInfo {
            exc_type: exc_type.to_owned(),
            exc_module: exc_module.to_owned(),
            exc_message: message.into(),
        }
    }

    /// Returns the JSON object stored in a result; `exc_message` is a
    /// one-element array, as Python's `exception.args`.
    pub fn to_value(&self) -> Value {
        json!({
            "exc_type": self.exc_type,
            "exc_message": [self.exc_message],
            "exc_module": self.exc_module,
        })
    }

    /// Reads an exception object, accepting a string or an args array as
    /// `exc_message`.
    pub fn from_value(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        let exc_type = obj.get("exc_type")?.as_str()?.to_owned();
        let exc_module = obj
            .get("exc_module")
            .and_then(Value::as_str)
            .unwrap_or("builtins")
            .to_owned();
        let exc_message = match obj.get("exc_message") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            Some(other) => other.to_string(),
            None => String::new(),
        };
        Some(ExceptionInfo {
            exc_type,
            exc_module,
            exc_message,
        })
    }
}

impl std::fmt::Display for ExceptionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.exc_message)
    }
}
