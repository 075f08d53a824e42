//! Helpers the cases share: unique queue names, message builders, fetch
//! shorthands and assertions with clear failure text.
//!
//! They are public so a backend's own tests (behaviour only that backend
//! has) can build messages the same way.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{
    Broker, Capabilities, Delivery, Error, ErrorKind, FetchRequest, Message, TaskId,
};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map};

use crate::service::note;

/// A lease long enough never to expire during a case.
pub const LONG_LEASE: Duration = Duration::from_secs(120);

/// A lease short enough that a case waits for it to expire.
pub const SHORT_LEASE: Duration = Duration::from_millis(300);

/// How early, at most, a broker may act on a wall-clock instant compared
/// with the test's reading of the same clock. Backends may store instants
/// at millisecond precision, which moves them by under a millisecond.
pub const CLOCK_TOLERANCE: Duration = Duration::from_millis(10);

/// The task name every conformance message carries.
pub const TASK: &str = "conformance.noop";

/// Returns a queue name no other case (or run) uses.
pub fn queue_name(tag: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("cq_{tag}_{}", &id[..12])
}

/// Returns a message to `queue` whose single argument is `n`, so failures
/// show which message went astray.
pub fn message(queue: &str, n: u64) -> Message {
    let mut kwargs = Map::new();
    kwargs.insert("conformance".to_owned(), json!(true));
    let mut m = Message::new(TASK, vec![json!(n)], kwargs);
    m.set_queue(queue);
    m
}

/// Returns `m` with priority `p` (0 lowest, 9 highest).
pub fn with_priority(mut m: Message, p: u8) -> Message {
    m.properties.priority = Some(p);
    m
}

/// Returns `m` with an eta.
pub fn with_eta(mut m: Message, eta: DateTime<Utc>) -> Message {
    m.headers.eta = Some(eta);
    m
}

/// Returns the instant `d` from now, truncated to whole milliseconds so
/// every backend stores it exactly.
pub fn in_future(d: Duration) -> DateTime<Utc> {
    let now = Utc::now();
    let ms = now.timestamp_millis() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
    DateTime::from_timestamp_millis(ms).unwrap_or(now)
}

/// Returns a fetch request.
pub fn request(queues: &[&str], max: usize, lease: Duration, wait: Duration) -> FetchRequest {
    let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
    FetchRequest {
        queues: Arc::from(queues),
        max,
        lease: lease.max(Duration::from_millis(1)),
        wait,
    }
}

/// Publishes `messages`, panicking with the error on failure.
pub async fn publish<B: Broker>(b: &B, messages: Vec<Message>) {
    let n = messages.len();
    if let Err(e) = b.publish(messages).await {
        panic!("publishing {n} message(s) failed: {}", e.chain_text());
    }
}

/// Fetches from `queues` with a long lease, panicking on error.
pub async fn fetch<B: Broker>(b: &B, queues: &[&str], max: usize, wait: Duration) -> Vec<Delivery> {
    fetch_req(b, &request(queues, max, LONG_LEASE, wait)).await
}

/// Fetches with a prepared request, panicking on error.
pub async fn fetch_req<B: Broker>(b: &B, req: &FetchRequest) -> Vec<Delivery> {
    match b.fetch(req).await {
        Ok(d) => d,
        Err(e) => panic!("fetch from {:?} failed: {}", req.queues, e.chain_text()),
    }
}

/// Fetches exactly one message from `queue`, waiting up to `wait` for it.
pub async fn fetch_one<B: Broker>(b: &B, queue: &str, wait: Duration) -> Delivery {
    fetch_one_req(b, &request(&[queue], 1, LONG_LEASE, wait)).await
}

/// Fetches exactly one message with a prepared request (`max` should be 1).
pub async fn fetch_one_req<B: Broker>(b: &B, req: &FetchRequest) -> Delivery {
    let mut got = fetch_req(b, req).await;
    assert_eq!(
        got.len(),
        1,
        "expected exactly one delivery from {:?} within {:?}, got {}",
        req.queues,
        req.wait,
        got.len()
    );
    got.remove(0)
}

/// Asserts that nothing can be fetched from `queue` within `wait`.
pub async fn assert_nothing<B: Broker>(b: &B, queue: &str, wait: Duration, why: &str) {
    let got = fetch(b, &[queue], 10, wait).await;
    assert!(
        got.is_empty(),
        "{why}: expected no delivery from `{queue}`, got {:?}",
        ids(&got)
    );
}

/// Returns the decoded message of a delivery, panicking if it is malformed.
pub fn msg(d: &Delivery) -> &Message {
    match &d.message {
        Ok(m) => m,
        Err(e) => panic!(
            "delivery {:?} could not be decoded: {}",
            d.lease.id,
            e.chain_text()
        ),
    }
}

/// Returns the task ids of `deliveries`, in order.
pub fn ids(deliveries: &[Delivery]) -> Vec<TaskId> {
    deliveries.iter().map(|d| msg(d).id().clone()).collect()
}

/// Returns the argument `n` a [`message`] carries.
pub fn arg(d: &Delivery) -> u64 {
    msg(d)
        .body
        .args
        .first()
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(u64::MAX)
}

/// Asserts that `r` failed with `kind`.
#[track_caller]
pub fn assert_kind<T: Debug>(r: Result<T, Error>, kind: ErrorKind, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected an error of kind `{kind}`, got Ok({v:?})"),
        Err(e) => assert_eq!(
            e.kind(),
            kind,
            "{what}: expected kind `{kind}`, got `{}` ({})",
            e.kind(),
            e.chain_text()
        ),
    }
}

/// Unwraps `r`, panicking with the error chain and `what`.
#[track_caller]
pub fn ok<T>(r: Result<T, Error>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed ({}): {}", e.kind(), e.chain_text()),
    }
}

/// Drives `fut` for `d` and asserts that it does not complete meanwhile
/// (a fetch or wait that must block). Waiting here is waiting on the thing
/// under test, bounded by a timer, not a sleep used to order events.
pub async fn assert_pending_for<F>(fut: &mut F, d: Duration, what: &str)
where
    F: Future + Unpin,
    F::Output: Debug,
{
    tokio::select! {
        out = fut => panic!("{what} completed early, before anything could wake it: {out:?}"),
        () = tokio::time::sleep(d) => {}
    }
}

/// Returns the bound within which a blocked fetch must wake after a
/// publish: short when the broker claims push wake-ups, generous otherwise
/// (a polling broker still passes).
pub fn wake_bound(caps: &Capabilities) -> Duration {
    if caps.push_wakeups {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    }
}

/// The bound within which a blocked fetch must wake once an eta or a lease
/// end is due. Generous: two cores run many cases at once.
pub const DUE_WAKE_BOUND: Duration = Duration::from_secs(2);

/// Asserts that the wall clock has reached `instant` (within
/// [`CLOCK_TOLERANCE`]).
#[track_caller]
pub fn assert_reached(instant: DateTime<Utc>, what: &str) {
    let now = Utc::now();
    let tol = TimeDelta::from_std(CLOCK_TOLERANCE).unwrap_or(TimeDelta::zero());
    assert!(
        now + tol >= instant,
        "{what}: happened at {now}, before {instant}"
    );
}

/// Prints that `case` is skipped because the broker does not claim
/// `capability`, and returns nothing (so a case writes
/// `return skip(...)`).
pub fn skip(case: &str, capability: &str) {
    note(&format!(
        "skipped {case}: the broker does not claim `{capability}`"
    ));
}
