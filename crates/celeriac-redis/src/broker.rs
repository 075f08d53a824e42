//! The [`Broker`] and [`ResultBackend`] implementations, delegating to the
//! modules that do the work.

use std::time::Duration;

use celeriac_core::{
    Broker, Capabilities, DeadLetter, Delivery, Error, FetchRequest, Lease, LeaseStatus, Message,
    PriorityOrder, QueueStats, ResultBackend, Revoked, Settlement, TaskId, TaskResult,
};

use crate::{admin, fetch, publish, settle, RedisBroker};

impl Broker for RedisBroker {
    /// Everything, with kombu's priority order: 0 first, by steps.
    ///
    /// `durable` holds in the sense that all state lives in Redis, not in
    /// the process: a new handle (or process) finds every message, lease,
    /// delay, result and dead letter. Surviving a restart of the Redis
    /// server itself needs Redis persistence (AOF, or RDB snapshots)
    /// configured on the server.
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::all();
        c.priority_order = PriorityOrder::lowest_first(&self.inner.keys.steps);
        c
    }

    /// Publishes a batch in one script call (all or none; batches over
    /// 20,000 messages go in several calls, each all or none).
    async fn publish(&self, messages: Vec<Message>) -> Result<(), Error> {
        publish::publish(&self.inner, messages).await
    }

    /// Leases up to `req.max` messages, waiting up to `req.wait` for one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a fetch dropped while it waits leases nothing; one
    /// dropped after its claim was sent leaves leases nobody holds, which
    /// end after `req.lease` (the messages are then delivered again).
    async fn fetch(&self, req: &FetchRequest) -> Result<Vec<Delivery>, Error> {
        fetch::fetch(&self.inner, req).await
    }

    async fn settle(&self, lease: &Lease, settlement: Settlement) -> Result<(), Error> {
        settle::settle(&self.inner, lease, settlement).await
    }

    /// Settles the whole batch with one script call (per 512), each
    /// settlement fenced by its own token as [`Broker::settle`] does.
    async fn settle_many(&self, settles: &[(Lease, Settlement)]) -> Vec<Result<(), Error>> {
        settle::settle_batch(&self.inner, settles).await
    }

    async fn extend(&self, leases: &[Lease], by: Duration) -> Result<Vec<LeaseStatus>, Error> {
        settle::extend(&self.inner, leases, by).await
    }

    /// Revokes a task: waiting copies are removed from every known queue
    /// (a scan); a running one is reported to its worker at the next
    /// `extend`; a running or unknown id is remembered for three hours
    /// (at most 50,000 ids), and a message with it is discarded on arrival
    /// with a `REVOKED` result.
    async fn revoke(&self, id: &TaskId) -> Result<Revoked, Error> {
        admin::revoke(&self.inner, id).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        admin::queue_stats(&self.inner).await
    }

    async fn purge(&self, queue: &str) -> Result<u64, Error> {
        admin::purge(&self.inner, queue).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        admin::dead_letters(&self.inner, limit).await
    }

    async fn replay_dead_letters(&self, ids: Option<&[TaskId]>) -> Result<u64, Error> {
        admin::replay(&self.inner, ids).await
    }

    async fn purge_dead_letters(&self) -> Result<u64, Error> {
        admin::purge_dead_letters(&self.inner).await
    }
}

impl ResultBackend for RedisBroker {
    async fn store(&self, result: TaskResult) -> Result<(), Error> {
        self.inner.results.store(&result).await.map(|_| ())
    }

    async fn get(&self, id: &TaskId) -> Result<Option<TaskResult>, Error> {
        self.inner.results.get(id).await
    }

    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<Option<TaskResult>, Error> {
        self.inner.results.wait(id, timeout).await
    }

    async fn forget(&self, id: &TaskId) -> Result<(), Error> {
        self.inner.results.forget(id).await
    }
}
