//! The broker seam: publish, fetch with a lease, settle, extend.
//!
//! Four required methods carry the whole contract; everything else has a
//! default that reports [`ErrorKind::Unsupported`](crate::ErrorKind) and is
//! announced (or not) by [`Capabilities`]. The worker, the client and the
//! CLI are written once against this trait, never per backend.
//!
//! # The contract
//!
//! * **At-least-once.** A fetched message is *leased*, not removed. It is
//!   removed only by [`Broker::settle`]. If the lease is not extended before
//!   it ends, the message becomes available again (redelivery).
//! * **Fencing.** Each delivery carries a [`Lease::token`] unique to that
//!   attempt. `settle` and `extend` with a token that no longer holds the
//!   lease fail with [`ErrorKind::LeaseLost`](crate::ErrorKind::LeaseLost) and change nothing.
//! * **No double lease.** A message is leased to at most one fetcher at a
//!   time, however many fetch concurrently.
//! * **Delayed work is stored.** A message whose `eta` lies in the future is
//!   kept by the broker and is not delivered before it.
//! * **Priority and fairness.** Within a queue, by priority (in the broker's
//!   [`PriorityOrder`]), then oldest first. Across the queues of one fetch, no busy queue starves
//!   another: each call starts from a different queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::id::TaskId;
use crate::message::Message;
use crate::result::TaskResult;

/// A boxed, `Send` future, used by the type-erased [`DynBroker`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a broker offers beyond the required core. Tests in the conformance
/// suite skip what a broker does not claim, and check what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages survive a restart of the process (and of the server).
    pub durable: bool,
    /// Messages with a future `eta` are held by the broker.
    pub delayed: bool,
    /// Messages are delivered by priority, in the order [`Capabilities::priority_order`] says.
    pub priorities: bool,
    /// Which priority goes first, when `priorities` is claimed.
    pub priority_order: PriorityOrder,
    /// `fetch` wakes when a message arrives, without polling.
    pub push_wakeups: bool,
    /// The broker also stores results, and `settle` may carry one to store
    /// atomically with the acknowledgement.
    pub results: bool,
    /// [`Broker::revoke`] works.
    pub revoke: bool,
    /// Queues may have a maximum length.
    pub max_length: bool,
    /// Queue statistics, purge and dead-letter inspection work.
    pub admin: bool,
}

/// The order in which a broker delivers priorities.
///
/// celeriac's own backends use AMQP's meaning: 9 first, every level apart.
/// kombu's Redis transport, which the Redis backend follows so that Python
/// workers agree with it, serves 0 first and only tells apart a few
/// *steps* (0, 3, 6 and 9 by default): a priority counts as the largest step
/// not above it.
///
/// ```
/// use celeriac_core::PriorityOrder;
///
/// assert!(PriorityOrder::HighestFirst.rank(9) < PriorityOrder::HighestFirst.rank(0));
/// let kombu = PriorityOrder::lowest_first(&[0, 3, 6, 9]);
/// assert!(kombu.rank(0) < kombu.rank(9));
/// assert_eq!(kombu.rank(5), kombu.rank(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PriorityOrder {
    /// 9 first, 0 last; all ten levels distinct.
    #[default]
    HighestFirst,
    /// 0 first; only the steps set in the bit mask (bit `s` for step `s`)
    /// are distinct. Step 0 is always one.
    LowestFirst {
        /// Bit `s` set means `s` is a step.
        steps: u16,
    },
}

impl PriorityOrder {
    /// Returns a lowest-first order with these steps (values above 9 are
    /// ignored; 0 is always a step).
    pub fn lowest_first(steps: &[u8]) -> Self {
        let mask = steps
            .iter()
            .filter(|s| **s <= 9)
            .fold(1u16, |m, s| m | (1 << s));
        PriorityOrder::LowestFirst { steps: mask }
    }

