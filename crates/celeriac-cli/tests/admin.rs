//! The `celeriac` admin binary end to end: state is set up with the facade
//! in this process, then the real binary runs against the same broker URL
//! (a SQLite file in a temp dir; `memory://` only for `bench`, since a
//! memory broker lives in one process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::core::broker::FetchRequest;
use celeriac::{App, GetError, Task, TaskContext, TaskError, TaskId};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// Doubles its argument: a registered task whose result `inspect` shows.
struct Double;

impl Task for Double {
    const NAME: &'static str = "cli.double";
    type Args = (i64,);
    type Output = i64;
    async fn run(_: TaskContext, (x,): (i64,)) -> Result<i64, TaskError> {
        Ok(x * 2)
    }
}

/// A SQLite file in a temp dir that lives as long as this value.
struct Db {
    url: String,
    _dir: tempfile::TempDir,
}

fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    Db { url, _dir: dir }
}

async fn app(url: &str) -> App {
    App::builder()
        .broker(url)
        .task(Double)
        .build()
        .await
        .unwrap()
}

/// Runs the binary with `--broker url` and `args`, ignoring any
/// `CELERIAC_BROKER` in the environment.
fn run(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .env_remove("CELERIAC_BROKER")
        .arg("--broker")
        .arg(url)
        .args(args)
        .output()
        .unwrap()
}

/// Runs the binary and returns its stdout, failing the test on a non-zero exit.
fn ok(url: &str, args: &[&str]) -> String {
    let out = run(url, args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "celeriac {args:?} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stdout
}

/// Parses `queues` output into queue -> (ready, delayed, leased).
fn queues(url: &str) -> HashMap<String, (u64, u64, u64)> {
    let out = ok(url, &["queues"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["QUEUE", "READY", "DELAYED", "LEASED"], "{out}");
    let mut names = Vec::new();
    let mut map = HashMap::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "bad row {line:?} in\n{out}");
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        names.push(f[0].to_owned());
        map.insert(f[0].to_owned(), (n(1), n(2), n(3)));
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "queues are listed by name:\n{out}");
    map
}

/// Returns a queue's (ready, delayed, leased), zeros when it is not listed.
fn depth(url: &str, queue: &str) -> (u64, u64, u64) {
    queues(url).get(queue).copied().unwrap_or((0, 0, 0))
}

