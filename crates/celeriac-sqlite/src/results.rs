//! The [`ResultBackend`] implementation: writes through the writer (so a
//! result can share a transaction with an acknowledgement), reads on the
//! read pool, and waits on the results `Notify`.

use std::pin::pin;
use std::time::Duration;

use celeriac_core::{Error, ResultBackend, TaskId, TaskResult};
use tokio::time::Instant;

use crate::broker::result_row;
use crate::handle::{expect_done, SqliteBroker};
use crate::reader;
use crate::writer::Op;

/// How long a result wait goes without looking again if nothing announced
/// a change (a safety net; stores are announced).
const WAIT_RECHECK: Duration = Duration::from_secs(1);

impl ResultBackend for SqliteBroker {
    async fn store(&self, result: TaskResult) -> Result<(), Error> {
        let row = result_row(&result)?;
        expect_done(self.call(Op::StoreResult(row)).await?)
    }

    async fn get(&self, id: &TaskId) -> Result<Option<TaskResult>, Error> {
        let id = id.as_str().to_owned();
        self.inner
            .readers
            .run(move |conn| reader::get_result(conn, &id))
            .await
    }

    /// Waits until the result is ready or `timeout` passes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<Option<TaskResult>, Error> {
        let deadline = crate::util::deadline(timeout);
        loop {
            // Register before reading, so a store in between is not missed.
            let mut stored = pin!(self.inner.shared.results.notified());
            stored.as_mut().enable();
            let result = self.get(id).await?;
            let now = Instant::now();
            if result.as_ref().is_some_and(|r| r.status.is_ready()) || now >= deadline {
                return Ok(result);
            }
            tokio::select! {
                () = stored => {}
                () = tokio::time::sleep_until(deadline.min(now + WAIT_RECHECK)) => {}
            }
        }
    }

    async fn forget(&self, id: &TaskId) -> Result<(), Error> {
        expect_done(self.call(Op::Forget(id.as_str().to_owned())).await?)
    }
}
