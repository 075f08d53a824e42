//! The worker: fetches leased messages, runs them with a concurrency
//! limit, renews their leases, and settles each attempt.
//!
//! # Layout
//!
//! | file | part |
//! |---|---|
//! | `mod.rs` | [`WorkerBuilder`], [`WorkerHandle`] and the fetch loop |
//! | `jobs.rs` | the hand-off of fetched deliveries to the runners |
//! | `execute.rs` | one attempt: decode, route to the handler, time limits, panic capture, outcome, settle |
//! | `settler.rs` | the batched hand-off of settlements to the broker |
//! | `lease.rs` | the table of held leases and the heartbeat that extends them |
//! | `shutdown.rs` | two-phase shutdown on SIGINT/SIGTERM |
//!
//! The worker holds at most `concurrency + prefetch` messages running or
//! waiting to run: it reserves slots before it fetches, and every message
//! it holds has its lease renewed. A slot is given back when its attempt
//! ends and its settlement is queued; queued settlements are bounded too
//! (see `settler.rs`).

mod execute;
mod jobs;
mod lease;
mod settler;
mod shutdown;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::DynBroker;
use celeriac_core::{Delivery, Error, FetchRequest, Settlement};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::app::App;

pub use shutdown::shutdown_signal;

/// The most messages asked for in one fetch. Fetches are kept small so
/// that the next one is already queued at the broker while the worker runs
/// the tasks of the one before: one fetch for the whole capacity would
/// leave the broker idle while the worker works and the worker idle while
/// the broker claims (on Redis, a drain ran at 80 000 tasks/s with fetches
/// of 256 and 115 000 with fetches of 64; SQLite and memory gained too).
const FETCH_CHUNK: usize = 64;

/// How many messages a worker holds per task it can run, unless a prefetch
/// is set: Celery's default `worker_prefetch_multiplier`.
const PREFETCH_MULTIPLIER: usize = 4;

/// Counts of what a worker did, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Attempts that ended in `SUCCESS`.
    pub succeeded: AtomicU64,
    /// Attempts that ended in `FAILURE` (including dead-lettered ones).
    pub failed: AtomicU64,
    /// Attempts that asked for a retry.
    pub retried: AtomicU64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Messages not run because they had expired or were revoked.
    pub revoked: AtomicU64,
    /// Messages handed back at shutdown.
    pub released: AtomicU64,
    /// Settles refused because the lease was lost (another attempt won).
    pub lease_lost: AtomicU64,
}

impl WorkerStats {
    /// Returns the number of attempts that finished (success or failure).
    pub fn finished(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// The soft-stop signal: a cancellation token with a flag beside it.
///
/// Every attempt checks for a soft stop before it starts; the token's own
/// `is_cancelled` takes a mutex shared by every runner, so the check reads
/// the flag instead. The flag is set before the token fires, so whoever
/// sees the token cancelled also sees the flag.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop {
    token: CancellationToken,
    flag: Arc<AtomicBool>,
}

impl Stop {
    /// Signals the stop.
    pub(crate) fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Returns true once the stop was signalled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Returns a future that resolves once the stop is signalled.
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

/// Worker settings, built by [`App::worker`].
///
/// ```no_run
/// # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
/// app.worker().concurrency(64).queues(["celery", "emails"]).run().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    app: App,
    pub(crate) name: String,
    pub(crate) queues: Vec<String>,
    pub(crate) concurrency: usize,
    /// `None`: [`PREFETCH_MULTIPLIER`] - 1 times the concurrency.
    pub(crate) prefetch: Option<usize>,
    pub(crate) lease: Duration,
    pub(crate) grace: Duration,
    pub(crate) fetch_wait: Duration,
    pub(crate) track_started: bool,
}

impl WorkerBuilder {
    pub(crate) fn new(app: App) -> Self {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        WorkerBuilder {
            app,
            name: format!("celeriac@{host}"),
            queues: vec![celeriac_core::DEFAULT_QUEUE.to_owned()],
            concurrency: 64,
            prefetch: None,
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(30),
            fetch_wait: Duration::from_secs(1),
            track_started: false,
        }
    }

    /// Sets how many tasks run at once (default 64).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets how many messages the worker may hold beyond those running
    /// (0 holds none). Held messages keep their leases renewed and are
    /// handed back at shutdown. A larger prefetch means fewer, larger
    /// fetches; a smaller one spreads work more evenly over workers.
    ///
    /// The default is three times the concurrency, so that the worker holds
    /// up to four messages per task it can run, as Celery's default
    /// `worker_prefetch_multiplier` of 4 does. A durable broker answers a
    /// fetch only after a disk flush, and the messages held are what keeps
    /// the runners busy meanwhile. For long tasks spread over several
    /// workers, a small prefetch (or 0) is fairer.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// Returns the prefetch in effect.
    fn prefetch_or_default(&self) -> usize {
        self.prefetch
            .unwrap_or_else(|| self.concurrency.saturating_mul(PREFETCH_MULTIPLIER - 1))
    }

