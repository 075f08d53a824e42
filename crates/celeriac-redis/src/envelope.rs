//! kombu's Redis envelope: a [`Message`] as the JSON object kombu puts in a
//! Redis list (`celery-protocol.md` §4.2).
//!
//! ```json
//! {"body": "<base64 of [args, kwargs, embed]>", "content-encoding": "utf-8",
//!  "content-type": "application/json", "headers": {"task": …, "id": …, …},
//!  "properties": {"correlation_id": …, "reply_to": "", "delivery_mode": 2,
//!    "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
//!    "body_encoding": "base64", "delivery_tag": "<uuid>"}}
//! ```
//!
//! [`encode`] always writes every field a Python worker needs, so the inputs
//! that kill or poison a Python worker (§10 rows 1-6, 8 and 13) cannot come
//! out of it. [`decode`] reads anything a list may hold without panicking:
//! a bad entry gives an `Err` message together with whatever was readable
//! (id, task, delivery tag, routing), so the broker can settle it and the
//! worker can store a FAILURE.
//!
//! Priorities here are the wire's (kombu's: on Redis **0 is served first**);
//! [`priority_key`] maps one to its list as kombu does.
//!
//! ```
//! use celeriac_core::Message;
//! use celeriac_redis::envelope;
//!
//! let m = Message::new("tasks.add", vec![2.into(), 3.into()], Default::default());
//! let raw = envelope::encode(&m, "a-fresh-uuid").unwrap();
//! let d = envelope::decode(&raw, "celery");
//! assert_eq!(d.delivery_tag.as_deref(), Some("a-fresh-uuid"));
//! assert_eq!(d.routing_key, "celery");
//! assert_eq!(d.message.unwrap().body.args, m.body.args);
//! ```

use std::borrow::Cow;
use std::sync::OnceLock;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use celeriac_core::message::DeliveryInfo;
use celeriac_core::wire::{self, WireError, WireErrorKind};
use celeriac_core::{Error, ErrorKind, Headers, Message, Properties, TaskId};
use chrono::{DateTime, Timelike, Utc};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// kombu's default separator between a queue name and its priority step.
pub const DEFAULT_SEP: &str = "\x06\x16";

/// kombu's default priority steps.
pub const DEFAULT_STEPS: [u8; 4] = [0, 3, 6, 9];

// ---------------------------------------------------------------------------
// Encoding

/// Encodes `message` as kombu's envelope, with `delivery_tag` (use a fresh
/// UUID per publish).
///
/// Headers: the full set Celery 5.7 sends (§1.1), filling `root_id` (= id),
/// `argsrepr`/`kwargsrepr` (Python's `repr`, cut to 1024 characters),
/// `origin` (`gen<pid>@<host>`) and `lang` (`"rs"`) when the message has
/// none; times as `2026-11-23T11:01:56.630562+00:00`. A `compression` or
/// `redelivered` header left from an earlier delivery is dropped (the body
/// is written uncompressed; the new message is not a redelivery).
///
/// # Errors
///
/// [`ErrorKind::InvalidInput`] if the task name, id, queue (routing key) or
/// `delivery_tag` is empty, or the body cannot be serialized.
pub fn encode(message: &Message, delivery_tag: &str) -> Result<Vec<u8>, Error> {
    let h = &message.headers;
    let invalid = |what: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("cannot publish task {}[{}]: {what}", h.task, h.id),
        )
    };
    if h.task.is_empty() {
        return Err(invalid("empty task name"));
    }
    if h.id.as_str().is_empty() {
        return Err(invalid("empty task id"));
    }
    if message.queue().is_empty() {
        return Err(invalid("no queue (empty routing key)"));
    }
    if delivery_tag.is_empty() {
        return Err(invalid("empty delivery tag"));
    }
    let body = serde_json::to_vec(&message.body)
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot encode task body", e))?;
    let out = OutEnvelope {
        body: STANDARD.encode(body),
        content_encoding: "utf-8",
        content_type: "application/json",
        headers: OutHeaders(message),
        properties: OutProperties {
            message,
            delivery_tag,
        },
    };
    serde_json::to_vec(&out)
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot encode envelope", e))
}

