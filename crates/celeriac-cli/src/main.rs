//! `celeriac`: the admin binary. It needs no user code: it inspects and
//! steers any broker by URL, and benchmarks it.
//!
//! # Layout
//!
//! | file | commands |
//! |---|---|
//! | `main.rs` | argument parsing and dispatch |
//! | `admin.rs` | `queues`, `inspect`, `purge`, `dlq list/replay/purge` |
//! | `bench.rs` | `bench`: enqueue, drain and latency figures as JSON |

mod admin;
mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the worker's hot path allocates small, short-lived objects,
/// where it is markedly faster than the system allocator. Its v2 line
/// (the workspace's `v2` feature): messages are built on one thread and
/// freed on another, and v3 tries to reclaim the freed block's page on
/// such frees, which was about a fifth of the memory broker's drain time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "celeriac",
    version,
    about = "Inspect, steer and benchmark celeriac queues"
)]
struct Cli {
    /// Broker URL (sqlite://path.db, memory://).
    #[arg(
        long,
        short = 'b',
        global = true,
        env = "CELERIAC_BROKER",
        default_value = "sqlite://celeriac.db"
    )]
    broker: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Shows the depth of every queue.
    Queues,
    /// Shows a task's stored result.
    Inspect {
        /// Task id.
        id: String,
    },
    /// Removes every waiting message of a queue.
    Purge {
        /// Queue name.
        queue: String,
    },
    /// Dead-letter queue: list, replay or purge.
    Dlq {
        #[command(subcommand)]
        command: admin::DlqCommand,
    },
    /// Measures enqueue, drain and latency on a broker with no-op tasks.
    Bench(bench::BenchArgs),
    /// Runs the bench's no-op tasks (used by `bench` for cross-process latency).
    #[command(hide = true)]
    BenchWorker(bench::BenchWorkerArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    celeriac::cli::init_tracing("warn");
    let out = match cli.command {
        Command::Queues => admin::queues(&cli.broker).await,
        Command::Inspect { id } => admin::inspect(&cli.broker, &id).await,
        Command::Purge { queue } => admin::purge(&cli.broker, &queue).await,
        Command::Dlq { command } => admin::dlq(&cli.broker, command).await,
        Command::Bench(args) => bench::run(&cli.broker, args).await,
        Command::BenchWorker(args) => bench::worker(&cli.broker, args).await,
    };
    match out {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
