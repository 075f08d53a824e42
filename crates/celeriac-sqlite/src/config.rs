//! Options of a [`SqliteBroker`]: the builder, the
//! durability level and the parsing of `sqlite://` URLs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use celeriac_core::backend::DEFAULT_RESULT_EXPIRY;
use celeriac_core::{Error, ErrorKind};

use crate::SqliteBroker;

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`).
///
/// Both levels survive `kill -9` of any process at any instant: a commit is
/// in the write-ahead log before the call that made it returns. They differ
/// on a power loss or an operating system crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is flushed to the disk (`fsync`) before it returns:
    /// nothing acknowledged is lost, even on a power cut. The default.
    #[default]
    Full,
    /// Commits reach the operating system but are flushed only at
    /// checkpoints: faster, and a power cut may lose the last commits
    /// (never corrupting the file).
    Normal,
}

impl Synchronous {
    /// Returns the value of `PRAGMA synchronous`.
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// The default time a writer waits for another process's write lock.
pub(crate) const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything needed to open a broker; built by [`SqliteBrokerBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) path: PathBuf,
    pub(crate) synchronous: Synchronous,
    pub(crate) max_queue_length: Option<usize>,
    pub(crate) result_expiry: Duration,
    pub(crate) busy_timeout: Duration,
}

/// Configures and opens a [`SqliteBroker`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), celeriac_core::Error> {
/// use std::time::Duration;
/// use celeriac_sqlite::{SqliteBroker, Synchronous};
///
/// let dir = tempfile::tempdir().unwrap();
/// let broker = SqliteBroker::builder(dir.path().join("jobs.db"))
///     .synchronous(Synchronous::Normal)
///     .max_queue_length(10_000)
///     .result_expiry(Duration::from_secs(3600))
///     .build()
///     .await?;
/// # drop(broker);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct SqliteBrokerBuilder {
    config: Config,
}

impl SqliteBrokerBuilder {
    /// Returns a builder for the database file at `path`, with the defaults:
    /// [`Synchronous::Full`], no queue limit, results kept for
    /// [`DEFAULT_RESULT_EXPIRY`].
    pub fn new(path: impl AsRef<Path>) -> Self {
        SqliteBrokerBuilder {
            config: Config {
                path: path.as_ref().to_path_buf(),
                synchronous: Synchronous::Full,
                max_queue_length: None,
                result_expiry: DEFAULT_RESULT_EXPIRY,
                busy_timeout: DEFAULT_BUSY_TIMEOUT,
            },
        }
    }

    /// Sets the durability level of commits.
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.config.synchronous = synchronous;
        self
    }

    /// Limits every queue to `max` waiting (ready or delayed) messages: a
    /// publish that would exceed it fails whole with
    /// [`ErrorKind::QueueFull`].
    pub fn max_queue_length(mut self, max: usize) -> Self {
        self.config.max_queue_length = Some(max);
        self
    }

    /// Sets how long stored results are kept.
    pub fn result_expiry(mut self, expiry: Duration) -> Self {
        self.config.result_expiry = expiry;
        self
    }

    /// Sets how long a write waits for another process holding the write
    /// lock before failing with [`ErrorKind::Transient`] (5 s by default).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.config.busy_timeout = timeout;
        self
    }

    /// Opens (creating if needed) the database and starts the handle's
    /// writer and wake-up threads.
    pub async fn build(self) -> Result<SqliteBroker, Error> {
        SqliteBroker::open_config(self.config).await
    }

    /// Returns a builder configured from a `sqlite://` URL; see the
    /// [crate docs](crate#urls) for the format.
    ///
    /// ```
    /// use celeriac_sqlite::SqliteBrokerBuilder;
    /// assert!(SqliteBrokerBuilder::from_url("sqlite://jobs.db?sync=normal").is_ok());
    /// assert!(SqliteBrokerBuilder::from_url("redis://localhost").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let rest = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| invalid(format!("`{url}` is not a sqlite:// url")))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let path = percent_decode(path)?;
        if path.is_empty() {
            return Err(invalid(format!("`{url}` names no database file")));
        }
        if path == ":memory:" {
            return Err(invalid(
                "an in-memory sqlite database cannot be shared; use memory:// instead",
            ));
        }
        let mut builder = SqliteBrokerBuilder::new(path);
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("option `{pair}` has no value")))?;
            let value = percent_decode(value)?;
            builder = builder.apply_option(key, &value)?;
        }
        Ok(builder)
    }

    fn apply_option(self, key: &str, value: &str) -> Result<Self, Error> {
        match key {
            "sync" | "synchronous" => match value.to_ascii_lowercase().as_str() {
                "full" => Ok(self.synchronous(Synchronous::Full)),
                "normal" => Ok(self.synchronous(Synchronous::Normal)),
                _ => Err(invalid(format!(
                    "option `{key}` must be `full` or `normal`, not `{value}`"
                ))),
            },
            "max_queue_length" => Ok(self.max_queue_length(parse_number(key, value)?)),
            "result_expires" | "result_expiry" => Ok(self.result_expiry(Duration::from_secs(
                parse_number(key, value)? as u64,
            ))),
            "busy_timeout_ms" => Ok(self.busy_timeout(Duration::from_millis(
                parse_number(key, value)? as u64,
            ))),
            _ => Err(invalid(format!(
                "unknown option `{key}` (known: sync, max_queue_length, result_expires, busy_timeout_ms)"
            ))),
        }
    }

    /// Returns the configuration, for tests of the URL parser.
    #[cfg(test)]
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

fn parse_number(key: &str, value: &str) -> Result<usize, Error> {
    value.parse::<usize>().map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidInput,
            format!("option `{key}` must be a whole number, not `{value}`"),
            e,
        )
    })
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message.into())
}

/// Decodes `%XX` escapes, so paths with spaces or `?` can be written.
fn percent_decode(s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(format!("bad percent escape in `{s}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidInput,
            format!("`{s}` is not utf-8 once decoded"),
            e,
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_relative_absolute_and_options() {
        let b = SqliteBrokerBuilder::from_url("sqlite://path.db?sync=normal&max_queue_length=1000")
            .unwrap();
        let c = b.config();
        assert_eq!(c.path, PathBuf::from("path.db"));
        assert_eq!(c.synchronous, Synchronous::Normal);
        assert_eq!(c.max_queue_length, Some(1000));
        assert_eq!(c.result_expiry, DEFAULT_RESULT_EXPIRY);

        let b = SqliteBrokerBuilder::from_url("sqlite:///abs/path.db").unwrap();
        assert_eq!(b.config().path, PathBuf::from("/abs/path.db"));
        assert_eq!(b.config().synchronous, Synchronous::Full);

        let b =
            SqliteBrokerBuilder::from_url("sqlite://dir/my%20jobs.db?result_expires=60").unwrap();
        assert_eq!(b.config().path, PathBuf::from("dir/my jobs.db"));
        assert_eq!(b.config().result_expiry, Duration::from_secs(60));
    }

    #[test]
    fn rejects_bad_urls_and_options() {
        for bad in [
            "postgres://x",
            "sqlite://",
            "sqlite://?sync=full",
            "sqlite://:memory:",
            "sqlite://a.db?sync=sometimes",
            "sqlite://a.db?max_queue_length=-3",
            "sqlite://a.db?colour=blue",
            "sqlite://a.db?sync",
            "sqlite://a%2.db",
        ] {
            let err = SqliteBrokerBuilder::from_url(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
        }
        let err = SqliteBrokerBuilder::from_url("sqlite://a.db?colour=blue").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