#[derive(Serialize)]
struct OutEnvelope<'a> {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: &'static str,
    #[serde(rename = "content-type")]
    content_type: &'static str,
    headers: OutHeaders<'a>,
    properties: OutProperties<'a>,
}

/// Header names written from typed fields, or dropped; extras with these
/// names are skipped so no key appears twice.
const HEADER_NAMES: &[&str] = &[
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
    "compression",
    "redelivered",
];

struct OutHeaders<'a>(&'a Message);

impl Serialize for OutHeaders<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let h = &m.headers;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("lang", h.lang.as_deref().unwrap_or("rs"))?;
        map.serialize_entry("task", &h.task)?;
        map.serialize_entry("id", &h.id)?;
        map.serialize_entry("shadow", &h.shadow)?;
        map.serialize_entry("eta", &h.eta.map(wire::time::format))?;
        map.serialize_entry("expires", &h.expires.map(wire::time::format))?;
        map.serialize_entry("group", &h.group)?;
        map.serialize_entry("group_index", &h.group_index)?;
        map.serialize_entry("retries", &h.retries)?;
        map.serialize_entry(
            "timelimit",
            &(seconds(h.timelimit.hard), seconds(h.timelimit.soft)),
        )?;
        map.serialize_entry("root_id", h.root_id.as_ref().unwrap_or(&h.id))?;
        map.serialize_entry("parent_id", &h.parent_id)?;
        let argsrepr = match &h.argsrepr {
            Some(r) => Cow::Borrowed(r.as_str()),
            None => Cow::Owned(wire::repr::args_repr(&m.body.args)),
        };
        map.serialize_entry("argsrepr", &argsrepr)?;
        let kwargsrepr = match &h.kwargsrepr {
            Some(r) => Cow::Borrowed(r.as_str()),
            None => Cow::Owned(wire::repr::kwargs_repr(&m.body.kwargs)),
        };
        map.serialize_entry("kwargsrepr", &kwargsrepr)?;
        let origin = match &h.origin {
            Some(o) => o.as_str(),
            None => default_origin(),
        };
        map.serialize_entry("origin", origin)?;
        map.serialize_entry("ignore_result", &h.ignore_result)?;
        map.serialize_entry("replaced_task_nesting", &h.replaced_task_nesting)?;
        map.serialize_entry("stamped_headers", &h.stamped_headers)?;
        map.serialize_entry("stamps", &h.stamps)?;
        for (k, v) in &h.extra {
            if !HEADER_NAMES.contains(&k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// A time limit as Python would write it: an integer when whole, `null`
/// when unset or not a finite positive number.
fn seconds(limit: Option<f64>) -> Value {
    match limit {
        Some(x) if x.is_finite() && x >= 0.0 => {
            if x.fract() == 0.0 && x < 9.0e15 {
                Value::from(x as u64)
            } else {
                Value::from(x)
            }
        }
        _ => Value::Null,
    }
}

/// Property names written from typed fields.
const PROPERTY_NAMES: &[&str] = &[
    "correlation_id",
    "reply_to",
    "delivery_mode",
    "delivery_info",
    "priority",
    "body_encoding",
    "delivery_tag",
    "expiration",
];

struct OutProperties<'a> {
    message: &'a Message,
    delivery_tag: &'a str,
}

impl Serialize for OutProperties<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.message;
        let p = &m.properties;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("correlation_id", &m.headers.id)?;
        map.serialize_entry("reply_to", p.reply_to.as_deref().unwrap_or(""))?;
        map.serialize_entry("delivery_mode", &p.delivery_mode.unwrap_or(2))?;
        map.serialize_entry(
            "delivery_info",
            &OutDeliveryInfo {
                exchange: &p.delivery_info.exchange,
                routing_key: m.queue(),
            },
        )?;
        map.serialize_entry("priority", &m.priority())?;
        map.serialize_entry("body_encoding", "base64")?;
        map.serialize_entry("delivery_tag", self.delivery_tag)?;
        if let Some(e) = &p.expiration {
            map.serialize_entry("expiration", e)?;
        }
        for (k, v) in &p.extra {
            if !PROPERTY_NAMES.contains(&k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct OutDeliveryInfo<'a> {
    exchange: &'a str,
    routing_key: &'a str,
}

/// `gen<pid>@<hostname>`, Celery's `origin` for a producer.
fn default_origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("gen{}@{host}", std::process::id())
    })
}

