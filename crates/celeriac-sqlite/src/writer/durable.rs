//! What happens after a group commits: making it durable, answering the
//! callers, announcing it, and checkpointing the log.
//!
//! # Flushing off the writer thread
//!
//! The write connection runs with `PRAGMA synchronous = NORMAL`: a commit
//! appends to the write-ahead log and returns without `fsync`. With
//! [`Synchronous::Full`](crate::Synchronous::Full) the writer then hands
//! the group's answers to the **syncer** thread, which flushes the log
//! (`fdatasync`) and only then answers the callers and announces the
//! commit. Meanwhile the writer already runs the next group, so the disk
//! flush and the SQL work overlap; one flush covers every group committed
//! while the previous flush ran.
//!
//! No caller hears of a publish, a settlement or any other change before
//! it is on disk, which is the promise of `synchronous = FULL`. (A commit
//! is *visible* to other connections a little earlier; anything they do
//! with it is appended to the same log after it, so their own acknowledged
//! commits imply it is on disk too.)
//!
//! The one exception is a fetch: its leases are answered as soon as they
//! are committed, without waiting for the flush (which takes milliseconds
//! on most disks, and would otherwise be on the path of every message a
//! worker runs). Nothing acknowledged depends on a lease: a power cut
//! before the flush loses the lease only, and the message is delivered
//! again (at least once, as for any worker that dies), while the
//! settlement of that attempt is appended after the lease and is answered
//! only once it, and so the lease, is on disk. A process killed at any
//! instant loses nothing either way: the committed log is in the
//! operating system's cache. Fencing tokens stay unique, as every process
//! that could hold one from before a power cut is gone after it.
//! With [`Synchronous::Normal`](crate::Synchronous::Normal) the writer
//! answers at once.
//!
//! # Checkpoints
//!
//! Automatic checkpoints are off on the write connection, because SQLite
//! runs them inside `COMMIT`, with two flushes, on the writer's time.
//! Instead the writer pokes the **checkpointer** thread every
//! [`CHECKPOINT_COMMITS`] commits (and it wakes by itself
//! [`CHECKPOINT_IDLE`] after the last one), and it copies the log into the
//! database (`wal_checkpoint(PASSIVE)`) on its own connection, at most
//! every [`CHECKPOINT_EVERY`]. A passive checkpoint
//! never waits for the writer, so under a constant load it may never catch
//! the log's end, and SQLite restarts the log only once everything is
//! copied. When the log file outgrows [`WAL_RESTART_BYTES`] the writer
//! therefore runs one checkpoint itself between two groups, which copies
//! the little that is left and lets the next commit restart the log.
//!
//! That size is kept small, and equal to `PRAGMA journal_size_limit`, so
//! the log is one file of that size written over and over: writing into
//! blocks the file already has (and that are in the page cache) costs the
//! writer and the flush much less than growing the file, which makes the
//! file system allocate blocks and journal the new size on every flush.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::{Error, ErrorKind};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::Answer;
use crate::wake::{Shared, Sidecar};

/// The least time between two background checkpoints.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);

/// How many commits the writer makes between two pokes of the
/// checkpointer (SQLite's own default is about one checkpoint per 1000
/// pages; a busy commit here writes 50 to 200), so that little is left
/// for the writer's own checkpoint at [`WAL_RESTART_BYTES`].
pub(crate) const CHECKPOINT_COMMITS: u64 = 4;

/// How long after the last commit the checkpointer copies what is left.
pub(crate) const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);

/// The log size past which the writer checkpoints between two groups (the
/// same as `PRAGMA journal_size_limit`, to which a restarted log shrinks,
/// in `schema::connect`).
pub(crate) const WAL_RESTART_BYTES: u64 = 16 * 1024 * 1024;

/// Where a caller's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<Answer, Error>>;

/// What a committed group announces: the new change counters, if any.
#[derive(Debug, Default)]
pub(crate) struct Announce {
    pub(crate) ready_version: Option<i64>,
    pub(crate) result_version: Option<i64>,
}

impl Announce {
    /// Returns whether there is nothing to announce.
    pub(crate) fn is_empty(&self) -> bool {
        self.ready_version.is_none() && self.result_version.is_none()
    }
}

/// Signals waiters of this handle and of every other handle.
#[derive(Debug)]
pub(crate) struct Announcer {
    shared: Arc<Shared>,
    sidecar: Sidecar,
}

impl Announcer {
    pub(crate) fn new(shared: Arc<Shared>, sidecar: Sidecar) -> Self {
        Announcer { shared, sidecar }
    }

    /// Wakes this handle's waiters and pokes the other handles' watchers.
    pub(crate) fn announce(&self, announce: &Announce) {
        if let Some(v) = announce.ready_version {
            self.shared.local_ready_version.store(v, Ordering::SeqCst);
            self.shared.ready.notify_waiters();
        }
        if let Some(v) = announce.result_version {
            self.shared.local_result_version.store(v, Ordering::SeqCst);
            self.shared.results.notify_waiters();
        }
        if announce.ready_version.is_some() || announce.result_version.is_some() {
            self.sidecar.touch();
        }
    }
}

/// A committed group waiting to be flushed and answered.
#[derive(Debug)]
pub(crate) struct Committed {
    pub(crate) replies: Vec<(Reply, Result<Answer, Error>)>,
    pub(crate) announce: Announce,
}

