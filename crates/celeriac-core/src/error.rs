//! The error type shared by the seam and every backend.

use std::borrow::Cow;
use std::fmt;

/// A boxed error, the source type of [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, so callers decide what to do without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A passing fault (connection lost, database busy); trying again may work.
    Transient,
    /// The lease was lost: another attempt holds the task now (fencing).
    LeaseLost,
    /// The backend does not offer this operation (see `Capabilities`).
    Unsupported,
    /// The queue is at its maximum length.
    QueueFull,
    /// A message is larger than the configured limit.
    PayloadTooLarge,
    /// A stored or received message cannot be decoded.
    Malformed,
    /// The caller passed something invalid (a bad URL, a bad option).
    InvalidInput,
    /// Nothing with that id or name exists.
    NotFound,
    /// Waiting ran out of time.
    Timeout,
    /// The backend was closed.
    Closed,
    /// Anything else, with its source attached.
    Other,
}

impl ErrorKind {
    /// Returns true if trying again later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::QueueFull)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::Transient => "transient failure",
            ErrorKind::LeaseLost => "lease lost",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::QueueFull => "queue full",
            ErrorKind::PayloadTooLarge => "payload too large",
            ErrorKind::Malformed => "malformed message",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotFound => "not found",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Closed => "closed",
            ErrorKind::Other => "error",
        };
        f.write_str(s)
    }
}

/// An error from a broker, a result backend or the codec.
///
/// Its text describes this layer only; the cause is in [`std::error::Error::source`].
///
/// ```
/// use celeriac_core::{Error, ErrorKind};
/// let e = Error::new(ErrorKind::QueueFull, "queue `emails` is full (1000 messages)");
/// assert_eq!(e.kind(), ErrorKind::QueueFull);
/// assert!(e.kind().is_transient());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// Returns an error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Returns an error of `kind` with a message and its cause.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<Cow<'static, str>>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Returns the kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Returns an `Unsupported` error naming the operation.
    pub fn unsupported(operation: &'static str) -> Self {
        Error::new(
            ErrorKind::Unsupported,
            format!("this backend does not support {operation}"),
        )
    }

    /// Returns the message with every source appended, for logs and results.
    pub fn chain_text(&self) -> String {
        let mut s = self.message.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}
