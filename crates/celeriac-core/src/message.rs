//! Celery's task message, protocol v2: headers, properties and a body of
//! `[args, kwargs, embed]`.
//!
//! Every backend stores this one model. The field names and JSON shapes are
//! Celery's own (see `celery-protocol.md` §1), so the Redis and AMQP backends
//! can put a [`Message`] on the wire unchanged.

use chrono::{DateTime, Utc};
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::id::TaskId;

/// A task message: what a producer sends and a worker runs.
///
/// ```
/// use celeriac_core::Message;
/// use serde_json::json;
///
/// let m = Message::new("tasks.add", vec![json!(2), json!(3)], Default::default());
/// assert_eq!(m.headers.task, "tasks.add");
/// assert_eq!(m.headers.root_id.as_ref(), Some(&m.headers.id));
/// assert_eq!(m.queue(), "celery");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Protocol v2 headers: identity, scheduling and workflow metadata.
    pub headers: Headers,
    /// Delivery properties: routing, priority, correlation.
    pub properties: Properties,
    /// The arguments and the workflow embed.
    pub body: Body,
}

impl Message {
    /// Returns a message for `task` with a fresh id, to the default queue.
    pub fn new(task: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let id = TaskId::new();
        Message {
            headers: Headers {
                lang: Some("rs".to_owned()),
                task: task.into(),
                id: id.clone(),
                shadow: None,
                eta: None,
                expires: None,
                group: None,
                group_index: None,
                retries: 0,
                timelimit: TimeLimit::default(),
                root_id: Some(id.clone()),
                parent_id: None,
                argsrepr: None,
                kwargsrepr: None,
                origin: None,
                ignore_result: false,
                replaced_task_nesting: 0,
                stamped_headers: None,
                stamps: Map::new(),
                extra: Map::new(),
            },
            properties: Properties {
                correlation_id: Some(id.as_str().to_owned()),
                reply_to: None,
                delivery_mode: Some(2),
                priority: None,
                expiration: None,
                delivery_info: DeliveryInfo {
                    exchange: String::new(),
                    routing_key: crate::DEFAULT_QUEUE.to_owned(),
                },
                body_encoding: None,
                delivery_tag: None,
                extra: Map::new(),
            },
            body: Body {
                args,
                kwargs,
                embed: Embed::default(),
            },
        }
    }

    /// Returns the task id.
    pub fn id(&self) -> &TaskId {
        &self.headers.id
    }

    /// Returns the queue this message is routed to (its routing key).
    pub fn queue(&self) -> &str {
        &self.properties.delivery_info.routing_key
    }

    /// Sets the queue this message is routed to.
    pub fn set_queue(&mut self, queue: impl Into<String>) {
        self.properties.delivery_info.routing_key = queue.into();
    }

    /// Returns the priority, 0 (lowest) to 9 (highest); 0 when unset.
    ///
    /// celeriac uses AMQP's meaning on every backend: a higher number runs
    /// first. Values above 9 are clamped.
    pub fn priority(&self) -> u8 {
        self.properties.priority.unwrap_or(0).min(9)
    }

    /// Returns true if `expires` is set and lies before `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.headers.expires.is_some_and(|e| e <= now)
    }
}

/// Protocol v2 headers (`celery-protocol.md` §1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headers {
    /// Producer language, informational (`"rs"` or `"py"`).
    #[serde(default)]
    pub lang: Option<String>,
    /// Registered task name: the dispatch key.
    pub task: String,
    /// Task id, also the key of its result.
    pub id: TaskId,
    /// Display name used in logs instead of `task`.
    #[serde(default)]
    pub shadow: Option<String>,
    /// Do not run before this instant.
    #[serde(default)]
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after this instant; an expired task is revoked.
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
    /// Group id, for group and chord members.
    #[serde(default)]
    pub group: Option<String>,
    /// Position inside the group.
    #[serde(default)]
    pub group_index: Option<u32>,
    /// How many times this task was already retried (`null` reads as 0).
    #[serde(default, deserialize_with = "null_as_zero")]
    pub retries: u32,
    /// Hard and soft time limits in seconds, in Celery's `[hard, soft]` order.
    #[serde(default)]
    pub timelimit: TimeLimit,
    /// First task of the workflow.
    #[serde(default)]
    pub root_id: Option<TaskId>,
    /// Task that sent this one.
    #[serde(default)]
    pub parent_id: Option<TaskId>,
    /// Text form of the args, for logs only.
    #[serde(default)]
    pub argsrepr: Option<String>,
    /// Text form of the kwargs, for logs only.
    #[serde(default)]
    pub kwargsrepr: Option<String>,
    /// Sending node, `gen<pid>@<host>`.
    #[serde(default)]
    pub origin: Option<String>,
    /// When true the worker stores no result.
    #[serde(default, deserialize_with = "null_as_false")]
    pub ignore_result: bool,
    /// Depth of `Task.replace()`.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub replaced_task_nesting: u32,
    /// Stamping API (Celery 5.3+), carried unchanged.
    #[serde(default)]
    pub stamped_headers: Option<Value>,
    /// Stamping API (Celery 5.3+), carried unchanged.
    #[serde(default)]
    pub stamps: Map<String, Value>,
    /// Headers this version does not know, carried unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Celery's `timelimit` header: `[hard, soft]` in seconds, each optional.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimeLimit {
    /// Hard limit: the task is stopped and fails.
    pub hard: Option<f64>,
    /// Soft limit: the task's cancellation signal fires.
    pub soft: Option<f64>,
}

