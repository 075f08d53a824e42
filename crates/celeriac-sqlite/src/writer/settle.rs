//! Settle, extend and revoke: the operations on a leased (or waiting) row.
//!
//! Every statement on a leased row is qualified by `seq = ? AND token = ?`,
//! so an attempt whose lease was taken over (a new token) changes nothing:
//! that is the fencing.

use celeriac_core::{LeaseStatus, Revoked};

use super::{admin, queue, Answer, SettleOp, Tx};
use crate::schema::{LEASED, READY};
use crate::util::now_ms;

/// Ends an attempt, with its result, in this one transaction.
pub(super) fn settle(
    tx: &mut Tx<'_>,
    seq: i64,
    token: i64,
    op: &SettleOp,
) -> rusqlite::Result<Answer> {
    let now = now_ms();
    let held = |tx: &Tx<'_>| -> rusqlite::Result<Option<bool>> {
        let mut st = tx
            .conn
            .prepare_cached("SELECT revoked FROM tasks WHERE seq = ?1 AND token = ?2")?;
        let mut rows = st.query([seq, token])?;
        match rows.next()? {
            Some(row) => Ok(Some(row.get::<_, i64>(0)? != 0)),
            None => Ok(None),
        }
    };
    match op {
        SettleOp::Ack(result) => {
            let deleted = tx
                .conn
                .prepare_cached("DELETE FROM tasks WHERE seq = ?1 AND token = ?2")?
                .execute([seq, token])?;
            if deleted == 0 {
                return Ok(Answer::LeaseLost);
            }
            if let Some(result) = result {
                admin::store_result(tx, result)?;
            }
        }
        SettleOp::Retry(next, result) => {
            let Some(revoked) = held(tx)? else {
                return Ok(Answer::LeaseLost);
            };
            delete(tx, seq)?;
            if revoked {
                // A task revoked while it ran must not come back by
                // retrying; its final state is REVOKED, not RETRY.
                admin::store_revoked(tx, &next.id)?;
            } else {
                queue::insert(tx, next, now)?;
                tx.ready_changed = true;
                if let Some(result) = result {
                    admin::store_result(tx, result)?;
                }
            }
        }
        SettleOp::Release => {
            // The attempt is over: its token no longer holds the message.
            let updated = tx
                .conn
                .prepare_cached(
                    "UPDATE tasks SET state = ?3, not_before = ?4, token = 0
                     WHERE seq = ?1 AND token = ?2",
                )?
                .execute(rusqlite::params![seq, token, READY, now])?;
            if updated == 0 {
                return Ok(Answer::LeaseLost);
            }
            tx.ready_changed = true;
        }
        SettleOp::DeadLetter(reason, result) => {
            let moved = tx
                .conn
                .prepare_cached(
                    "INSERT INTO dead_letters (id, task, queue, priority, reason, at, raw)
                     SELECT id, task, queue, priority, ?3, ?4, payload FROM tasks
                     WHERE seq = ?1 AND token = ?2",
                )?
                .execute(rusqlite::params![seq, token, reason, now])?;
            if moved == 0 {
                return Ok(Answer::LeaseLost);
            }
            delete(tx, seq)?;
            if let Some(result) = result {
                admin::store_result(tx, result)?;
            }
        }
    }
    Ok(Answer::Done)
}

/// Ends many attempts, each answered alone (`Done` or `LeaseLost`).
pub(super) fn settle_many(
    tx: &mut Tx<'_>,
    settles: &[(i64, i64, SettleOp)],
) -> rusqlite::Result<Answer> {
    // Plain acks, the bulk of a busy worker's settlements, share one
    // prepared statement: a cache lookup hashes the statement's text.
    let conn = tx.conn;
    let mut ack = conn.prepare_cached("DELETE FROM tasks WHERE seq = ?1 AND token = ?2")?;
    let mut answers = Vec::with_capacity(settles.len());
    for (seq, token, op) in settles {
        let answer = match op {
            SettleOp::Ack(None) => match ack.execute([seq, token])? {
                0 => Answer::LeaseLost,
                _ => Answer::Done,
            },
            op => settle(tx, *seq, *token, op)?,
        };
        answers.push(answer);
    }
    Ok(Answer::Settled(answers))
}

