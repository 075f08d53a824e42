//! One shared Pub/Sub connection per handle, multiplexing every waiter.
//!
//! A background task owns the connection. Waiters register a channel in a
//! shared table ([`Hub::watch`]); the task reconciles what the server is
//! subscribed to with what the table wants, batching many channels into
//! one `SUBSCRIBE` (or `UNSUBSCRIBE`), and hands each message to the
//! waiters of its channel. A waiter hears [`Event::Subscribed`] once the
//! server has confirmed its channel, and again after every reconnection,
//! so it can `GET` the key and not miss a result stored while it was not
//! listening.
//!
//! When the connection drops (or stops answering `PING`) the task
//! reconnects with exponential backoff and subscribes to every channel
//! still wanted. The task starts on the first wait and ends when the last
//! clone of the handle is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// First pause before reconnecting after a failed connection attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle connection is checked with `PING`.
const PING_EVERY: Duration = Duration::from_secs(15);
/// How long a `PING` (or a `SUBSCRIBE`) may take before the connection is
/// taken as dead.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a waiter hears.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// The server confirmed the subscription (first time, or after a
    /// reconnection): `GET` the key now.
    Subscribed,
    /// A message published on the channel.
    Message(Arc<[u8]>),
}

/// The shared Pub/Sub connection of one handle (and its clones).
pub(crate) struct Hub {
    shared: Arc<Shared>,
    client: redis::Client,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    registry: Mutex<Registry>,
    wake: Notify,
    connects: AtomicU64,
}

#[derive(Default)]
struct Registry {
    channels: HashMap<String, Channel>,
    /// Channels added or removed since the task last looked.
    dirty: HashSet<String>,
    next_waiter: u64,
}

struct Channel {
    confirmed: bool,
    waiters: Vec<(u64, mpsc::UnboundedSender<Event>)>,
}