    /// Sets the queues to consume, fairly (default `celery`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the node name shown in results and logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the lease length (default 30 s). Leases are renewed every third
    /// of it while a task runs; a dead worker's tasks return after it.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d.max(Duration::from_millis(30));
        self
    }

    /// Sets how long running tasks may finish after a shutdown request
    /// before they are cancelled and handed back (default 30 s).
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// Stores a `STARTED` state for every task when its attempt begins, as
    /// Celery's `task_track_started` setting (default off; a task can ask
    /// for it alone with `#[task(track_started)]`). It costs one result
    /// write per task.
    pub fn track_started(mut self, yes: bool) -> Self {
        self.track_started = yes;
        self
    }

    /// Sets how long one fetch waits for a message (default 1 s).
    pub fn fetch_wait(mut self, d: Duration) -> Self {
        self.fetch_wait = d;
        self
    }

    /// Runs until SIGINT or SIGTERM, then shuts down in two phases: a
    /// second signal, or the grace period, stops hard.
    pub async fn run(self) -> Result<Arc<WorkerStats>, Error> {
        let handle = self.spawn();
        let soft = handle.soft.clone();
        let hard = handle.hard.clone();
        let signals = tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: finishing running tasks");
            soft.cancel();
            shutdown_signal().await;
            tracing::warn!("second signal: stopping now");
            hard.cancel();
        });
        let out = handle.join().await;
        signals.abort();
        out
    }

    /// Runs until `shutdown` completes, then shuts down in two phases.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<Arc<WorkerStats>, Error> {
        let handle = self.spawn();
        shutdown.await;
        handle.stop();
        handle.join().await
    }

    /// Starts the worker in the background and returns its handle.
    pub fn spawn(self) -> WorkerHandle {
        let soft = Stop::default();
        let hard = CancellationToken::new();
        let stats = Arc::new(WorkerStats::default());
        let grace = self.grace;
        let task = tokio::spawn(run_worker(self, soft.clone(), hard.clone(), stats.clone()));
        WorkerHandle {
            soft,
            hard,
            stats,
            grace,
            task,
        }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    soft: Stop,
    hard: CancellationToken,
    stats: Arc<WorkerStats>,
    grace: Duration,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl WorkerHandle {
    /// Returns the live counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// Asks for a graceful stop: no more fetching; running tasks finish
    /// within the grace period, then are cancelled and handed back.
    pub fn stop(&self) {
        self.soft.cancel();
    }

    /// Stops at once: running tasks are cancelled and their messages handed
    /// back for immediate redelivery.
    pub fn stop_now(&self) {
        self.soft.cancel();
        self.hard.cancel();
    }

    /// Waits for the worker to end.
    pub async fn join(self) -> Result<Arc<WorkerStats>, Error> {
        let hard = self.hard.clone();
        let grace = self.grace;
        let soft = self.soft.clone();
        // Arms the hard stop once the grace period after a soft stop ends.
        let timer = tokio::spawn(async move {
            soft.cancelled().await;
            tokio::time::sleep(grace).await;
            hard.cancel();
        });
        let out = self.task.await;
        timer.abort();
        match out {
            Ok(Ok(())) => Ok(self.stats),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(Error::with_source(
                celeriac_core::ErrorKind::Other,
                "worker task failed",
                join,
            )),
        }
    }
}

async fn run_worker(
    cfg: WorkerBuilder,
    soft: Stop,
    hard: CancellationToken,
    stats: Arc<WorkerStats>,
) -> Result<(), Error> {
    let app = cfg.app.clone();
    let broker = app.broker().clone();
    let prefetch = cfg.prefetch_or_default();
    let capacity = cfg.concurrency.saturating_add(prefetch);
    let tracker = TaskTracker::new();
    let leases = lease::LeaseTable::new();
    let heartbeat = tokio::spawn(lease::heartbeat(broker.clone(), leases.clone(), cfg.lease));
    // See the runners below for how fetches are sized.
    let chunk = FETCH_CHUNK.min(capacity / 2).max(1);
    let req = FetchRequest {
        queues: cfg.queues.clone().into(),
        max: chunk,
        lease: cfg.lease,
        wait: cfg.fetch_wait,
    };
    let env = Arc::new(execute::Env {
        app: app.clone(),
        worker: cfg.name.clone(),
        leases: leases.clone(),
        stats: stats.clone(),
        hard: hard.clone(),
        soft: soft.clone(),
        track_started: cfg.track_started,
    });
    tracing::info!(worker = %cfg.name, queues = ?cfg.queues, concurrency = cfg.concurrency, "worker started");
    // Long-lived runners take deliveries from a shared queue: no task
    // spawn per message. A slot is reserved before each fetch and given
    // back when its task ends, so the worker holds at most concurrency +
    // prefetch messages, every one with its lease renewed.
    // Fetches go out in chunks (FETCH_CHUNK, or half the capacity when
    // that is less), each as soon as a chunk of slots is free, up to
    // FETCHES at once: one broker round trip and one lock per chunk, and
    // the next chunk on its way while this one runs. An idle worker has
    // every slot free, so a fetch is always waiting for new work.
    let jobs = Arc::new(jobs::Jobs::new(cfg.concurrency, capacity, chunk));
    let settler = Arc::new(settler::Settler::new(
        broker.clone(),
        stats.clone(),
        capacity,
    ));
    for me in 0..cfg.concurrency {
        let jobs = jobs.clone();
        let env = env.clone();
        let settler = settler.clone();
        tracker.spawn(async move {
            while let Some(job) = jobs.next(me).await {
                let settlement = execute::run(&env, job).await;
                // The attempt is over: its slot goes back before the
                // settlement is sent, so the next fetch need not wait for it.
                jobs.done();
                if let Some(settlement) = settlement {
                    settler.submit(settlement).await;
                }
            }
        });
    }
    fetch_loop(&broker, &req, &jobs, &leases, &soft, &hard).await;
    jobs.close();
    tracker.close();
    tracker.wait().await;
    heartbeat.abort();
    tracing::info!(worker = %cfg.name, "worker stopped");
    Ok(())
}

/// The most fetches under way at once. A second fetch is sent while the
/// first waits for its commit (and, on a durable broker, its disk flush),
/// so that the runners are fed again before they run dry.
const FETCHES: usize = 2;

/// A fetch under way: the slots it reserved, and what it brings back.
type Fetch = std::pin::Pin<
    Box<dyn std::future::Future<Output = (usize, Result<Vec<Delivery>, Error>)> + Send>,
>;

/// Fetches while slots are free, up to [`FETCHES`] at once, and queues
/// what comes back for the runners, until a soft stop. Fetches under way
/// at a soft stop are awaited (unless a hard stop comes) and what they
/// bring is handed back.
async fn fetch_loop(
    broker: &Arc<dyn DynBroker>,
    req: &FetchRequest,
    jobs: &jobs::Jobs,
    leases: &lease::LeaseTable,
    soft: &Stop,
    hard: &CancellationToken,
) {
    let mut inflight: FuturesUnordered<Fetch> = FuturesUnordered::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            // Biased to the stop: a fetch that completes as a stop arrives
            // is handed back below rather than dispatched.
            biased;
            () = soft.cancelled() => break,
            Some((slots, got)) = inflight.next(), if !inflight.is_empty() => match got {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(50);
                    dispatch(broker, jobs, leases, slots, deliveries).await;
                }
                Err(e) => {
                    jobs.unreserve(slots);
                    tracing::warn!(error = %e.chain_text(), retry_in = ?backoff, "fetch failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        () = soft.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            },
            slots = jobs.reserve(req.max), if inflight.len() < FETCHES => {
                let broker = broker.clone();
                let mut req = req.clone();
                req.max = slots;
                inflight.push(Box::pin(async move { (slots, broker.fetch(&req).await) }));
            }
        }
    }
    // On a soft stop, let the fetches under way finish (each waits at most
    // `fetch_wait`): a broker may already have committed their leases, and
    // handing them back now beats leaving them leased until they run out.
    // A hard stop does not wait; those leases run out.
    loop {
        let next = tokio::select! {
            biased;
            () = hard.cancelled() => break,
            next = inflight.next() => next,
        };
        let Some((slots, got)) = next else { break };
        for d in got.unwrap_or_default() {
            if let Err(e) = broker.settle(&d.lease, Settlement::Release).await {
                tracing::warn!(error = %e.chain_text(), "release at shutdown failed; the lease will run out");
            }
        }
        jobs.unreserve(slots);
    }
}

/// Queues fetched deliveries for the runners, handing back any beyond the
/// `slots` reserved for them, and gives back the slots left unused.
async fn dispatch(
    broker: &Arc<dyn DynBroker>,
    jobs: &jobs::Jobs,
    leases: &lease::LeaseTable,
    slots: usize,
    mut deliveries: Vec<Delivery>,
) {
    let unused = slots.saturating_sub(deliveries.len());
    let extra = if deliveries.len() > slots {
        deliveries.split_off(slots)
    } else {
        Vec::new()
    };
    for delivery in extra {
        // The broker returned more than asked; hand the rest back.
        if let Err(e) = broker.settle(&delivery.lease, Settlement::Release).await {
            tracing::warn!(error = %e, "release of an extra delivery failed");
        }
    }
    // One lock of the lease table for the whole batch, not one each.
    jobs.push(leases.insert_many(deliveries.into_iter()));
    jobs.unreserve(unused);
}

impl WorkerStats {
    /// Returns a snapshot as plain numbers, in field order.
    pub fn snapshot(&self) -> [u64; 7] {
        [
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.revoked.load(Ordering::Relaxed),
            self.released.load(Ordering::Relaxed),
            self.lease_lost.load(Ordering::Relaxed),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::App;

    #[tokio::test]
    async fn prefetch_defaults_to_three_times_the_concurrency_unless_set() {
        let app = App::builder().broker("memory://").build().await.unwrap();
        let w = app.worker().concurrency(10);
        assert_eq!(w.prefetch_or_default(), 30);
        assert_eq!(w.clone().prefetch(0).prefetch_or_default(), 0);
        // Set before the concurrency, it still holds.
        let w = app.worker().prefetch(5).concurrency(100);
        assert_eq!(w.prefetch_or_default(), 5);
    }
}
