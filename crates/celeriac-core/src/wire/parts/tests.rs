//! Decoding cases of `celery-protocol.md` §10 and the §3 examples.

use super::*;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use std::io::Write;

const ID: &str = "df12b566-ccc4-45f2-8147-01405fcb16b8";
const JSON: Option<&str> = Some("application/json");
const UTF8: Option<&str> = Some("utf-8");

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn props() -> Properties {
    serde_json::from_value(json!({
        "correlation_id": ID, "reply_to": "", "delivery_mode": 2, "priority": 0,
        "delivery_info": {"exchange": "", "routing_key": "celery"},
        "body_encoding": "base64", "delivery_tag": "t1"
    }))
    .unwrap()
}

fn python_headers() -> Map<String, Value> {
    obj(json!({"lang": "py", "task": "tasks.add", "id": ID,
       "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null,
       "retries": 0, "timelimit": [null, null], "root_id": ID,
       "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen13260@host1",
       "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}))
}

const BODY: &[u8] =
    br#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;

fn decode(headers: Value, body: &[u8]) -> Result<Message, WireError> {
    message_from_parts(obj(headers), props(), body, JSON, UTF8)
}

fn rejected(headers: Value, body: &[u8]) -> WireError {
    decode(headers, body).unwrap_err()
}

#[test]
fn python_v2_message() {
    let m = message_from_parts(python_headers(), props(), BODY, JSON, UTF8).unwrap();
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.headers.id.as_str(), ID);
    assert_eq!(m.headers.root_id.as_ref().map(TaskId::as_str), Some(ID));
    assert_eq!(m.headers.argsrepr.as_deref(), Some("(2, 3)"));
    assert_eq!(m.headers.origin.as_deref(), Some("gen13260@host1"));
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);
    assert!(m.body.kwargs.is_empty());
    assert_eq!(m.body.embed, Embed::default());
    assert_eq!(m.properties, props());
}

#[test]
fn row6_missing_id_is_rejected() {
    let e = rejected(json!({"task": "tasks.add"}), BODY);
    assert_eq!(e.kind, WireErrorKind::InvalidTask);
    assert_eq!(e.id, None);
    assert_eq!(e.task.as_deref(), Some("tasks.add"));
    assert!(e.reason.contains("no task id"), "{e}");
    let e = rejected(json!({"task": "tasks.add", "id": 7}), BODY);
    assert!(e.reason.contains("task id must be a string"), "{e}");
}

#[test]
fn row7_invalid_body_json_keeps_the_id() {
    let e = rejected(json!({"task": "tasks.add", "id": ID}), b"[[2, 3], {}, {");
    assert_eq!(e.kind, WireErrorKind::Decode);
    assert_eq!(e.kind.exc_type(), "DecodeError");
    assert_eq!(e.id.as_ref().map(TaskId::as_str), Some(ID));
    assert!(e.reason.contains("cannot decode message body"), "{e}");
    let err: Error = e.into();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(err.to_string().contains(ID), "{err}");
}

#[test]
fn row8_two_element_body_is_rejected() {
    let e = rejected(json!({"task": "tasks.add", "id": ID}), b"[[1], {}]");
    assert_eq!(e.kind, WireErrorKind::InvalidTask);
    assert_eq!(e.kind.exc_type(), "InvalidTaskError");
    assert_eq!(e.id.as_ref().map(TaskId::as_str), Some(ID));
    assert!(e.reason.contains("got 2 elements"), "{e}");
    for body in [&b"[]"[..], b"[[1]]", b"[[1], {}, {}, {}]"] {
        let e = rejected(json!({"task": "t", "id": ID}), body);
        assert!(e.reason.contains("[args, kwargs, embed]"), "{e}");
    }
}

#[test]
fn row9_kwargs_and_args_of_the_wrong_type() {
    let e = rejected(json!({"task": "t", "id": ID}), b"[[1], [2], {}]");
    assert!(
        e.reason.contains("kwargs must be an object, got an array"),
        "{e}"
    );
    let e = rejected(json!({"task": "t", "id": ID}), b"[{}, {}, {}]");
    assert!(
        e.reason.contains("args must be an array, got an object"),
        "{e}"
    );
    let e = rejected(json!({"task": "t", "id": ID}), b"[[], {}, 5]");
    assert!(e.reason.contains("embed must be an object"), "{e}");
    let e = rejected(
        json!({"task": "t", "id": ID}),
        br#"[[], {}, {"callbacks": 5}]"#,
    );
    assert!(e.reason.contains("invalid embed"), "{e}");
    let e = rejected(json!({"task": "t", "id": ID}), b"\"text\"");
    assert!(e.reason.contains("got a string"), "{e}");
}

#[test]
fn row12_untrusted_content_types_are_refused() {
    for ct in [
        "application/x-python-serialize",
        "application/x-yaml",
        "application/x-msgpack",
        "application/data",
        "text/plain",
    ] {
        let e = message_from_parts(python_headers(), props(), BODY, Some(ct), Some("binary"))
            .unwrap_err();
        assert_eq!(e.kind, WireErrorKind::ContentDisallowed, "{ct}");
        assert_eq!(e.kind.exc_module(), "kombu.exceptions");
        assert_eq!(e.id.as_ref().map(TaskId::as_str), Some(ID));
        assert!(
            e.reason
                .contains("refusing to deserialize untrusted content"),
            "{e}"
        );
        assert!(e.reason.contains(ct), "{e}");
    }
    // Parameters and case do not matter for JSON.
    for ct in ["application/json; charset=utf-8", "Application/JSON"] {
        message_from_parts(python_headers(), props(), BODY, Some(ct), None).unwrap();
    }
}

#[test]
fn row13_missing_content_type_reads_json_if_it_parses() {
    let m = message_from_parts(python_headers(), props(), BODY, None, None).unwrap();
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);
    let e = message_from_parts(python_headers(), props(), b"\x80\x04\x95", None, None).unwrap_err();
    assert_eq!(e.kind, WireErrorKind::Decode);
    assert!(e.reason.contains("no content type"), "{e}");
}

