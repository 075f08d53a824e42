//! A worker process on a SQLite file is killed with SIGKILL at random
//! moments while thousands of tasks run, then restarted, several times;
//! afterwards every task has exactly its SUCCESS result and none is missing.
//!
//! The worker processes are this test binary itself, re-run with
//! `CELERIAC_CRASH_CHILD` set so that only [`crash_child_entry_point`] runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use celeriac::{App, Task, TaskContext, TaskError, TaskState};

const CHILD_ENV: &str = "CELERIAC_CRASH_CHILD";

struct Work;
impl Task for Work {
    const NAME: &'static str = "crash.work";
    type Args = (u64,);
    type Output = u64;
    async fn run(_: TaskContext, (i,): (u64,)) -> Result<u64, TaskError> {
        // Long enough that kills land while many tasks are running.
        tokio::time::sleep(Duration::from_millis(2 + i % 5)).await;
        Ok(i * 2)
    }
}

/// Not a test of its own: the worker process of `sigkilled_workers_lose_nothing`.
/// Without the variable set it has nothing to do.
#[test]
fn crash_child_entry_point() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let app = App::builder().broker(url).task(Work).build().await.unwrap();
        app.worker()
            .concurrency(32)
            .lease(Duration::from_millis(500))
            .run_until(std::future::pending())
            .await
            .unwrap();
    });
}

fn spawn_child(url: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_lose_nothing() {
    const TASKS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let app = App::builder()
        .broker(url.clone())
        .task(Work)
        .build()
        .await
        .unwrap();
    let results = app
        .send_many((0..TASKS).map(|i| Work::s((i,))))
        .await
        .unwrap();

    let backend = app.backend().unwrap().clone();
    let done = || async {
        let mut n = 0;
        for r in &results {
            if r.state().await.unwrap() == TaskState::Success {
                n += 1;
            }
        }
        n
    };

    let mut kills = 0;
    let mut progress = Vec::new();
    while kills < 6 {
        let mut child = spawn_child(&url);
        let pause = Duration::from_millis(150 + rand::random::<u64>() % 350);
        tokio::time::sleep(pause).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        progress.push(done().await);
    }
    // The killed workers made progress, and did not finish the work alone.
    assert!(
        progress.iter().any(|&n| n > 0),
        "no progress before kills: {progress:?}"
    );

    // A last worker finishes the rest.
    let mut child = spawn_child(&url);
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, r) in results.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = backend.wait(r.id(), left).await.unwrap();
        let got = got.unwrap_or_else(|| panic!("task {i} has no result"));
        assert_eq!(got.status, TaskState::Success, "task {i}");
        assert_eq!(got.result, serde_json::json!(i as u64 * 2), "task {i}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stats = app.broker().queue_stats().await.unwrap();
    assert!(
        stats.iter().all(|s| s.ready + s.delayed + s.leased == 0),
        "nothing left over: {stats:?}"
    );
    eprintln!("crash test: {kills} SIGKILLs, progress after each: {progress:?}");
}
