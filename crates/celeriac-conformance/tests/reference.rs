//! Runs the suite against a deliberately simple reference broker, so the
//! suite itself (and the `suite!` expansion) is checked without a real
//! backend. The reference favours obviousness over speed: one mutex, one
//! `Notify` woken on every change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac_conformance::{Fixture, FixtureOptions};
use celeriac_core::{
    codec, Broker, Capabilities, DeadLetter, Delivery, Error, ErrorKind, FetchRequest, Lease,
    LeaseStatus, Message, QueueStats, ResultBackend, Revoked, Settlement, TaskId, TaskResult,
};
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

struct Entry {
    msg: Message,
    id: TaskId,
    queue: String,
    seq: u64,
    priority: u8,
    eta: Option<DateTime<Utc>>,
    token: Option<u64>,
    leased_until: Option<Instant>,
    deliveries: u32,
    revoked: bool,
}

impl Entry {
    fn leased(&self, now: Instant) -> bool {
        self.leased_until.is_some_and(|u| u > now)
    }
    fn ready(&self, now: Instant, wall: DateTime<Utc>) -> bool {
        !self.leased(now) && self.eta.is_none_or(|e| e <= wall)
    }
}

#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    next_seq: u64,
    next_token: u64,
    rotation: usize,
    dead: Vec<DeadLetter>,
    results: HashMap<TaskId, (TaskResult, Instant)>,
    revoked: HashSet<TaskId>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Clone)]
struct RefBroker {
    shared: Arc<Shared>,
    max_len: Option<usize>,
    expiry: Duration,
}

