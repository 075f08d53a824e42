//! Python processes: the JSON-driven client (`python/client.py serve`) and
//! `celery worker` on the fixture. Both are killed when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{crate_dir, wait_for, Venv};

fn log_file(path: &Path) -> std::fs::File {
    std::fs::File::create(path).unwrap_or_else(|e| panic!("log file {}: {e}", path.display()))
}

/// Returns the last lines of a log, for failure messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(30);
    format!(
        "--- {} (last lines) ---\n{}",
        path.display(),
        lines[from..].join("\n")
    )
}

/// What a Python client got for one task: its value, or the exception
/// `AsyncResult.get()` raised.
#[derive(Debug, Clone, Deserialize)]
pub struct Outcome {
    /// The task id.
    pub id: String,
    /// `AsyncResult.state` after the wait.
    pub state: String,
    /// True when `get()` returned a value.
    pub ok: bool,
    /// The value (in the client's JSON form, see `client.py`).
    #[serde(default)]
    pub value: Value,
    /// The exception's class name.
    #[serde(default)]
    pub exc_type: Option<String>,
    /// The exception's module.
    #[serde(default)]
    pub exc_module: Option<String>,
    /// The exception's `args`.
    #[serde(default)]
    pub exc_args: Value,
    /// `AsyncResult.traceback`.
    #[serde(default)]
    pub traceback: Option<String>,
}

impl Outcome {
    /// Returns the value, panicking with the exception when the task failed.
    pub fn value(&self) -> &Value {
        assert!(self.ok, "expected a value, got {self:?}");
        &self.value
    }

    /// Returns `(exc_type, exc_module)`, panicking when the task succeeded.
    pub fn exception(&self) -> (&str, &str) {
        assert!(!self.ok, "expected an exception, got {self:?}");
        (
            self.exc_type.as_deref().unwrap_or_default(),
            self.exc_module.as_deref().unwrap_or_default(),
        )
    }
}

