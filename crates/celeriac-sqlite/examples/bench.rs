//! Measures the SQLite backend: batched enqueue, worker drain, and idle
//! publish-to-fetch latency across processes. Run it in release mode:
//!
//! ```text
//! cargo run --release -p celeriac-sqlite --example bench -- all
//! cargo run --release -p celeriac-sqlite --example bench -- enqueue 200000
//! cargo run --release -p celeriac-sqlite --example bench -- drain 200000 500 2 [results]
//! cargo run --release -p celeriac-sqlite --example bench -- latency 500
//! ```
//!
//! Every run uses a fresh temporary database with the default options
//! (`synchronous = FULL`: an `fsync` per commit).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use celeriac_core::{Broker, Error, FetchRequest, Message, Settlement, TaskResult};
use celeriac_sqlite::SqliteBroker;
use tokio::task::JoinSet;

fn noop(n: u64) -> Message {
    Message::new("tasks.noop", vec![n.into()], Default::default())
}

fn request(max: usize, wait: Duration) -> FetchRequest {
    FetchRequest {
        queues: Arc::from(vec!["celery".to_owned()]),
        max,
        lease: Duration::from_secs(60),
        wait,
    }
}

fn arg(args: &[String], i: usize, default: u64) -> u64 {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new().map_err(|e| {
        Error::with_source(celeriac_core::ErrorKind::Other, "cannot start a runtime", e)
    })?;
    rt.block_on(async {
        match args.first().map(String::as_str).unwrap_or("all") {
            "enqueue" => enqueue(arg(&args, 1, 200_000)).await,
            "drain" => {
                drain(
                    arg(&args, 1, 200_000),
                    arg(&args, 2, 500) as usize,
                    arg(&args, 3, 1),
                    args.get(4).is_some_and(|a| a == "results"),
                )
                .await
            }
            "latency" => latency(arg(&args, 1, 500)).await,
            "latency-publisher" => latency_publisher(&args[1]).await,
            _ => {
                enqueue(200_000).await?;
                drain(200_000, 500, 1, false).await?;
                drain(200_000, 500, 2, false).await?;
                drain(100_000, 100, 2, false).await?;
                drain(200_000, 500, 2, true).await?;
                latency(500).await
            }
        }
    })
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("celeriac-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Concurrent publishing tasks in the enqueue run.
const PUBLISHERS: u64 = 4;

async fn enqueue(total: u64) -> Result<(), Error> {
    let dir = tempdir();
    let b = SqliteBroker::open(dir.join("bench.db")).await?;
    let batches: Vec<Vec<Message>> = (0..total / 1000)
        .map(|k| (0..1000).map(|n| noop(k * 1000 + n)).collect())
        .collect();
    let t = Instant::now();
    // Four publishers at once, as a service would have several callers.
    let mut set = JoinSet::new();
    let mut batches = batches.into_iter();
    for _ in 0..PUBLISHERS {
        let mine: Vec<Vec<Message>> = batches
            .by_ref()
            .take((total / 1000 / PUBLISHERS) as usize)
            .collect();
        let b = b.clone();
        set.spawn(async move {
            for batch in mine {
                b.publish(batch).await?;
            }
            Ok::<(), Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(join_error)??;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "enqueue: {total} messages in batches of 1000 from {PUBLISHERS} tasks: {secs:.2} s, {:.0} msg/s",
        total as f64 / secs
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn drain(total: u64, batch: usize, fetchers: u64, results: bool) -> Result<(), Error> {
    let dir = tempdir();
    let b = SqliteBroker::open(dir.join("bench.db")).await?;
    for k in 0..total / 1000 {
        b.publish((0..1000).map(|n| noop(k * 1000 + n)).collect())
            .await?;
    }
    let t = Instant::now();
    // One worker with `fetchers` fetch loops: fetch a batch, run every
    // no-op task concurrently, each settling its own ack (the writer
    // coalesces them), while the next fetch is already under way.
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut loops = JoinSet::new();
    for _ in 0..fetchers {
        let (b, done) = (b.clone(), Arc::clone(&done));
        loops.spawn(async move {
            let req = request(batch, Duration::from_millis(100));
            let mut settling: JoinSet<Result<(), Error>> = JoinSet::new();
            while done.load(std::sync::atomic::Ordering::Relaxed) < total {
                let got = b.fetch(&req).await?;
                if got.is_empty() {
                    break;
                }
                done.fetch_add(got.len() as u64, std::sync::atomic::Ordering::Relaxed);
                for d in got {
                    let b = b.clone();
                    let result = results.then(|| TaskResult::success(d.lease.id.clone(), 0.into()));
                    settling
                        .spawn(async move { b.settle(&d.lease, Settlement::Ack { result }).await });
                }
                while settling.len() > 2 * batch {
                    if let Some(r) = settling.join_next().await {
                        r.map_err(join_error)??;
                    }
                }
            }
            while let Some(r) = settling.join_next().await {
                r.map_err(join_error)??;
            }
            Ok::<(), Error>(())
        });
    }
    while let Some(r) = loops.join_next().await {
        r.map_err(join_error)??;
    }
    let secs = t.elapsed().as_secs_f64();
    let done = done.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "drain: {done} no-op tasks, {fetchers} fetch loop(s) of batches of {batch}, one ack each{}: {secs:.2} s, {:.0} tasks/s",
        if results { " with a SUCCESS result" } else { "" },
        done as f64 / secs
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::with_source(celeriac_core::ErrorKind::Other, "a task failed", e)
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn latency(samples: u64) -> Result<(), Error> {
    let dir = tempdir();
    let path = dir.join("bench.db");
    let b = SqliteBroker::open(&path).await?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::with_source(celeriac_core::ErrorKind::Other, "current exe", e))?;
    let mut child = std::process::Command::new(exe)
        .args([
            "latency-publisher",
            &path.display().to_string(),
            &samples.to_string(),
        ])
        .spawn()
        .map_err(|e| Error::with_source(celeriac_core::ErrorKind::Other, "spawn", e))?;
    let req = request(1, Duration::from_secs(30));
    let mut lat = Vec::new();
    while (lat.len() as u64) < samples {
        let got = b.fetch(&req).await?;
        let now = wall_us();
        for d in got {
            let sent = d
                .message
                .as_ref()
                .ok()
                .and_then(|m| m.body.args.first())
                .and_then(|v| v.as_u64())
                .unwrap_or(now);
            lat.push(now.saturating_sub(sent));
            b.settle(&d.lease, Settlement::Ack { result: None }).await?;
        }
    }
    let _ = child.wait();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "latency across processes (publish call start -> fetch return), {} samples: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn latency_publisher(path: &str) -> Result<(), Error> {
    let samples: u64 = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let b = SqliteBroker::open(path).await?;
    // Let the consumer park in its fetch before the first sample.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut took = Vec::new();
    for _ in 0..samples {
        let m = Message::new("tasks.noop", vec![wall_us().into()], Default::default());
        let t = Instant::now();
        b.publish(vec![m]).await?;
        took.push(t.elapsed().as_micros() as u64);
        // Idle between samples, so each one measures a parked fetcher.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    took.sort_unstable();
    eprintln!(
        "publisher: publish call p50 {:.2} ms, p99 {:.2} ms",
        took[took.len() / 2] as f64 / 1000.0,
        took[took.len() * 99 / 100] as f64 / 1000.0
    );
    Ok(())
}