    /// Returns the delivery rank of a priority (clamped to 0..=9): a lower
    /// rank is delivered first; equal ranks keep publish order.
    pub fn rank(self, priority: u8) -> u8 {
        let p = priority.min(9);
        match self {
            PriorityOrder::HighestFirst => 9 - p,
            PriorityOrder::LowestFirst { steps } => {
                (0..=p).rev().find(|s| steps & (1 << s) != 0).unwrap_or(0)
            }
        }
    }
}

impl Capabilities {
    /// Returns a report with nothing optional claimed.
    pub fn none() -> Self {
        Self::default()
    }

    /// Returns a report with everything claimed; unset what a backend lacks.
    pub fn all() -> Self {
        Capabilities {
            durable: true,
            delayed: true,
            priorities: true,
            priority_order: PriorityOrder::HighestFirst,
            push_wakeups: true,
            results: true,
            revoke: true,
            max_length: true,
            admin: true,
        }
    }
}

/// What a fetch asks for.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The queues to take from, fairly.
    pub queues: Arc<[String]>,
    /// The most messages to return.
    pub max: usize,
    /// How long the lease lasts unless extended.
    pub lease: Duration,
    /// How long to wait for a message when none is ready; zero returns at once.
    pub wait: Duration,
}

/// A leased attempt at a message. Settle or extend it with this value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The task id (empty when a malformed message carried none).
    pub id: TaskId,
    /// The queue the message came from.
    pub queue: Arc<str>,
    /// The fencing token of this attempt: unique per delivery.
    pub token: u64,
    /// The broker's own handle for the message (row id, delivery tag).
    pub receipt: u64,
}

/// One message handed to a worker.
#[derive(Debug)]
pub struct Delivery {
    /// The message, or why it could not be decoded (the worker dead-letters it).
    ///
    /// Shared, so a broker that keeps messages in memory hands out a
    /// reference instead of a deep copy.
    pub message: Result<Arc<Message>, Error>,
    /// The lease on this attempt.
    pub lease: Lease,
    /// How many times it was delivered, this one included (1 on the first).
    pub deliveries: u32,
}

/// How an attempt ends.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Settlement {
    /// Done: remove the message. With `result`, a broker that stores results
    /// stores it in the same atomic step.
    Ack {
        /// The result to store with the acknowledgement.
        result: Option<TaskResult>,
    },
    /// Replace the message by `message` (same id, `retries + 1`, an `eta`)
    /// in one atomic step, optionally storing a `RETRY` result.
    Retry {
        /// The next delivery.
        message: Box<Message>,
        /// The result to store with it.
        result: Option<TaskResult>,
    },
    /// Hand the message back now, for redelivery at once (shutdown).
    Release,
    /// Move the message to the dead-letter queue with a reason.
    DeadLetter {
        /// Why, in words an operator understands.
        reason: String,
        /// The result to store with it (a `FAILURE`, when the id is known).
        result: Option<TaskResult>,
    },
}

/// What [`Broker::extend`] found for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Still held; extended.
    Held,
    /// Lost: expired and taken by another attempt, or settled.
    Lost,
    /// Held, but the task was revoked: the worker should cancel it.
    Revoked,
}

/// What [`Broker::revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The message was waiting and is removed; it will not run.
    Removed,
    /// The message is running; its worker learns at its next lease renewal.
    Running,
    /// No such message was found. The revocation is remembered (for a
    /// bounded number of ids): a message with this id published later is
    /// never delivered, and a `REVOKED` result is stored for it, as Celery's
    /// workers do with their revoked set.
    Unknown,
}

/// A queue's depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue name.
    pub queue: String,
    /// Messages ready to run now.
    pub ready: u64,
    /// Messages waiting for their eta.
    pub delayed: u64,
    /// Messages leased to workers.
    pub leased: u64,
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The task id, when known.
    pub id: TaskId,
    /// The task name, when known.
    pub task: String,
    /// The queue it came from.
    pub queue: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The stored message bytes, as they were.
    pub raw: Vec<u8>,
}