// ---------------------------------------------------------------------------
// Decoding

/// One list entry, decoded: the message or why it cannot run, plus what
/// the broker needs to settle it either way.
#[derive(Debug)]
pub struct Decoded {
    /// The message, or an [`ErrorKind::Malformed`] error saying why not.
    pub message: Result<Message, Error>,
    /// The task id, when readable (also for a bad message).
    pub id: Option<TaskId>,
    /// The task name, when readable (also for a bad message).
    pub task: Option<String>,
    /// `properties.delivery_tag`; `None` if absent (generate one).
    pub delivery_tag: Option<String>,
    /// `properties.delivery_info.exchange`; `""` if absent.
    pub exchange: String,
    /// `properties.delivery_info.routing_key`; the list's queue if absent.
    pub routing_key: String,
    /// `properties.priority` clamped to 0..=9 (the wire's meaning); 0 if absent.
    pub priority: u8,
}

/// The envelope as kombu writes it, read in one pass.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    body: Option<BodyText<'a>>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    properties: Option<Properties>,
}

/// The `body` string, borrowed from the input when it has no escapes.
#[derive(Deserialize)]
struct BodyText<'a>(#[serde(borrow)] Cow<'a, str>);

/// The envelope's parts, however they were read.
struct Parts<'a> {
    body: Result<Cow<'a, str>, String>,
    content_type: Result<Option<String>, String>,
    content_encoding: Option<String>,
    headers: Result<Map<String, Value>, String>,
    body_encoding: Result<Option<String>, String>,
}

/// Decodes one list entry popped from `list_queue`'s list (the list name
/// without its priority suffix; see [`queue_of_key`]). Never panics.
///
/// The body is base64-decoded when `properties.body_encoding` is
/// `"base64"`, taken as text when it is absent or `"utf-8"`, and refused
/// otherwise; then [`wire::message_from_parts`] reads it. A missing
/// `delivery_info` reads as `{"exchange": "", "routing_key": list_queue}`.
pub fn decode(raw: &[u8], list_queue: &str) -> Decoded {
    match fast_decode(raw, list_queue) {
        Some(d) => d,
        None => general_decode(raw, list_queue),
    }
}

/// Reads any entry: the typed form first (without the fast path's
/// restrictions), else field by field.
fn general_decode(raw: &[u8], list_queue: &str) -> Decoded {
    match serde_json::from_slice::<RawEnvelope<'_>>(raw) {
        Ok(env) => {
            let body_encoding = Ok(env
                .properties
                .as_ref()
                .and_then(|p| p.body_encoding.clone()));
            finish(
                Parts {
                    body: env
                        .body
                        .map(|b| b.0)
                        .ok_or_else(|| "envelope has no body".to_owned()),
                    content_type: Ok(env.content_type),
                    content_encoding: env.content_encoding,
                    headers: Ok(env.headers.unwrap_or_default()),
                    body_encoding,
                },
                env.properties.unwrap_or_else(empty_properties),
                list_queue,
            )
        }
        Err(_) => slow_decode(raw, list_queue),
    }
}

/// A well-formed envelope as kombu or celeriac writes it, read in one
/// typed pass.
#[derive(Deserialize)]
struct TypedEnvelope<'a> {
    #[serde(borrow)]
    body: BodyText<'a>,
    #[serde(rename = "content-type", default, borrow)]
    content_type: Option<Cow<'a, str>>,
    headers: Headers,
    properties: Properties,
}

