//! Helpers shared by the integration tests: requests, messages, a broker
//! in a fresh temporary directory.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{FetchRequest, Message};
use celeriac_sqlite::SqliteBroker;
use tempfile::TempDir;

/// Returns a fetch request.
pub fn req(queues: &[&str], max: usize, lease: Duration, wait: Duration) -> FetchRequest {
    FetchRequest {
        queues: queues
            .iter()
            .map(|q| (*q).to_owned())
            .collect::<Vec<_>>()
            .into(),
        max,
        lease,
        wait,
    }
}

/// Returns a request for one queue with a long lease and no wait.
pub fn now(queue: &str, max: usize) -> FetchRequest {
    req(&[queue], max, Duration::from_secs(60), Duration::ZERO)
}

/// Returns a message for `queue` with `args`.
pub fn msg(queue: &str, args: Vec<serde_json::Value>) -> Message {
    let mut m = Message::new("tasks.test", args, Default::default());
    m.set_queue(queue);
    m
}

/// Returns a message with a priority.
pub fn prio(queue: &str, n: i64, priority: u8) -> Message {
    let mut m = msg(queue, vec![n.into()]);
    m.properties.priority = Some(priority);
    m
}

/// Returns the first positional argument of a delivered message.
pub fn arg0(d: &celeriac_core::Delivery) -> i64 {
    d.message.as_ref().unwrap().body.args[0].as_i64().unwrap()
}

/// Opens a broker on a new file in a new temporary directory.
pub async fn fresh() -> (TempDir, SqliteBroker) {
    let dir = tempfile::tempdir().unwrap();
    let broker = SqliteBroker::open(dir.path().join("q.db")).await.unwrap();
    (dir, broker)
}

/// The queue list of a request, shared.
pub fn queues(names: &[&str]) -> Arc<[String]> {
    names
        .iter()
        .map(|q| (*q).to_owned())
        .collect::<Vec<_>>()
        .into()
}
