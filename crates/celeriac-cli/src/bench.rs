//! `celeriac bench`: enqueue (one by one and batched), drain and idle
//! latency, with built-in no-op tasks, on any broker URL.
//!
//! The last line printed with `--json` is one JSON object with the keys
//! `broker`, `tasks`, `enqueue_per_s`, `enqueue_batch_per_s`, `drain_per_s`,
//! `latency_p50_ms`, `latency_p99_ms`, `lost`, `duplicated`, `worker_rss_kb`.
//!
//! Drain runs one worker in this process. Latency runs the worker in a
//! second process (`celeriac bench-worker`) for brokers other processes can
//! reach, so it measures the cross-process wake-up, and in this process for
//! `memory://`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use celeriac::{App, Task, TaskContext, TaskError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

const DRAIN_QUEUE: &str = "bench.drain";
const SINGLE_QUEUE: &str = "bench.single";
const LATENCY_QUEUE: &str = "bench.latency";

/// `bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Tasks in the batched enqueue and drain phases.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    tasks: usize,
    /// Worker concurrency (also concurrent senders in the one-by-one phase).
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// Store results in the drain phase.
    #[arg(long)]
    results: bool,
    /// Tasks sent one by one (default: tasks/10, at most 20 000).
    #[arg(long)]
    single: Option<usize>,
    /// Tasks in the latency phase.
    #[arg(long, default_value_t = 1000)]
    latency_tasks: usize,
    /// Messages per batch in the batched enqueue phase.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent senders in the batched enqueue phase, each sending one
    /// batch at a time (more than one lets the broker store one batch while
    /// the next is encoded, as concurrent producers do).
    #[arg(long, default_value_t = 1)]
    batch_senders: usize,
    /// Prints one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `bench-worker` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchWorkerArgs {
    /// Worker concurrency.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
}

/// Marks task `i` as run: one bit per task, so duplicates and losses show.
struct Seen {
    bits: Vec<AtomicU64>,
    runs: AtomicU64,
    duplicated: AtomicU64,
}

static SEEN: OnceLock<Seen> = OnceLock::new();