/// The hot path: one typed parse, base64, one typed body parse. `None`
/// for anything unusual (compression, a body that is not base64 v2, NaN,
/// a mistyped field, a naive or exotic time...); [`decode`] then reads the
/// entry field by field and says precisely what is wrong, if anything.
fn fast_decode(raw: &[u8], list_queue: &str) -> Option<Decoded> {
    let env = serde_json::from_slice::<TypedEnvelope<'_>>(raw).ok()?;
    let json = env
        .content_type
        .as_deref()
        .is_none_or(|ct| ct == "application/json");
    if !json
        || env.properties.body_encoding.as_deref() != Some("base64")
        || env.headers.extra.contains_key("compression")
    {
        return None;
    }
    let bytes = STANDARD.decode(env.body.0.as_bytes()).ok()?;
    let body = wire::parts::strict_v2_body(&bytes)?;
    let mut properties = env.properties;
    if properties.delivery_info.exchange.is_empty()
        && properties.delivery_info.routing_key.is_empty()
    {
        properties.delivery_info.routing_key = list_queue.to_owned();
    }
    let mut headers = env.headers;
    // As the general path (and Python) read them: microseconds, no leap second.
    headers.eta = match headers.eta {
        Some(t) => Some(to_micros(t)?),
        None => None,
    };
    headers.expires = match headers.expires {
        Some(t) => Some(to_micros(t)?),
        None => None,
    };
    Some(Decoded {
        id: Some(headers.id.clone()),
        task: Some(headers.task.clone()),
        delivery_tag: properties.delivery_tag.clone(),
        exchange: properties.delivery_info.exchange.clone(),
        routing_key: properties.delivery_info.routing_key.clone(),
        priority: properties.priority.unwrap_or(0).min(9),
        message: Ok(Message {
            headers,
            properties,
            body,
        }),
    })
}

/// Truncates to microseconds; `None` for a leap second, which Python
/// cannot represent (the general path rejects it with a reason).
fn to_micros(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let nanos = t.timestamp_subsec_nanos();
    if nanos >= 1_000_000_000 {
        return None;
    }
    t.with_nanosecond(nanos / 1000 * 1000)
}

/// Reads an envelope that did not fit the typed form: lenient JSON, each
/// field on its own.
fn slow_decode(raw: &[u8], list_queue: &str) -> Decoded {
    let mut fields = match wire::json::to_value(raw) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            return unreadable(
                format!(
                    "envelope must be a JSON object, got {}",
                    wire::parts::type_name(&other)
                ),
                list_queue,
            )
        }
        Err(e) => {
            return unreadable(
                format!("envelope is not JSON: {}", e.chain_text()),
                list_queue,
            )
        }
    };
    let body = match fields.remove("body") {
        Some(Value::String(s)) => Ok(Cow::Owned(s)),
        None | Some(Value::Null) => Err("envelope has no body".to_owned()),
        Some(other) => Err(format!(
            "envelope body must be a string, got {}",
            wire::parts::type_name(&other)
        )),
    };
    let content_type = match fields.remove("content-type") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "content-type must be a string, got {}",
            wire::parts::type_name(&other)
        )),
    };
    let content_encoding = match fields.remove("content-encoding") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let headers = match fields.remove("headers") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(format!(
            "headers must be an object, got {}",
            wire::parts::type_name(&other)
        )),
    };
    let (properties, body_encoding) = lenient_properties(fields.remove("properties"));
    finish(
        Parts {
            body,
            content_type,
            content_encoding,
            headers,
            body_encoding,
        },
        properties,
        list_queue,
    )
}

fn unreadable(reason: String, list_queue: &str) -> Decoded {
    let e = WireError {
        kind: WireErrorKind::Decode,
        id: None,
        task: None,
        reason,
    };
    Decoded {
        message: Err(e.into_error()),
        id: None,
        task: None,
        delivery_tag: None,
        exchange: String::new(),
        routing_key: list_queue.to_owned(),
        priority: 0,
    }
}

fn finish(parts: Parts<'_>, mut properties: Properties, list_queue: &str) -> Decoded {
    if properties.delivery_info.exchange.is_empty()
        && properties.delivery_info.routing_key.is_empty()
    {
        properties.delivery_info.routing_key = list_queue.to_owned();
    }
    let delivery_tag = properties.delivery_tag.clone();
    let exchange = properties.delivery_info.exchange.clone();
    let routing_key = properties.delivery_info.routing_key.clone();
    let priority = properties.priority.unwrap_or(0).min(9);
    let (mut id, mut task) = (None, None);
    if let Ok(h) = &parts.headers {
        if let Some(Value::String(s)) = h.get("id") {
            id = Some(TaskId::from(s.as_str()));
        }
        if let Some(Value::String(s)) = h.get("task") {
            task = Some(s.clone());
        }
    }
    let message = match build(parts, properties, &id, &task) {
        Ok(m) => {
            id = Some(m.headers.id.clone());
            task = Some(m.headers.task.clone());
            Ok(m)
        }
        Err(e) => {
            // A v1 body may have told us the id and name.
            if e.id.is_some() {
                id.clone_from(&e.id);
            }
            if e.task.is_some() {
                task.clone_from(&e.task);
            }
            Err(e.into_error())
        }
    };
    Decoded {
        message,
        id,
        task,
        delivery_tag,
        exchange,
        routing_key,
        priority,
    }
}