fn delete(tx: &Tx<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.conn
        .prepare_cached("DELETE FROM tasks WHERE seq = ?1")?
        .execute([seq])?;
    Ok(())
}

/// Extends each lease still held by its token, reporting each one.
pub(super) fn extend(
    tx: &mut Tx<'_>,
    leases: &[(i64, i64)],
    by_ms: i64,
) -> rusqlite::Result<Answer> {
    let deadline = now_ms().saturating_add(by_ms);
    let mut statuses = Vec::with_capacity(leases.len());
    for &(seq, token) in leases {
        let extended = tx
            .conn
            .prepare_cached(
                "UPDATE tasks SET state = ?3, not_before = ?4 WHERE seq = ?1 AND token = ?2",
            )?
            .execute(rusqlite::params![seq, token, LEASED, deadline])?;
        let status = if extended == 0 {
            LeaseStatus::Lost
        } else {
            let revoked: i64 = tx
                .conn
                .prepare_cached("SELECT revoked FROM tasks WHERE seq = ?1")?
                .query_row([seq], |r| r.get(0))?;
            if revoked != 0 {
                LeaseStatus::Revoked
            } else {
                LeaseStatus::Held
            }
        };
        statuses.push(status);
    }
    Ok(Answer::Statuses(statuses))
}

/// Revokes a task: flags its running rows, deletes its waiting ones, or
/// remembers the id for a message not seen yet.
///
/// `found` are the rows a scan on a read connection found with this id,
/// and `scanned_below` the first row number that scan could not see. Each
/// found row is looked at again here, by row number, as it is now (it may
/// have been leased, settled or its lease may have ended since); rows
/// published since the scan are checked by row number too, so nothing
/// slips between the scan and this transaction.
pub(super) fn revoke(
    tx: &mut Tx<'_>,
    id: &str,
    found: &[i64],
    scanned_below: i64,
) -> rusqlite::Result<Answer> {
    let now = now_ms();
    let mut flagged = 0;
    let mut removed = 0;
    // Running: a live lease, flagged so its worker learns. Anything else
    // (waiting, delayed, or a lease that ended) is waiting, and goes.
    for &seq in found {
        flagged += tx
            .conn
            .prepare_cached(
                "UPDATE tasks SET revoked = 1
                 WHERE seq = ?1 AND id = ?2 AND state = ?3 AND not_before > ?4",
            )?
            .execute(rusqlite::params![seq, id, LEASED, now])?;
        removed += tx
            .conn
            .prepare_cached(
                "DELETE FROM tasks
                 WHERE seq = ?1 AND id = ?2 AND NOT (state = ?3 AND not_before > ?4)",
            )?
            .execute(rusqlite::params![seq, id, LEASED, now])?;
    }
    flagged += tx
        .conn
        .prepare_cached(
            "UPDATE tasks SET revoked = 1
             WHERE seq >= ?1 AND id = ?2 AND state = ?3 AND not_before > ?4",
        )?
        .execute(rusqlite::params![scanned_below, id, LEASED, now])?;
    removed += tx
        .conn
        .prepare_cached(
            "DELETE FROM tasks
             WHERE seq >= ?1 AND id = ?2 AND NOT (state = ?3 AND not_before > ?4)",
        )?
        .execute(rusqlite::params![scanned_below, id, LEASED, now])?;
    // As in the memory broker, a running attempt wins: its worker must learn.
    if flagged > 0 {
        return Ok(Answer::Revoked(Revoked::Running));
    }
    if removed > 0 {
        return Ok(Answer::Revoked(Revoked::Removed));
    }
    tx.conn
        .prepare_cached("INSERT OR REPLACE INTO revocations (id, at) VALUES (?1, ?2)")?
        .execute(rusqlite::params![id, now])?;
    Ok(Answer::Revoked(Revoked::Unknown))
}
