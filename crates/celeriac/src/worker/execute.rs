//! One attempt: decode, route to the handler, enforce time limits, capture
//! panics, turn the outcome into a settlement, settle.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{
    ErrorKind, ExceptionInfo, Lease, Message, Settlement, TaskErrorKind, TaskResult, TaskState,
};
use chrono::Utc;
use futures::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::jobs::Job;
use super::lease::{Held, LeaseTable};
use super::settler::Settle;
use super::WorkerStats;
use crate::app::App;
use crate::registry::{CallError, Handler};
use crate::task::TaskContext;

/// What every attempt of one worker shares.
pub(crate) struct Env {
    pub(crate) app: App,
    pub(crate) worker: String,
    pub(crate) leases: LeaseTable,
    pub(crate) stats: Arc<WorkerStats>,
    /// Fires on a hard stop: running tasks are dropped and handed back.
    pub(crate) hard: CancellationToken,
    /// Fires on a soft stop: prefetched tasks not yet started are handed back.
    pub(crate) soft: super::Stop,
    /// Store `STARTED` for every task (Celery's `task_track_started`).
    pub(crate) track_started: bool,
}

/// How an attempt ended, before it becomes a settlement.
enum Ending {
    Success(Value),
    Failure(ExceptionInfo, Option<String>),
    Retry(Box<Message>, ExceptionInfo),
    Revoked(&'static str),
    DeadLetter(String, Option<ExceptionInfo>),
    Release,
    /// The lease was lost; another attempt owns the task. Nothing to settle.
    Lost,
}

/// Runs one delivery up to its settlement, and returns that settlement
/// for the [`Settler`](super::settler::Settler) to send, or `None` when
/// there is nothing to settle. Never panics, never returns an error: every
/// problem ends in a settlement or a log line.
pub(crate) async fn run(env: &Env, job: Job) -> Option<Settle> {
    let settlement = decide(env, &job).await?;
    // The lease table let go of the job when the attempt ended, so the
    // lease is usually moved out; a clone would touch the queue name's
    // reference count, which every runner shares. A heartbeat that holds
    // the job this very moment costs the clone.
    let lease = match Arc::try_unwrap(job) {
        Ok(held) => held.lease,
        Err(shared) => shared.lease.clone(),
    };
    Some(Box::new((lease, settlement)))
}

/// Runs one delivery up to how it is to be settled.
async fn decide(env: &Env, held: &Held) -> Option<Settlement> {
    // Everything is borrowed from the job: moving a delivery from step to
    // step costs more than a no-op task itself.
    let lease = &held.lease;
    let deliveries = held.deliveries;
    if env.soft.is_cancelled() {
        // Stopping: not started, so hand it back untouched.
        env.leases.remove(lease.token);
        return settlement(env, lease, None, Ending::Release, None).await;
    }
    let message = match &held.message {
        Ok(m) => m,
        Err(e) => {
            env.leases.remove(lease.token);
            let reason = e.chain_text();
            tracing::error!(task_id = %lease.id, queue = %lease.queue, %reason, "malformed message dead-lettered");
            let result = (!lease.id.as_str().is_empty()).then(|| {
                TaskResult::failure(
                    lease.id.clone(),
                    &ExceptionInfo::new("MalformedMessage", "celeriac", reason.clone()),
                    None,
                )
            });
            return settlement(env, lease, None, Ending::DeadLetter(reason, None), result).await;
        }
    };
    // `acks_late = false`: acknowledged before it runs, as Celery's early
    // ack. A crash while it runs then loses it; that is what was asked.
    // The handler is looked up once per attempt: hashing the task name is
    // a visible part of a no-op task's cost.
    let handler = env.app.registry().get(&message.headers.task);
    let early = handler.is_some_and(|h| !h.options().acks_late);
    if early {
        match env
            .app
            .broker()
            .settle(lease, Settlement::Ack { result: None })
            .await
        {
            Ok(()) => {
                // The message is gone: nothing to renew from here on.
                env.leases.remove(lease.token);
            }
            Err(e) if e.kind() == ErrorKind::LeaseLost => {
                env.leases.remove(lease.token);
                env.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => {
                tracing::warn!(task_id = %lease.id, error = %e.chain_text(), "early acknowledgement failed; acknowledging after the run");
                let ending = attempt(env, lease, message, deliveries, held, handler).await;
                env.leases.remove(lease.token);
                return settlement(env, lease, Some(message), ending, None).await;
            }
        }
        let ending = attempt(env, lease, message, deliveries, held, handler).await;
        after_early_ack(env, lease, message, ending).await;
        return None;
    }
    let ending = attempt(env, lease, message, deliveries, held, handler).await;
    env.leases.remove(lease.token);
    settlement(env, lease, Some(message), ending, None).await
}

/// Ends an attempt whose message was acknowledged before it ran: there is
/// nothing left to settle, so the result is stored directly and a retry is
/// sent as a new message.
async fn after_early_ack(env: &Env, lease: &Lease, message: &Message, ending: Ending) {
    let id = lease.id.clone();
    let stats = &env.stats;
    let result = match ending {
        Ending::Lost => {
            stats.lease_lost.fetch_add(1, Ordering::Relaxed);
            None
        }
        Ending::Release => {
            tracing::warn!(task_id = %id, "a task acknowledged early (acks_late = false) was stopped and is not run again");
            stats.released.fetch_add(1, Ordering::Relaxed);
            None
        }
        Ending::Success(v) => {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
            Some(TaskResult::success(id, v))
        }
        Ending::Failure(exc, tb) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(task_id = %id, error = %exc, "task failed");
            Some(TaskResult::failure(id, &exc, tb))
        }
        Ending::Revoked(reason) => {
            stats.revoked.fetch_add(1, Ordering::Relaxed);
            Some(TaskResult::revoked(id, reason))
        }
        Ending::DeadLetter(reason, exc) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(task_id = %id, %reason, "task failed after its early acknowledgement");
            exc.map(|e| TaskResult::failure(id, &e, Some(reason)))
        }
        Ending::Retry(next, exc) => {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = env.app.publish(vec![*next]).await {
                tracing::error!(task_id = %id, error = %e.chain_text(), "sending the retry failed; the task is not run again");
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let exc = ExceptionInfo::new("RetryError", "celeriac", e.chain_text());
                Some(TaskResult::failure(id, &exc, None))
            } else {
                Some(TaskResult::new(id, TaskState::Retry, exc.to_value(), None))
            }
        }
    };
    let Some(mut r) = result.filter(|_| !message.headers.ignore_result) else {
        return;
    };
    describe(&mut r, Some(message), env);
    if let Some(backend) = env.app.backend() {
        let mut pause = Duration::from_millis(50);
        for attempt in 0..6 {
            match backend.store(r.clone()).await {
                Ok(()) => return,
                Err(e) if attempt < 5 && e.kind().is_transient() => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    tracing::error!(task_id = %r.task_id, error = %e.chain_text(), "storing the result failed");
                    return;
                }
            }
        }
    }
}