impl Channel {
    fn confirm(&mut self) {
        if !self.confirmed {
            self.confirmed = true;
            for (_, tx) in &self.waiters {
                // A closed receiver is a waiter being dropped; it deregisters itself.
                let _ = tx.send(Event::Subscribed);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The table stays consistent at every await-free step, so a panic
        // elsewhere while holding it leaves nothing half-done.
        match self.registry.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Hub {
    /// Returns a hub that connects with `client` on the first wait. The
    /// Pub/Sub connection always speaks RESP2 (what `aio::PubSub` reads),
    /// whatever protocol the URL asked for.
    pub(crate) fn new(client: redis::Client) -> Self {
        let client = resp2(client);
        Hub {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                wake: Notify::new(),
                connects: AtomicU64::new(0),
            }),
            client,
            task: Mutex::new(None),
        }
    }

    /// Returns how many Pub/Sub connections this hub has opened so far
    /// (one, plus one per reconnection).
    pub(crate) fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// Registers a waiter on `channel`. Its receiver hears
    /// [`Event::Subscribed`] once the server listens on the channel for
    /// it, then every message. Dropping the [`Watch`] deregisters it.
    ///
    /// Must be called within a Tokio runtime (it may start the task).
    pub(crate) fn watch(&self, channel: &str) -> Watch {
        self.ensure_task();
        let (tx, rx) = mpsc::unbounded_channel();
        let (id, wake) = {
            let mut reg = self.shared.lock();
            let id = reg.next_waiter;
            reg.next_waiter += 1;
            let wake = match reg.channels.get_mut(channel) {
                Some(ch) => {
                    if ch.confirmed {
                        let _ = tx.send(Event::Subscribed);
                    }
                    ch.waiters.push((id, tx));
                    false
                }
                None => {
                    reg.channels.insert(
                        channel.to_owned(),
                        Channel {
                            confirmed: false,
                            waiters: vec![(id, tx)],
                        },
                    );
                    reg.dirty.insert(channel.to_owned());
                    true
                }
            };
            (id, wake)
        };
        if wake {
            self.shared.wake.notify_one();
        }
        Watch {
            shared: self.shared.clone(),
            channel: channel.to_owned(),
            id,
            rx,
        }
    }

    fn ensure_task(&self) {
        let mut task = match self.task.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            let shared = self.shared.clone();
            let client = self.client.clone();
            *task = Some(tokio::spawn(run(shared, client)));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let task = match self.task.get_mut() {
            Ok(t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(t) = task {
            t.abort();
        }
    }
}

/// Returns `client`, or the same client speaking RESP2 when it asked for
/// another protocol.
fn resp2(client: redis::Client) -> redis::Client {
    let info = client.get_connection_info();
    if info.redis_settings().protocol() == redis::ProtocolVersion::RESP2 {
        return client;
    }
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP2);
    match redis::Client::open(info.clone().set_redis_settings(settings)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot switch the result pub/sub connection to RESP2");
            client
        }
    }
}

/// One waiter's registration; deregisters on drop.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    channel: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Watch {
    /// Returns the next event.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event not returned stays queued.
    pub(crate) async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let wake = {
            let mut reg = self.shared.lock();
            let emptied = match reg.channels.get_mut(&self.channel) {
                Some(ch) => {
                    ch.waiters.retain(|(id, _)| *id != self.id);
                    ch.waiters.is_empty()
                }
                None => false,
            };
            if emptied {
                reg.channels.remove(&self.channel);
                reg.dirty.insert(self.channel.clone());
            }
            emptied
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

/// The background task: connect, serve until the connection is lost,
/// reconnect.
async fn run(shared: Arc<Shared>, client: redis::Client) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "result pub/sub connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        shared.connects.fetch_add(1, Ordering::Relaxed);
        let opened = tokio::time::Instant::now();
        {
            // A fresh connection listens on nothing: every wanted channel
            // must be subscribed again and its waiters told to re-read.
            let mut reg = shared.lock();
            let reg = &mut *reg;
            for (name, ch) in reg.channels.iter_mut() {
                ch.confirmed = false;
                reg.dirty.insert(name.clone());
            }
        }
        let (sink, stream) = pubsub.split();
        let why = serve(&shared, sink, stream).await;
        tracing::warn!(reason = why, "result pub/sub connection lost; reconnecting");
        // A connection that served a while is retried at once; one that
        // keeps dying young is retried with growing pauses.
        if opened.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Serves one connection until it is lost; returns why.
async fn serve(shared: &Shared, mut sink: PubSubSink, mut stream: PubSubStream) -> &'static str {
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    loop {
        if let Err(why) = reconcile(shared, &mut sink, &mut subscribed).await {
            return why;
        }
        tokio::select! {
            () = shared.wake.notified() => {}
            msg = stream.next() => match msg {
                Some(msg) => dispatch(shared, &msg),
                None => return "the connection closed",
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(REPLY_TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return "PING got no answer";
                }
            }
        }
    }
}

/// Brings the server's subscriptions in line with the table; confirms
/// the channels the server listens on.
async fn reconcile(
    shared: &Shared,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<String>,
) -> Result<(), &'static str> {
    loop {
        let (to_sub, to_unsub) = {
            let mut reg = shared.lock();
            if reg.dirty.is_empty() {
                return Ok(());
            }
            let dirty = std::mem::take(&mut reg.dirty);
            let mut to_sub = Vec::new();
            let mut to_unsub = Vec::new();
            for name in dirty {
                match reg.channels.get_mut(&name) {
                    Some(ch) if subscribed.contains(&name) => ch.confirm(),
                    Some(_) => to_sub.push(name),
                    None if subscribed.contains(&name) => to_unsub.push(name),
                    None => {}
                }
            }
            (to_sub, to_unsub)
        };
        if !to_unsub.is_empty() {
            match tokio::time::timeout(REPLY_TIMEOUT, sink.unsubscribe(&to_unsub)).await {
                Ok(Ok(())) => {}
                _ => return Err("UNSUBSCRIBE failed"),
            }
            for name in &to_unsub {
                subscribed.remove(name);
            }
        }
        if !to_sub.is_empty() {
            match tokio::time::timeout(REPLY_TIMEOUT, sink.subscribe(&to_sub)).await {
                Ok(Ok(())) => {}
                _ => {
                    // Still wanted: look at them again on the next connection.
                    shared.lock().dirty.extend(to_sub);
                    return Err("SUBSCRIBE failed");
                }
            }
            let mut reg = shared.lock();
            for name in to_sub {
                match reg.channels.get_mut(&name) {
                    Some(ch) => ch.confirm(),
                    // Its waiters left meanwhile: unsubscribe on the next pass.
                    None => {
                        reg.dirty.insert(name.clone());
                    }
                }
                subscribed.insert(name);
            }
        }
    }
}

/// Hands a message to the waiters of its channel.
fn dispatch(shared: &Shared, msg: &redis::Msg) {
    let payload: Arc<[u8]> = Arc::from(msg.get_payload_bytes());
    let reg = shared.lock();
    if let Some(ch) = reg.channels.get(msg.get_channel_name()) {
        for (_, tx) in &ch.waiters {
            let _ = tx.send(Event::Message(payload.clone()));
        }
    }
}
