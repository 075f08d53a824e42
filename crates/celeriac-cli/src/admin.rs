//! Admin commands over any broker: queue depths, results, purge, dead
//! letters.

use anyhow::{Context, Result};
use celeriac::{App, TaskId};
use clap::Subcommand;

/// Dead-letter subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Lists dead letters, oldest first.
    List {
        /// The most to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Puts dead letters back on their queues.
    Replay {
        /// Task ids to replay; all when none is given.
        ids: Vec<String>,
    },
    /// Deletes every dead letter.
    Purge,
}

async fn connect(url: &str) -> Result<App> {
    App::builder()
        .broker(url)
        .build()
        .await
        .with_context(|| format!("cannot open broker `{url}`"))
}

pub async fn queues(url: &str) -> Result<()> {
    let app = connect(url).await?;
    let mut stats = app.broker().queue_stats().await?;
    stats.sort_by(|a, b| a.queue.cmp(&b.queue));
    println!(
        "{:<32} {:>10} {:>10} {:>10}",
        "QUEUE", "READY", "DELAYED", "LEASED"
    );
    for s in stats {
        println!(
            "{:<32} {:>10} {:>10} {:>10}",
            s.queue, s.ready, s.delayed, s.leased
        );
    }
    Ok(())
}

pub async fn inspect(url: &str, id: &str) -> Result<()> {
    let app = connect(url).await?;
    let backend = app.backend().context("this broker stores no results")?;
    match backend.get(&TaskId::from(id)).await? {
        Some(r) => println!("{}", serde_json::to_string_pretty(&r)?),
        None => println!("{id}: PENDING (no result stored: queued, unknown, or expired)"),
    }
    Ok(())
}

pub async fn purge(url: &str, queue: &str) -> Result<()> {
    let app = connect(url).await?;
    let n = app.broker().purge(queue).await?;
    println!("purged {n} message(s) from `{queue}`");
    Ok(())
}

pub async fn dlq(url: &str, command: DlqCommand) -> Result<()> {
    let app = connect(url).await?;
    match command {
        DlqCommand::List { limit } => {
            let letters = app.broker().dead_letters(limit).await?;
            if letters.is_empty() {
                println!("no dead letters");
            }
            for d in letters {
                println!(
                    "{}  {}  task={} queue={}  reason: {}",
                    d.at.to_rfc3339(),
                    d.id,
                    d.task,
                    d.queue,
                    d.reason
                );
            }
        }
        DlqCommand::Replay { ids } => {
            let ids: Vec<TaskId> = ids.into_iter().map(TaskId::from).collect();
            let which = if ids.is_empty() { None } else { Some(&ids[..]) };
            let n = app.broker().replay_dead_letters(which).await?;
            println!("replayed {n} message(s)");
        }
        DlqCommand::Purge => {
            let n = app.broker().purge_dead_letters().await?;
            println!("deleted {n} dead letter(s)");
        }
    }
    Ok(())
}
