//! Runs the shared conformance suite against [`RedisBroker`] on a real
//! Redis (`CELERIAC_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/0`).
//!
//! Every case gets its own `global_keyprefix`, so cases running in
//! parallel (and other suites on the same server) never see each other's
//! keys; the keys are deleted when the case ends. When Redis cannot be
//! reached every case prints a visible skip and passes, unless
//! `CELERIAC_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use celeriac_conformance::{Fixture, FixtureOptions};
use celeriac_redis::RedisBroker;

fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned())
}

/// One case's namespace on the server.
struct Redis {
    url: String,
    prefix: String,
}

impl Redis {
    /// Returns a fixture, or `None` (after a visible note) when Redis
    /// cannot be reached.
    async fn new() -> Option<Redis> {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        let reachable = tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await;
        if !matches!(reachable, Ok(Ok(_))) {
            celeriac_conformance::service::note(&format!("SKIP: Redis at {url} is unreachable"));
            return None;
        }
        Some(Redis {
            url,
            prefix: format!("{}:", celeriac_conformance::unique_ns()),
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Deletes the case's keys (a blocking connection: no runtime here).
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

impl Fixture for Redis {
    type Broker = RedisBroker;

    async fn open_with(&self, opts: FixtureOptions) -> RedisBroker {
        let mut b = RedisBroker::builder(self.url.as_str()).global_keyprefix(self.prefix.as_str());
        if let Some(n) = opts.max_queue_length {
            b = b.max_queue_length(n);
        }
        if let Some(d) = opts.result_expiry {
            b = b.result_expiry(d);
        }
        b.build().await.unwrap()
    }
}

celeriac_conformance::suite!(Redis::new());
