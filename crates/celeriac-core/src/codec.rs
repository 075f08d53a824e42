//! Encoding a [`Message`] to bytes and back.
//!
//! The stored form is one JSON object `{"headers", "properties", "body"}`
//! whose parts are exactly Celery's protocol v2 shapes. Backends that keep
//! messages as bytes (SQLite) use it; the Redis and AMQP backends wrap the
//! same parts in their own envelopes.

use crate::error::{Error, ErrorKind};
use crate::message::Message;

/// Encodes a message to its stored JSON form.
///
/// ```
/// use celeriac_core::{codec, Message};
/// let m = Message::new("tasks.noop", vec![], Default::default());
/// let bytes = codec::encode(&m).unwrap();
/// assert_eq!(codec::decode(&bytes).unwrap(), m);
/// ```
pub fn encode(message: &Message) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(message)
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot encode message", e))
}

/// Decodes a message from its stored JSON form.
///
/// A message that is not JSON, lacks `task` or `id`, or has a body that is
/// not `[args, kwargs, embed]` gives an [`ErrorKind::Malformed`] error whose
/// text says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Message, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::with_source(ErrorKind::Malformed, "malformed task message", e))
}

/// Returns the length of a message's stored form without building it.
///
/// ```
/// use celeriac_core::{codec, Message};
/// let m = Message::new("tasks.noop", vec![], Default::default());
/// assert_eq!(codec::encoded_len(&m).unwrap(), codec::encode(&m).unwrap().len());
/// ```
pub fn encoded_len(message: &Message) -> Result<usize, Error> {
    /// Counts bytes instead of storing them.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    serde_json::to_writer(&mut c, message)
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot encode message", e))?;
    Ok(c.0)
}

/// Checks an encoded size against a limit, giving a clear error.
pub fn check_size(len: usize, limit: usize) -> Result<(), Error> {
    if len > limit {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!("task message is {len} bytes, over the limit of {limit} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    #[test]
    fn malformed_inputs_give_malformed_errors() {
        for bad in [
            &b"not json"[..],
            br#"{"headers": {}, "properties": {}, "body": [[], {}, {}]}"#,
            br#"{"headers": {"task": "t", "id": "x"}, "properties": {}, "body": {"args": []}}"#,
            br#"{"headers": {"task": "t", "id": "x"}, "properties": {}, "body": [1, {}, {}]}"#,
        ] {
            let err = decode(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
        }
    }

    #[test]
    fn size_limit_is_checked() {
        assert!(check_size(10, 10).is_ok());
        let err = check_size(11, 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
        assert!(err.to_string().contains("11 bytes"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z0-9 ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trips_any_args(
            args in prop::collection::vec(arb_json(), 0..5),
            kwargs in prop::collection::btree_map("[a-z]{1,8}", arb_json(), 0..4),
            retries in 0u32..100,
            priority in proptest::option::of(0u8..10),
        ) {
            let kwargs: Map<String, Value> = kwargs.into_iter().collect();
            let mut m = Message::new("tasks.x", args, kwargs);
            m.headers.retries = retries;
            m.properties.priority = priority;
            let back = decode(&encode(&m).unwrap()).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
