//! Options of a [`RedisBroker`](crate::RedisBroker): kombu's transport
//! options that change the wire, celeriac's own, and how they are read
//! from a broker URL.
//!
//! A URL carries the options as query parameters, with kombu's names
//! (`broker_transport_options` in Celery), so one URL can serve both sides:
//!
//! ```text
//! redis://[user:pass@]host:port/db?visibility_timeout=3600&global_keyprefix=app:
//!     &priority_steps=0,3,6,9&sep=%06%16&result_expires=86400&max_queue_length=100000
//! ```
//!
//! Every other query parameter is left to the `redis` crate (for example
//! `protocol=resp3`).

use std::time::Duration;

use celeriac_core::backend::DEFAULT_RESULT_EXPIRY;
use celeriac_core::{Error, ErrorKind};

/// kombu's default visibility timeout: an unacknowledged message is
/// restored after an hour.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(3600);

/// kombu's default priority steps.
pub const DEFAULT_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// kombu's default separator between a queue name and a priority step.
pub const DEFAULT_SEP: &str = "\x06\x16";

/// Every option of a broker; see [`RedisBrokerBuilder`](crate::RedisBrokerBuilder).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The server address for the `redis` crate, without our options.
    pub url: String,
    /// After how long an unacknowledged message is restored (kombu's
    /// `visibility_timeout`); leases are written relative to it.
    pub visibility_timeout: Duration,
    /// Prefix of every key (kombu's `global_keyprefix`).
    pub global_keyprefix: String,
    /// Priority steps, ascending, always holding 0.
    pub priority_steps: Vec<u8>,
    /// Separator between a queue name and a step (kombu's `sep`).
    pub sep: String,
    /// kombu's `unacked_key`.
    pub unacked_key: String,
    /// kombu's `unacked_index_key`.
    pub unacked_index_key: String,
    /// kombu's `unacked_mutex_key`.
    pub unacked_mutex_key: String,
    /// How long kombu's restore lock is held at most (`unacked_mutex_expire`).
    pub unacked_mutex_expire: Duration,
    /// How long a stored result is kept (Celery's `result_expires`).
    pub result_expires: Duration,
    /// The most waiting messages (ready and delayed) a queue may hold.
    pub max_queue_length: Option<usize>,
    /// Publish future-eta messages to the queue list, as Python does,
    /// instead of straight into the delayed set.
    pub eta_to_list: bool,
}

impl Config {
    /// Returns the defaults for a server URL (options not yet parsed).
    fn defaults(url: String) -> Self {
        Config {
            url,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            global_keyprefix: String::new(),
            priority_steps: DEFAULT_PRIORITY_STEPS.to_vec(),
            sep: DEFAULT_SEP.to_owned(),
            unacked_key: "unacked".to_owned(),
            unacked_index_key: "unacked_index".to_owned(),
            unacked_mutex_key: "unacked_mutex".to_owned(),
            unacked_mutex_expire: Duration::from_secs(300),
            result_expires: DEFAULT_RESULT_EXPIRY,
            max_queue_length: None,
            eta_to_list: false,
        }
    }