/// A message broker. See the [module docs](self) for the contract.
///
/// The returned futures may borrow every argument (they capture all the
/// lifetimes in scope), so implementations can be written as `async fn`.
pub trait Broker: Send + Sync + 'static {
    /// Returns what this broker offers beyond the required core.
    fn capabilities(&self) -> Capabilities;

    /// Publishes messages, each to its queue (`properties.delivery_info.routing_key`).
    ///
    /// All or none: on error nothing was published.
    fn publish(&self, messages: Vec<Message>) -> impl Future<Output = Result<(), Error>> + Send;

    /// Publishes messages as [`Broker::publish`] does, after checking that
    /// each one's stored form ([`codec::encode`](crate::codec::encode)) is
    /// at most `max_bytes` long; over it, nothing is published and the
    /// error is [`check_payload`]'s.
    ///
    /// The default measures each message, then publishes. A broker that
    /// encodes messages anyway overrides it to measure what it encoded,
    /// so each message is encoded once.
    fn publish_checked(
        &self,
        messages: Vec<Message>,
        max_bytes: usize,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            for m in &messages {
                check_payload(m, crate::codec::encoded_len(m)?, max_bytes)?;
            }
            self.publish(messages).await
        }
    }

    /// Leases up to `req.max` ready messages, waiting up to `req.wait` for
    /// the first one.
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel safe: dropping the future before it
    /// completes leases nothing (or leases that simply expire).
    fn fetch(
        &self,
        req: &FetchRequest,
    ) -> impl Future<Output = Result<Vec<Delivery>, Error>> + Send;

    /// Ends an attempt. Fails with `LeaseLost` if the lease is no longer held.
    fn settle(
        &self,
        lease: &Lease,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Extends leases by `by` from now, reporting each one's status in order.
    fn extend(
        &self,
        leases: &[Lease],
        by: Duration,
    ) -> impl Future<Output = Result<Vec<LeaseStatus>, Error>> + Send;

    /// Ends many attempts, reporting each one's outcome in order, as
    /// [`Broker::settle`] would.
    ///
    /// Each settlement stands alone: one refused (`LeaseLost`) or failed
    /// does not undo the others. The default settles them one by one; a
    /// broker that can end them together (one transaction, one round trip)
    /// overrides it.
    fn settle_many(
        &self,
        settles: &[(Lease, Settlement)],
    ) -> impl Future<Output = Vec<Result<(), Error>>> + Send {
        async move {
            let mut out = Vec::with_capacity(settles.len());
            for (lease, settlement) in settles {
                out.push(self.settle(lease, settlement.clone()).await);
            }
            out
        }
    }

    /// Revokes a task: removes it if waiting, flags it if running.
    fn revoke(&self, id: &TaskId) -> impl Future<Output = Result<Revoked, Error>> + Send {
        let _ = id;
        async { Err(Error::unsupported("revoke")) }
    }

    /// Returns the depth of every known queue.
    fn queue_stats(&self) -> impl Future<Output = Result<Vec<QueueStats>, Error>> + Send {
        async { Err(Error::unsupported("queue statistics")) }
    }

    /// Removes every waiting message of a queue, returning how many.
    fn purge(&self, queue: &str) -> impl Future<Output = Result<u64, Error>> + Send {
        let _ = queue;
        async { Err(Error::unsupported("purge")) }
    }

    /// Lists up to `limit` dead letters, oldest first.
    fn dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, Error>> + Send {
        let _ = limit;
        async { Err(Error::unsupported("dead-letter listing")) }
    }

    /// Puts dead letters back on their queues (all when `ids` is `None`),
    /// returning how many.
    fn replay_dead_letters(
        &self,
        ids: Option<&[TaskId]>,
    ) -> impl Future<Output = Result<u64, Error>> + Send {
        let _ = ids;
        async { Err(Error::unsupported("dead-letter replay")) }
    }

    /// Deletes every dead letter, returning how many.
    fn purge_dead_letters(&self) -> impl Future<Output = Result<u64, Error>> + Send {
        async { Err(Error::unsupported("dead-letter purge")) }
    }
}