impl Serialize for TimeLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.hard, self.soft).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TimeLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Option<(Option<f64>, Option<f64>)> = Option::deserialize(d)?;
        let (hard, soft) = v.unwrap_or((None, None));
        Ok(TimeLimit { hard, soft })
    }
}

/// Delivery properties (`celery-protocol.md` §1.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    /// Equal to the task id.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Producer's reply address (used by Celery's `rpc://` backend).
    #[serde(default)]
    pub reply_to: Option<String>,
    /// 2 for persistent.
    #[serde(default)]
    pub delivery_mode: Option<u8>,
    /// 0..=9; higher runs first in celeriac.
    #[serde(default)]
    pub priority: Option<u8>,
    /// TTL in milliseconds as a string, set when `expires` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Where the message was published.
    #[serde(default)]
    pub delivery_info: DeliveryInfo,
    /// How the body is wrapped in a Redis envelope (`"base64"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<String>,
    /// Redis: key of the unacked backup; fresh per publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_tag: Option<String>,
    /// Properties this version does not know, carried unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Exchange and routing key a message was published to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// Exchange name; `""` is the default exchange, as Celery publishes.
    #[serde(default)]
    pub exchange: String,
    /// Routing key: the queue name for direct routing.
    #[serde(default)]
    pub routing_key: String,
}

/// The message body: positional args, kwargs and the workflow embed,
/// serialized as Celery's three-element array.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Body {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.args)?;
        t.serialize_element(&self.kwargs)?;
        t.serialize_element(&self.embed)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a body of [args, kwargs, embed]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
                let args: Vec<Value> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let kwargs: Map<String, Value> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                // Celery's worker dies on a two-element body; we accept it and
                // read the embed as empty.
                let embed: Option<Embed> = seq.next_element()?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(4, &self));
                }
                Ok(Body {
                    args,
                    kwargs,
                    embed: embed.unwrap_or_default(),
                })
            }
        }
        d.deserialize_seq(BodyVisitor)
    }
}

/// Workflow fields carried in the body (`celery-protocol.md` §1.3).
///
/// Signatures are kept as JSON values; the canvas interprets them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Embed {
    /// Run on success, with the result prepended to their args.
    #[serde(default)]
    pub callbacks: Option<Vec<Value>>,
    /// Run on failure.
    #[serde(default)]
    pub errbacks: Option<Vec<Value>>,
    /// The rest of a chain; the next task is the last element.
    #[serde(default)]
    pub chain: Option<Vec<Value>>,
    /// The chord body, present on every header task.
    #[serde(default)]
    pub chord: Option<Value>,
}

fn null_as_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(Option::<u32>::deserialize(d)?.unwrap_or(0))
}

fn null_as_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_is_a_three_element_array() {
        let b = Body {
            args: vec![json!(2), json!(3)],
            kwargs: Map::new(),
            embed: Embed::default(),
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            v,
            json!([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
        );
        let back: Body = serde_json::from_value(v).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn two_element_body_reads_with_empty_embed() {
        let b: Body = serde_json::from_value(json!([[1], {"a": 1}])).unwrap();
        assert_eq!(b.args, vec![json!(1)]);
        assert_eq!(b.embed, Embed::default());
    }

    #[test]
    fn timelimit_is_hard_then_soft() {
        let t = TimeLimit {
            hard: Some(10.0),
            soft: Some(5.0),
        };
        assert_eq!(serde_json::to_value(t).unwrap(), json!([10.0, 5.0]));
        let n: TimeLimit = serde_json::from_value(json!(null)).unwrap();
        assert_eq!(n, TimeLimit::default());
    }

    #[test]
    fn reads_a_python_celery_message() {
        let headers = json!({"lang": "py", "task": "tasks.add", "id": "df12b566-ccc4-45f2-8147-01405fcb16b8",
           "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null,
           "retries": null, "timelimit": [null, null], "root_id": "df12b566-ccc4-45f2-8147-01405fcb16b8",
           "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen13260@host1",
           "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {},
           "x-custom": 1});
        let h: Headers = serde_json::from_value(headers).unwrap();
        assert_eq!(h.task, "tasks.add");
        assert_eq!(h.retries, 0);
        assert_eq!(h.extra.get("x-custom"), Some(&json!(1)));
    }
}
