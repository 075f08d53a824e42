//! Publish, fetch and purge: the operations that put rows in and lease them.

use std::collections::{HashMap, VecDeque};

use celeriac_core::{Error, ErrorKind};

use super::{admin, Answer, Fetched, LeasedRow, NewRow, Tx};
use crate::schema::{DELAYED, LEASED, READY};
use crate::util::now_ms;

/// Inserts one new row, ready now or delayed until its eta.
pub(super) fn insert(tx: &mut Tx<'_>, row: &NewRow, now: i64) -> rusqlite::Result<()> {
    let seq = tx.seqs(1)?;
    insert_at(&mut tx.conn.prepare_cached(INSERT)?, seq, row, now)
}

const INSERT: &str =
    "INSERT INTO tasks (seq, id, task, queue, priority, state, not_before, payload)
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Inserts one new row with row number `seq` with the prepared [`INSERT`].
fn insert_at(
    st: &mut rusqlite::CachedStatement<'_>,
    seq: i64,
    row: &NewRow,
    now: i64,
) -> rusqlite::Result<()> {
    bind_row(st, 0, seq, row, now)?;
    st.raw_execute()?;
    Ok(())
}

/// Publishes a batch, all or nothing: a batch that would overfill a queue
/// is refused before anything is written.
pub(super) fn publish(tx: &mut Tx<'_>, rows: &[NewRow]) -> rusqlite::Result<Answer> {
    let now = now_ms();
    if let Some(max) = tx.max_queue_length {
        let mut per_queue: HashMap<&str, usize> = HashMap::new();
        for row in rows {
            *per_queue.entry(row.queue.as_str()).or_default() += 1;
        }
        for (queue, adding) in per_queue {
            let waiting = count_waiting(tx, queue, now)?;
            if waiting + adding > max {
                return Ok(Answer::Refused(Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "queue `{queue}` is full: {waiting} waiting + {adding} new is over the limit of {max} messages"
                    ),
                )));
            }
        }
    }
    // Ids revoked before they were published are remembered; such a message
    // is not queued but gets its REVOKED result at once, as a Celery worker
    // would store on receiving it.
    let any_revocations: bool = tx
        .conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM revocations)")?
        .query_row([], |r| r.get(0))?;
    // Row numbers for the whole batch at once (a revoked one leaves a gap).
    let first = tx.seqs(rows.len() as i64)?;
    let conn = tx.conn;
    let mut at = 0;
    if !any_revocations {
        // Runs of rows in one statement each: SQLite opens its cursors and
        // runs the statement's prologue once per run, not once per row.
        let mut many = conn.prepare_cached(&INSERT_MANY)?;
        while rows.len() - at >= INSERT_RUN {
            for (k, row) in rows[at..at + INSERT_RUN].iter().enumerate() {
                bind_row(
                    &mut many,
                    k * INSERT_COLUMNS,
                    first + (at + k) as i64,
                    row,
                    now,
                )?;
            }
            many.raw_execute()?;
            at += INSERT_RUN;
        }
    }
    // Prepared once for the batch: looking a statement up in the cache
    // hashes its text, which cost as much as binding the row.
    let mut st = conn.prepare_cached(INSERT)?;
    for (seq, row) in (first + at as i64..).zip(&rows[at..]) {
        if any_revocations && is_revoked(tx, &row.id)? {
            admin::store_revoked(tx, &row.id)?;
            continue;
        }
        insert_at(&mut st, seq, row, now)?;
    }
    tx.ready_changed = true;
    Ok(Answer::Done)
}

/// Rows per statement of [`INSERT_MANY`].
const INSERT_RUN: usize = 64;

/// Values bound per row by [`bind_row`].
const INSERT_COLUMNS: usize = 8;

/// The insert of [`INSERT_RUN`] rows. `OR FAIL` spares SQLite a statement
/// journal (see `lease`): the row numbers are fresh, so nothing but SQLite
/// itself can fail, and then the whole group is rolled back.
static INSERT_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let row = |r: usize| {
        let p = (1..=INSERT_COLUMNS)
            .map(|c| format!("?{}", r * INSERT_COLUMNS + c))
            .collect::<Vec<_>>()
            .join(", ");
        format!("({p})")
    };
    format!(
        "INSERT OR FAIL INTO tasks (seq, id, task, queue, priority, state, not_before, payload)
         VALUES {}",
        (0..INSERT_RUN).map(row).collect::<Vec<_>>().join(", ")
    )
});