/// How the writer completes a committed group.
#[derive(Debug)]
pub(crate) enum Completion {
    /// Answer at once (`Synchronous::Normal`).
    Direct(Arc<Announcer>),
    /// Hand over to the syncer, which flushes first (`Synchronous::Full`).
    Synced(mpsc::Sender<Committed>),
}

impl Completion {
    /// Completes a committed group.
    pub(crate) fn complete(&self, mut committed: Committed) {
        match self {
            Completion::Direct(announcer) => deliver(announcer, committed, None),
            Completion::Synced(syncer) => {
                // Leases are answered at once, before the flush (see the
                // module docs): only what they lease may be lost, never
                // anything acknowledged.
                let (leases, rest) = std::mem::take(&mut committed.replies)
                    .into_iter()
                    .partition::<Vec<_>, _>(|(_, answer)| matches!(answer, Ok(Answer::Fetched(_))));
                for (reply, answer) in leases {
                    let _ = reply.send(answer);
                }
                committed.replies = rest;
                if committed.replies.is_empty() && committed.announce.is_empty() {
                    return;
                }
                if let Err(mpsc::SendError(committed)) = syncer.send(committed) {
                    // The syncer is gone (it panicked): the commit happened,
                    // but its durability is unknown, so say so.
                    for (reply, _) in committed.replies {
                        let _ = reply.send(Err(Error::new(
                            ErrorKind::Closed,
                            "the sqlite broker's syncer has stopped",
                        )));
                    }
                }
            }
        }
    }
}

fn deliver(announcer: &Announcer, committed: Committed, flush_error: Option<&std::io::Error>) {
    announcer.announce(&committed.announce);
    for (reply, answer) in committed.replies {
        let answer = match (answer, flush_error) {
            (Ok(_), Some(e)) => Err(Error::with_source(
                ErrorKind::Other,
                "cannot flush the write-ahead log to disk",
                std::io::Error::new(e.kind(), e.to_string()),
            )),
            (answer, _) => answer,
        };
        // The caller may have given up (a dropped fetch); its leases then
        // simply expire.
        let _ = reply.send(answer);
    }
}

/// Returns the path of the database's write-ahead log.
pub(crate) fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// Returns the completion for `synchronous = FULL`: opens the log and
/// starts the syncer thread, which flushes it and then answers.
pub(crate) fn synced(wal_path: &Path, announcer: Arc<Announcer>) -> Result<Completion, Error> {
    let wal = File::open(wal_path).map_err(|e| {
        Error::with_source(
            ErrorKind::Other,
            format!("cannot open the write-ahead log {}", wal_path.display()),
            e,
        )
    })?;
    Ok(Completion::Synced(spawn_syncer(wal, announcer)?))
}

fn spawn_syncer(wal: File, announcer: Arc<Announcer>) -> Result<mpsc::Sender<Committed>, Error> {
    let (tx, rx) = mpsc::channel::<Committed>();
    std::thread::Builder::new()
        .name("celeriac-sync".into())
        .spawn(move || {
            let mut batch = Vec::new();
            while let Ok(first) = rx.recv() {
                batch.push(first);
                // Every group committed before this flush starts is covered
                // by it.
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let flushed = wal.sync_data();
                if let Err(e) = &flushed {
                    tracing::error!(error = %e, "cannot flush the write-ahead log");
                }
                for committed in batch.drain(..) {
                    deliver(&announcer, committed, flushed.as_ref().err());
                }
            }
        })
        .map_err(|e| Error::with_source(ErrorKind::Other, "cannot start the syncer thread", e))?;
    Ok(tx)
}

/// Starts the checkpointer thread on `conn`. The writer counts its commits
/// in `commits` and pokes the thread every [`CHECKPOINT_COMMITS`] of them;
/// commits that are not followed by more get their checkpoint after
/// [`CHECKPOINT_IDLE`].
pub(crate) fn spawn_checkpointer(
    conn: Connection,
    commits: Arc<AtomicU64>,
) -> Result<mpsc::SyncSender<()>, Error> {
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("celeriac-ckpt".into())
        .spawn(move || {
            let mut done = commits.load(Ordering::Relaxed);
            loop {
                match rx.recv_timeout(CHECKPOINT_IDLE) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let now = commits.load(Ordering::Relaxed);
                if now == done {
                    continue;
                }
                done = now;
                let until = Instant::now() + CHECKPOINT_EVERY;
                checkpoint(&conn);
                // Bound the flush rate under a constant load: pokes that come
                // before `until` are absorbed (the commit count says whether
                // there is work left).
                while let Some(rest) = until.checked_duration_since(Instant::now()) {
                    match rx.recv_timeout(rest) {
                        Ok(()) => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        })
        .map_err(|e| {
            Error::with_source(ErrorKind::Other, "cannot start the checkpointer thread", e)
        })?;
    Ok(tx)
}

/// Copies what it can of the log into the database, without waiting.
pub(crate) fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match result {
        Ok((busy, log, copied)) => {
            tracing::trace!(busy, log, copied, "checkpoint");
        }
        Err(e) => tracing::debug!(error = %e, "checkpoint failed"),
    }
}