async fn attempt(
    env: &Env,
    lease: &Lease,
    message: &Message,
    deliveries: u32,
    held: &Held,
    handler: Option<&Arc<dyn Handler>>,
) -> Ending {
    let name = message.headers.task.as_str();
    // The clock is read only for messages that carry an expiry.
    if message.headers.expires.is_some() && message.is_expired(Utc::now()) {
        tracing::info!(task_id = %lease.id, task = name, "task expired before it ran");
        return Ending::Revoked("expired");
    }
    // A prefetched message may have lost its lease, or been revoked, while
    // it waited for a runner.
    if held.lost.load(Ordering::Acquire) {
        return Ending::Lost;
    }
    if held.revoked.load(Ordering::Acquire) {
        return Ending::Revoked("revoked");
    }
    let Some(handler) = handler else {
        tracing::error!(task_id = %lease.id, task = name, "unknown task dead-lettered");
        let reason = format!("unknown task `{name}`: not registered in this worker");
        let exc = ExceptionInfo::new("NotRegistered", "celery.exceptions", format!("'{name}'"));
        return Ending::DeadLetter(reason, Some(exc));
    };
    let options = handler.options();
    if (env.track_started || options.track_started) && !message.headers.ignore_result {
        store_started(env, message).await;
    }
    // Borrowed, not cloned: a token clone takes the token's mutex.
    let cancel = &held.cancel;
    let ctx = TaskContext {
        id: message.headers.id.clone(),
        name: handler.name(),
        retries: message.headers.retries,
        deliveries,
        queue: lease.queue.clone(),
        cancel: cancel.clone(),
        app: env.app.clone(),
    };
    let soft = secs(message.headers.timelimit.soft).or(options.soft_time_limit);
    let hard = secs(message.headers.timelimit.hard).or(options.time_limit);
    let body = &message.body;
    let fut = handler.call(ctx, body.args.clone(), body.kwargs.clone());
    let fut = AssertUnwindSafe(fut).catch_unwind();
    let soft_timer = async {
        match soft {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let hard_timer = async {
        match hard {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(fut, soft_timer, hard_timer);
    let mut soft_fired = false;
    let outcome = loop {
        tokio::select! {
            biased;
            out = &mut fut => break Some(out),
            () = env.hard.cancelled() => break None,
            () = &mut hard_timer => {
                let limit = hard.unwrap_or_default();
                return Ending::Failure(
                    ExceptionInfo::new("TimeLimitExceeded", "billiard.exceptions", format!("TimeLimitExceeded({})", limit.as_secs_f64())),
                    Some(format!("task exceeded its hard time limit of {limit:?} and was stopped")),
                );
            }
            () = &mut soft_timer, if !soft_fired => {
                soft_fired = true;
                tracing::info!(task_id = %lease.id, "soft time limit: cancellation signalled");
                cancel.cancel();
            }
        }
    };
    let Some(outcome) = outcome else {
        return Ending::Release;
    };
    if held.lost.load(Ordering::Acquire) {
        return Ending::Lost;
    }
    if held.revoked.load(Ordering::Acquire) {
        return Ending::Revoked("revoked");
    }
    match outcome {
        Ok(Ok(value)) => Ending::Success(value),
        Ok(Err(CallError::Args(e))) => {
            let reason = format!("bad arguments for `{name}`: {e}");
            let exc = ExceptionInfo::new("TypeError", "builtins", format!("{name}() {e}"));
            Ending::DeadLetter(reason, Some(exc))
        }
        Ok(Err(CallError::Encode(e))) => Ending::Failure(
            ExceptionInfo::new(
                "EncodeError",
                "kombu.exceptions",
                format!("cannot encode the return value: {e}"),
            ),
            None,
        ),
        Ok(Err(CallError::Task(err))) => {
            let exc = err.exception().clone();
            let tb = err.traceback().map(str::to_owned);
            let retries = message.headers.retries;
            let within = retries < options.max_retries;
            let delay = match err.kind() {
                TaskErrorKind::Retry { after } if within => {
                    Some(after.unwrap_or_else(|| options.retry_policy.delay(retries)))
                }
                TaskErrorKind::Retry { .. } => {
                    return Ending::Failure(
                        ExceptionInfo::new(
                            "MaxRetriesExceededError",
                            "celery.exceptions",
                            format!(
                                "Can't retry {name}[{}] args:{:?} kwargs:{:?}",
                                message.id(),
                                body.args,
                                body.kwargs
                            ),
                        ),
                        tb,
                    )
                }
                TaskErrorKind::Fail if within => Some(options.retry_policy.delay(retries)),
                _ => None,
            };
            match delay {
                Some(d) => Ending::Retry(Box::new(next_attempt(message, d)), exc),
                None => Ending::Failure(exc, tb),
            }
        }
        Err(panic) => {
            let text = panic_text(&panic);
            tracing::error!(task_id = %lease.id, task = name, panic = %text, "task panicked");
            Ending::Failure(
                ExceptionInfo::new("Panic", "celeriac", text.clone()),
                Some(format!("task panicked: {text}")),
            )
        }
    }
}

/// Stores `STARTED` with the worker's pid and name, as Celery does
/// (`{"pid": .., "hostname": ..}`). A failure to store it is logged, never
/// fatal: the state is informational.
async fn store_started(env: &Env, message: &Message) {
    let Some(backend) = env.app.backend() else {
        return;
    };
    let mut r = TaskResult::new(
        message.headers.id.clone(),
        TaskState::Started,
        serde_json::json!({"pid": std::process::id(), "hostname": env.worker}),
        None,
    );
    r.date_done = None;
    describe(&mut r, Some(message), env);
    if let Err(e) = backend.store(r).await {
        tracing::warn!(task_id = %message.headers.id, error = %e.chain_text(), "storing STARTED failed");
    }
}

/// Fills in what a stored result says about its task, as Celery writes
/// it: the group and parent always, the name, retries and worker as its
/// extended results do.
fn describe(r: &mut TaskResult, message: Option<&Message>, env: &Env) {
    if let Some(m) = message {
        r.name = Some(m.headers.task.clone());
        r.retries = Some(m.headers.retries);
        r.group_id.clone_from(&m.headers.group);
        r.parent_id.clone_from(&m.headers.parent_id);
    }
    r.worker = Some(env.worker.clone());
}

/// Returns the next delivery of a retried task: same id, one more retry,
/// not before `delay` from now; its parent is the task itself, as Celery
/// sends a retry (`celery-protocol.md` §7.3).
fn next_attempt(message: &Message, delay: Duration) -> Message {
    let mut next = message.clone();
    next.headers.retries += 1;
    next.headers.parent_id = Some(message.headers.id.clone());
    next.headers.eta = chrono::Duration::from_std(delay)
        .ok()
        .map(|d| Utc::now() + d);
    next
}

fn secs(v: Option<f64>) -> Option<Duration> {
    v.filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Turns an ending into a settlement, with its result (or storing the
/// result first when results live elsewhere). `None`: nothing to settle.
async fn settlement(
    env: &Env,
    lease: &Lease,
    message: Option<&Message>,
    ending: Ending,
    preset: Option<TaskResult>,
) -> Option<Settlement> {
    let id = lease.id.clone();
    let ignore = message.is_some_and(|m| m.headers.ignore_result);
    let stats = &env.stats;
    let (settlement, result) = match ending {
        Ending::Lost => {
            stats.lease_lost.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Ending::Release => {
            stats.released.fetch_add(1, Ordering::Relaxed);
            (Settlement::Release, None)
        }
        Ending::Success(v) => {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
            (
                Settlement::Ack { result: None },
                (!ignore).then(|| TaskResult::success(id.clone(), v)),
            )
        }
        Ending::Failure(exc, tb) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(task_id = %id, error = %exc, "task failed");
            (
                Settlement::Ack { result: None },
                (!ignore).then(|| TaskResult::failure(id.clone(), &exc, tb)),
            )
        }
        Ending::Revoked(reason) => {
            stats.revoked.fetch_add(1, Ordering::Relaxed);
            (
                Settlement::Ack { result: None },
                Some(TaskResult::revoked(id.clone(), reason)),
            )
        }
        Ending::Retry(next, exc) => {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::info!(task_id = %id, retries = next.headers.retries, eta = ?next.headers.eta, error = %exc, "task will retry");
            let r = TaskResult::new(id.clone(), TaskState::Retry, exc.to_value(), None);
            (
                Settlement::Retry {
                    message: next,
                    result: None,
                },
                (!ignore).then_some(r),
            )
        }
        Ending::DeadLetter(reason, exc) => {
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let r = preset
                .or_else(|| exc.map(|e| TaskResult::failure(id.clone(), &e, Some(reason.clone()))));
            (
                Settlement::DeadLetter {
                    reason,
                    result: None,
                },
                r,
            )
        }
    };
    // Without a result (ignore_result, the common case in bulk work) the
    // attach step is skipped: building its future moves the settlement in
    // and out again for nothing.
    match result {
        None => Some(settlement),
        Some(mut r) => {
            describe(&mut r, message, env);
            // The result could not be stored: not acknowledged, so the
            // lease runs out and the task is delivered again.
            attach(env, settlement, r).await
        }
    }
}

/// Puts the result into the settlement when the broker stores results,
/// or stores it in the separate backend first (then settles without it).
///
/// A separate backend that stays unreachable through a few tries gives
/// `None`: the attempt is then not settled, so it is not acknowledged
/// without its result; the lease runs out and the task runs again.
async fn attach(env: &Env, settlement: Settlement, result: TaskResult) -> Option<Settlement> {
    if env.app.results_in_broker() {
        return Some(match settlement {
            Settlement::Ack { .. } => Settlement::Ack {
                result: Some(result),
            },
            Settlement::Retry { message, .. } => Settlement::Retry {
                message,
                result: Some(result),
            },
            Settlement::DeadLetter { reason, .. } => Settlement::DeadLetter {
                reason,
                result: Some(result),
            },
            other => other,
        });
    }
    let Some(backend) = env.app.backend() else {
        return Some(settlement);
    };
    let mut pause = Duration::from_millis(50);
    for attempt in 0..6 {
        match backend.store(result.clone()).await {
            Ok(()) => return Some(settlement),
            Err(e) if attempt < 5 && e.kind().is_transient() => {
                tracing::warn!(task_id = %result.task_id, error = %e.chain_text(), "storing the result failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) if e.kind().is_transient() => {
                tracing::error!(task_id = %result.task_id, error = %e.chain_text(), "storing the result failed; the task will be redelivered");
                return None;
            }
            Err(e) => {
                // Not a passing outage (a result too large, say): retrying
                // would fail the same way forever.
                tracing::error!(task_id = %result.task_id, error = %e.chain_text(), "storing the result failed");
                return Some(settlement);
            }
        }
    }
    None
}
