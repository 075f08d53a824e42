//! The [`ResultBackend`] implementation over [`crate::results`].
//!
//! `wait` registers a per-id notifier, then loops: create the `Notified`
//! future, check the stored result, sleep until a store of that id or the
//! timeout. A store wakes only the waiters of its own id.

use std::future::Future;
use std::time::Duration;

use celeriac_core::{Error, ResultBackend, TaskId, TaskResult};
use tokio::time::Instant;

use crate::store::add;
use crate::{MemoryBroker, Shared};

impl ResultBackend for MemoryBroker {
    async fn store(&self, result: TaskResult) -> Result<(), Error> {
        let waiter = self.shared.results().insert(result, Instant::now());
        if let Some(n) = waiter {
            n.notify_waiters();
        }
        Ok(())
    }

    fn get(&self, id: &TaskId) -> impl Future<Output = Result<Option<TaskResult>, Error>> + Send {
        let id = id.clone();
        async move { Ok(self.shared.results().get(&id, Instant::now())) }
    }

    /// Waits until the result is in a ready state or `timeout` passes,
    /// returning the latest result either way. Needs a Tokio runtime with
    /// timers when it has to wait.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    fn wait(
        &self,
        id: &TaskId,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<TaskResult>, Error>> + Send {
        let id = id.clone();
        async move { Ok(wait(&self.shared, id, timeout).await) }
    }

    fn forget(&self, id: &TaskId) -> impl Future<Output = Result<(), Error>> + Send {
        let id = id.clone();
        async move {
            self.shared.results().remove(&id);
            Ok(())
        }
    }
}

/// A registered result waiter; unregistered on drop (also on cancel).
struct Waiter<'a> {
    shared: &'a Shared,
    id: TaskId,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.shared.results().unregister(&self.id);
    }
}

async fn wait(shared: &Shared, id: TaskId, timeout: Duration) -> Option<TaskResult> {
    let start = Instant::now();
    let current = shared.results().get(&id, start);
    if timeout.is_zero() || current.as_ref().is_some_and(|r| r.status.is_ready()) {
        return current;
    }
    let until = add(start, timeout);
    let notify = shared.results().register(&id);
    let waiter = Waiter { shared, id };
    loop {
        // Created before the check, so a store after the check wakes it.
        let notified = notify.notified();
        tokio::pin!(notified);
        let now = Instant::now();
        let current = shared.results().get(&waiter.id, now);
        if now >= until || current.as_ref().is_some_and(|r| r.status.is_ready()) {
            return current;
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}
