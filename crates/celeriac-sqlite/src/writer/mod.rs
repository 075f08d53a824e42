//! The single writer of a handle, and its group commit.
//!
//! One `std::thread` owns the handle's write connection. Callers send it a
//! [`Command`] (an [`Op`] and a oneshot for the answer) over a channel. The
//! thread takes the first command, drains whatever else is already queued
//! (up to [`MAX_GROUP`] commands), runs them all in **one** `BEGIN
//! IMMEDIATE` transaction and **one** commit, and answers each caller only
//! once that commit is flushed to disk (one flush for the whole group; see
//! [`durable`]). Under load many publishes, fetches and acknowledgements
//! share each flush; idle, a command is committed on its own at once.
//!
//! An operation either succeeds or reports a refusal (queue full, lease
//! lost) *without having written anything*, so refusals never spoil the
//! group. If SQLite itself fails mid-group, the transaction is rolled back
//! and every command of the group is run again in its own transaction, so
//! only the command at fault sees the error.
//!
//! `BEGIN IMMEDIATE` takes SQLite's write lock up front, so writers of other
//! handles and other processes queue on the busy timeout instead of failing
//! half-way; this is what keeps a message from being leased twice.
//!
//! # Layout
//!
//! | module | operations |
//! |---|---|
//! | [`queue`] | publish, fetch (promotion, fair leasing), purge |
//! | [`settle`] | settle, extend, revoke |
//! | [`admin`] | dead-letter replay and purge, results, the expiry sweep |
//! | [`durable`] | after the commit: the flush, the answers, announcements, checkpoints |

mod admin;
pub(crate) mod durable;
mod queue;
mod settle;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use celeriac_core::{Error, LeaseStatus, Revoked};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::util::{db_error, now_ms};
use durable::{Announce, Committed, Completion};

/// The most commands run in one transaction; bounds the time a caller at
/// the end of a long queue waits, and the transaction size.
pub(crate) const MAX_GROUP: usize = 1024;

/// How often (in milliseconds of writer activity) expired results and
/// remembered revocations are deleted.
const SWEEP_EVERY_MS: i64 = 30_000;

/// A message ready to be written: encoded by the caller, off this thread.
#[derive(Debug)]
pub(crate) struct NewRow {
    pub(crate) id: String,
    pub(crate) task: String,
    pub(crate) queue: String,
    pub(crate) priority: i64,
    /// The eta in milliseconds, if any.
    pub(crate) eta_ms: Option<i64>,
    pub(crate) payload: Vec<u8>,
}

/// A result ready to be written: serialized by the caller.
#[derive(Debug)]
pub(crate) struct ResultRow {
    pub(crate) id: String,
    pub(crate) json: String,
}

/// How an attempt ends, as the writer applies it.
#[derive(Debug)]
pub(crate) enum SettleOp {
    Ack(Option<ResultRow>),
    Retry(NewRow, Option<ResultRow>),
    Release,
    DeadLetter(String, Option<ResultRow>),
}

/// One operation for the writer.
#[derive(Debug)]
pub(crate) enum Op {
    Publish(Vec<NewRow>),
    Fetch {
        queues: Arc<[String]>,
        start: usize,
        max: usize,
        lease_ms: i64,
    },
    Settle {
        seq: i64,
        token: i64,
        op: SettleOp,
    },
    /// Many settlements (row number, token, what), each answered alone.
    SettleMany(Vec<(i64, i64, SettleOp)>),
    Extend {
        leases: Vec<(i64, i64)>,
        by_ms: i64,
    },
    Revoke {
        id: String,
        /// Rows with this id, found by a scan on a read connection.
        found: Vec<i64>,
        /// The first row number that scan could not see.
        scanned_below: i64,
    },
    Purge(String),
    ReplayDeadLetters(Option<Vec<String>>),
    PurgeDeadLetters,
    StoreResult(ResultRow),
    Forget(String),
}

impl Op {
    /// Returns what failed, for the error text of a failed operation.
    fn failure(&self) -> &'static str {
        match self {
            Op::Publish(_) => "cannot publish messages",
            Op::Fetch { .. } => "cannot lease messages",
            Op::Settle { .. } => "cannot settle a message",
            Op::SettleMany(_) => "cannot settle messages",
            Op::Extend { .. } => "cannot extend leases",
            Op::Revoke { .. } => "cannot revoke a task",
            Op::Purge(_) => "cannot purge a queue",
            Op::ReplayDeadLetters(_) => "cannot replay dead letters",
            Op::PurgeDeadLetters => "cannot purge dead letters",
            Op::StoreResult(_) => "cannot store a result",
            Op::Forget(_) => "cannot forget a result",
        }
    }
}