impl Seen {
    fn mark(&self, i: u64) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let Some(word) = self.bits.get((i / 64) as usize) else {
            return;
        };
        let bit = 1u64 << (i % 64);
        if word.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unique(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

/// The drain phase's no-op: marks its sequence number.
struct Noop;

impl Task for Noop {
    const NAME: &'static str = "bench.noop";
    type Args = (u64,);
    type Output = ();
    async fn run(_ctx: TaskContext, (i,): (u64,)) -> Result<(), TaskError> {
        if let Some(seen) = SEEN.get() {
            seen.mark(i);
        }
        Ok(())
    }
}

/// The latency phase's task: returns the wall-clock time it started, in µs.
struct Stamp;

impl Task for Stamp {
    const NAME: &'static str = "bench.stamp";
    type Args = ();
    type Output = u64;
    async fn run(_ctx: TaskContext, _: ()) -> Result<u64, TaskError> {
        Ok(now_us())
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn build(url: &str) -> Result<App> {
    App::builder()
        .broker(url)
        .task(Noop)
        .task(Stamp)
        .build()
        .await
        .with_context(|| format!("cannot open broker `{url}`"))
}

fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb.set_message(what.to_owned());
    pb
}

/// Runs the bench's tasks until killed.
pub async fn worker(url: &str, args: BenchWorkerArgs) -> Result<()> {
    let app = build(url).await?;
    app.worker()
        .queues([LATENCY_QUEUE])
        .concurrency(args.concurrency)
        .run()
        .await?;
    Ok(())
}

pub async fn run(url: &str, args: BenchArgs) -> Result<()> {
    if args.tasks == 0 {
        bail!("--tasks must be at least 1");
    }
    // A zero batch would never advance the enqueue loop; zero single sends
    // would make the sender count's clamp range empty.
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.single == Some(0) {
        bail!("--single must be at least 1");
    }
    let app = build(url).await?;
    for q in [DRAIN_QUEUE, SINGLE_QUEUE, LATENCY_QUEUE] {
        app.broker().purge(q).await.ok();
    }
    let quiet = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let n = args.tasks;
    let single = args.single.unwrap_or((n / 10).clamp(1, 20_000));
    eprintln!("broker {url}: {n} tasks, concurrency {}", args.concurrency);

    // One by one: `concurrency` senders, each awaiting every send.
    let pb = bar(single as u64, "enqueue", quiet);
    let started = Instant::now();
    let senders = args.concurrency.clamp(1, single);
    let mut joins = Vec::new();
    for s in 0..senders {
        let app = app.clone();
        let pb = pb.clone();
        let count = single / senders + usize::from(s < single % senders);
        joins.push(tokio::spawn(async move {
            for _ in 0..count {
                Noop::s((u64::MAX,))
                    .queue(SINGLE_QUEUE)
                    .ignore_result(true)
                    .send(&app)
                    .await?;
                pb.inc(1);
            }
            Ok::<_, celeriac::Error>(())
        }));
    }
    for j in joins {
        j.await??;
    }
    let enqueue_per_s = single as f64 / started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    eprintln!("enqueue (one by one): {enqueue_per_s:.0} tasks/s");
    app.broker().purge(SINGLE_QUEUE).await?;

    // Batched: the drain phase's tasks, in batches taken in turn by
    // `batch_senders` senders.
    let pb = bar(n as u64, "batch", quiet);
    let started = Instant::now();
    let next = std::sync::Arc::new(AtomicU64::new(0));
    let mut joins = Vec::new();
    for _ in 0..args.batch_senders.max(1) {
        let (app, pb, next) = (app.clone(), pb.clone(), next.clone());
        let (batch, results) = (args.batch as u64, args.results);
        joins.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(batch, Ordering::Relaxed);
                if i >= n as u64 {
                    return Ok::<_, celeriac::Error>(());
                }
                let end = (i + batch).min(n as u64);
                let messages = (i..end)
                    .map(|k| {
                        Noop::s((k,))
                            .queue(DRAIN_QUEUE)
                            .ignore_result(!results)
                            .into_message(&app)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                app.publish(messages).await?;
                pb.inc(end - i);
            }
        }));
    }
    for j in joins {
        j.await??;
    }
    let enqueue_batch_per_s = n as f64 / started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    eprintln!(
        "enqueue (batches of {}, {} sender(s)): {enqueue_batch_per_s:.0} tasks/s",
        args.batch,
        args.batch_senders.max(1)
    );

    // Drain by one worker in this process.
    let seen = SEEN.get_or_init(|| Seen {
        bits: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        runs: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
    });
    let pb = bar(n as u64, "drain", quiet);
    let started = Instant::now();
    let handle = app
        .worker()
        .queues([DRAIN_QUEUE])
        .concurrency(args.concurrency)
        .fetch_wait(Duration::from_millis(200))
        .spawn();
    let stats = handle.stats().clone();
    let mut last_progress = Instant::now();
    let mut last_done = 0;
    loop {
        let done = stats.finished();
        pb.set_position(done.min(n as u64));
        if done >= n as u64 {
            break;
        }
        if done != last_done {
            last_done = done;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(30) {
            eprintln!("drain stalled at {done}/{n} for 30 s; stopping");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_secs = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let worker_rss_kb = rss_kb();
    handle.stop();
    handle.join().await?;
    let drain_per_s = n as f64 / drain_secs;
    let unique = seen.unique();
    let lost = n as u64 - unique.min(n as u64);
    let duplicated = seen.duplicated.load(Ordering::Relaxed);
    eprintln!("drain: {drain_per_s:.0} tasks/s (lost {lost}, duplicated {duplicated}, rss {worker_rss_kb} kB)");

    // Latency: an idle worker; tasks sent one at a time at random intervals.
    let (p50, p99) = latency(&app, url, &args, quiet).await?;
    eprintln!("latency enqueue→start: p50 {p50:.3} ms, p99 {p99:.3} ms");

    if args.json {
        println!(
            "{}",
            json!({
                "broker": url,
                "tasks": n,
                "enqueue_per_s": enqueue_per_s.round(),
                "enqueue_batch_per_s": enqueue_batch_per_s.round(),
                "drain_per_s": drain_per_s.round(),
                "latency_p50_ms": (p50 * 1000.0).round() / 1000.0,
                "latency_p99_ms": (p99 * 1000.0).round() / 1000.0,
                "lost": lost,
                "duplicated": duplicated,
                "worker_rss_kb": worker_rss_kb,
            })
        );
    }
    Ok(())
}

async fn latency(app: &App, url: &str, args: &BenchArgs, quiet: bool) -> Result<(f64, f64)> {
    let in_process = url.starts_with("memory://");
    let mut child = None;
    let local = if in_process {
        Some(
            app.worker()
                .queues([LATENCY_QUEUE])
                .concurrency(args.concurrency)
                .spawn(),
        )
    } else {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        child = Some(
            tokio::process::Command::new(exe)
                .args(["bench-worker", "--broker", url, "-c"])
                .arg(args.concurrency.to_string())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start the bench worker process")?,
        );
        None
    };
    // Warm up: the first task also proves the worker is up.
    let warm = Stamp::s(()).queue(LATENCY_QUEUE).send(app).await?;
    warm.get(Duration::from_secs(60))
        .await
        .context("the latency worker did not start within 60 s")?;

    let pb = bar(args.latency_tasks as u64, "latency", quiet);
    // The sender runs as a task on the runtime's worker threads, as a
    // producer in a service does (not on the thread that blocks on main).
    let sender = {
        let (app, pb, count) = (app.clone(), pb.clone(), args.latency_tasks);
        tokio::spawn(async move {
            let mut samples = Vec::with_capacity(count);
            for _ in 0..count {
                // A random pause of 0–5 ms lets the worker go idle between tasks.
                let pause = Duration::from_micros(rand::random::<u64>() % 5000);
                tokio::time::sleep(pause).await;
                let sent = now_us();
                let r = Stamp::s(()).queue(LATENCY_QUEUE).send(&app).await?;
                let started = r.get(Duration::from_secs(30)).await?;
                samples.push(started.saturating_sub(sent) as f64 / 1000.0);
                pb.inc(1);
            }
            Ok::<_, anyhow::Error>(samples)
        })
    };
    let mut samples = sender.await??;
    pb.finish_and_clear();
    if let Some(h) = local {
        h.stop();
        h.join().await?;
    }
    if let Some(mut c) = child {
        c.kill().await.ok();
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(idx).copied().unwrap_or(f64::NAN)
    };
    Ok((pct(0.50), pct(0.99)))
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
