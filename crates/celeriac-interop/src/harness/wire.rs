//! Looking at Redis directly: keys, lists, result records, raw envelopes
//! ([`Wire`], [`Envelope`]), the commands clients send ([`Monitor`]) and the
//! result notifications they publish ([`Published`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};

use super::wait_for;

/// The priority separator kombu puts between a queue name and its step.
pub const SEP: &str = "\x06\x16";

/// Raw access to one Redis database.
#[derive(Clone)]
pub struct Wire {
    con: MultiplexedConnection,
    db: u8,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Wire {
    /// Connects to database `db` of the server at `base`.
    pub async fn connect(base: &str, db: u8) -> Wire {
        let client = redis::Client::open(format!("{base}/{db}"))
            .unwrap_or_else(|e| panic!("redis url {base}/{db}: {e}"));
        let con = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("redis {base}/{db}: {e}"));
        Wire { con, db }
    }

    /// Runs one command.
    pub async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut con = self.con.clone();
        cmd.query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("redis on db {}: {e}", self.db))
    }

    /// `LLEN key`.
    pub async fn llen(&self, key: &str) -> usize {
        self.cmd(redis::cmd("LLEN").arg(key)).await
    }

    /// `LRANGE key 0 -1`, each element parsed as JSON.
    pub async fn list(&self, key: &str) -> Vec<Value> {
        let raw: Vec<Vec<u8>> = self.cmd(redis::cmd("LRANGE").arg(key).arg(0).arg(-1)).await;
        raw.iter()
            .map(|b| {
                serde_json::from_slice(b).unwrap_or_else(|e| panic!("list element of {key}: {e}"))
            })
            .collect()
    }

    /// `LPUSH key value` of raw bytes, as a producer does.
    pub async fn lpush(&self, key: &str, value: &[u8]) {
        let _: i64 = self.cmd(redis::cmd("LPUSH").arg(key).arg(value)).await;
    }

    /// `HLEN unacked`: messages a worker holds (received, not acked).
    pub async fn unacked(&self) -> usize {
        self.cmd(redis::cmd("HLEN").arg("unacked")).await
    }

    /// `ZCARD unacked_index`.
    pub async fn unacked_index(&self) -> usize {
        self.cmd(redis::cmd("ZCARD").arg("unacked_index")).await
    }

    /// The `unacked` entries: `[envelope, exchange, routing_key]` each.
    pub async fn unacked_entries(&self) -> Vec<Value> {
        let raw: Vec<Vec<u8>> = self.cmd(redis::cmd("HVALS").arg("unacked")).await;
        raw.iter()
            .map(|b| serde_json::from_slice(b).unwrap_or_else(|e| panic!("unacked entry: {e}")))
            .collect()
    }

    /// Waits until `unacked` and `unacked_index` are both empty.
    pub async fn wait_unacked_empty(&self, timeout: Duration) {
        wait_for(
            "`unacked` and `unacked_index` to be empty",
            timeout,
            || async {
                (self.unacked().await == 0 && self.unacked_index().await == 0).then_some(())
            },
        )
        .await;
    }

    /// The result key of a task.
    pub fn meta_key(id: &str) -> String {
        format!("celery-task-meta-{id}")
    }

    /// The stored result record of a task, parsed, if any.
    pub async fn meta(&self, id: &str) -> Option<Value> {
        let raw: Option<Vec<u8>> = self.cmd(redis::cmd("GET").arg(Self::meta_key(id))).await;
        raw.map(|b| serde_json::from_slice(&b).unwrap_or_else(|e| panic!("result of {id}: {e}")))
    }

    /// Waits for a result record whose status is `status`.
    pub async fn wait_meta(&self, id: &str, status: &str, timeout: Duration) -> Value {
        wait_for(
            &format!("{id} to be stored as {status}"),
            timeout,
            || async { self.meta(id).await.filter(|m| m["status"] == status) },
        )
        .await
    }

    /// `TTL key` in seconds (-1: no expiry, -2: no key).
    pub async fn ttl(&self, key: &str) -> i64 {
        self.cmd(redis::cmd("TTL").arg(key)).await
    }

    /// `EXISTS key`.
    pub async fn exists(&self, key: &str) -> bool {
        self.cmd::<i64>(redis::cmd("EXISTS").arg(key)).await == 1
    }

    /// `KEYS pattern` (the database is the case's own, so this is cheap).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut k: Vec<String> = self.cmd(redis::cmd("KEYS").arg(pattern)).await;
        k.sort();
        k
    }

    /// `HGETALL key` as (field, integer) pairs.
    pub async fn counts(&self, key: &str) -> std::collections::HashMap<String, i64> {
        self.cmd(redis::cmd("HGETALL").arg(key)).await
    }
}