/// Unwraps the body and hands the parts to [`wire::message_from_parts`].
fn build(
    parts: Parts<'_>,
    properties: Properties,
    id: &Option<TaskId>,
    task: &Option<String>,
) -> Result<Message, WireError> {
    let fail = |kind, reason| WireError {
        kind,
        id: id.clone(),
        task: task.clone(),
        reason,
    };
    let headers = parts
        .headers
        .map_err(|r| fail(WireErrorKind::InvalidTask, r))?;
    let content_type = parts
        .content_type
        .map_err(|r| fail(WireErrorKind::InvalidTask, r))?;
    let text = parts.body.map_err(|r| fail(WireErrorKind::Decode, r))?;
    let encoding = parts
        .body_encoding
        .map_err(|r| fail(WireErrorKind::Decode, r))?;
    let bytes =
        body_bytes(&text, encoding.as_deref()).map_err(|r| fail(WireErrorKind::Decode, r))?;
    wire::message_from_parts(
        headers,
        properties,
        &bytes,
        content_type.as_deref(),
        parts.content_encoding.as_deref(),
    )
}

/// The body's bytes per `body_encoding`.
fn body_bytes<'a>(text: &'a Cow<'a, str>, encoding: Option<&str>) -> Result<Cow<'a, [u8]>, String> {
    match encoding {
        None => Ok(Cow::Borrowed(text.as_bytes())),
        Some(e) if e.eq_ignore_ascii_case("base64") => decode_base64(text).map(Cow::Owned),
        Some(e) if e.eq_ignore_ascii_case("utf-8") => Ok(Cow::Borrowed(text.as_bytes())),
        Some(other) => Err(format!(
            "unknown body_encoding `{other}` (expected base64 or utf-8)"
        )),
    }
}

/// Standard base64 with padding; on failure, as Python's `b64decode` does,
/// whitespace is skipped and padding is optional.
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    match STANDARD.decode(text) {
        Ok(b) => Ok(b),
        Err(first) => {
            const LENIENT: GeneralPurpose = GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                GeneralPurposeConfig::new()
                    .with_decode_padding_mode(DecodePaddingMode::Indifferent),
            );
            let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            LENIENT
                .decode(compact)
                .map_err(|_| format!("body is not valid base64: {first}"))
        }
    }
}

fn empty_properties() -> Properties {
    Properties {
        correlation_id: None,
        reply_to: None,
        delivery_mode: None,
        priority: None,
        expiration: None,
        delivery_info: DeliveryInfo::default(),
        body_encoding: None,
        delivery_tag: None,
        extra: Map::new(),
    }
}

/// Reads properties field by field, dropping mistyped values, so routing
/// and the delivery tag survive a bad neighbour. Returns the body encoding
/// separately: a mistyped one must fail the message, not read as absent.
fn lenient_properties(v: Option<Value>) -> (Properties, Result<Option<String>, String>) {
    let mut p = empty_properties();
    let Some(Value::Object(mut m)) = v else {
        return (p, Ok(None));
    };
    let text = |m: &mut Map<String, Value>, k: &str| match m.remove(k) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    p.correlation_id = text(&mut m, "correlation_id");
    p.reply_to = text(&mut m, "reply_to");
    p.delivery_tag = text(&mut m, "delivery_tag");
    p.expiration = match m.remove("expiration") {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    p.delivery_mode = m
        .remove("delivery_mode")
        .and_then(|v| v.as_u64())
        .and_then(|n| u8::try_from(n).ok());
    p.priority = m.remove("priority").and_then(|v| match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(|n| n.min(255) as u8),
        _ => None,
    });
    if let Some(Value::Object(mut di)) = m.remove("delivery_info") {
        p.delivery_info = DeliveryInfo {
            exchange: text(&mut di, "exchange").unwrap_or_default(),
            routing_key: text(&mut di, "routing_key").unwrap_or_default(),
        };
    }
    let body_encoding = match m.remove("body_encoding") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "unknown body_encoding {other} (expected base64 or utf-8)"
        )),
    };
    p.extra = m;
    (p, body_encoding)
}

