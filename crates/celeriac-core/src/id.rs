//! Task identity.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A task's identity: a lowercase hyphenated UUID4 string, as Celery uses.
///
/// Any unique string is accepted when read from the wire (Celery allows it);
/// [`TaskId::new`] always makes a UUID4. Cloning is cheap (the text is shared).
///
/// ```
/// use celeriac_core::TaskId;
/// let id = TaskId::new();
/// assert_eq!(id.as_str().len(), 36);
/// assert_eq!(TaskId::from("abc").as_str(), "abc");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Arc<str>);

impl TaskId {
    /// Returns a fresh random UUID4 id.
    pub fn new() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        TaskId(Arc::from(&*s))
    }

    /// Returns the id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", &self.0)
    }
}

impl From<&str> for TaskId {
    fn from(s: &str) -> Self {
        TaskId(Arc::from(s))
    }
}

impl From<String> for TaskId {
    fn from(s: String) -> Self {
        TaskId(Arc::from(s))
    }
}

impl AsRef<str> for TaskId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
