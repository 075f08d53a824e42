//! Reads that need no write lock (results, queue statistics, dead-letter
//! listings), on a small pool of read connections used from
//! `spawn_blocking`, so they never wait for the writer nor block a tokio
//! worker thread.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use celeriac_core::{DeadLetter, Error, ErrorKind, QueueStats, TaskId, TaskResult};
use rusqlite::Connection;

use crate::config::Config;
use crate::schema;
use crate::util::{db_error, ms_instant, now_ms};

/// The most idle read connections kept open.
const MAX_IDLE: usize = 4;

/// A pool of read connections, opened on demand.
#[derive(Debug)]
pub(crate) struct Readers {
    config: Config,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Returns an empty pool for the database in `config`.
    pub(crate) fn new(config: Config) -> Self {
        Readers {
            config,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read connection on the blocking thread pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().ok().and_then(|mut idle| idle.pop()) {
                Some(conn) => conn,
                None => schema::connect_reader(&pool.config)?,
            };
            let out = f(&conn);
            if let Ok(mut idle) = pool.idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Other, "a read task failed", e))?
    }
}

/// Returns a stored result unless it expired.
pub(crate) fn get_result(conn: &Connection, id: &str) -> Result<Option<TaskResult>, Error> {
    let json: Option<String> = conn
        .prepare_cached("SELECT json FROM results WHERE id = ?1 AND expires_at > ?2")
        .and_then(|mut st| {
            let mut rows = st.query(rusqlite::params![id, now_ms()])?;
            rows.next()?.map(|r| r.get(0)).transpose()
        })
        .map_err(|e| db_error("cannot read a result", e))?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|e| {
            Error::with_source(ErrorKind::Malformed, "a stored result is not valid", e)
        })
    })
    .transpose()
}

/// Returns the rows with task id `id` (waiting or leased), and the first
/// row number this read could not see (the `next_seq` counter), in one
/// snapshot. A full scan: there is no index on task ids.
pub(crate) fn rows_with_id(conn: &Connection, id: &str) -> Result<(Vec<i64>, i64), Error> {
    let scan = || -> rusqlite::Result<(Vec<i64>, i64)> {
        conn.execute_batch("BEGIN")?;
        let next: i64 = conn
            .prepare_cached("SELECT value FROM meta WHERE name = 'next_seq'")?
            .query_row([], |r| r.get(0))?;
        let seqs = conn
            .prepare_cached("SELECT seq FROM tasks WHERE id = ?1")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        conn.execute_batch("COMMIT")?;
        Ok((seqs, next))
    };
    scan().map_err(|e| {
        // Leave no read transaction open on a pooled connection.
        let _ = conn.execute_batch("ROLLBACK");
        db_error("cannot look for a task to revoke", e)
    })
}

/// Returns the depth of every queue that holds a message.
pub(crate) fn queue_stats(conn: &Connection) -> Result<Vec<QueueStats>, Error> {
    let now = now_ms();
    let read = || -> rusqlite::Result<Vec<QueueStats>> {
        let mut stats: BTreeMap<String, QueueStats> = BTreeMap::new();
        conn.execute_batch("BEGIN")?;
        // Each query is answered from one partial index alone.
        let ready: Vec<(String, i64)> = conn
            .prepare_cached("SELECT queue, COUNT(*) FROM tasks WHERE state = 0 GROUP BY queue")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // A row whose eta or lease deadline passed counts as ready: the next
        // fetch will take it.
        let pending: Vec<(String, i64, i64, i64)> = conn
            .prepare_cached(
                "SELECT queue, SUM(not_before <= ?1),
                        SUM(state = 1 AND not_before > ?1), SUM(state = 2 AND not_before > ?1)
                 FROM tasks WHERE state > 0 GROUP BY queue",
            )?
            .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        conn.execute_batch("COMMIT")?;
        for (queue, n) in ready {
            stats
                .entry(queue.clone())
                .or_insert_with(|| empty(queue))
                .ready += n as u64;
        }
        for (queue, due, delayed, leased) in pending {
            let s = stats.entry(queue.clone()).or_insert_with(|| empty(queue));
            s.ready += due as u64;
            s.delayed += delayed as u64;
            s.leased += leased as u64;
        }
        Ok(stats.into_values().collect())
    };
    read().map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        db_error("cannot read queue statistics", e)
    })
}

fn empty(queue: String) -> QueueStats {
    QueueStats {
        queue,
        ready: 0,
        delayed: 0,
        leased: 0,
    }
}

/// Lists up to `limit` dead letters, oldest first.
pub(crate) fn dead_letters(conn: &Connection, limit: usize) -> Result<Vec<DeadLetter>, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "SELECT id, task, queue, reason, at, raw FROM dead_letters ORDER BY seq LIMIT ?1",
    )
    .and_then(|mut st| {
        st.query_map([limit], |r| {
            Ok(DeadLetter {
                id: TaskId::from(r.get::<_, String>(0)?),
                task: r.get(1)?,
                queue: r.get(2)?,
                reason: r.get(3)?,
                at: ms_instant(r.get(4)?),
                raw: r.get(5)?,
            })
        })?
        .collect()
    })
    .map_err(|e| db_error("cannot list dead letters", e))
}