/// Waits until `check` holds, failing the test after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `n` calls of a task nobody registers and runs a worker until all
/// of them are dead letters; returns their ids.
async fn dead_letter(app: &App, n: usize) -> Vec<TaskId> {
    let before = app.broker().dead_letters(1000).await.unwrap().len();
    let mut ids = Vec::new();
    for i in 0..n {
        let r = app
            .send_task("cli.nobody")
            .args(vec![json!(i)])
            .send()
            .await
            .unwrap();
        ids.push(r.id().clone());
    }
    let w = app.worker().spawn();
    wait_until("the dead letters", || async {
        app.broker().dead_letters(1000).await.unwrap().len() == before + n
    })
    .await;
    w.stop_now();
    w.join().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_shows_ready_delayed_and_leased() {
    let db = db();
    let app = app(&db.url).await;
    let header_only = ok(&db.url, &["queues"]);
    assert_eq!(header_only.lines().count(), 1, "{header_only}");

    for i in 0..2 {
        app.send_task("x.y")
            .args(vec![json!(i)])
            .queue("alpha")
            .send()
            .await
            .unwrap();
    }
    app.send_task("x.y")
        .queue("alpha")
        .countdown(Duration::from_secs(3600))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        app.send_task("x.y").queue("beta").send().await.unwrap();
    }
    // Lease one `beta` message, as a worker would, and keep it.
    let leased = app
        .broker()
        .fetch(&FetchRequest {
            queues: Arc::from(vec!["beta".to_owned()]),
            max: 1,
            lease: Duration::from_secs(600),
            wait: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);

    let q = queues(&db.url);
    assert_eq!(q.get("alpha"), Some(&(2, 1, 0)), "{q:?}");
    assert_eq!(q.get("beta"), Some(&(2, 0, 1)), "{q:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_prints_a_stored_result_and_pending_for_an_unknown_id() {
    let db = db();
    let app = app(&db.url).await;
    let r = Double::s((21,)).send(&app).await.unwrap();
    let w = app.worker().spawn();
    assert_eq!(r.get(WAIT).await.unwrap(), 42);
    w.stop_now();
    w.join().await.unwrap();

    let out = ok(&db.url, &["inspect", r.id().as_str()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "SUCCESS", "{out}");
    assert_eq!(v["result"], 42, "{out}");
    assert_eq!(v["task_id"], r.id().as_str(), "{out}");

    let out = ok(&db.url, &["inspect", "no-such-task"]);
    assert!(out.starts_with("no-such-task: PENDING"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_the_failure_of_a_dead_lettered_task() {
    let db = db();
    let app = app(&db.url).await;
    let ids = dead_letter(&app, 1).await;
    let out = ok(&db.url, &["inspect", ids[0].as_str()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "FAILURE", "{out}");
    assert_eq!(v["result"]["exc_type"], "NotRegistered", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_waiting_messages_of_one_queue() {
    let db = db();
    let app = app(&db.url).await;
    for _ in 0..3 {
        app.send_task("x.y").queue("gamma").send().await.unwrap();
    }
    app.send_task("x.y")
        .queue("gamma")
        .countdown(Duration::from_secs(3600))
        .send()
        .await
        .unwrap();
    app.send_task("x.y").queue("delta").send().await.unwrap();
    assert_eq!(depth(&db.url, "gamma"), (3, 1, 0));

    let out = ok(&db.url, &["purge", "gamma"]);
    assert_eq!(out.trim(), "purged 4 message(s) from `gamma`");
    assert_eq!(depth(&db.url, "gamma"), (0, 0, 0));
    assert_eq!(depth(&db.url, "delta"), (1, 0, 0), "other queues stay");

    let out = ok(&db.url, &["purge", "gamma"]);
    assert_eq!(out.trim(), "purged 0 message(s) from `gamma`");
    let stats = app.broker().queue_stats().await.unwrap();
    assert!(
        stats
            .iter()
            .all(|s| s.queue != "gamma" || s.ready + s.delayed + s.leased == 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_replays_and_purges_dead_letters() {
    let db = db();
    let app = app(&db.url).await;
    assert_eq!(ok(&db.url, &["dlq", "list"]).trim(), "no dead letters");

    let ids = dead_letter(&app, 2).await;
    assert_eq!(depth(&db.url, "celery"), (0, 0, 0));
    let out = ok(&db.url, &["dlq", "list"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    for id in &ids {
        let line = out
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not listed in\n{out}"));
        assert!(line.contains("task=cli.nobody"), "{line}");
        assert!(line.contains("queue=celery"), "{line}");
        assert!(
            line.contains("reason: ") && line.contains("unknown task `cli.nobody`"),
            "{line}"
        );
    }
    let out = ok(&db.url, &["dlq", "list", "--limit", "1"]);
    assert_eq!(out.lines().count(), 1, "{out}");

    // By id: only that one goes back to its queue.
    let out = ok(&db.url, &["dlq", "replay", ids[0].as_str()]);
    assert_eq!(out.trim(), "replayed 1 message(s)");
    assert_eq!(depth(&db.url, "celery"), (1, 0, 0));
    let left = app.broker().dead_letters(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, ids[1]);

    let out = ok(&db.url, &["dlq", "replay", "no-such-task"]);
    assert_eq!(out.trim(), "replayed 0 message(s)");

    // All of them.
    let out = ok(&db.url, &["dlq", "replay"]);
    assert_eq!(out.trim(), "replayed 1 message(s)");
    assert_eq!(depth(&db.url, "celery"), (2, 0, 0));
    assert_eq!(ok(&db.url, &["dlq", "list"]).trim(), "no dead letters");

    // Replayed, they fail again the same way: nothing was lost.
    let w = app.worker().spawn();
    wait_until("the replayed tasks to be dead letters again", || async {
        app.broker().dead_letters(10).await.unwrap().len() == 2
    })
    .await;
    w.stop_now();
    w.join().await.unwrap();
    let again = app.result::<Value>(ids[0].clone());
    assert!(matches!(
        again.get(WAIT).await,
        Err(GetError::Failed { .. })
    ));

    let out = ok(&db.url, &["dlq", "purge"]);
    assert_eq!(out.trim(), "deleted 2 dead letter(s)");
    assert!(app.broker().dead_letters(10).await.unwrap().is_empty());
    assert_eq!(ok(&db.url, &["dlq", "list"]).trim(), "no dead letters");
    assert_eq!(depth(&db.url, "celery"), (0, 0, 0));
}

#[test]
fn a_bad_broker_url_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!(
        "sqlite://{}",
        dir.path().join("no").join("such").join("dir.db").display()
    );
    let cases: [(&str, &[&str], &str); 6] = [
        ("nosuch://x", &["queues"], "unsupported backend `nosuch://`"),
        ("nosuch://x", &["inspect", "abc"], "unsupported backend"),
        ("nosuch://x", &["purge", "celery"], "unsupported backend"),
        ("nosuch://x", &["dlq", "list"], "unsupported backend"),
        (
            "nosuch://x",
            &["bench", "--tasks", "1"],
            "unsupported backend",
        ),
        ("not-a-url", &["queues"], "is not a URL"),
    ];
    for (url, args, says) in cases {
        let out = run(url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} {args:?} succeeded");
        assert_eq!(out.status.code(), Some(1), "{url} {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.starts_with("error: cannot open broker `"),
            "{stderr}"
        );
        assert!(stderr.contains(url), "{stderr}");
        assert!(stderr.contains(says), "{url} {args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{url} {args:?}");
    }

    let out = run(&missing, &["queues"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: cannot open broker"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_broker_url_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .env("CELERIAC_BROKER", "nosuch://from-env")
        .arg("queues")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nosuch://from-env"), "{stderr}");

    let url = format!("sqlite://{}", dir.path().join("env.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .env("CELERIAC_BROKER", &url)
        .arg("queues")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("env.db").exists());
}

#[tokio::test]
async fn bench_rejects_zero_counts_without_hanging_or_panicking() {
    for (args, says) in [
        (["--tasks", "0"], "--tasks must be at least 1"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--single", "0"], "--single must be at least 1"),
    ] {
        // Before the fix `--batch 0` looped forever and `--single 0`
        // panicked, so the child gets a deadline (and is killed on drop).
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_celeriac"))
            .env_remove("CELERIAC_BROKER")
            .args(["--broker", "memory://", "bench", "--latency-tasks", "1"])
            .args(args)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, child)
            .await
            .unwrap_or_else(|_| panic!("bench {args:?} did not exit within {WAIT:?}"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// Runs a small bench on `url` and checks its JSON summary.
fn bench(url: &str) {
    let out = ok(
        url,
        &[
            "bench",
            "--tasks",
            "300",
            "--latency-tasks",
            "20",
            "--single",
            "50",
            "--json",
        ],
    );
    let last = out.lines().last().unwrap_or_else(|| panic!("no output"));
    let v: Value = serde_json::from_str(last).unwrap();
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = [
        "broker",
        "tasks",
        "enqueue_per_s",
        "enqueue_batch_per_s",
        "drain_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "lost",
        "duplicated",
        "worker_rss_kb",
    ];
    want.sort_unstable();
    assert_eq!(keys, want, "{last}");
    assert_eq!(v["broker"], url, "{last}");
    assert_eq!(v["tasks"], 300, "{last}");
    assert_eq!(v["lost"], 0, "{last}");
    assert_eq!(v["duplicated"], 0, "{last}");
    for k in ["enqueue_per_s", "enqueue_batch_per_s", "drain_per_s"] {
        let rate = v[k].as_f64().unwrap_or_else(|| panic!("{k}: {last}"));
        assert!(rate > 0.0, "{k}: {last}");
    }
    let p50 = v["latency_p50_ms"].as_f64().unwrap();
    let p99 = v["latency_p99_ms"].as_f64().unwrap();
    assert!(p50 >= 0.0 && p50 <= p99, "{last}");
    assert!(v["worker_rss_kb"].as_u64().is_some(), "{last}");
}

#[test]
fn bench_on_memory() {
    bench("memory://");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_sqlite() {
    let db = db();
    bench(&db.url);
    // The bench drains its own queues and stops its worker process.
    let app = app(&db.url).await;
    let stats = app.broker().queue_stats().await.unwrap();
    assert!(
        stats.iter().all(|s| s.ready + s.delayed + s.leased == 0),
        "{stats:?}"
    );
}
