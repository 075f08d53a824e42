//! Building a protocol-v2 [`Message`] from what a transport delivered.
//!
//! [`message_from_parts`] takes headers, properties, body bytes, content
//! type and content encoding (a Redis envelope's fields, or an AMQP
//! delivery's) and accepts what a Python worker accepts
//! (`celery-protocol.md` §1.5, §3, §10):
//!
//! * **v2**: headers with `task` and `id`, body `[args, kwargs, embed]`;
//!   the embed may be `null` or lack keys;
//! * **hybrid**: v2 headers and an object body with `args`/`kwargs`;
//! * **v1**: empty headers and an object body holding `task`, `id`, `args`,
//!   `kwargs`, `eta`, `expires`, `retries`, `taskset`, `utc`, `timelimit`,
//!   `callbacks`, `errbacks`, `chord`; converted to v2.
//!
//! Everything else becomes a [`WireError`] saying why, with the task id and
//! name when they were readable so the worker can store a FAILURE.
//! `eta`/`expires` are read with [`time::parse`] (naive is
//! UTC, also for v1 messages with `utc: false`). A `compression` header is
//! applied and removed, so re-publishing the message sends it uncompressed.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{compress, json, time};
use crate::error::{Error, ErrorKind};
use crate::id::TaskId;
use crate::message::{Body, Embed, Headers, Message, Properties};

/// Why a delivered message cannot be run, in Python's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireErrorKind {
    /// The content type is not JSON (pickle, yaml, msgpack, unknown):
    /// refused unread, as Python's default `accept_content` does.
    ContentDisallowed,
    /// The body could not be decompressed or is not JSON.
    Decode,
    /// The JSON does not have the shape of a task message.
    InvalidTask,
}

impl WireErrorKind {
    /// The Python exception class Celery/kombu would raise.
    pub fn exc_type(self) -> &'static str {
        match self {
            WireErrorKind::ContentDisallowed => "ContentDisallowed",
            WireErrorKind::Decode => "DecodeError",
            WireErrorKind::InvalidTask => "InvalidTaskError",
        }
    }

    /// The Python module of [`exc_type`](Self::exc_type).
    pub fn exc_module(self) -> &'static str {
        match self {
            WireErrorKind::ContentDisallowed | WireErrorKind::Decode => "kombu.exceptions",
            WireErrorKind::InvalidTask => "celery.exceptions",
        }
    }
}

/// A delivered message that cannot be run: why, and whose it was.
///
/// Converts into a [`celeriac_core::Error`](Error) of kind
/// [`ErrorKind::Malformed`] with the same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct WireError {
    /// What class of problem it is.
    pub kind: WireErrorKind,
    /// The task id, when it was readable.
    pub id: Option<TaskId>,
    /// The task name, when it was readable.
    pub task: Option<String>,
    /// What is wrong, in words.
    pub reason: String,
}

impl WireError {
    fn new(kind: WireErrorKind, ctx: &Ctx, reason: impl Into<String>) -> Self {
        WireError {
            kind,
            id: ctx.id.clone(),
            task: ctx.task.clone(),
            reason: reason.into(),
        }
    }

    fn describe(&self) -> String {
        match (&self.task, &self.id) {
            (Some(t), Some(id)) => format!("rejected task {t}[{id}]: {}", self.reason),
            (None, Some(id)) => format!("rejected task [{id}]: {}", self.reason),
            (Some(t), None) => format!("rejected task {t} (no id): {}", self.reason),
            (None, None) => format!("rejected message: {}", self.reason),
        }
    }

    /// Converts into the shared error type (kind [`ErrorKind::Malformed`]).
    pub fn into_error(self) -> Error {
        Error::new(ErrorKind::Malformed, self.describe())
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        e.into_error()
    }
}

/// The id and task name known so far, for error context.
#[derive(Default)]
struct Ctx {
    id: Option<TaskId>,
    task: Option<String>,
}

impl Ctx {
    fn learn(&mut self, fields: &Map<String, Value>) {
        if let Some(Value::String(id)) = fields.get("id") {
            self.id = Some(TaskId::from(id.as_str()));
        }
        if let Some(Value::String(t)) = fields.get("task") {
            self.task = Some(t.clone());
        }
    }
}