/// Checks the encoded size `len` of `message` against `limit`, giving an
/// [`ErrorKind::PayloadTooLarge`](crate::ErrorKind::PayloadTooLarge) error
/// that names the task.
///
/// ```
/// use celeriac_core::{broker::check_payload, ErrorKind, Message};
/// let m = Message::new("tasks.big", vec![], Default::default());
/// assert!(check_payload(&m, 10, 10).is_ok());
/// let e = check_payload(&m, 11, 10).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
/// assert!(e.to_string().contains("tasks.big"));
/// ```
pub fn check_payload(message: &Message, len: usize, limit: usize) -> Result<(), Error> {
    crate::codec::check_size(len, limit).map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "task `{}` ({}) refused: {e}",
                message.headers.task,
                message.id()
            ),
        )
    })
}

/// The object-safe twin of [`Broker`], for choosing a broker at run time
/// (by URL). Every `Broker` is a `DynBroker`.
#[allow(missing_docs)]
pub trait DynBroker: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>>;
    fn publish_checked(
        &self,
        messages: Vec<Message>,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<(), Error>>;
    fn fetch<'a>(&'a self, req: &'a FetchRequest) -> BoxFuture<'a, Result<Vec<Delivery>, Error>>;
    fn settle<'a>(
        &'a self,
        lease: &'a Lease,
        settlement: Settlement,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn extend<'a>(
        &'a self,
        leases: &'a [Lease],
        by: Duration,
    ) -> BoxFuture<'a, Result<Vec<LeaseStatus>, Error>>;
    fn settle_many<'a>(
        &'a self,
        settles: &'a [(Lease, Settlement)],
    ) -> BoxFuture<'a, Vec<Result<(), Error>>>;
    fn revoke<'a>(&'a self, id: &'a TaskId) -> BoxFuture<'a, Result<Revoked, Error>>;
    fn queue_stats(&self) -> BoxFuture<'_, Result<Vec<QueueStats>, Error>>;
    fn purge<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<u64, Error>>;
    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>>;
    fn replay_dead_letters<'a>(
        &'a self,
        ids: Option<&'a [TaskId]>,
    ) -> BoxFuture<'a, Result<u64, Error>>;
    fn purge_dead_letters(&self) -> BoxFuture<'_, Result<u64, Error>>;
}

impl<B: Broker> DynBroker for B {
    fn capabilities(&self) -> Capabilities {
        Broker::capabilities(self)
    }
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Broker::publish(self, messages))
    }
    fn publish_checked(
        &self,
        messages: Vec<Message>,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Broker::publish_checked(self, messages, max_bytes))
    }
    fn fetch<'a>(&'a self, req: &'a FetchRequest) -> BoxFuture<'a, Result<Vec<Delivery>, Error>> {
        Box::pin(Broker::fetch(self, req))
    }
    fn settle<'a>(
        &'a self,
        lease: &'a Lease,
        settlement: Settlement,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Broker::settle(self, lease, settlement))
    }
    fn extend<'a>(
        &'a self,
        leases: &'a [Lease],
        by: Duration,
    ) -> BoxFuture<'a, Result<Vec<LeaseStatus>, Error>> {
        Box::pin(Broker::extend(self, leases, by))
    }
    fn settle_many<'a>(
        &'a self,
        settles: &'a [(Lease, Settlement)],
    ) -> BoxFuture<'a, Vec<Result<(), Error>>> {
        Box::pin(Broker::settle_many(self, settles))
    }
    fn revoke<'a>(&'a self, id: &'a TaskId) -> BoxFuture<'a, Result<Revoked, Error>> {
        Box::pin(Broker::revoke(self, id))
    }
    fn queue_stats(&self) -> BoxFuture<'_, Result<Vec<QueueStats>, Error>> {
        Box::pin(Broker::queue_stats(self))
    }
    fn purge<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(Broker::purge(self, queue))
    }
    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>> {
        Box::pin(Broker::dead_letters(self, limit))
    }
    fn replay_dead_letters<'a>(
        &'a self,
        ids: Option<&'a [TaskId]>,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(Broker::replay_dead_letters(self, ids))
    }
    fn purge_dead_letters(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(Broker::purge_dead_letters(self))
    }
}