/// A Python Celery client process, driven one JSON request per line.
#[derive(Debug)]
pub struct PyClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl PyClient {
    /// Starts `client.py serve` with the broker and backend at `url`.
    pub async fn spawn(venv: &Venv, url: &str, env: &[(&str, &str)], log: &Path) -> PyClient {
        let mut cmd = tokio::process::Command::new(&venv.python);
        cmd.arg(crate_dir().join("python/client.py"))
            .arg("serve")
            .env("CELERY_BROKER_URL", url)
            .env("CELERY_RESULT_BACKEND", url)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(log))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", venv.python.display()));
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            panic!("python client without pipes");
        };
        PyClient {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            log: log.to_owned(),
        }
    }

    /// Writes a request without waiting for its reply (read it with
    /// [`PyClient::reply`]).
    pub async fn start(&mut self, request: &Value) {
        let mut line = request.to_string();
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            panic!("python client stdin: {e}\n{}", tail(&self.log));
        }
        let _ = self.stdin.flush().await;
    }

    /// Reads the next reply, waiting at most `timeout`.
    pub async fn reply(&mut self, timeout: Duration) -> Value {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("python client reply {line:.200}: {e}"));
                if let Some(err) = v.get("error") {
                    panic!("python client error: {err}\n{}", tail(&self.log));
                }
                v
            }
            Ok(Ok(None)) => panic!("python client exited\n{}", tail(&self.log)),
            Ok(Err(e)) => panic!("python client stdout: {e}"),
            Err(_) => panic!(
                "python client: no reply within {timeout:?}\n{}",
                tail(&self.log)
            ),
        }
    }

    /// Sends a request and waits at most `timeout` for its reply.
    pub async fn request(&mut self, request: &Value, timeout: Duration) -> Value {
        self.start(request).await;
        self.reply(timeout).await
    }

    /// Sends a task (`app.send_task`) and returns its id. `options` go to
    /// `send_task` as keyword arguments.
    pub async fn send(&mut self, task: &str, args: Value, kwargs: Value, options: Value) -> String {
        let r = self
            .request(
                &json!({"op": "send", "task": task, "args": args, "kwargs": kwargs, "options": options}),
                Duration::from_secs(20),
            )
            .await;
        r["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits for a task's result with `AsyncResult(id).get(timeout)`.
    pub async fn get(&mut self, id: &str, timeout: Duration) -> Outcome {
        let r = self
            .request(
                &json!({"op": "get", "id": id, "timeout": timeout.as_secs_f64()}),
                timeout + Duration::from_secs(15),
            )
            .await;
        parse_outcome(r)
    }

    /// Sends a task and waits for its result.
    pub async fn call(
        &mut self,
        task: &str,
        args: Value,
        kwargs: Value,
        options: Value,
        timeout: Duration,
    ) -> Outcome {
        let r = self
            .request(
                &json!({"op": "call", "task": task, "args": args, "kwargs": kwargs,
                        "options": options, "timeout": timeout.as_secs_f64()}),
                timeout + Duration::from_secs(15),
            )
            .await;
        parse_outcome(r)
    }

    /// Returns `(state, info)` of a task as `AsyncResult(id)` sees it.
    pub async fn state(&mut self, id: &str) -> (String, Value) {
        let r = self
            .request(&json!({"op": "state", "id": id}), Duration::from_secs(20))
            .await;
        (
            r["state"].as_str().unwrap_or_default().to_owned(),
            r["info"].clone(),
        )
    }

    /// Waits for many results in this one process, in order.
    pub async fn get_many(
        &mut self,
        ids: &[String],
        each: Duration,
        total: Duration,
    ) -> Vec<Outcome> {
        let r = self
            .request(
                &json!({"op": "get_many", "ids": ids, "timeout": each.as_secs_f64()}),
                total,
            )
            .await;
        match r["outcomes"].as_array() {
            Some(list) => list.iter().cloned().map(parse_outcome).collect(),
            None => panic!("get_many reply without outcomes: {r}"),
        }
    }

    /// Returns the log file of the process.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn parse_outcome(v: Value) -> Outcome {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("outcome {v}: {e}"))
}

/// Options of a Python worker.
#[derive(Debug, Clone)]
pub struct PyWorkerOptions {
    /// Worker processes or threads (`-c`).
    pub concurrency: usize,
    /// Pool (`-P`): `prefork` (time limits need it), `solo`, `threads`.
    pub pool: &'static str,
    /// Node name prefix (`-n <name>@%h`).
    pub name: String,
    /// Extra environment (e.g. `CELERY_VISIBILITY_TIMEOUT`).
    pub env: Vec<(String, String)>,
}

impl Default for PyWorkerOptions {
    fn default() -> Self {
        PyWorkerOptions {
            concurrency: 2,
            pool: "prefork",
            name: "py".to_owned(),
            env: Vec::new(),
        }
    }
}

/// A `celery worker` process (and its pool), killed when dropped.
#[derive(Debug)]
pub struct PyWorker {
    child: std::process::Child,
    log: PathBuf,
}

impl PyWorker {
    /// Starts `celery -A tasks worker` on `queues` and waits until it
    /// reports ready.
    pub async fn spawn(
        venv: &Venv,
        url: &str,
        queues: &[&str],
        options: PyWorkerOptions,
        log: &Path,
    ) -> PyWorker {
        let examples = crate_dir().join("examples");
        let ready = log.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let out = log_file(log);
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("log file {}: {e}", log.display()));
        let child = std::process::Command::new(&venv.python)
            .args([
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "--loglevel",
                "info",
            ])
            .arg("-Q")
            .arg(queues.join(","))
            .arg("-c")
            .arg(options.concurrency.to_string())
            .arg("-P")
            .arg(options.pool)
            .arg("-n")
            .arg(format!(
                "{}-{}@%h",
                options.name,
                uuid::Uuid::new_v4().simple()
            ))
            .args([
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ])
            .current_dir(&examples)
            .env("PYTHONPATH", &examples)
            .env("CELERY_BROKER_URL", url)
            .env("CELERY_RESULT_BACKEND", url)
            .env("CELERIAC_READY_FILE", &ready)
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start celery worker: {e}"));
        let mut w = PyWorker {
            child,
            log: log.to_owned(),
        };
        let log = w.log.clone();
        wait_for(
            "the Python worker to be ready",
            Duration::from_secs(30),
            || {
                let up = ready.exists();
                let exited = matches!(w.child.try_wait(), Ok(Some(_)));
                assert!(!exited, "the Python worker exited\n{}", tail(&log));
                std::future::ready(up.then_some(()))
            },
        )
        .await;
        w
    }

    /// Asks for a warm shutdown (SIGTERM) and waits until the process is gone.
    pub async fn stop(mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        wait_for("the Python worker to exit", Duration::from_secs(20), || {
            std::future::ready(matches!(self.child.try_wait(), Ok(Some(_))).then_some(()))
        })
        .await;
    }

    /// Returns the log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        // The whole process group: the main process and its pool children.
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
