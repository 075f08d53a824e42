//! Celery-like commands for the user's own binary: `worker`, `send`,
//! `result`. See [`AppBuilder::run_cli`].

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use serde_json::{Map, Value};

use crate::app::AppBuilder;

#[derive(Debug, Parser)]
#[command(about = "celeriac worker and client commands")]
struct Cli {
    /// Broker URL (sqlite://path.db, memory://).
    #[arg(long, short = 'b', global = true, env = "CELERIAC_BROKER")]
    broker: Option<String>,
    /// Result backend URL; by default the broker stores results.
    #[arg(long, global = true, env = "CELERIAC_RESULT_BACKEND")]
    backend: Option<String>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, short = 'l', global = true, default_value = "info")]
    loglevel: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a worker until SIGINT/SIGTERM (twice to stop hard).
    Worker {
        /// Queues to consume, comma separated.
        #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery")]
        queues: Vec<String>,
        /// Tasks run at once.
        #[arg(short = 'c', long, default_value_t = 64)]
        concurrency: usize,
        /// Node name.
        #[arg(short = 'n', long)]
        name: Option<String>,
        /// Lease length in seconds.
        #[arg(long, default_value_t = 30.0)]
        lease: f64,
        /// Seconds running tasks get to finish after a shutdown request.
        #[arg(long, default_value_t = 30.0)]
        grace: f64,
    },
    /// Sends a task by name and prints its id.
    Send {
        /// Task name.
        task: String,
        /// Positional arguments, a JSON array.
        #[arg(long, default_value = "[]")]
        args: String,
        /// Keyword arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        kwargs: String,
        /// Queue (default: by the routes).
        #[arg(long, short = 'q')]
        queue: Option<String>,
        /// Seconds to wait before running.
        #[arg(long)]
        countdown: Option<f64>,
        /// Priority 0..=9.
        #[arg(long)]
        priority: Option<u8>,
        /// Waits this many seconds for the result and prints it.
        #[arg(long)]
        wait: Option<f64>,
    },
    /// Prints a task's stored result as JSON.
    Result {
        /// Task id.
        id: String,
        /// Waits for a final state (default 3600 s; give seconds to change).
        #[arg(long, num_args = 0..=1, default_missing_value = "3600")]
        wait: Option<f64>,
    },
}

/// Why a CLI command failed, printed by [`AppBuilder::run_cli`].
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Celeriac(#[from] celeriac_core::Error),
    #[error(transparent)]
    Get(#[from] crate::result::GetError),
}

impl AppBuilder {
    /// Parses the command line and runs `worker`, `send` or `result`, as
    /// Celery's `celery -A app ...` does. `--broker` (or `CELERIAC_BROKER`)
    /// overrides the broker set on the builder.
    ///
    /// ```no_run
    /// # async fn demo() -> std::process::ExitCode {
    /// // my-bin worker -Q celery,emails -c 64 --broker sqlite://jobs.db
    /// celeriac::App::builder().broker("sqlite://jobs.db").run_cli().await
    /// # }
    /// ```
    pub async fn run_cli(self) -> ExitCode {
        self.run_cli_from(std::env::args_os()).await
    }

    /// Runs the commands of [`AppBuilder::run_cli`] on the given arguments
    /// (the first is the program name), for tests and embedding.
    pub async fn run_cli_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
        };
        init_tracing(&cli.loglevel);
        match run(self, cli).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", chain(&e));
                ExitCode::FAILURE
            }
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Installs a `tracing` subscriber at `level` unless `RUST_LOG` says more.
pub fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn seconds(v: f64, what: &str) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| CliError::Usage(format!("{what} must be a non-negative number of seconds")))
}

async fn run(mut builder: AppBuilder, cli: Cli) -> Result<(), CliError> {
    if let Some(url) = cli.broker {
        builder = builder.broker(url);
    }
    if let Some(url) = cli.backend {
        builder = builder.backend(url);
    }
    let app = builder.build().await?;
    match cli.command {
        Command::Worker {
            queues,
            concurrency,
            name,
            lease,
            grace,
        } => {
            let mut w = app
                .worker()
                .queues(queues)
                .concurrency(concurrency)
                .lease(seconds(lease, "--lease")?)
                .grace(seconds(grace, "--grace")?);
            if let Some(n) = name {
                w = w.name(n);
            }
            tracing::info!(tasks = ?app.task_names(), broker = app.broker_url(), "registered tasks");
            let stats = w.run().await?;
            let [ok, failed, retried, dlq, revoked, released, lost] = stats.snapshot();
            tracing::info!(
                ok,
                failed,
                retried,
                dlq,
                revoked,
                released,
                lost,
                "worker summary"
            );
            Ok(())
        }
        Command::Send {
            task,
            args,
            kwargs,
            queue,
            countdown,
            priority,
            wait,
        } => {
            let args: Vec<Value> = serde_json::from_str(&args)
                .map_err(|e| CliError::Usage(format!("--args must be a JSON array: {e}")))?;
            let kwargs: Map<String, Value> = serde_json::from_str(&kwargs)
                .map_err(|e| CliError::Usage(format!("--kwargs must be a JSON object: {e}")))?;
            let mut call = app.send_task(task).args(args).kwargs(kwargs);
            if let Some(q) = queue {
                call = call.queue(q);
            }
            if let Some(c) = countdown {
                call = call.countdown(seconds(c, "--countdown")?);
            }
            if let Some(p) = priority {
                call = call.priority(p);
            }
            let r = call.send().await?;
            println!("{}", r.id());
            if let Some(w) = wait {
                let v = r.get(seconds(w, "--wait")?).await?;
                println!("{v}");
            }
            Ok(())
        }
        Command::Result { id, wait } => {
            let backend = app
                .backend()
                .ok_or_else(|| CliError::Usage("this app stores no results".to_owned()))?;
            let id = celeriac_core::TaskId::from(id);
            let r = match wait {
                Some(w) => backend.wait(&id, seconds(w, "--wait")?).await?,
                None => backend.get(&id).await?,
            };
            match r {
                Some(r) => println!(
                    "{}",
                    serde_json::to_string(&r).map_err(|e| CliError::Usage(e.to_string()))?
                ),
                None => println!("{{\"status\":\"PENDING\",\"task_id\":\"{id}\"}}"),
            }
            Ok(())
        }
    }
}