impl RefBroker {
    fn new(opts: FixtureOptions) -> Self {
        RefBroker {
            shared: Arc::default(),
            max_len: opts.max_queue_length,
            expiry: opts.result_expiry.unwrap_or(Duration::from_secs(3600)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(st: &mut State, msg: Message) {
        let seq = st.next_seq;
        st.next_seq += 1;
        st.entries.insert(
            seq,
            Entry {
                id: msg.id().clone(),
                queue: msg.queue().to_owned(),
                priority: msg.priority(),
                eta: msg.headers.eta,
                msg,
                seq,
                token: None,
                leased_until: None,
                deliveries: 0,
                revoked: false,
            },
        );
    }

    fn take_one(st: &mut State, queue: &str, lease: Duration) -> Option<Delivery> {
        let now = Instant::now();
        let wall = Utc::now();
        let seq = st
            .entries
            .values()
            .filter(|e| e.queue == queue && e.ready(now, wall))
            .min_by_key(|e| (std::cmp::Reverse(e.priority), e.seq))?
            .seq;
        st.next_token += 1;
        let token = st.next_token;
        let e = st.entries.get_mut(&seq)?;
        e.token = Some(token);
        e.leased_until = Some(now + lease);
        e.deliveries += 1;
        Some(Delivery {
            message: Ok(std::sync::Arc::new(e.msg.clone())),
            lease: Lease {
                id: e.id.clone(),
                queue: Arc::from(queue),
                token,
                receipt: seq,
            },
            deliveries: e.deliveries,
        })
    }

    fn take(st: &mut State, req: &FetchRequest) -> Vec<Delivery> {
        let n = req.queues.len();
        let mut out = Vec::new();
        if n == 0 {
            return out;
        }
        let start = st.rotation % n;
        st.rotation += 1;
        let mut dry = vec![false; n];
        let mut i = 0;
        while out.len() < req.max && dry.iter().any(|d| !d) {
            let k = (start + i) % n;
            i += 1;
            if dry[k] {
                continue;
            }
            match Self::take_one(st, &req.queues[k], req.lease) {
                Some(d) => out.push(d),
                None => dry[k] = true,
            }
        }
        out
    }

    /// The next instant something in `queues` may become ready.
    fn next_due(st: &State, queues: &[String]) -> Option<Instant> {
        let now = Instant::now();
        let wall = Utc::now();
        st.entries
            .values()
            .filter(|e| queues.contains(&e.queue))
            .filter_map(|e| {
                let lease = e.leased_until.filter(|u| *u > now);
                let eta = e
                    .eta
                    .filter(|t| *t > wall)
                    .map(|t| now + (t - wall).to_std().unwrap_or_default());
                match (lease, eta) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    fn owned<'a>(st: &'a mut State, lease: &Lease) -> Option<&'a mut Entry> {
        st.entries
            .get_mut(&lease.receipt)
            .filter(|e| e.id == lease.id && e.token == Some(lease.token))
    }
}

impl Broker for RefBroker {
    fn capabilities(&self) -> Capabilities {
        // The store outlives every handle, as a file would, so the
        // durability cases run against the reference too.
        Capabilities::all()
    }

    async fn publish(&self, messages: Vec<Message>) -> Result<(), Error> {
        let mut st = self.lock();
        if let Some(max) = self.max_len {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for e in st.entries.values() {
                *counts.entry(e.queue.as_str()).or_default() += 1;
            }
            let mut adding: HashMap<&str, usize> = HashMap::new();
            for m in &messages {
                *adding.entry(m.queue()).or_default() += 1;
            }
            for (q, n) in adding {
                if counts.get(q).copied().unwrap_or(0) + n > max {
                    return Err(Error::new(ErrorKind::QueueFull, "queue is full"));
                }
            }
        }
        for m in messages {
            // An id revoked before it was published never runs.
            if !st.revoked.contains(m.id()) {
                Self::insert(&mut st, m);
            }
        }
        drop(st);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn fetch(&self, req: &FetchRequest) -> Result<Vec<Delivery>, Error> {
        let deadline = Instant::now() + req.wait;
        loop {
            let mut notified = pin!(self.shared.changed.notified());
            notified.as_mut().enable();
            let due = {
                let mut st = self.lock();
                let got = Self::take(&mut st, req);
                if !got.is_empty() || Instant::now() >= deadline {
                    return Ok(got);
                }
                Self::next_due(&st, &req.queues)
            };
            let until = due.map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn settle(&self, lease: &Lease, settlement: Settlement) -> Result<(), Error> {
        let mut st = self.lock();
        let lost = || Error::new(ErrorKind::LeaseLost, "lease lost");
        Self::owned(&mut st, lease).ok_or_else(lost)?;
        let result = match settlement {
            Settlement::Ack { result } => {
                st.entries.remove(&lease.receipt);
                result
            }
            Settlement::Retry { message, result } => {
                let e = st.entries.remove(&lease.receipt).ok_or_else(lost)?;
                let deliveries = e.deliveries;
                Self::insert(&mut st, *message);
                let seq = st.next_seq - 1;
                if let Some(n) = st.entries.get_mut(&seq) {
                    n.deliveries = deliveries;
                }
                result
            }
            Settlement::Release => {
                let e = Self::owned(&mut st, lease).ok_or_else(lost)?;
                e.token = None;
                e.leased_until = None;
                None
            }
            Settlement::DeadLetter { reason, result } => {
                let e = st.entries.remove(&lease.receipt).ok_or_else(lost)?;
                st.dead.push(DeadLetter {
                    id: e.id.clone(),
                    task: e.msg.headers.task.clone(),
                    queue: e.queue.clone(),
                    reason,
                    at: Utc::now(),
                    raw: codec::encode(&e.msg)?,
                });
                result
            }
            _ => return Err(Error::unsupported("this settlement")),
        };
        if let Some(r) = result {
            st.results
                .insert(r.task_id.clone(), (r, Instant::now() + self.expiry));
        }
        drop(st);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn extend(&self, leases: &[Lease], by: Duration) -> Result<Vec<LeaseStatus>, Error> {
        let mut st = self.lock();
        let now = Instant::now();
        Ok(leases
            .iter()
            .map(|l| match Self::owned(&mut st, l) {
                Some(e) => {
                    e.leased_until = Some(now + by);
                    if e.revoked {
                        LeaseStatus::Revoked
                    } else {
                        LeaseStatus::Held
                    }
                }
                _ => LeaseStatus::Lost,
            })
            .collect())
    }

    async fn revoke(&self, id: &TaskId) -> Result<Revoked, Error> {
        let mut st = self.lock();
        let now = Instant::now();
        let Some(seq) = st.entries.values().find(|e| &e.id == id).map(|e| e.seq) else {
            st.revoked.insert(id.clone());
            return Ok(Revoked::Unknown);
        };
        let running = st.entries.get(&seq).is_some_and(|e| e.leased(now));
        if running {
            if let Some(e) = st.entries.get_mut(&seq) {
                e.revoked = true;
            }
            Ok(Revoked::Running)
        } else {
            st.entries.remove(&seq);
            Ok(Revoked::Removed)
        }
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        let st = self.lock();
        let now = Instant::now();
        let wall = Utc::now();
        let mut by: BTreeMap<String, QueueStats> = BTreeMap::new();
        for e in st.entries.values() {
            let s = by.entry(e.queue.clone()).or_insert_with(|| QueueStats {
                queue: e.queue.clone(),
                ready: 0,
                delayed: 0,
                leased: 0,
            });
            if e.leased(now) {
                s.leased += 1;
            } else if e.ready(now, wall) {
                s.ready += 1;
            } else {
                s.delayed += 1;
            }
        }
        Ok(by.into_values().collect())
    }

    async fn purge(&self, queue: &str) -> Result<u64, Error> {
        let mut st = self.lock();
        let now = Instant::now();
        let before = st.entries.len();
        st.entries.retain(|_, e| e.queue != queue || e.leased(now));
        Ok((before - st.entries.len()) as u64)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        Ok(self.lock().dead.iter().take(limit).cloned().collect())
    }

    async fn replay_dead_letters(&self, ids: Option<&[TaskId]>) -> Result<u64, Error> {
        let mut st = self.lock();
        let dead = std::mem::take(&mut st.dead);
        let mut n = 0;
        for d in dead {
            if ids.is_none_or(|ids| ids.contains(&d.id)) {
                Self::insert(&mut st, codec::decode(&d.raw)?);
                n += 1;
            } else {
                st.dead.push(d);
            }
        }
        drop(st);
        self.shared.changed.notify_waiters();
        Ok(n)
    }

    async fn purge_dead_letters(&self) -> Result<u64, Error> {
        let mut st = self.lock();
        let n = st.dead.len() as u64;
        st.dead.clear();
        Ok(n)
    }
}

impl ResultBackend for RefBroker {
    async fn store(&self, result: TaskResult) -> Result<(), Error> {
        self.lock().results.insert(
            result.task_id.clone(),
            (result, Instant::now() + self.expiry),
        );
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn get(&self, id: &TaskId) -> Result<Option<TaskResult>, Error> {
        let st = self.lock();
        Ok(st
            .results
            .get(id)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(r, _)| r.clone()))
    }

    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<Option<TaskResult>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut notified = pin!(self.shared.changed.notified());
            notified.as_mut().enable();
            let r = self.get(id).await?;
            if r.as_ref().is_some_and(|r| r.status.is_ready()) || Instant::now() >= deadline {
                return Ok(r);
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn forget(&self, id: &TaskId) -> Result<(), Error> {
        self.lock().results.remove(id);
        Ok(())
    }
}

struct RefFixture(RefBroker);

impl Fixture for RefFixture {
    type Broker = RefBroker;

    async fn open_with(&self, opts: FixtureOptions) -> RefBroker {
        if opts.is_default() {
            self.0.clone()
        } else {
            RefBroker::new(opts)
        }
    }
}

celeriac_conformance::suite!(async { Some(RefFixture(RefBroker::new(FixtureOptions::default()))) });

/// The skip path: a fixture that is never available.
mod unavailable {
    use super::*;

    #[test]
    fn a_missing_service_skips() {
        if celeriac_conformance::services_required() {
            return;
        }
        celeriac_conformance::__private::run("unavailable", async {
            let f = celeriac_conformance::__private::fixture("unavailable", async {
                celeriac_conformance::external("CELERIAC_CONFORMANCE_NEVER_SET")
                    .map(|_| RefFixture(RefBroker::new(FixtureOptions::default())))
            })
            .await;
            assert!(f.is_none());
        });
    }
}