#[test]
fn row15_eta_and_expires_like_dateutil() {
    let want = Utc.with_ymd_and_hms(2026, 11, 23, 11, 1, 56).unwrap()
        + chrono::Duration::microseconds(630_562);
    for eta in [
        "2026-11-23T11:01:56.630562+00:00",
        "2026-11-23T11:01:56.630562Z",
        "2026-11-23T11:01:56.630562789Z",
        "2026-11-23 11:01:56.630562+00:00",
        "2026-11-23T11:01:56.630562",
    ] {
        let m = decode(
            json!({"task": "t", "id": ID, "eta": eta, "expires": eta}),
            BODY,
        )
        .unwrap();
        assert_eq!(m.headers.eta, Some(want), "{eta}");
        assert_eq!(m.headers.expires, Some(want), "{eta}");
    }
    let e = rejected(json!({"task": "t", "id": ID, "eta": "tomorrow"}), BODY);
    assert_eq!(e.id.as_ref().map(TaskId::as_str), Some(ID));
    assert!(
        e.reason.contains("`eta`") && e.reason.contains("tomorrow"),
        "{e}"
    );
    let e = rejected(json!({"task": "t", "id": ID, "expires": 12}), BODY);
    assert!(
        e.reason.contains("`expires` must be an ISO-8601 string"),
        "{e}"
    );
}

#[test]
fn row18_minimal_headers_and_null_retries() {
    let m = decode(
        json!({"task": "tasks.add", "id": ID, "retries": null}),
        BODY,
    )
    .unwrap();
    assert_eq!(m.headers.retries, 0);
    assert_eq!(m.headers.root_id, None);
    assert_eq!(m.headers.timelimit, Default::default());
    let m = decode(json!({"task": "t", "id": ID, "timelimit": [1, 2.5]}), BODY).unwrap();
    assert_eq!(m.headers.timelimit.hard, Some(1.0));
    assert_eq!(m.headers.timelimit.soft, Some(2.5));
    let m = decode(json!({"task": "t", "id": ID, "timelimit": [null, 1]}), BODY).unwrap();
    assert_eq!(m.headers.timelimit.hard, None);
    assert_eq!(m.headers.timelimit.soft, Some(1.0));
    // Unknown headers are carried.
    let m = decode(json!({"task": "t", "id": ID, "x-custom": [1]}), BODY).unwrap();
    assert_eq!(m.headers.extra.get("x-custom"), Some(&json!([1])));
}

