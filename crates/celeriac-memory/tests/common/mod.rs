//! Helpers shared by the integration tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use celeriac_core::{Broker, Delivery, FetchRequest, Message};
use celeriac_memory::MemoryBroker;

/// A generous bound for anything that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Returns a message for `queue`.
pub fn msg(queue: &str) -> Message {
    let mut m = Message::new("tests.noop", vec![], Default::default());
    m.set_queue(queue);
    m
}

/// Returns a message for `queue` with a priority.
pub fn msg_p(queue: &str, priority: u8) -> Message {
    let mut m = msg(queue);
    m.properties.priority = Some(priority);
    m
}

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

/// Fetches without waiting, with a long lease.
pub async fn fetch_now(b: &MemoryBroker, queues: &[&str], max: usize) -> Vec<Delivery> {
    b.fetch(&req(queues, max, Duration::from_secs(60), Duration::ZERO))
        .await
        .unwrap()
}

/// Returns the task ids of deliveries, in order.
pub fn ids(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.lease.id.to_string()).collect()
}
