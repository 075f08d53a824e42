//! Small helpers shared by every module: the clock in milliseconds and the
//! mapping of SQLite errors onto [`ErrorKind`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use celeriac_core::{Error, ErrorKind};
use chrono::{DateTime, Utc};
use rusqlite::ErrorCode;

/// Returns the wall clock in milliseconds since the Unix epoch.
///
/// Wall time, not a monotonic clock, because deadlines are compared by
/// other processes sharing the file.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Returns a duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Returns the instant `wait` from now, or a year from now when `wait`
/// is too long to add (`Duration::MAX` means "wait as long as it takes").
pub(crate) fn deadline(wait: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Returns an instant as milliseconds since the Unix epoch.
pub(crate) fn instant_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Returns a stored millisecond timestamp as a date.
pub(crate) fn ms_instant(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Wraps a SQLite error, classifying a busy or locked database as
/// transient (another process held the lock past the busy timeout).
pub(crate) fn db_error(context: &'static str, e: rusqlite::Error) -> Error {
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Transient,
        _ => ErrorKind::Other,
    };
    Error::with_source(kind, context, e)
}

/// Returns the error given when the handle's background threads are gone.
pub(crate) fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the sqlite broker's writer has stopped")
}