#[test]
fn embed_may_be_null_or_partial() {
    let m = decode(json!({"task": "t", "id": ID}), b"[[], {}, null]").unwrap();
    assert_eq!(m.body.embed, Embed::default());
    let m = decode(json!({"task": "t", "id": ID}), b"[[], {}, {}]").unwrap();
    assert_eq!(m.body.embed, Embed::default());
    let sig = json!({"task": "tasks.echo", "args": ["linked"], "kwargs": {}, "options": {},
        "subtask_type": null, "immutable": false});
    let body = serde_json::to_vec(&json!([[1, 2], {}, {"callbacks": [sig], "other": 1}])).unwrap();
    let m = decode(json!({"task": "t", "id": ID}), &body).unwrap();
    assert_eq!(m.body.embed.callbacks, Some(vec![sig]));
    assert_eq!(m.body.embed.chain, None);
}

#[test]
fn row19_protocol_v1_is_converted() {
    let body = br#"{"task":"tasks.add","id":"dca8bbd7-0000","args":[2,3],"kwargs":{},"group":null,"group_index":null,
 "retries":0,"eta":"2026-11-23T11:13:01.331223+00:00","expires":null,"utc":true,
 "callbacks":null,"errbacks":null,"timelimit":[null,null],"taskset":"grp-1","chord":null}"#;
    let m = message_from_parts(Map::new(), props(), body, JSON, UTF8).unwrap();
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.headers.id.as_str(), "dca8bbd7-0000");
    assert_eq!(m.headers.group.as_deref(), Some("grp-1"));
    assert_eq!(
        m.headers.eta,
        Some(
            Utc.with_ymd_and_hms(2026, 11, 23, 11, 13, 1).unwrap()
                + chrono::Duration::microseconds(331_223)
        )
    );
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);
    assert_eq!(m.body.embed, Embed::default());
    // Body-only fields do not leak into the headers.
    assert!(m.headers.extra.is_empty(), "{:?}", m.headers.extra);
}

#[test]
fn hybrid_message_takes_headers_over_body() {
    let body =
        br#"{"args": [1], "kwargs": {"y": 2}, "task": "from.body", "callbacks": [{"task": "cb"}]}"#;
    let m = decode(json!({"task": "tasks.add", "id": ID}), body).unwrap();
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.body.args, vec![json!(1)]);
    assert_eq!(m.body.kwargs, obj(json!({"y": 2})));
    assert_eq!(m.body.embed.callbacks, Some(vec![json!({"task": "cb"})]));
    let e = rejected(
        json!({"task": "t", "id": ID}),
        br#"{"args": [], "kwargs": []}"#,
    );
    assert!(e.reason.contains("kwargs must be an object"), "{e}");
    // Missing args/kwargs default to empty, as in Python.
    let m = decode(json!({"task": "t", "id": ID}), br#"{"kwargs": {"a": 1}}"#).unwrap();
    assert!(m.body.args.is_empty());
}

#[test]
fn row20_object_body_without_task_is_rejected() {
    let e = message_from_parts(
        Map::new(),
        props(),
        br#"{"id": "x1", "args": []}"#,
        JSON,
        UTF8,
    )
    .unwrap_err();
    assert_eq!(e.kind, WireErrorKind::InvalidTask);
    assert_eq!(e.id.as_ref().map(TaskId::as_str), Some("x1"));
    assert!(e.reason.contains("no task name"), "{e}");
    let e = message_from_parts(Map::new(), props(), BODY, JSON, UTF8).unwrap_err();
    assert!(e.reason.contains("no task name"), "{e}");
    assert_eq!(e.to_string(), "rejected message: message has no task name");
}

