//! Quick start: tasks sent to a SQLite file and processed by a worker, with
//! a progress bar and the results printed.
//!
//! ```text
//! cargo run --release --example quickstart            # 20 000 tasks in quickstart.db
//! cargo run --release --example quickstart -- 5000 /tmp/jobs.db
//! ```

use std::time::{Duration, Instant};

use celeriac::{App, TaskContext, TaskError};
use indicatif::{ProgressBar, ProgressStyle};

/// The n-th Fibonacci number, computed slowly enough to be work.
#[celeriac::task(name = "quickstart.fib")]
async fn fib(n: u64) -> Result<u64, TaskError> {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    Ok(a)
}

/// Fails its first attempt when `n` is divisible by 7, then succeeds: shows
/// automatic retries with backoff.
#[celeriac::task(name = "quickstart.flaky", max_retries = 3, retry_backoff = 0.05)]
async fn flaky(ctx: TaskContext, n: u64) -> Result<u64, TaskError> {
    if n % 7 == 0 && ctx.retries() == 0 {
        return Err(TaskError::fail(format!("{n} is unlucky the first time")));
    }
    Ok(n * 2)
}

/// CPU-bound work on the blocking pool, so it cannot stall the runtime.
#[celeriac::task(name = "quickstart.checksum", blocking)]
fn checksum(text: String) -> Result<u64, TaskError> {
    Ok(text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let n: u64 = argv
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let db = argv.next().unwrap_or_else(|| "quickstart.db".to_owned());

    let app = App::builder()
        .broker(format!("sqlite://{db}"))
        .task(fib)
        .task(flaky)
        .task(checksum)
        .build()
        .await?;

    println!("sending {n} tasks to sqlite://{db} ...");
    let started = Instant::now();
    let fibs = app.send_many((0..n / 2).map(|i| fib::s(i % 90))).await?;
    let flakies = app.send_many((0..n / 4).map(flaky::s)).await?;
    let sums = app
        .send_many((0..n - n / 2 - n / 4).map(|i| checksum::s(format!("document {i}"))))
        .await?;
    println!("sent in {:.2?}", started.elapsed());

    let worker = app.worker().concurrency(64).spawn();
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} tasks {per_sec} {msg}")?
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let stats = worker.stats().clone();
    while stats.finished() < n {
        bar.set_position(stats.finished());
        let retried = stats.retried.load(std::sync::atomic::Ordering::Relaxed);
        bar.set_message(format!("({retried} retries)"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_with_message(format!("done in {:.2?}", started.elapsed()));

    if let Some(r) = fibs.get(89) {
        println!(
            "fib(89)           = {}",
            r.get(Duration::from_secs(5)).await?
        );
    }
    if let Some(r) = flakies.get(7) {
        println!(
            "flaky(7)          = {} (after a retry)",
            r.get(Duration::from_secs(5)).await?
        );
    }
    if let Some(r) = sums.first() {
        println!(
            "checksum(doc 0)   = {:#x}",
            r.get(Duration::from_secs(5)).await?
        );
    }
    println!("results are kept in {db}; inspect one with:");
    println!(
        "  cargo run -p celeriac-cli -- --broker sqlite://{db} inspect {}",
        fibs[0].id()
    );

    worker.stop();
    let stats = worker.join().await?;
    let [ok, failed, retried, ..] = stats.snapshot();
    println!("worker: {ok} succeeded, {failed} failed, {retried} retried");
    Ok(())
}