/// Builds raw Celery envelopes (protocol v2, as Python 5.7 sends them) for
/// tests that push malformed or hand-made messages.
#[derive(Debug, Clone)]
pub struct Envelope;

impl Envelope {
    /// Returns the headers Celery 5.7 sends for `task` with `id`.
    pub fn headers(task: &str, id: &str) -> Value {
        json!({
            "lang": "py", "task": task, "id": id, "shadow": null, "eta": null,
            "expires": null, "group": null, "group_index": null, "retries": 0,
            "timelimit": [null, null], "root_id": id, "parent_id": null,
            "argsrepr": "()", "kwargsrepr": "{}", "origin": "gen1@interop",
            "ignore_result": false, "replaced_task_nesting": 0,
            "stamped_headers": null, "stamps": {}
        })
    }

    /// Returns the body `[args, kwargs, embed]` as JSON text.
    pub fn body(args: &Value, kwargs: &Value) -> String {
        json!([args, kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
            .to_string()
    }

    /// Returns a complete envelope with `body_text` base64-encoded.
    pub fn with_body(headers: Value, body_text: &[u8], queue: &str) -> Value {
        let id = headers["id"].clone();
        json!({
            "body": base64::engine::general_purpose::STANDARD.encode(body_text),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": uuid::Uuid::new_v4().to_string(),
            }
        })
    }

    /// Returns a valid envelope calling `task(*args, **kwargs)` with `id`.
    pub fn call(task: &str, id: &str, args: Value, kwargs: Value, queue: &str) -> Value {
        Self::with_body(
            Self::headers(task, id),
            Self::body(&args, &kwargs).as_bytes(),
            queue,
        )
    }

    /// Decodes the base64 body of an envelope into JSON.
    pub fn decode_body(envelope: &Value) -> Value {
        let b64 = envelope["body"].as_str().unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("envelope body is not base64: {e}"));
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("envelope body is not JSON: {e}"))
    }
}

/// One command seen by `MONITOR` on the case's database.
#[derive(Debug, Clone)]
pub struct MonitorCommand {
    /// The command and its arguments, unescaped.
    pub args: Vec<Vec<u8>>,
}

impl MonitorCommand {
    /// Returns the command name, upper case.
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_uppercase())
            .unwrap_or_default()
    }

    /// Returns argument `i` (0 is the command) as text.
    pub fn arg(&self, i: usize) -> String {
        self.args
            .get(i)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default()
    }
}

/// Records every command the server runs on one database (`MONITOR`),
/// until dropped.
#[derive(Debug)]
pub struct Monitor {
    seen: Arc<Mutex<Vec<MonitorCommand>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Starts monitoring database `db` of the server at `base`; commands
    /// sent after this returns are recorded.
    pub async fn start(base: &str, db: u8) -> Monitor {
        let client = redis::Client::open(format!("{base}/0"))
            .unwrap_or_else(|e| panic!("redis url {base}: {e}"));
        let monitor = client
            .get_async_monitor()
            .await
            .unwrap_or_else(|e| panic!("redis MONITOR: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = monitor.into_on_message::<String>();
            while let Some(line) = stream.next().await {
                if let Some(c) = parse_monitor_line(&line, db) {
                    if let Ok(mut v) = sink.lock() {
                        v.push(c);
                    }
                }
            }
        });
        Monitor { seen, task }
    }

