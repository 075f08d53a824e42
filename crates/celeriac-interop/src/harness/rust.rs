//! Rust workers for the tests: in-process ([`RustWorker`]) and as a
//! separate process ([`RustProcess`]) that can be SIGKILLed.
//!
//! A worker process is the current test binary run again with
//! [`CHILD_ENV`] set: its `child_worker` test calls
//! [`child_worker_entry`], which runs exactly what the `celery_worker`
//! example runs (`app_builder().run_cli()`) with the given arguments. This
//! needs no prior build of the example and is always up to date.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use celeriac::{App, WorkerHandle};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::python::tail;
use super::wait_for;

/// The environment variable that makes a test binary a worker process; it
/// holds the command line as a JSON array.
pub const CHILD_ENV: &str = "CELERIAC_INTEROP_WORKER_ARGS";

/// Runs a worker when [`CHILD_ENV`] is set, and exits the process with
/// its status; returns at once otherwise. Call it from a test named
/// `child_worker` in every test binary that uses [`RustProcess`].
pub fn child_worker_entry() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<String> = match serde_json::from_str(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{CHILD_ENV} is not a JSON array of strings: {e}");
            std::process::exit(2);
        }
    };
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(crate::app_builder().run_cli_from(args)),
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

/// A worker process, SIGKILLed when dropped.
#[derive(Debug)]
pub struct RustProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl RustProcess {
    /// Starts a worker process on `url` consuming `queues`, with a 2 s
    /// lease: celeriac restores a dead worker's message when its lease
    /// ends (the `unacked_index` score is lease end − visibility timeout),
    /// so the lease, not `visibility_timeout`, decides how fast that is.
    pub fn spawn(url: &str, queues: &[&str], concurrency: usize, log: &Path) -> RustProcess {
        let args = vec![
            "celery_worker".to_owned(),
            "worker".to_owned(),
            "--broker".to_owned(),
            url.to_owned(),
            "-Q".to_owned(),
            queues.join(","),
            "-c".to_owned(),
            concurrency.to_string(),
            "--lease".to_owned(),
            "2".to_owned(),
            "--loglevel".to_owned(),
            "info".to_owned(),
        ];
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
        let out =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("log {}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = std::process::Command::new(exe)
            .args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, serde_json::Value::from(args).to_string())
            .env_remove("CELERIAC_BROKER")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start worker process: {e}"));
        RustProcess {
            child,
            log: log.to_owned(),
        }
    }

    /// Returns the process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns true while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panics with the log's tail unless the process still runs.
    pub fn assert_running(&mut self) {
        assert!(
            self.is_running(),
            "the Rust worker process died\n{}",
            tail(&self.log)
        );
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a graceful stop) and waits for the exit.
    pub async fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        wait_for(
            "the Rust worker process to exit",
            Duration::from_secs(40),
            || std::future::ready(matches!(self.child.try_wait(), Ok(Some(_))).then_some(())),
        )
        .await;
    }

    /// Returns the log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for RustProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker running in this process; stopped at once when dropped.
#[derive(Debug)]
pub struct RustWorker {
    handle: Option<WorkerHandle>,
}

impl RustWorker {
    /// Spawns a worker of `app` on `queues`.
    pub fn spawn(app: &App, queues: &[&str], concurrency: usize) -> RustWorker {
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        let handle = app.worker().queues(queues).concurrency(concurrency).spawn();
        RustWorker {
            handle: Some(handle),
        }
    }

    /// Returns the worker's handle.
    pub fn handle(&self) -> Option<&WorkerHandle> {
        self.handle.as_ref()
    }

    /// Stops gracefully (running tasks finish; held ones go back) and
    /// waits; panics if the worker ended with an error.
    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
            if let Err(e) = h.join().await {
                panic!("the Rust worker ended with an error: {e}");
            }
        }
    }
}

impl Drop for RustWorker {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop_now();
        }
    }
}
