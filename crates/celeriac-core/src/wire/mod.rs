//! Python's dialect on the wire: what Celery and kombu actually send, read
//! into a [`Message`](crate::Message), shared by the Redis and AMQP backends.
//!
//! Python's side is not strict JSON and not always protocol v2 (see
//! `celery-protocol.md` §1.5, §3 and §10). This module takes the parts a
//! transport delivered (headers, properties, body bytes, content type and
//! encoding) and either builds a protocol-v2 message or says clearly why the
//! message must be rejected, with the task id and name when they were
//! readable, so a worker can store a FAILURE for it.
//!
//! | module | what it holds |
//! |---|---|
//! | [`json`] | lenient JSON: `NaN`/`Infinity`, lone surrogates, huge integers |
//! | [`compress`] | kombu's body compressions and Celery 5.7's compressed results |
//! | [`time`] | ISO-8601 as Python's `dateutil.isoparse` reads it, and as Celery writes it |
//! | [`parts`] | [`message_from_parts`]: v2, hybrid and v1 bodies to one [`Message`](crate::Message) |
//! | [`repr`] | Python's `repr()` of args and kwargs, for the `argsrepr`/`kwargsrepr` headers |
//!
//! Everything here is pure: no I/O, and no input can make it panic.

pub mod compress;
pub mod json;
pub mod parts;
pub mod repr;
pub mod time;

pub use parts::{message_from_parts, WireError, WireErrorKind};
