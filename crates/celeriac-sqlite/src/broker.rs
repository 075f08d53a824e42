//! The [`Broker`] implementation: encoding and decoding off the writer
//! thread, and the waiting loop of `fetch`.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::broker::check_payload;
use celeriac_core::{
    codec, Broker, Capabilities, DeadLetter, Delivery, Error, ErrorKind, FetchRequest, Lease,
    LeaseStatus, Message, QueueStats, Revoked, Settlement, TaskId, TaskResult,
};
use tokio::time::Instant;

use crate::handle::{expect_done, unexpected, SqliteBroker};
use crate::reader;
use crate::util::{duration_ms, instant_ms, now_ms};
use crate::writer::{Answer, Fetched, LeasedRow, NewRow, Op, ResultRow, SettleOp};

/// Batches larger than this are encoded or decoded on the blocking pool,
/// so a tokio worker thread is never held for more than a fraction of a
/// millisecond.
const INLINE_CODEC_LIMIT: usize = 32;

/// How long a waiting fetch goes without looking again, even if nothing
/// announced a change: covers leases taken (and left to expire) by other
/// fetchers while this one waited, which are not announced.
const FETCH_RECHECK: Duration = Duration::from_secs(1);

impl Broker for SqliteBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn publish(&self, messages: Vec<Message>) -> Result<(), Error> {
        self.publish_checked(messages, usize::MAX).await
    }

    /// Publishes, checking the size of each message as it is encoded: each
    /// message is encoded once.
    async fn publish_checked(&self, messages: Vec<Message>, max_bytes: usize) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let rows = if messages.len() > INLINE_CODEC_LIMIT {
            encode_in_parallel(messages, max_bytes).await?
        } else {
            encode_rows(&messages, max_bytes)?
        };
        expect_done(self.call(Op::Publish(rows)).await?)
    }

    /// Leases up to `req.max` ready messages, waiting up to `req.wait`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future while it waits leases nothing.
    /// Dropping it after the writer took leases (the commit is under way)
    /// loses no message: those leases are held by no one and simply expire
    /// after `req.lease`, when the messages are delivered again.
    async fn fetch(&self, req: &FetchRequest) -> Result<Vec<Delivery>, Error> {
        if req.queues.is_empty() || req.max == 0 {
            return Ok(Vec::new());
        }
        let deadline = crate::util::deadline(req.wait);
        let start = self.inner.rotation.fetch_add(1, Ordering::Relaxed) % req.queues.len();
        loop {
            // Register for wake-ups before looking, so that a publish
            // committed between the look and the wait is not missed.
            let mut announced = pin!(self.inner.shared.ready.notified());
            announced.as_mut().enable();
            let answer = self
                .call(Op::Fetch {
                    queues: Arc::clone(&req.queues),
                    start,
                    max: req.max,
                    lease_ms: duration_ms(req.lease),
                })
                .await?;
            let Answer::Fetched(Fetched { rows, next_wake_ms }) = answer else {
                return Err(unexpected(answer));
            };
            if !rows.is_empty() {
                return decode_rows(rows, &req.queues).await;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake = deadline.min(now + FETCH_RECHECK);
            if let Some(at) = next_wake_ms {
                let after = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                wake = wake.min(now + Duration::from_millis(after));
            }
            tokio::select! {
                () = announced => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn settle(&self, lease: &Lease, settlement: Settlement) -> Result<(), Error> {
        let op = settle_op(&settlement)?;
        let answer = self
            .call(Op::Settle {
                seq: receipt(lease),
                token: token(lease),
                op,
            })
            .await?;
        settled(lease, answer)
    }

    /// Settles every attempt in one command to the writer, so they share a
    /// transaction and a flush (and the caller one round trip).
    async fn settle_many(&self, settles: &[(Lease, Settlement)]) -> Vec<Result<(), Error>> {
        let mut out: Vec<Result<(), Error>> = Vec::with_capacity(settles.len());
        let mut ops = Vec::with_capacity(settles.len());
        for (lease, settlement) in settles {
            match settle_op(settlement) {
                Ok(op) => {
                    ops.push((receipt(lease), token(lease), op));
                    out.push(Ok(()));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if ops.is_empty() {
            return out;
        }
        let answers = match self.call(Op::SettleMany(ops)).await {
            Ok(Answer::Settled(answers)) => answers,
            Ok(other) => {
                let e = unexpected(other);
                return fill(out, || Error::new(e.kind(), e.to_string()));
            }
            Err(e) => return fill(out, || Error::new(e.kind(), e.chain_text())),
        };
        // One answer per settlement that became an operation, in order.
        let mut answers = answers.into_iter();
        for ((lease, _), slot) in settles.iter().zip(out.iter_mut()) {
            if slot.is_ok() {
                *slot = match answers.next() {
                    Some(answer) => settled(lease, answer),
                    None => Err(unexpected(Answer::Done)),
                };
            }
        }
        out
    }

    async fn extend(&self, leases: &[Lease], by: Duration) -> Result<Vec<LeaseStatus>, Error> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let leases = leases.iter().map(|l| (receipt(l), token(l))).collect();
        match self
            .call(Op::Extend {
                leases,
                by_ms: duration_ms(by),
            })
            .await?
        {
            Answer::Statuses(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    async fn revoke(&self, id: &TaskId) -> Result<Revoked, Error> {
        // Task ids have no index (see the schema docs): find the rows with a
        // scan on a read connection, so the writer is not held.
        let scan_id = id.as_str().to_owned();
        let (found, scanned_below) = self
            .inner
            .readers
            .run(move |conn| reader::rows_with_id(conn, &scan_id))
            .await?;
        let op = Op::Revoke {
            id: id.as_str().to_owned(),
            found,
            scanned_below,
        };
        match self.call(op).await? {
            Answer::Revoked(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        self.inner.readers.run(reader::queue_stats).await
    }

    async fn purge(&self, queue: &str) -> Result<u64, Error> {
        count(self.call(Op::Purge(queue.to_owned())).await?)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.inner
            .readers
            .run(move |conn| reader::dead_letters(conn, limit))
            .await
    }

    async fn replay_dead_letters(&self, ids: Option<&[TaskId]>) -> Result<u64, Error> {
        let ids = ids.map(|ids| ids.iter().map(|i| i.as_str().to_owned()).collect());
        count(self.call(Op::ReplayDeadLetters(ids)).await?)
    }

    async fn purge_dead_letters(&self) -> Result<u64, Error> {
        count(self.call(Op::PurgeDeadLetters).await?)
    }
}

/// Returns the writer's form of a settlement, its message and result encoded.
fn settle_op(settlement: &Settlement) -> Result<SettleOp, Error> {
    let row = |r: &Option<TaskResult>| r.as_ref().map(result_row).transpose();
    Ok(match settlement {
        Settlement::Ack { result } => SettleOp::Ack(row(result)?),
        Settlement::Retry { message, result } => {
            SettleOp::Retry(encode_row(message)?, row(result)?)
        }
        Settlement::Release => SettleOp::Release,
        Settlement::DeadLetter { reason, result } => {
            SettleOp::DeadLetter(reason.clone(), row(result)?)
        }
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("unknown settlement {other:?}"),
            ))
        }
    })
}

/// Returns the outcome of one settlement from the writer's answer.
fn settled(lease: &Lease, answer: Answer) -> Result<(), Error> {
    match answer {
        Answer::Done => Ok(()),
        Answer::LeaseLost => Err(lease_lost(lease)),
        other => Err(unexpected(other)),
    }
}

/// Gives every settlement not already failed the error `e` made.
fn fill(out: Vec<Result<(), Error>>, e: impl Fn() -> Error) -> Vec<Result<(), Error>> {
    out.into_iter().map(|r| r.and_then(|()| Err(e()))).collect()
}

fn count(answer: Answer) -> Result<u64, Error> {
    match answer {
        Answer::Count(n) => Ok(n),
        other => Err(unexpected(other)),
    }
}

// Tokens and receipts are positive SQLite integers, so the casts are exact.
fn receipt(lease: &Lease) -> i64 {
    lease.receipt as i64
}

fn token(lease: &Lease) -> i64 {
    lease.token as i64
}

fn lease_lost(lease: &Lease) -> Error {
    Error::new(
        ErrorKind::LeaseLost,
        format!(
            "the lease on task {} (token {}) is no longer held",
            lease.id, lease.token
        ),
    )
}

/// Returns a message as the writer stores it.
fn encode_row(message: &Message) -> Result<NewRow, Error> {
    Ok(NewRow {
        id: message.id().as_str().to_owned(),
        task: message.headers.task.clone(),
        queue: message.queue().to_owned(),
        priority: i64::from(message.priority()),
        eta_ms: message.headers.eta.map(instant_ms),
        payload: codec::encode(message)?,
    })
}

/// Encodes messages for the writer, refusing the batch if one of them is
/// over `max_bytes`.
fn encode_rows(messages: &[Message], max_bytes: usize) -> Result<Vec<NewRow>, Error> {
    messages
        .iter()
        .map(|m| {
            let row = encode_row(m)?;
            check_payload(m, row.payload.len(), max_bytes)?;
            Ok(row)
        })
        .collect()
}

/// Encodes a large batch on the blocking pool, in as many pieces as there
/// are cores (pieces of at least [`PARALLEL_ENCODE_PIECE`] messages): the
/// caller waits for the encoding, the writer and the flush in turn, so
/// encoding is a good part of a batch's time.
async fn encode_in_parallel(
    mut messages: Vec<Message>,
    max_bytes: usize,
) -> Result<Vec<NewRow>, Error> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pieces = (messages.len() / PARALLEL_ENCODE_PIECE).clamp(1, cores);
    let per_piece = messages.len().div_ceil(pieces);
    let mut encoders = Vec::with_capacity(pieces);
    while !messages.is_empty() {
        let rest = messages.split_off(per_piece.min(messages.len()));
        let piece = std::mem::replace(&mut messages, rest);
        encoders.push(tokio::task::spawn_blocking(move || {
            encode_rows(&piece, max_bytes)
        }));
    }
    let mut rows = Vec::new();
    // In order, so the first message at fault is the one reported.
    for encoder in encoders {
        let piece = encoder
            .await
            .map_err(|e| Error::with_source(ErrorKind::Other, "encoding failed", e))??;
        if rows.is_empty() {
            rows = piece;
        } else {
            rows.extend(piece);
        }
    }
    Ok(rows)
}

/// The fewest messages one blocking task encodes in a parallel encoding.
const PARALLEL_ENCODE_PIECE: usize = 128;

/// Returns a result as the writer stores it.
pub(crate) fn result_row(result: &TaskResult) -> Result<ResultRow, Error> {
    let json = serde_json::to_string(result)
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot encode a result", e))?;
    Ok(ResultRow {
        id: result.task_id.as_str().to_owned(),
        json,
    })
}

async fn decode_rows(rows: Vec<LeasedRow>, queues: &Arc<[String]>) -> Result<Vec<Delivery>, Error> {
    if rows.len() <= INLINE_CODEC_LIMIT {
        return Ok(deliveries(rows, queues));
    }
    let queues = Arc::clone(queues);
    tokio::task::spawn_blocking(move || deliveries(rows, &queues))
        .await
        .map_err(|e| Error::with_source(ErrorKind::Other, "decoding failed", e))
}

/// Decodes leased rows; a row that does not decode is still delivered,
/// with its error, so the worker can dead-letter it.
fn deliveries(rows: Vec<LeasedRow>, queues: &[String]) -> Vec<Delivery> {
    let names: Vec<Arc<str>> = queues.iter().map(|q| Arc::from(q.as_str())).collect();
    rows.into_iter()
        .map(|row| Delivery {
            message: codec::decode(&row.payload).map(Arc::new),
            lease: Lease {
                id: TaskId::from(row.id),
                queue: Arc::clone(&names[row.queue]),
                token: row.token as u64,
                receipt: row.seq as u64,
            },
            deliveries: u32::try_from(row.deliveries).unwrap_or(u32::MAX),
        })
        .collect()
}
