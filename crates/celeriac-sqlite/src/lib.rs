//! The embedded durable backend of celeriac: broker **and** result backend
//! in one SQLite file, with no server to run.
//!
//! [`SqliteBroker`] implements both [`Broker`](celeriac_core::Broker) and
//! [`ResultBackend`](celeriac_core::ResultBackend) and keeps the whole
//! contract of [`celeriac_core::broker`]: at-least-once delivery with
//! leases, fencing tokens, stored delayed work, priorities (9 first, then
//! oldest first), fair fetching across queues, results stored in the same
//! transaction as the acknowledgement, revocation, queue limits and a
//! dead-letter table.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), celeriac_core::Error> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use celeriac_core::{Broker, FetchRequest, Message, ResultBackend, Settlement, TaskResult};
//! use celeriac_sqlite::SqliteBroker;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let broker = SqliteBroker::open(dir.path().join("jobs.db")).await?;
//!
//! let message = Message::new("tasks.add", vec![2.into(), 3.into()], Default::default());
//! let id = message.id().clone();
//! broker.publish(vec![message]).await?;
//!
//! let req = FetchRequest {
//!     queues: Arc::from(vec!["celery".to_owned()]),
//!     max: 10,
//!     lease: Duration::from_secs(30),
//!     wait: Duration::from_secs(1),
//! };
//! let delivery = broker.fetch(&req).await?.pop().unwrap();
//! assert_eq!(delivery.deliveries, 1);
//! let result = TaskResult::success(id.clone(), 5.into());
//! broker.settle(&delivery.lease, Settlement::Ack { result: Some(result) }).await?;
//!
//! let stored = broker.wait(&id, Duration::from_secs(1)).await?.unwrap();
//! assert_eq!(stored.result, serde_json::json!(5));
//! # Ok(())
//! # }
//! ```
//!
//! # URLs
//!
//! [`SqliteBroker::from_url`] takes `sqlite://<path>[?option=value&...]`,
//! where the path is everything up to `?` (percent escapes allowed):
//!
//! * `sqlite://jobs.db` and `sqlite://data/jobs.db` are relative to the
//!   working directory;
//! * `sqlite:///var/lib/app/jobs.db` is absolute (three slashes).
//!
//! | option | values | meaning |
//! |---|---|---|
//! | `sync` | `full` (default), `normal` | [`Synchronous`]: flush on every commit, or only at checkpoints |
//! | `max_queue_length` | a number | [`SqliteBrokerBuilder::max_queue_length`] |
//! | `result_expires` | seconds | [`SqliteBrokerBuilder::result_expiry`] (one day by default) |
//! | `busy_timeout_ms` | milliseconds | [`SqliteBrokerBuilder::busy_timeout`] (5000 by default) |
//!
//! A bad URL or an unknown option is an
//! [`ErrorKind::InvalidInput`](celeriac_core::ErrorKind::InvalidInput)
//! error that names it.
//!
//! # Durability
//!
//! The file is in WAL mode and every change of state (publish, lease,
//! settle, extend) is a committed transaction before the call returns, so
//! killing any process at any instant loses nothing acknowledged: leases
//! of a dead worker expire and their messages are delivered again. With
//! [`Synchronous::Full`] (the default) each commit is also flushed to disk
//! (`fdatasync` of the log) before any caller hears of it, so even a power
//! cut loses nothing acknowledged (a fetch alone is answered before the
//! flush: a power cut can only undo its leases, and the messages are then
//! delivered again); [`Synchronous::Normal`] skips that flush
//! for speed and may lose the last commits on a power cut (never on a
//! process crash), without corrupting the file.
//!
//! The flush is done by SQLite's rules but not inside SQLite's `COMMIT`:
//! the write connection runs with `synchronous = NORMAL` and the handle
//! flushes the log itself, on a syncer thread while the writer already
//! runs the next group (or on the writer itself when nothing else waits).
//! Checkpoints (copying the log into the database) run on a background
//! thread too. See the `writer::durable` module for the details.
//!
//! # Several handles, several processes
//!
//! Any number of handles, in one process or in many, may open the same
//! file. Each handle has **one writer thread** that groups every command
//! queued while the previous commit ran into one `BEGIN IMMEDIATE`
//! transaction with one flush (group commit); SQLite's write lock orders
//! the writers of all handles, and a message is leased to one fetcher only.
//! Fencing tokens and row numbers come from counters in the file, so they
//! are unique across processes.
//!
//! A waiting `fetch` or result `wait` sleeps until a commit announces new
//! work or results: at once for commits of the same handle, and through
//! inotify on a small sidecar file (`<database>-notify`) for other handles
//! and processes, with a slow re-check as a safety net (see the `wake`
//! module). A fetch also wakes at the earliest eta or lease deadline of its
//! queues.
//!
//! Each handle runs a few threads: the writer, the syncer, the
//! checkpointer, an inotify reader and a fallback watcher; reads (results,
//! statistics) run on tokio's blocking pool.
//!
//! # Performance
//!
//! Measured with `examples/bench.rs` (release build, `synchronous = FULL`,
//! a shared 2-core virtual machine with an SSD; figures from quiet moments):
//!
//! | workload | rate |
//! |---|---|
//! | publish batches of 1000 messages from 4 tasks | 100 000 to 115 000 messages/s |
//! | drain no-op tasks, fetching 500 at a time (two fetch loops), one ack each | 48 000 to 55 000 tasks/s |
//! | the same with one fetch loop | about 38 000 tasks/s |
//! | the same, storing a `SUCCESS` result with every ack | about 15 000 tasks/s |
//! | idle fetch in one process, publish in another | p50 2 ms, p99 3 to 4 ms |
//!
//! Storing a result appends it to the results table, but also inserts its
//! (random) task id into that table's index, which still dirties about one
//! page per result; tasks that need no result should say so
//! (`ignore_result`).
//!
//! Revoking a task scans the tasks table on a read connection: an index
//! on the (random) task ids would cost most of the publish rate (and, kept
//! for leased rows only, a few pages of every lease and settle commit),
//! and revocation is rare.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `config` | [`SqliteBrokerBuilder`], [`Synchronous`] and URL parsing |
//! | `handle` | [`SqliteBroker`]: opening, threads, commands to the writer |
//! | `broker` | the `Broker` impl: encoding, decoding, the fetch wait loop |
//! | `results` | the `ResultBackend` impl |
//! | `schema` | tables, indexes and connection settings |
//! | `writer` | the writer thread, group commit, one module per operation family |
//! | `reader` | reads on a small pool of read connections |
//! | `wake` | in-process and cross-process wake-ups |
//! | `util` | clock and error helpers |

mod broker;
mod config;
mod handle;
mod reader;
mod results;
mod schema;
mod util;
mod wake;
mod writer;

pub use config::{SqliteBrokerBuilder, Synchronous};
pub use handle::SqliteBroker;
