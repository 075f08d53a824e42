//! Dead-letter replay and purge, results, and the periodic expiry sweep.

use celeriac_core::{TaskId, TaskResult};

use super::{Answer, ResultRow, Tx};
use crate::util::now_ms;

/// Stores (or replaces) a result with the configured expiry.
pub(crate) fn store_result(tx: &mut Tx<'_>, row: &ResultRow) -> rusqlite::Result<()> {
    let expires_at = now_ms().saturating_add(tx.result_expiry_ms);
    tx.conn
        .prepare_cached(
            "INSERT INTO results (id, json, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET json = excluded.json, expires_at = excluded.expires_at",
        )?
        .execute(rusqlite::params![row.id, row.json, expires_at])?;
    tx.results_changed = true;
    Ok(())
}

/// Stores a `REVOKED` result for a task the broker dropped because it was
/// revoked, so that whoever waits for it learns its fate.
pub(crate) fn store_revoked(tx: &mut Tx<'_>, id: &str) -> rusqlite::Result<()> {
    let result = TaskResult::revoked(TaskId::from(id), "revoked");
    match serde_json::to_string(&result) {
        Ok(json) => store_result(
            tx,
            &ResultRow {
                id: id.to_owned(),
                json,
            },
        ),
        // A result built here always serializes; if it did not, the task
        // is still dropped, only without a result.
        Err(_) => Ok(()),
    }
}

/// Deletes a stored result.
pub(super) fn forget(tx: &mut Tx<'_>, id: &str) -> rusqlite::Result<Answer> {
    tx.conn
        .prepare_cached("DELETE FROM results WHERE id = ?1")?
        .execute([id])?;
    Ok(Answer::Done)
}

/// Puts dead letters back on their queues, ready now, oldest first.
pub(super) fn replay_dead_letters(
    tx: &mut Tx<'_>,
    ids: Option<&[String]>,
) -> rusqlite::Result<Answer> {
    let now = now_ms();
    // Which dead letters go back, oldest first.
    let chosen: Vec<i64> = match ids {
        None => tx
            .conn
            .prepare_cached("SELECT seq FROM dead_letters ORDER BY seq")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?,
        Some(ids) => {
            let mut chosen = Vec::new();
            for id in ids {
                let mut st = tx
                    .conn
                    .prepare_cached("SELECT seq FROM dead_letters WHERE id = ?1")?;
                for seq in st.query_map([id], |r| r.get::<_, i64>(0))? {
                    chosen.push(seq?);
                }
            }
            chosen.sort_unstable();
            chosen
        }
    };
    let count = chosen.len() as u64;
    for dead in chosen {
        let seq = tx.seqs(1)?;
        tx.conn
            .prepare_cached(
                "INSERT INTO tasks (seq, id, task, queue, priority, state, not_before, payload)
                 SELECT ?1, id, task, queue, priority, 0, ?2, raw FROM dead_letters WHERE seq = ?3",
            )?
            .execute(rusqlite::params![seq, now, dead])?;
        tx.conn
            .prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?
            .execute([dead])?;
    }
    if count > 0 {
        tx.ready_changed = true;
    }
    Ok(Answer::Count(count))
}

/// Deletes every dead letter.
pub(super) fn purge_dead_letters(tx: &mut Tx<'_>) -> rusqlite::Result<Answer> {
    let n = tx
        .conn
        .prepare_cached("DELETE FROM dead_letters")?
        .execute([])?;
    Ok(Answer::Count(n as u64))
}

/// Deletes expired results and revocations older than the result expiry.
pub(super) fn sweep(tx: &mut Tx<'_>) -> rusqlite::Result<()> {
    let now = now_ms();
    let results = tx
        .conn
        .prepare_cached("DELETE FROM results WHERE expires_at <= ?1")?
        .execute([now])?;
    tx.conn
        .prepare_cached("DELETE FROM revocations WHERE at <= ?1")?
        .execute([now.saturating_sub(tx.result_expiry_ms)])?;
    if results > 0 {
        tracing::debug!(results, "deleted expired results");
    }
    Ok(())
}
