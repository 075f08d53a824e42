//! Connections: one multiplexed, self-reconnecting connection for every
//! command (concurrent calls are pipelined on it), and dedicated
//! connections for the blocking commands that wake idle fetches (one per
//! watched key, held by its watcher in [`crate::wake`]).
//!
//! A dropped connection fails the commands in flight with a `Transient`
//! error and is re-established with exponential backoff by the `redis`
//! crate's `ConnectionManager`; every command has a response timeout, so
//! nothing hangs on a dead server.

use std::time::Duration;

use celeriac_core::{Error, ErrorKind};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;

use crate::config::{redact, Config};

/// How long one command may take before it counts as failed: long enough
/// for a claim of many large messages on a busy server.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connections of one broker.
pub(crate) struct Conn {
    manager: ConnectionManager,
    client: redis::Client,
}

impl Conn {
    /// Connects (failing with `Transient` when the server is unreachable).
    pub async fn open(cfg: &Config) -> Result<Conn, Error> {
        let shown = redact(&cfg.url);
        if cfg.url.starts_with("rediss:") {
            // An error means a provider is installed already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidInput,
                format!("`{shown}` is not a usable Redis URL"),
                e,
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| redis_error(e, &format!("connecting to {shown}")))?;
        Ok(Conn { manager, client })
    }

    /// Returns a handle on the shared connection.
    pub fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Returns the client, to open more connections.
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// Opens a connection for blocking commands.
    pub async fn blocker(&self) -> Result<MultiplexedConnection, Error> {
        // No response timeout: blocking commands carry their own, and the
        // caller bounds the wait with a timer of its own as well.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| redis_error(e, "opening a connection for wake-ups"))
    }
}

/// Maps a Redis error: connection problems are `Transient`.
pub(crate) fn redis_error(e: redis::RedisError, doing: &str) -> Error {
    crate::results::store::redis_error(e, doing.to_owned())
}