    /// Returns the commands recorded so far.
    pub fn commands(&self) -> Vec<MonitorCommand> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Returns the envelopes pushed (`LPUSH`/`RPUSH`) onto `key` so far.
    pub fn pushes(&self, key: &str) -> Vec<(String, Value)> {
        self.commands()
            .into_iter()
            .filter(|c| matches!(c.name().as_str(), "LPUSH" | "RPUSH") && c.arg(1) == key)
            .flat_map(|c| {
                let name = c.name();
                c.args[2..]
                    .iter()
                    .filter_map(|a| serde_json::from_slice::<Value>(a).ok())
                    .map(|v| (name.clone(), v))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parses `1700000000.123 [10 127.0.0.1:5555] "LPUSH" "q" "..."`, keeping
/// it only when it ran on database `db`.
fn parse_monitor_line(line: &str, db: u8) -> Option<MonitorCommand> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let which: u8 = line[open + 1..close]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    if which != db {
        return None;
    }
    let mut args = Vec::new();
    let bytes = &line.as_bytes()[close + 1..];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut arg = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                match bytes[i] {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' if i + 2 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                        arg.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 2;
                    }
                    other => arg.push(other),
                }
            } else {
                arg.push(bytes[i]);
            }
            i += 1;
        }
        args.push(arg);
        i += 1;
    }
    Some(MonitorCommand { args })
}

/// Records the messages published on result channels
/// (`celery-task-meta-<id>`), until dropped.
#[derive(Debug)]
pub struct Published {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Published {
    /// Subscribes to the result channels of `ids`; messages published
    /// after this returns are recorded.
    pub async fn subscribe(base: &str, ids: &[String]) -> Published {
        let client = redis::Client::open(format!("{base}/0"))
            .unwrap_or_else(|e| panic!("redis url {base}: {e}"));
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .unwrap_or_else(|e| panic!("redis pubsub: {e}"));
        for id in ids {
            pubsub
                .subscribe(Wire::meta_key(id))
                .await
                .unwrap_or_else(|e| panic!("SUBSCRIBE: {e}"));
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let channel = msg.get_channel_name().to_owned();
                let id = channel.trim_start_matches("celery-task-meta-").to_owned();
                let value = serde_json::from_slice(msg.get_payload_bytes()).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(msg.get_payload_bytes()).into_owned())
                });
                if let Ok(mut v) = sink.lock() {
                    v.push((id, value));
                }
            }
        });
        Published { seen, task }
    }

    /// Returns the messages published for `id` so far.
    pub fn of(&self, id: &str) -> Vec<Value> {
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|(i, _)| i == id)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until a message with `status` was published for `id`, and
    /// returns every message for `id` so far.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Vec<Value> {
        wait_for(&format!("a PUBLISH of {status} for {id}"), timeout, || {
            let msgs = self.of(id);
            std::future::ready(msgs.iter().any(|m| m["status"] == status).then_some(msgs))
        })
        .await
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_monitor_line;

    #[test]
    fn parses_monitor_lines() {
        let line =
            r#"1700000000.123456 [10 127.0.0.1:5555] "LPUSH" "q\x06\x163" "{\"a\": \"b\\n\"}""#;
        let c = parse_monitor_line(line, 10).expect("a command on db 10");
        assert_eq!(c.name(), "LPUSH");
        assert_eq!(c.args[1], b"q\x06\x163");
        assert_eq!(c.arg(2), "{\"a\": \"b\\n\"}");
        assert!(parse_monitor_line(line, 11).is_none());
        let lua = r#"1700000000.1 [12 lua] "ZADD" "unacked_index" "1" "t""#;
        assert_eq!(
            parse_monitor_line(lua, 12).expect("lua").arg(1),
            "unacked_index"
        );
    }
}