/// A leased row, returned by a fetch for the caller to decode.
#[derive(Debug)]
pub(crate) struct LeasedRow {
    pub(crate) seq: i64,
    pub(crate) token: i64,
    pub(crate) id: String,
    /// Index into the fetch request's queues.
    pub(crate) queue: usize,
    pub(crate) deliveries: i64,
    pub(crate) payload: Vec<u8>,
}

/// What a fetch found.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) rows: Vec<LeasedRow>,
    /// When nothing was ready: the earliest eta or lease deadline among the
    /// queues, in milliseconds.
    pub(crate) next_wake_ms: Option<i64>,
}

/// The writer's answer to one operation.
#[derive(Debug)]
pub(crate) enum Answer {
    Done,
    Fetched(Fetched),
    Statuses(Vec<LeaseStatus>),
    /// One answer (`Done` or `LeaseLost`) per settlement of a `SettleMany`.
    Settled(Vec<Answer>),
    Revoked(Revoked),
    Count(u64),
    /// A refusal made before writing anything (queue full).
    Refused(Error),
    /// The lease's token no longer holds the row.
    LeaseLost,
}

/// An operation and where to send its answer.
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<Answer, Error>>,
}

/// Per-transaction state shared by the operations of one group.
pub(crate) struct Tx<'c> {
    pub(crate) conn: &'c Connection,
    pub(crate) max_queue_length: Option<usize>,
    pub(crate) result_expiry_ms: i64,
    next_token: Option<i64>,
    next_seq: Option<i64>,
    pub(crate) ready_changed: bool,
    pub(crate) results_changed: bool,
}

impl Tx<'_> {
    /// Returns the first of `n` fresh fencing tokens. The counter lives in
    /// `meta` and is read once per transaction; the write lock held by
    /// `BEGIN IMMEDIATE` makes it unique across every handle and process.
    pub(crate) fn tokens(&mut self, n: i64) -> rusqlite::Result<i64> {
        let first = match self.next_token {
            Some(t) => t,
            None => read_counter(self.conn, "next_token")?,
        };
        self.next_token = Some(first + n);
        Ok(first)
    }

    /// Returns the row numbers `first..first + n` for new rows, from the
    /// `next_seq` counter (so they only ever grow, across processes).
    pub(crate) fn seqs(&mut self, n: i64) -> rusqlite::Result<i64> {
        let first = match self.next_seq {
            Some(s) => s,
            None => read_counter(self.conn, "next_seq")?,
        };
        self.next_seq = Some(first + n);
        Ok(first)
    }
}

fn read_counter(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

/// The settings the writer needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub(crate) max_queue_length: Option<usize>,
    pub(crate) result_expiry_ms: i64,
}

/// How the writer finishes its groups.
#[derive(Debug)]
pub(crate) struct Finishing {
    /// Answers (after a flush, or at once).
    pub(crate) completion: Completion,
    /// Pokes the checkpointer.
    pub(crate) checkpoints: mpsc::SyncSender<()>,
    /// Commits so far, read by the checkpointer.
    pub(crate) commits: Arc<AtomicU64>,
    /// The write-ahead log, whose size is watched.
    pub(crate) wal_path: PathBuf,
}

/// Starts the writer thread; it ends when every sender is dropped, after
/// finishing the commands already sent.
pub(crate) fn spawn(
    conn: Connection,
    commands: mpsc::Receiver<Command>,
    finishing: Finishing,
    config: WriterConfig,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("celeriac-writer".into())
        .spawn(move || {
            let mut writer = Writer {
                conn,
                finishing,
                config,
                last_sweep_ms: 0,
            };
            writer.run(commands);
        })
        .map_err(|e| {
            Error::with_source(
                celeriac_core::ErrorKind::Other,
                "cannot start the writer thread",
                e,
            )
        })?;
    Ok(())
}

struct Writer {
    conn: Connection,
    finishing: Finishing,
    config: WriterConfig,
    last_sweep_ms: i64,
}