/// Header names a v1 or hybrid object body may carry (Celery's
/// `hybrid_to_proto2` list plus the v1 extras).
const BODY_HEADER_FIELDS: &[&str] = &[
    "lang",
    "task",
    "id",
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "meth",
    "shadow",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

/// Builds a protocol-v2 [`Message`] from a delivery's parts.
///
/// `content_type` `None` means the transport had none: the body is read as
/// JSON if it parses. `content_encoding` is informational (JSON is UTF-8).
///
/// ```
/// use celeriac_core::wire::message_from_parts;
/// use serde_json::{json, Map, Value};
///
/// let headers: Map<String, Value> = json!({"task": "tasks.add", "id": "abc"})
///     .as_object().unwrap().clone();
/// let props = serde_json::from_value(json!({})).unwrap();
/// let body = br#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
/// let m = message_from_parts(headers, props, body, Some("application/json"), Some("utf-8")).unwrap();
/// assert_eq!(m.headers.task, "tasks.add");
/// assert_eq!(m.body.args, vec![json!(2), json!(3)]);
///
/// let err = message_from_parts(Map::new(), serde_json::from_value(json!({})).unwrap(),
///     b"\x80\x04", Some("application/x-python-serialize"), Some("binary")).unwrap_err();
/// assert!(err.to_string().contains("refusing to deserialize untrusted content"));
/// ```
pub fn message_from_parts(
    mut headers: Map<String, Value>,
    properties: Properties,
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<Message, WireError> {
    let mut ctx = Ctx::default();
    ctx.learn(&headers);

    check_content_type(&ctx, content_type)?;

    let decompressed;
    let body = match headers.remove("compression") {
        None | Some(Value::Null) => body,
        Some(Value::String(name)) => {
            decompressed = compress::decompress(&name, body)
                .map_err(|e| WireError::new(WireErrorKind::Decode, &ctx, e.chain_text()))?;
            &decompressed[..]
        }
        Some(other) => {
            return Err(WireError::new(
                WireErrorKind::InvalidTask,
                &ctx,
                format!(
                    "`compression` header must be a string, got {}",
                    type_name(&other)
                ),
            ))
        }
    };

    if let Some(body) = strict_v2_body(body) {
        let headers = read_headers(&ctx, headers)?;
        return Ok(Message {
            headers,
            properties,
            body,
        });
    }

    let parsed = json::to_value(body).map_err(|e| {
        let what = match (content_type, content_encoding) {
            (None, _) => "message has no content type and its body is not JSON".to_owned(),
            (_, Some(enc)) if !is_utf8_name(enc) => {
                format!("cannot decode message body (content encoding `{enc}`)")
            }
            _ => "cannot decode message body".to_owned(),
        };
        WireError::new(
            WireErrorKind::Decode,
            &ctx,
            format!("{what}: {}", e.chain_text()),
        )
    })?;

    let body = match parsed {
        Value::Array(items) => v2_body(&ctx, items)?,
        Value::Object(fields) => object_body(&mut ctx, &mut headers, fields)?,
        other => {
            return Err(WireError::new(
                WireErrorKind::InvalidTask,
                &ctx,
                format!(
                    "body must be [args, kwargs, embed] or a protocol 1 object, got {}",
                    type_name(&other)
                ),
            ))
        }
    };

    let headers = read_headers(&ctx, headers)?;
    Ok(Message {
        headers,
        properties,
        body,
    })
}

/// Reads a v2 body `[args, kwargs, embed]` in one typed pass: strict
/// JSON, exactly three elements, `args` an array, `kwargs` an object, the
/// embed an object or `null`. `None` for anything else, which
/// [`message_from_parts`] then reads leniently or rejects with a reason.
///
/// This is the hot path's body reader; transports with a typed fast path
/// of their own (the Redis envelope) use it directly.
///
/// ```
/// use celeriac_core::wire::parts::strict_v2_body;
/// let b = strict_v2_body(br#"[[2, 3], {"x": 1}, null]"#).unwrap();
/// assert_eq!(b.args.len(), 2);
/// assert!(strict_v2_body(b"[[2, 3], {}]").is_none());
/// assert!(strict_v2_body(b"[[NaN], {}, {}]").is_none());
/// ```
pub fn strict_v2_body(bytes: &[u8]) -> Option<Body> {
    serde_json::from_slice::<StrictBody>(bytes)
        .ok()
        .map(|b| b.0)
}

struct StrictBody(Body);

impl<'de> Deserialize<'de> for StrictBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictBody;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[args, kwargs, embed]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictBody, A::Error> {
                let args: Vec<Value> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let kwargs: Map<String, Value> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let embed: Option<Embed> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(2, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(4, &self));
                }
                Ok(StrictBody(Body {
                    args,
                    kwargs,
                    embed: embed.unwrap_or_default(),
                }))
            }
        }
        d.deserialize_seq(V)
    }
}

