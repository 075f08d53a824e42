//! The commands a user's binary gets from `run_cli`: `send`, `result`, and
//! `worker` under real SIGTERM signals (graceful, then hard).
//!
//! Worker processes are this test binary re-run with `CELERIAC_CLI_CHILD`
//! set, so only [`cli_child_entry_point`] runs in them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use celeriac::{App, AppBuilder, Task, TaskContext, TaskError, TaskState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CHILD_ENV: &str = "CELERIAC_CLI_CHILD";
const WAIT: Duration = Duration::from_secs(30);

struct Add;
impl Task for Add {
    const NAME: &'static str = "cli.add";
    type Args = (i64, i64);
    type Output = i64;
    async fn run(_: TaskContext, (x, y): (i64, i64)) -> Result<i64, TaskError> {
        Ok(x + y)
    }
}

/// Creates the file `started` (so the test knows it runs), then sleeps,
/// ignoring cancellation: only a hard stop ends it early.
struct Slow;
impl Task for Slow {
    const NAME: &'static str = "cli.slow";
    type Args = (u64, String);
    type Output = u64;
    async fn run(_: TaskContext, (ms, started): (u64, String)) -> Result<u64, TaskError> {
        std::fs::write(&started, b"started")?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
}

fn builder(url: &str) -> AppBuilder {
    App::builder().broker(url).task(Add).task(Slow)
}

/// Not a test of its own: the `worker` process of the signal tests.
#[test]
fn cli_child_entry_point() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(builder(&url).run_cli_from([
        "app",
        "worker",
        "-Q",
        "celery",
        "-c",
        "4",
        "--grace",
        "30",
        "--loglevel",
        "warn",
    ]));
    assert_eq!(code, ExitCode::SUCCESS);
}

fn spawn_worker(url: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cli_child_entry_point", "--test-threads=1"])
        .env(CHILD_ENV, url)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("cli.db").display())
}

/// Waits until the task has started: a leased message may still be
/// prefetched, and a stop hands those back instead of running them.
async fn wait_for_start(marker: &std::path::Path) {
    let deadline = Instant::now() + WAIT;
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the worker never started the task"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn marker(dir: &tempfile::TempDir) -> (std::path::PathBuf, String) {
    let p = dir.path().join("started");
    let s = p.display().to_string();
    (p, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_task_finish() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let app = builder(&url).build().await.unwrap();
    let mut child = spawn_worker(&url);
    let (started, arg) = marker(&dir);
    let r = Slow::s((700, arg)).send(&app).await.unwrap();
    wait_for_start(&started).await;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "worker exit: {status}");
    assert_eq!(
        r.get(Duration::ZERO).await.unwrap(),
        700,
        "finished before exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_hands_the_task_back() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let app = builder(&url).build().await.unwrap();
    let mut child = spawn_worker(&url);
    let (started, arg) = marker(&dir);
    let r = Slow::s((60_000, arg)).send(&app).await.unwrap();
    wait_for_start(&started).await;
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    // The second signal may race the first one's handling; repeat it until
    // the process is gone, as an impatient operator would.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "worker did not stop");
        let _ = kill(pid, Signal::SIGTERM);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "worker exit: {status}");
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
    let stats = app.broker().queue_stats().await.unwrap();
    let celery = stats.iter().find(|s| s.queue == "celery").unwrap();
    assert_eq!(
        (celery.ready, celery.leased),
        (1, 0),
        "handed back, ready at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_result_commands() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let app = builder(&url).build().await.unwrap();
    let worker = app.worker().spawn();
    let code = builder(&url)
        .run_cli_from(["app", "send", "cli.add", "--args", "[2, 3]", "--wait", "20"])
        .await;
    assert_eq!(code, ExitCode::SUCCESS);
    let r = Add::s((20, 22)).send(&app).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 42);
    let code = builder(&url)
        .run_cli_from(["app", "result", r.id().as_str(), "--wait", "5"])
        .await;
    assert_eq!(code, ExitCode::SUCCESS);
    // Bad input is a clear usage error, not a panic.
    let code = builder(&url)
        .run_cli_from(["app", "send", "cli.add", "--args", "{not json"])
        .await;
    assert_eq!(code, ExitCode::FAILURE);
    worker.stop_now();
    worker.join().await.unwrap();
}