/// Binds one row's values to the parameters after `offset`, in the order
/// of [`INSERT`].
fn bind_row(
    st: &mut rusqlite::CachedStatement<'_>,
    offset: usize,
    seq: i64,
    row: &NewRow,
    now: i64,
) -> rusqlite::Result<()> {
    let (state, not_before) = match row.eta_ms {
        Some(eta) if eta > now => (DELAYED, eta),
        _ => (READY, now),
    };
    st.raw_bind_parameter(offset + 1, seq)?;
    st.raw_bind_parameter(offset + 2, &row.id)?;
    st.raw_bind_parameter(offset + 3, &row.task)?;
    st.raw_bind_parameter(offset + 4, &row.queue)?;
    st.raw_bind_parameter(offset + 5, row.priority)?;
    st.raw_bind_parameter(offset + 6, state)?;
    st.raw_bind_parameter(offset + 7, not_before)?;
    st.raw_bind_parameter(offset + 8, &row.payload)
}

fn is_revoked(tx: &Tx<'_>, id: &str) -> rusqlite::Result<bool> {
    tx.conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM revocations WHERE id = ?1)")?
        .query_row([id], |r| r.get(0))
}

/// Counts a queue's waiting messages: ready, delayed, and leases that ended.
fn count_waiting(tx: &Tx<'_>, queue: &str, now: i64) -> rusqlite::Result<usize> {
    // Two statements, so that each is answered from one partial index.
    let ready: i64 = tx
        .conn
        .prepare_cached("SELECT COUNT(*) FROM tasks WHERE state = 0 AND queue = ?1")?
        .query_row([queue], |r| r.get(0))?;
    let pending: i64 = tx
        .conn
        .prepare_cached(
            "SELECT COUNT(*) FROM tasks
             WHERE state > 0 AND queue = ?1 AND (state = 1 OR not_before <= ?2)",
        )?
        .query_row(rusqlite::params![queue, now], |r| r.get(0))?;
    Ok(usize::try_from(ready + pending).unwrap_or(usize::MAX))
}