impl Writer {
    fn run(&mut self, commands: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(64);
        while let Ok(first) = commands.recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match commands.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            self.run_group(&mut group);
            self.after_commit();
        }
    }

    fn run_group(&mut self, group: &mut Vec<Command>) {
        let sweep = now_ms() - self.last_sweep_ms >= SWEEP_EVERY_MS;
        match self.transact(group.iter().map(|c| &c.op), sweep) {
            Ok((answers, announce)) => {
                if sweep {
                    self.last_sweep_ms = now_ms();
                }
                let replies = group
                    .drain(..)
                    .zip(answers)
                    .map(|(cmd, answer)| (cmd.reply, Ok(answer)))
                    .collect();
                self.finishing
                    .completion
                    .complete(Committed { replies, announce });
            }
            Err(e) if group.len() == 1 => {
                if let Some(cmd) = group.pop() {
                    let _ = cmd.reply.send(Err(db_error(cmd.op.failure(), e)));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, commands = group.len(), "group commit failed; retrying one by one");
                for cmd in group.drain(..) {
                    match self.transact(std::iter::once(&cmd.op), false) {
                        Ok((answers, announce)) => {
                            let answer = answers.into_iter().next().ok_or_else(crate::util::closed);
                            self.finishing.completion.complete(Committed {
                                replies: vec![(cmd.reply, answer)],
                                announce,
                            });
                        }
                        Err(e) => {
                            let _ = cmd.reply.send(Err(db_error(cmd.op.failure(), e)));
                        }
                    }
                }
            }
        }
    }

    /// Pokes the checkpointer, and checkpoints here when the log has grown
    /// too long for the background checkpoints to let it restart.
    fn after_commit(&self) {
        let commits = self.finishing.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if commits % durable::CHECKPOINT_COMMITS == 0 {
            let _ = self.finishing.checkpoints.try_send(());
        }
        let long = std::fs::metadata(&self.finishing.wal_path)
            .is_ok_and(|m| m.len() > durable::WAL_RESTART_BYTES);
        if long {
            durable::checkpoint(&self.conn);
        }
    }

    /// Runs operations in one transaction, returning their answers once
    /// committed. Nothing is committed on error.
    fn transact<'a>(
        &self,
        ops: impl Iterator<Item = &'a Op>,
        sweep: bool,
    ) -> rusqlite::Result<(Vec<Answer>, Announce)> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let result = (|| {
            let mut tx = Tx {
                conn: &self.conn,
                max_queue_length: self.config.max_queue_length,
                result_expiry_ms: self.config.result_expiry_ms,
                next_token: None,
                next_seq: None,
                ready_changed: false,
                results_changed: false,
            };
            let mut answers = Vec::new();
            for op in ops {
                answers.push(apply(&mut tx, op)?);
            }
            if sweep {
                admin::sweep(&mut tx)?;
            }
            let announce = finish(&mut tx)?;
            Ok((answers, announce))
        })();
        match result {
            Ok(done) => {
                self.conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(done)
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }
}

fn apply(tx: &mut Tx<'_>, op: &Op) -> rusqlite::Result<Answer> {
    match op {
        Op::Publish(rows) => queue::publish(tx, rows),
        Op::Fetch {
            queues,
            start,
            max,
            lease_ms,
        } => queue::fetch(tx, queues, *start, *max, *lease_ms),
        Op::Settle { seq, token, op } => settle::settle(tx, *seq, *token, op),
        Op::SettleMany(settles) => settle::settle_many(tx, settles),
        Op::Extend { leases, by_ms } => settle::extend(tx, leases, *by_ms),
        Op::Revoke {
            id,
            found,
            scanned_below,
        } => settle::revoke(tx, id, found, *scanned_below),
        Op::Purge(queue) => queue::purge(tx, queue),
        Op::ReplayDeadLetters(ids) => admin::replay_dead_letters(tx, ids.as_deref()),
        Op::PurgeDeadLetters => admin::purge_dead_letters(tx),
        Op::StoreResult(row) => admin::store_result(tx, row).map(|()| Answer::Done),
        Op::Forget(id) => admin::forget(tx, id),
    }
}

/// Writes the token counter and bumps the change counters, before commit.
fn finish(tx: &mut Tx<'_>) -> rusqlite::Result<Announce> {
    for (name, value) in [("next_token", tx.next_token), ("next_seq", tx.next_seq)] {
        if let Some(value) = value {
            tx.conn
                .prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")?
                .execute(rusqlite::params![name, value])?;
        }
    }
    let bump = |name: &str| -> rusqlite::Result<i64> {
        tx.conn
            .prepare_cached("UPDATE meta SET value = value + 1 WHERE name = ?1 RETURNING value")?
            .query_row([name], |r| r.get(0))
    };
    let ready_version = if tx.ready_changed {
        Some(bump("ready_version")?)
    } else {
        None
    };
    let result_version = if tx.results_changed {
        Some(bump("result_version")?)
    } else {
        None
    };
    Ok(Announce {
        ready_version,
        result_version,
    })
}