#[test]
fn row22_nan_and_infinity_in_args() {
    let body = br#"[[NaN, Infinity, -Infinity, 1.5], {"x": NaN}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
    let m = message_from_parts(python_headers(), props(), body, JSON, UTF8).unwrap();
    assert_eq!(
        m.body.args,
        vec![
            json!("NaN"),
            json!("Infinity"),
            json!("-Infinity"),
            json!(1.5)
        ]
    );
    assert_eq!(m.body.kwargs["x"], json!("NaN"));
    let x: json::PyFloat = serde_json::from_value(m.body.args[1].clone()).unwrap();
    assert_eq!(x.0, f64::INFINITY);
}

#[test]
fn row23_and_section3_tagged_values_unicode_big_ints() {
    let body = r#"[[{"__type__": "datetime", "__value__": "2026-01-02T03:04:05+00:00"},
        {"__type__": "uuid", "__value__": {"hex": "00000000000000000000000000000001"}},
        {"__type__": "decimal", "__value__": "1.50"}, {"__type__": "bytes", "__value__": "raw"},
        {"__type__": "base64", "__value__": "/wA="}, {"__type__": "unknown", "__value__": 1},
        "caf\u00e9 \u2603 \ud83d\ude00", "raw ☃", 1180591620717411303424, "\ud800"],
        {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
        .as_bytes();
    let m = message_from_parts(python_headers(), props(), body, JSON, UTF8).unwrap();
    let a = &m.body.args;
    assert_eq!(
        a[0],
        json!({"__type__": "datetime", "__value__": "2026-01-02T03:04:05+00:00"})
    );
    assert_eq!(a[1]["__value__"]["hex"], "00000000000000000000000000000001");
    assert_eq!(a[5], json!({"__type__": "unknown", "__value__": 1}));
    assert_eq!(a[6], json!("café ☃ 😀"));
    assert_eq!(a[7], json!("raw ☃"));
    assert_eq!(a[8].as_f64(), Some(2f64.powi(70)));
    assert_eq!(a[9], json!("\u{fffd}"));
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn compression_header_is_applied_and_removed() {
    let mut h = python_headers();
    h.insert("compression".into(), json!("application/x-gzip"));
    let m = message_from_parts(h, props(), &zlib(BODY), JSON, UTF8).unwrap();
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);
    assert!(!m.headers.extra.contains_key("compression"));

    let mut h = python_headers();
    h.insert("compression".into(), json!("application/x-gzip"));
    let e = message_from_parts(h, props(), BODY, JSON, UTF8).unwrap_err();
    assert_eq!(e.kind, WireErrorKind::Decode);
    assert_eq!(e.id.as_ref().map(TaskId::as_str), Some(ID));

    let mut h = python_headers();
    h.insert("compression".into(), json!("application/x-brotli"));
    let e = message_from_parts(h, props(), BODY, JSON, UTF8).unwrap_err();
    assert!(e.reason.contains("not supported"), "{e}");
}

#[test]
fn bad_header_types_are_reported() {
    let e = rejected(json!({"task": "t", "id": ID, "group_index": "x"}), BODY);
    assert!(e.reason.contains("invalid headers"), "{e}");
    let e = rejected(json!({"task": ["t"], "id": ID}), BODY);
    assert!(e.reason.contains("task name must be a string"), "{e}");
}

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..200),
        ct in prop::option::of(prop_oneof![Just("application/json"), Just("application/x-yaml")]),
    ) {
        let _ = message_from_parts(python_headers(), props(), &body, ct, None);
        let _ = message_from_parts(Map::new(), props(), &body, ct, None);
    }

    #[test]
    fn json_shaped_bodies_never_panic(s in r#"[\[\]{}",:0-9a-z_ NaI-]{0,80}"#) {
        let _ = message_from_parts(python_headers(), props(), s.as_bytes(), JSON, None);
        let _ = message_from_parts(Map::new(), props(), s.as_bytes(), JSON, None);
    }
}
