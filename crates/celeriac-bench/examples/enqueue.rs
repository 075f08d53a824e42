//! Enqueues `tasks.add(i, i)` calls, as a Rust user of celeriac would, and
//! prints one JSON line: `{"mode", "tasks", "seconds", "per_s"}`.
//!
//! It is the celeriac producer of `bench/celery_vs_celeriac.sh`, which puts
//! it beside Python Celery's loop of `add.delay(i, i)` on the same Redis:
//! the messages are the same task with the same arguments, so either worker
//! drains either producer's messages.
//!
//! ```sh
//! cargo run --release -p celeriac-bench --example enqueue -- \
//!     --broker redis://127.0.0.1:6379/12 --tasks 20000 --mode sequential
//! ```
//!
//! Modes:
//!
//! * `sequential`: one loop awaiting each `send()` (Python's `.delay()` loop);
//! * `concurrent`: `--concurrency` loops sending at once (one connection, pipelined);
//! * `batch`: `App::publish` of `--batch` messages at a time.
//!
//! Results are ignored (`ignore_result`) unless `--results` is given.

use std::sync::Arc;
use std::time::Instant;

use celeriac::App;
use clap::{Parser, ValueEnum};
use serde_json::json;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Sequential,
    Concurrent,
    Batch,
}

/// Enqueues `tasks.add(i, i)` and reports the rate.
#[derive(Debug, Parser)]
struct Args {
    /// Broker URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379/12")]
    broker: String,
    /// How many tasks to send.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    tasks: u64,
    /// How to send them.
    #[arg(long, value_enum, default_value = "sequential")]
    mode: Mode,
    /// Senders in the `concurrent` mode.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: u64,
    /// Messages per publish in the `batch` mode.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Ask for results to be stored (the default marks every call `ignore_result`).
    #[arg(long)]
    results: bool,
    /// Queue to send to.
    #[arg(long, short = 'q', default_value = "celery")]
    queue: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn send_range(app: &App, args: &Args, range: std::ops::Range<u64>) -> Result<(), BoxError> {
    for i in range {
        app.send_task("tasks.add")
            .args(vec![i.into(), i.into()])
            .queue(args.queue.as_str())
            .ignore_result(!args.results)
            .send()
            .await?;
    }
    Ok(())
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Concurrent => "concurrent",
            Mode::Batch => "batch",
        }
    }
}

async fn send_concurrent(app: &App, args: &Arc<Args>) -> Result<(), BoxError> {
    let n = args.tasks;
    let senders = args.concurrency.min(n.max(1));
    let per = n.div_ceil(senders);
    let mut joins = Vec::new();
    for s in 0..senders {
        let (app, args) = (app.clone(), Arc::clone(args));
        let range = (s * per).min(n)..((s + 1) * per).min(n);
        joins.push(tokio::spawn(
            async move { send_range(&app, &args, range).await },
        ));
    }
    for j in joins {
        j.await??;
    }
    Ok(())
}

async fn send_batches(app: &App, args: &Args) -> Result<(), BoxError> {
    let n = args.tasks;
    let mut i = 0;
    while i < n {
        let end = (i + args.batch).min(n);
        let messages = (i..end)
            .map(|k| {
                app.send_task("tasks.add")
                    .args(vec![k.into(), k.into()])
                    .queue(args.queue.as_str())
                    .ignore_result(!args.results)
                    .into_message()
            })
            .collect();
        app.publish(messages).await?;
        i = end;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Arc::new(Args::parse());
    if args.batch == 0 || args.concurrency == 0 {
        return Err("--batch and --concurrency must be at least 1".into());
    }
    let app = App::builder().broker(args.broker.as_str()).build().await?;
    let started = Instant::now();
    match args.mode {
        Mode::Sequential => send_range(&app, &args, 0..args.tasks).await?,
        Mode::Concurrent => send_concurrent(&app, &args).await?,
        Mode::Batch => send_batches(&app, &args).await?,
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "mode": args.mode.name(),
            "tasks": args.tasks,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "per_s": (args.tasks as f64 / secs).round(),
        })
    );
    Ok(())
}