fn check_content_type(ctx: &Ctx, content_type: Option<&str>) -> Result<(), WireError> {
    let Some(ct) = content_type else {
        return Ok(());
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(WireError::new(
        WireErrorKind::ContentDisallowed,
        ctx,
        format!(
            "refusing to deserialize untrusted content of type `{ct}` (only application/json is accepted)"
        ),
    ))
}

fn is_utf8_name(enc: &str) -> bool {
    ["utf-8", "utf8", "ascii", "us-ascii", "binary"]
        .iter()
        .any(|n| enc.trim().eq_ignore_ascii_case(n))
}

/// `[args, kwargs, embed]`: exactly three elements.
fn v2_body(ctx: &Ctx, items: Vec<Value>) -> Result<Body, WireError> {
    let invalid = |reason: String| WireError::new(WireErrorKind::InvalidTask, ctx, reason);
    if items.len() != 3 {
        let hint = if items.len() == 2 {
            " (the embed element is missing)"
        } else {
            ""
        };
        return Err(invalid(format!(
            "body must be [args, kwargs, embed], got {} elements{hint}",
            items.len()
        )));
    }
    let mut it = items.into_iter();
    let (args, kwargs, embed) = match (it.next(), it.next(), it.next()) {
        (Some(a), Some(k), Some(e)) => (a, k, e),
        _ => return Err(invalid("body must be [args, kwargs, embed]".to_owned())),
    };
    Ok(Body {
        args: args_of(ctx, args)?,
        kwargs: kwargs_of(ctx, kwargs)?,
        embed: embed_of(ctx, embed)?,
    })
}

/// A v1 or hybrid object body: arguments and embed from the body, headers
/// from the body's fields overlaid by the message headers (as Celery's
/// `hybrid_to_proto2` / `proto1_to_proto2` do).
fn object_body(
    ctx: &mut Ctx,
    headers: &mut Map<String, Value>,
    mut fields: Map<String, Value>,
) -> Result<Body, WireError> {
    if let Some(group) = fields.remove("taskset").filter(|g| !g.is_null()) {
        fields.insert("group".to_owned(), group);
    }
    let mut merged = Map::new();
    for name in BODY_HEADER_FIELDS {
        if let Some(v) = fields.remove(*name) {
            merged.insert((*name).to_owned(), v);
        }
    }
    merged.append(headers);
    *headers = merged;
    ctx.learn(headers);

    let args = match fields.remove("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(a) => args_of(ctx, a)?,
    };
    let kwargs = match fields.remove("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(k) => kwargs_of(ctx, k)?,
    };
    let mut embed = Map::new();
    for name in ["callbacks", "errbacks", "chord"] {
        if let Some(v) = fields.remove(name) {
            embed.insert(name.to_owned(), v);
        }
    }
    Ok(Body {
        args,
        kwargs,
        embed: embed_of(ctx, Value::Object(embed))?,
    })
}

fn args_of(ctx: &Ctx, v: Value) -> Result<Vec<Value>, WireError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(WireError::new(
            WireErrorKind::InvalidTask,
            ctx,
            format!("args must be an array, got {}", type_name(&other)),
        )),
    }
}

fn kwargs_of(ctx: &Ctx, v: Value) -> Result<Map<String, Value>, WireError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(WireError::new(
            WireErrorKind::InvalidTask,
            ctx,
            format!("kwargs must be an object, got {}", type_name(&other)),
        )),
    }
}

fn embed_of(ctx: &Ctx, v: Value) -> Result<Embed, WireError> {
    match v {
        Value::Null => Ok(Embed::default()),
        Value::Object(_) => serde_json::from_value(v).map_err(|e| {
            WireError::new(
                WireErrorKind::InvalidTask,
                ctx,
                format!("invalid embed: {e}"),
            )
        }),
        other => Err(WireError::new(
            WireErrorKind::InvalidTask,
            ctx,
            format!("embed must be an object, got {}", type_name(&other)),
        )),
    }
}

/// Checks `task` and `id`, reads `eta`/`expires` leniently, then the rest
/// with [`Headers`]' own serde.
fn read_headers(ctx: &Ctx, mut headers: Map<String, Value>) -> Result<Headers, WireError> {
    let invalid = |reason: String| WireError::new(WireErrorKind::InvalidTask, ctx, reason);
    match headers.get("task") {
        Some(Value::String(_)) => {}
        None | Some(Value::Null) => return Err(invalid("message has no task name".to_owned())),
        Some(other) => {
            return Err(invalid(format!(
                "task name must be a string, got {}",
                type_name(other)
            )))
        }
    }
    match headers.get("id") {
        Some(Value::String(_)) => {}
        None | Some(Value::Null) => return Err(invalid("message has no task id".to_owned())),
        Some(other) => {
            return Err(invalid(format!(
                "task id must be a string, got {}",
                type_name(other)
            )))
        }
    }
    let eta = take_time(ctx, &mut headers, "eta")?;
    let expires = take_time(ctx, &mut headers, "expires")?;
    let mut h: Headers = serde_json::from_value(Value::Object(headers))
        .map_err(|e| invalid(format!("invalid headers: {e}")))?;
    h.eta = eta;
    h.expires = expires;
    Ok(h)
}

fn take_time(
    ctx: &Ctx,
    headers: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, WireError> {
    match headers.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => time::parse(&s)
            .map(Some)
            .map_err(|e| WireError::new(WireErrorKind::InvalidTask, ctx, format!("`{name}`: {e}"))),
        Some(other) => Err(WireError::new(
            WireErrorKind::InvalidTask,
            ctx,
            format!(
                "`{name}` must be an ISO-8601 string, got {}",
                type_name(&other)
            ),
        )),
    }
}

/// Names a JSON value's kind for error messages ("an array", "null", ...).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