// ---------------------------------------------------------------------------
// Restore and keys

/// Returns the envelope marked as kombu's restore marks it:
/// `headers.redelivered = true` and `properties.delivery_info.redelivered =
/// true` (each only where that object exists, as in kombu); everything else
/// is kept. `None` if `raw` is not a strict-JSON object (push it back
/// unchanged then).
pub fn redelivered(raw: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(raw).ok()?;
    let env = v.as_object_mut()?;
    if let Some(Value::Object(h)) = env.get_mut("headers") {
        h.insert("redelivered".to_owned(), Value::Bool(true));
    }
    if let Some(Value::Object(p)) = env.get_mut("properties") {
        if let Some(Value::Object(di)) = p.get_mut("delivery_info") {
            di.insert("redelivered".to_owned(), Value::Bool(true));
        }
    }
    serde_json::to_vec(&v).ok()
}

/// Returns an entry's wire priority (`properties.priority`, clamped to
/// 0..=9; 0 when absent or unreadable) without decoding the rest: for
/// choosing the list to put an entry back on.
///
/// ```
/// use celeriac_redis::envelope::priority_of;
/// assert_eq!(priority_of(br#"{"body": "", "properties": {"priority": 6}}"#), 6);
/// assert_eq!(priority_of(b"not json"), 0);
/// ```
pub fn priority_of(raw: &[u8]) -> u8 {
    #[derive(Deserialize)]
    struct Env {
        #[serde(default)]
        properties: Option<Props>,
    }
    #[derive(Deserialize)]
    struct Props {
        #[serde(default)]
        priority: Option<Value>,
    }
    let priority = match serde_json::from_slice::<Env>(raw) {
        Ok(env) => env.properties.and_then(|p| p.priority),
        Err(_) => match wire::json::to_value(raw) {
            Ok(v) => v.pointer("/properties/priority").cloned(),
            Err(_) => None,
        },
    };
    match priority {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map_or(0, |p| p.min(9) as u8),
        _ => 0,
    }
}

/// Returns the list key for `queue` at wire `priority` (§4.3): the step is
/// the largest of `steps` not above the priority (clamped to 0..=9); step 0
/// is the bare queue name, any other `<queue><sep><step>`.
///
/// As in kombu, a priority below every step takes the largest step.
///
/// ```
/// use celeriac_redis::envelope::{priority_key, DEFAULT_SEP, DEFAULT_STEPS};
/// assert_eq!(priority_key("celery", 0, &DEFAULT_STEPS, DEFAULT_SEP), "celery");
/// assert_eq!(priority_key("celery", 5, &DEFAULT_STEPS, DEFAULT_SEP), "celery\x06\x163");
/// assert_eq!(priority_key("emails", 9, &DEFAULT_STEPS, DEFAULT_SEP), "emails\x06\x169");
/// ```
pub fn priority_key(queue: &str, priority: u8, steps: &[u8], sep: &str) -> String {
    let priority = priority.min(9);
    let step = steps
        .iter()
        .copied()
        .filter(|&s| s <= priority)
        .max()
        .or_else(|| steps.iter().copied().max())
        .unwrap_or(0);
    if step == 0 {
        queue.to_owned()
    } else {
        format!("{queue}{sep}{step}")
    }
}

/// Returns the queue a list key belongs to: the key without a trailing
/// `<sep><digits>` priority suffix.
///
/// ```
/// use celeriac_redis::envelope::{queue_of_key, DEFAULT_SEP};
/// assert_eq!(queue_of_key("celery\x06\x163", DEFAULT_SEP), "celery");
/// assert_eq!(queue_of_key("celery", DEFAULT_SEP), "celery");
/// ```
pub fn queue_of_key<'a>(key: &'a str, sep: &str) -> &'a str {
    if sep.is_empty() {
        return key;
    }
    match key.rsplit_once(sep) {
        Some((queue, step)) if !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()) => {
            queue
        }
        _ => key,
    }
}

#[cfg(test)]
mod tests;
