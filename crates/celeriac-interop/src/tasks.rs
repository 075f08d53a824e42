//! The Rust twins of the Python fixture's tasks (`examples/tasks.py`): same
//! names, same arguments, same results and the same Python exception types,
//! so a Python client cannot tell which worker ran a task.

use std::time::Duration;

use celeriac::core::args::RawArgs;
use celeriac::{Task, TaskContext, TaskError};
use serde_json::{json, Value};

/// `tasks.add(x, y)`: returns `x + y`.
#[celeriac::task(name = "tasks.add")]
pub async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    x.checked_add(y).ok_or_else(|| {
        TaskError::permanent("integer overflow").with_type("OverflowError", "builtins")
    })
}

/// `tasks.echo(*args, **kwargs)`: returns `[args, kwargs]` exactly as
/// received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Task for Echo {
    const NAME: &'static str = "tasks.echo";
    type Args = RawArgs;
    type Output = Value;

    async fn run(_ctx: TaskContext, args: RawArgs) -> Result<Value, TaskError> {
        Ok(json!([args.args, args.kwargs]))
    }
}

/// `tasks.fail(message)`: fails as Python's `ValueError(message)` of module
/// `builtins`.
#[celeriac::task(name = "tasks.fail")]
pub async fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::fail(message).with_type("ValueError", "builtins"))
}

/// `tasks.fail_custom(message)`: fails as `CustomError(message)` of module
/// `tasks` (the class the Python fixture defines).
#[celeriac::task(name = "tasks.fail_custom")]
pub async fn fail_custom(message: String) -> Result<(), TaskError> {
    Err(TaskError::fail(message).with_type("CustomError", "tasks"))
}

/// `tasks.flaky(failures)`: asks for a retry after 100 ms until it has
/// failed `failures` times, then returns its retry count.
#[celeriac::task(name = "tasks.flaky", max_retries = 10)]
pub async fn flaky(ctx: TaskContext, failures: u32) -> Result<u32, TaskError> {
    if ctx.retries() < failures {
        return Err(TaskError::retry(Some(Duration::from_millis(100)))
            .with_type("RuntimeError", "builtins")
            .with_message(format!("try {}", ctx.retries())));
    }
    Ok(ctx.retries())
}

/// Sleeps `seconds`, or until the task is asked to stop.
async fn sleep_for(ctx: &TaskContext, seconds: f64) -> Result<f64, TaskError> {
    let d = Duration::try_from_secs_f64(seconds).map_err(|e| {
        TaskError::permanent(format!("bad duration {seconds}: {e}"))
            .with_type("ValueError", "builtins")
    })?;
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(seconds),
        () = ctx.cancelled() => Err(TaskError::permanent("SoftTimeLimitExceeded()")
            .with_type("SoftTimeLimitExceeded", "billiard.exceptions")),
    }
}

/// `tasks.sleep(seconds)`: sleeps, returns `seconds`. A cancellation (soft
/// time limit, revoke, hard shutdown) ends it with Python's
/// `SoftTimeLimitExceeded`, as a Python task is interrupted.
#[celeriac::task(name = "tasks.sleep")]
pub async fn sleep(ctx: TaskContext, seconds: f64) -> Result<f64, TaskError> {
    sleep_for(&ctx, seconds).await
}

/// `tasks.sleep_started(seconds)`: `tasks.sleep` with `track_started`, so a
/// STARTED result is stored before it runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepStarted;

impl Task for SleepStarted {
    const NAME: &'static str = "tasks.sleep_started";
    type Args = (f64,);
    type Output = f64;

    fn options() -> celeriac::TaskOptions {
        celeriac::TaskOptions::new(Self::NAME).track_started(true)
    }

    async fn run(ctx: TaskContext, (seconds,): (f64,)) -> Result<f64, TaskError> {
        sleep_for(&ctx, seconds).await
    }
}

/// `tasks.track(url, key, member, seconds=0)`: records an execution in the
/// Redis at `url`: `HINCRBY <key>:started <member> 1`, then sleeps
/// `seconds`, then `HINCRBY <key> <member> 1` and `HINCRBY <key>:by rs 1`.
/// Returns the new count for `member`, so a task run twice shows.
#[celeriac::task(name = "tasks.track")]
pub async fn track(
    ctx: TaskContext,
    url: String,
    key: String,
    member: String,
    seconds: Option<f64>,
) -> Result<i64, TaskError> {
    let mut con = connection(&url).await?;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("{key}:started"))
        .arg(&member)
        .arg(1)
        .query_async(&mut con)
        .await?;
    if let Some(s) = seconds.filter(|s| *s > 0.0) {
        sleep_for(&ctx, s).await?;
    }
    let (n, _): (i64, i64) = redis::pipe()
        .cmd("HINCRBY")
        .arg(&key)
        .arg(&member)
        .arg(1)
        .cmd("HINCRBY")
        .arg(format!("{key}:by"))
        .arg("rs")
        .arg(1)
        .query_async(&mut con)
        .await?;
    Ok(n)
}

/// Opens a connection to `url`. One per call: a cached connection would
/// belong to the runtime that opened it, and tests run one runtime each.
async fn connection(url: &str) -> Result<redis::aio::MultiplexedConnection, TaskError> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}