/// Makes a queue's due rows ready: delayed rows whose eta came, and leased
/// rows whose lease ended. A revoked row whose lease ended is deleted
/// instead, with a `REVOKED` result: it was revoked, and no one holds it
/// any more.
pub(super) fn promote(tx: &mut Tx<'_>, queue: &str, now: i64) -> rusqlite::Result<()> {
    // RETURNING is slow in SQLite (it buffers the rows), so the rare revoked
    // rows are found first and deleted one by one.
    let dropped = tx
        .conn
        .prepare_cached(
            "SELECT seq, id FROM tasks
             WHERE state > 0 AND queue = ?1 AND not_before <= ?2 AND revoked = 1",
        )?
        .query_map(rusqlite::params![queue, now], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<(i64, String)>>>()?;
    for (seq, id) in dropped {
        tx.conn
            .prepare_cached("DELETE FROM tasks WHERE seq = ?1")?
            .execute([seq])?;
        admin::store_revoked(tx, &id)?;
    }
    tx.conn
        .prepare_cached(
            "UPDATE tasks SET state = 0 WHERE state > 0 AND queue = ?1 AND not_before <= ?2",
        )?
        .execute(rusqlite::params![queue, now])?;
    Ok(())
}

/// Leases up to `max` ready rows, fairly across `queues`: the queue at
/// `start` goes first, then one row from each queue in turn.
pub(super) fn fetch(
    tx: &mut Tx<'_>,
    queues: &[String],
    start: usize,
    max: usize,
    lease_ms: i64,
) -> rusqlite::Result<Answer> {
    let now = now_ms();
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let mut candidates: Vec<VecDeque<LeasedRow>> = Vec::with_capacity(queues.len());
    for (qi, queue) in queues.iter().enumerate() {
        if queues[..qi].contains(queue) {
            candidates.push(VecDeque::new());
            continue;
        }
        promote(tx, queue, now)?;
        // `tasks_ready` holds exactly these rows in this order. The rows are
        // read here, once, rather than after the update (RETURNING is slow).
        let mut st = tx.conn.prepare_cached(
            "SELECT seq, id, deliveries, payload FROM tasks WHERE state = 0 AND queue = ?1
             ORDER BY priority DESC, seq LIMIT ?2",
        )?;
        let rows = st
            .query_map(rusqlite::params![queue, limit], |r| {
                Ok(LeasedRow {
                    seq: r.get(0)?,
                    token: 0,
                    id: r.get(1)?,
                    queue: qi,
                    deliveries: r.get(2)?,
                    payload: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<VecDeque<LeasedRow>>>()?;
        candidates.push(rows);
    }

    // Choose, round-robin from the queue at `start`.
    let n = queues.len();
    let mut rows = Vec::new();
    'rounds: loop {
        let mut took = false;
        for k in 0..n {
            if rows.len() >= max {
                break 'rounds;
            }
            if let Some(row) = candidates[(start + k) % n].pop_front() {
                rows.push(row);
                took = true;
            }
        }
        if !took {
            break;
        }
    }
    lease(tx, &mut rows, now.saturating_add(lease_ms))?;

    let next_wake_ms = if rows.is_empty() {
        next_wake(tx, queues)?
    } else {
        None
    };
    Ok(Answer::Fetched(Fetched { rows, next_wake_ms }))
}

/// Leases the chosen rows until `deadline`, each with a fresh token.
///
/// Rows usually come in runs of consecutive row numbers (one queue, FIFO),
/// and a run is leased by one statement: every row between its ends is one
/// of the chosen, since row numbers are unique.
///
/// `OR FAIL` spares SQLite a statement journal (a copy of every page the
/// statement changes, kept to undo it alone): nothing here can fail half
/// way but SQLite itself, and then the whole group is rolled back anyway.
fn lease(tx: &mut Tx<'_>, rows: &mut [LeasedRow], deadline: i64) -> rusqlite::Result<()> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&i| rows[i].seq);
    let mut at = 0;
    while at < order.len() {
        let first = rows[order[at]].seq;
        let mut len = 1;
        while at + len < order.len() && rows[order[at + len]].seq == first + len as i64 {
            len += 1;
        }
        let base = tx.tokens(len as i64)?;
        let last = first + len as i64 - 1;
        tx.conn
            .prepare_cached(
                "UPDATE OR FAIL tasks SET state = ?3, not_before = ?4, token = ?5 + (seq - ?1),
                        deliveries = deliveries + 1
                 WHERE seq BETWEEN ?1 AND ?2",
            )?
            .execute(rusqlite::params![first, last, LEASED, deadline, base])?;
        for &i in &order[at..at + len] {
            let row = &mut rows[i];
            row.token = base + (row.seq - first);
            row.deliveries += 1;
        }
        at += len;
    }
    Ok(())
}

/// Returns the earliest eta or lease deadline among the queues.
fn next_wake(tx: &Tx<'_>, queues: &[String]) -> rusqlite::Result<Option<i64>> {
    let mut st = tx.conn.prepare_cached(
        "SELECT not_before FROM tasks WHERE state > 0 AND queue = ?1
         ORDER BY not_before LIMIT 1",
    )?;
    let mut earliest: Option<i64> = None;
    for queue in queues {
        let mut found = st.query([queue])?;
        if let Some(row) = found.next()? {
            let t: i64 = row.get(0)?;
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
    }
    Ok(earliest)
}

/// Deletes a queue's waiting messages (ready and delayed), not leased ones.
pub(super) fn purge(tx: &mut Tx<'_>, queue: &str) -> rusqlite::Result<Answer> {
    promote(tx, queue, now_ms())?;
    let ready = tx
        .conn
        .prepare_cached("DELETE FROM tasks WHERE state = 0 AND queue = ?1")?
        .execute([queue])?;
    let delayed = tx
        .conn
        .prepare_cached("DELETE FROM tasks WHERE state > 0 AND queue = ?1 AND state = ?2")?
        .execute(rusqlite::params![queue, DELAYED])?;
    Ok(Answer::Count((ready + delayed) as u64))
}