    /// Parses a broker URL, taking out the transport options it carries.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let mut parsed = url::Url::parse(url).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidInput,
                format!("invalid Redis URL `{}`", redact(url)),
                e,
            )
        })?;
        match parsed.scheme() {
            "redis" | "rediss" | "redis+unix" | "unix" => {}
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("a Redis broker URL starts with redis:// or rediss://, not {other}://"),
                ))
            }
        }
        let mut cfg = Config::defaults(String::new());
        let mut rest: Vec<(String, String)> = Vec::new();
        for (k, v) in parsed.query_pairs() {
            let (k, v) = (k.into_owned(), v.into_owned());
            if !cfg.apply(&k, &v)? {
                rest.push((k, v));
            }
        }
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
        cfg.url = parsed.to_string();
        Ok(cfg)
    }

    /// Applies one option; returns false if the name is not ours.
    pub fn apply(&mut self, name: &str, value: &str) -> Result<bool, Error> {
        match name {
            "visibility_timeout" => self.visibility_timeout = seconds(name, value)?,
            "global_keyprefix" => self.global_keyprefix = value.to_owned(),
            "priority_steps" => self.priority_steps = steps(value)?,
            "sep" => {
                if value.is_empty() {
                    return Err(invalid(name, value, "the separator cannot be empty"));
                }
                self.sep = value.to_owned();
            }
            "unacked_key" => self.unacked_key = nonempty(name, value)?,
            "unacked_index_key" => self.unacked_index_key = nonempty(name, value)?,
            "unacked_mutex_key" => self.unacked_mutex_key = nonempty(name, value)?,
            "unacked_mutex_expire" => self.unacked_mutex_expire = seconds(name, value)?,
            "result_expires" => self.result_expires = seconds(name, value)?,
            "max_queue_length" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| invalid(name, value, "expected a whole number"))?;
                self.max_queue_length = (n > 0).then_some(n);
            }
            "eta_to_list" => {
                self.eta_to_list = match value {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    _ => return Err(invalid(name, value, "expected true or false")),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn invalid(name: &str, value: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("invalid Redis transport option {name}={value:?}: {why}"),
    )
}

fn nonempty(name: &str, value: &str) -> Result<String, Error> {
    if value.is_empty() {
        return Err(invalid(name, value, "cannot be empty"));
    }
    Ok(value.to_owned())
}

/// Parses seconds, whole or fractional (`3600`, `0.5`).
fn seconds(name: &str, value: &str) -> Result<Duration, Error> {
    let s: f64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(name, value, "expected a number of seconds"))?;
    Duration::try_from_secs_f64(s)
        .map_err(|_| invalid(name, value, "expected a non-negative number of seconds"))
}

/// Parses priority steps: `0,3,6,9`, `[0, 3, 6, 9]` or `0 5 9`.
pub(crate) fn steps(value: &str) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8];
    for part in value
        .split(|c: char| c == ',' || c == '[' || c == ']' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let n: u8 =
            part.parse().ok().filter(|n| *n <= 9).ok_or_else(|| {
                invalid("priority_steps", value, "steps are whole numbers 0 to 9")
            })?;
        out.push(n);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Returns a URL with any password replaced, for error messages.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable>".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_are_taken_out_of_the_url() {
        let c = Config::from_url(
            "redis://:pw@localhost:6380/9?visibility_timeout=5&global_keyprefix=p:&\
             priority_steps=0,5,9&sep=%06%16&max_queue_length=10&protocol=resp3",
        )
        .unwrap();
        assert_eq!(c.visibility_timeout, Duration::from_secs(5));
        assert_eq!(c.global_keyprefix, "p:");
        assert_eq!(c.priority_steps, vec![0, 5, 9]);
        assert_eq!(c.sep, "\x06\x16");
        assert_eq!(c.max_queue_length, Some(10));
        assert_eq!(c.url, "redis://:pw@localhost:6380/9?protocol=resp3");
    }

    #[test]
    fn defaults_are_kombus() {
        let c = Config::from_url("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(c.visibility_timeout, DEFAULT_VISIBILITY_TIMEOUT);
        assert_eq!(c.priority_steps, vec![0, 3, 6, 9]);
        assert_eq!(c.unacked_key, "unacked");
        assert_eq!(c.url, "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn bad_options_are_invalid_input() {
        for url in [
            "redis://h/0?visibility_timeout=abc",
            "redis://h/0?priority_steps=0,12",
            "redis://h/0?sep=",
            "amqp://h/0",
            "not a url",
        ] {
            let e = Config::from_url(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url}");
        }
        assert_eq!(steps("[3, 6]").unwrap(), vec![0, 3, 6]);
        assert!(!redact("redis://:secret@h/0").contains("secret"));
    }
}
