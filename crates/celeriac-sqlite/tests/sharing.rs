//! Several handles and several processes on one file: no double lease,
//! wake-ups across handles and processes, durability across a reopen and
//! across `kill -9`.
//!
//! The cross-process cases run this test binary again as the other
//! process: the `child` test below does nothing unless the
//! `CELERIAC_SQLITE_CHILD` variable names a role.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::pin::{pin, Pin};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_core::{Broker, ResultBackend, Settlement, TaskId, TaskResult};
use celeriac_sqlite::{SqliteBroker, Synchronous};
use serde_json::json;
use support::{msg, now, req};

const LONG: Duration = Duration::from_secs(60);
/// Far below the one-second re-check of a waiting fetch, so a pass shows a
/// real wake-up, yet generous for a loaded machine.
const WAKE_BOUND: Duration = Duration::from_millis(900);
const CHILD_VAR: &str = "CELERIAC_SQLITE_CHILD";

#[tokio::test]
async fn messages_survive_dropping_every_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let b = SqliteBroker::open(&path).await.unwrap();
    let m = msg("q", vec![json!(1)]);
    b.publish(vec![m.clone()]).await.unwrap();
    b.store(TaskResult::success(TaskId::from("r"), json!(1)))
        .await
        .unwrap();
    drop(b);

    let b = SqliteBroker::open(&path).await.unwrap();
    let d = b.fetch(&now("q", 10)).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(**d[0].message.as_ref().unwrap(), m);
    assert!(b.get(&TaskId::from("r")).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_never_lease_the_same_message() {
    const TOTAL: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let a = SqliteBroker::builder(&path)
        .synchronous(Synchronous::Normal)
        .build()
        .await
        .unwrap();
    let b = SqliteBroker::builder(&path)
        .synchronous(Synchronous::Normal)
        .build()
        .await
        .unwrap();
    let published: Vec<_> = (0..TOTAL).map(|n| msg("q", vec![json!(n)])).collect();
    let expected: HashSet<TaskId> = published.iter().map(|m| m.id().clone()).collect();
    for chunk in published.chunks(250) {
        a.publish(chunk.to_vec()).await.unwrap();
    }

    let seen = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for handle in [a.clone(), b.clone()] {
        for _ in 0..4 {
            let (h, seen, done) = (handle.clone(), Arc::clone(&seen), Arc::clone(&done));
            tasks.push(tokio::spawn(async move {
                let r = req(&["q"], 37, LONG, Duration::from_millis(100));
                while done.load(Ordering::SeqCst) < TOTAL {
                    for d in h.fetch(&r).await.unwrap() {
                        seen.lock().unwrap().push(d.lease.id.clone());
                        h.settle(&d.lease, Settlement::Ack { result: None })
                            .await
                            .unwrap();
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    let seen = seen.lock().unwrap();
    let unique: HashSet<TaskId> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), TOTAL, "every message once, none twice");
    assert_eq!(unique, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_wakes_when_another_handle_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let waiter = SqliteBroker::open(&path).await.unwrap();
    let publisher = SqliteBroker::open(&path).await.unwrap();
    let r = req(&["q"], 1, LONG, Duration::from_secs(30));
    let mut fetch = pin!(waiter.fetch(&r));
    park(&mut fetch).await;
    let sent = Instant::now();
    publisher
        .publish(vec![msg("q", vec![json!(1)])])
        .await
        .unwrap();
    let got = fetch.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        sent.elapsed() < WAKE_BOUND,
        "woke after {:?}",
        sent.elapsed()
    );
}

/// Drives `fut` for a while, checking that it waits: what follows then
/// tests a wake-up, not a lucky first look.
async fn park<F: Future>(fut: &mut Pin<&mut F>) {
    let early = tokio::time::timeout(Duration::from_millis(200), fut.as_mut()).await;
    assert!(early.is_err(), "returned before anything was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_wait_wakes_when_another_handle_stores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let waiter = SqliteBroker::open(&path).await.unwrap();
    let worker = SqliteBroker::open(&path).await.unwrap();
    let m = msg("q", vec![]);
    let id = m.id().clone();
    worker.publish(vec![m]).await.unwrap();
    let d = worker.fetch(&now("q", 1)).await.unwrap().pop().unwrap();
    let mut wait = pin!(waiter.wait(&id, Duration::from_secs(30)));
    park(&mut wait).await;
    let sent = Instant::now();
    let result = TaskResult::success(id.clone(), json!("done"));
    worker
        .settle(
            &d.lease,
            Settlement::Ack {
                result: Some(result.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(wait.await.unwrap(), Some(result));
    assert!(
        sent.elapsed() < WAKE_BOUND,
        "woke after {:?}",
        sent.elapsed()
    );
}

/// Runs this test binary as a child process in `role`.
fn spawn_child(role: &str, db: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, role)
        .env("CELERIAC_SQLITE_CHILD_DB", db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The child process's side; passes at once when not run as a child.
#[test]
fn child() {
    let Ok(role) = std::env::var(CHILD_VAR) else {
        return;
    };
    let db = std::env::var("CELERIAC_SQLITE_CHILD_DB").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = SqliteBroker::open(&db).await.unwrap();
        println!("@@ready");
        match role.as_str() {
            // Publishes one message per line read on stdin.
            "publish-on-demand" => {
                let mut lines = BufReader::new(std::io::stdin()).lines();
                while let Some(Ok(_)) = lines.next() {
                    b.publish(vec![msg("q", vec![])]).await.unwrap();
                    println!("@@published");
                }
            }
            // Publishes until killed, reporting each id once committed.
            "publish-forever" => loop {
                let m = msg("q", vec![]);
                let id = m.id().clone();
                b.publish(vec![m]).await.unwrap();
                println!("@@published {id}");
            },
            other => panic!("unknown child role {other}"),
        }
    });
}

fn read_line(out: &mut impl BufRead) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child exited");
        // The test harness writes around our lines (even on the same line).
        if let Some(at) = line.find("@@") {
            return line[at + 2..].trim().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_wakes_when_another_process_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let b = SqliteBroker::open(&path).await.unwrap();
    let mut proc = spawn_child("publish-on-demand", &path);
    let mut stdin = proc.stdin.take().unwrap();
    let mut out = BufReader::new(proc.stdout.take().unwrap());
    assert_eq!(read_line(&mut out), "ready");

    for _ in 0..5 {
        let r = req(&["q"], 1, LONG, Duration::from_secs(30));
        let mut fetch = pin!(b.fetch(&r));
        park(&mut fetch).await;
        let sent = Instant::now();
        writeln!(stdin, "go").unwrap();
        let got = fetch.await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            sent.elapsed() < WAKE_BOUND,
            "woke after {:?}",
            sent.elapsed()
        );
        b.settle(&got[0].lease, Settlement::Ack { result: None })
            .await
            .unwrap();
        assert_eq!(read_line(&mut out), "published");
    }
    drop(stdin);
    assert!(proc.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    // Create the file first, so the child only publishes.
    drop(SqliteBroker::open(&path).await.unwrap());
    let mut proc = spawn_child("publish-forever", &path);
    let mut out = BufReader::new(proc.stdout.take().unwrap());
    assert_eq!(read_line(&mut out), "ready");
    let mut acknowledged = HashSet::new();
    while acknowledged.len() < 300 {
        let line = read_line(&mut out);
        acknowledged.insert(TaskId::from(line.trim_start_matches("published ")));
    }
    // `Child::kill` is SIGKILL: the child dies mid-publish, mid-commit.
    proc.kill().unwrap();
    proc.wait().unwrap();

    let b = SqliteBroker::open(&path).await.unwrap();
    let got = b.fetch(&now("q", 1_000_000)).await.unwrap();
    let stored: HashSet<TaskId> = got.iter().map(|d| d.lease.id.clone()).collect();
    assert!(got.iter().all(|d| d.message.is_ok()), "no torn message");
    let missing: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}
