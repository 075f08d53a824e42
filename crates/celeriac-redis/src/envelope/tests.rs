//! The captured kombu envelope, the §10 rows that live in the envelope, and
//! what a Python consumer sees of our output.

use super::*;
use celeriac_core::message::TimeLimit;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;

const ID: &str = "df12b566-ccc4-45f2-8147-01405fcb16b8";

/// `add.delay(2, 3)` as Celery 5.7 / kombu 5.7 wrote it (§4.2).
const CAPTURED: &str = r#"{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d",
 "content-encoding": "utf-8", "content-type": "application/json",
 "headers": {"lang": "py", "task": "tasks.add", "id": "df12b566-ccc4-45f2-8147-01405fcb16b8",
   "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null,
   "retries": 0, "timelimit": [null, null], "root_id": "df12b566-ccc4-45f2-8147-01405fcb16b8",
   "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen13260@host1",
   "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}},
 "properties": {"correlation_id": "df12b566-ccc4-45f2-8147-01405fcb16b8",
   "reply_to": "5f968c8c-49b6-344a-822b-e609ce66d58f", "delivery_mode": 2,
   "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
   "body_encoding": "base64", "delivery_tag": "d0673ac2-5a33-4a3e-8107-fe53e5c269ec"}}"#;

fn captured() -> Value {
    serde_json::from_str(CAPTURED).unwrap()
}

fn raw(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

fn err_text(d: &Decoded) -> String {
    match &d.message {
        Ok(m) => panic!("expected an error, got {m:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Malformed);
            e.to_string()
        }
    }
}

#[test]
fn decodes_the_captured_envelope() {
    let d = decode(CAPTURED.as_bytes(), "celery");
    assert_eq!(d.id.as_ref().map(TaskId::as_str), Some(ID));
    assert_eq!(d.task.as_deref(), Some("tasks.add"));
    assert_eq!(
        d.delivery_tag.as_deref(),
        Some("d0673ac2-5a33-4a3e-8107-fe53e5c269ec")
    );
    assert_eq!(d.exchange, "");
    assert_eq!(d.routing_key, "celery");
    assert_eq!(d.priority, 0);
    let m = d.message.unwrap();
    let h = &m.headers;
    assert_eq!(h.lang.as_deref(), Some("py"));
    assert_eq!(h.task, "tasks.add");
    assert_eq!(h.id.as_str(), ID);
    assert_eq!(h.shadow, None);
    assert_eq!(h.eta, None);
    assert_eq!(h.expires, None);
    assert_eq!(h.group, None);
    assert_eq!(h.group_index, None);
    assert_eq!(h.retries, 0);
    assert_eq!(h.timelimit, TimeLimit::default());
    assert_eq!(h.root_id.as_ref().map(TaskId::as_str), Some(ID));
    assert_eq!(h.parent_id, None);
    assert_eq!(h.argsrepr.as_deref(), Some("(2, 3)"));
    assert_eq!(h.kwargsrepr.as_deref(), Some("{}"));
    assert_eq!(h.origin.as_deref(), Some("gen13260@host1"));
    assert!(!h.ignore_result);
    assert_eq!(h.replaced_task_nesting, 0);
    assert_eq!(h.stamped_headers, None);
    assert!(h.stamps.is_empty());
    assert!(h.extra.is_empty());
    let p = &m.properties;
    assert_eq!(p.correlation_id.as_deref(), Some(ID));
    assert_eq!(
        p.reply_to.as_deref(),
        Some("5f968c8c-49b6-344a-822b-e609ce66d58f")
    );
    assert_eq!(p.delivery_mode, Some(2));
    assert_eq!(p.priority, Some(0));
    assert_eq!(p.delivery_info.exchange, "");
    assert_eq!(p.delivery_info.routing_key, "celery");
    assert_eq!(p.body_encoding.as_deref(), Some("base64"));
    assert_eq!(
        p.delivery_tag.as_deref(),
        Some("d0673ac2-5a33-4a3e-8107-fe53e5c269ec")
    );
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);
    assert!(m.body.kwargs.is_empty());
    assert_eq!(m.body.embed, Default::default());
}

/// What kombu and Celery do with our bytes: `json.loads`, base64 per
/// `body_encoding`, `json.loads` of the body, then read the keys they need.
fn python_view(raw: &[u8]) -> (Value, Value) {
    let env: Value = serde_json::from_slice(raw).expect("envelope is strict JSON");
    assert!(env.is_object());
    assert_eq!(env["content-type"], "application/json");
    assert_eq!(env["content-encoding"], "utf-8");
    let props = &env["properties"];
    assert_eq!(props["body_encoding"], "base64");
    assert!(props["delivery_tag"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert!(props["delivery_info"]["exchange"].is_string());
    assert!(props["delivery_info"]["routing_key"]
        .as_str()
        .is_some_and(|q| !q.is_empty()));
    let headers = &env["headers"];
    assert!(headers["id"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(headers["task"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(headers.get("compression").is_none());
    let body = STANDARD
        .decode(env["body"].as_str().expect("body is a string"))
        .expect("body is base64");
    let body: Value = serde_json::from_slice(&body).expect("body is strict JSON");
    let parts = body.as_array().expect("body is an array");
    assert_eq!(parts.len(), 3);
    assert!(parts[0].is_array());
    assert!(parts[1].is_object());
    let embed = parts[2].as_object().expect("embed is an object");
    for k in ["callbacks", "errbacks", "chain", "chord"] {
        assert!(embed.contains_key(k), "embed lacks {k}");
    }
    (env, body)
}

#[test]
fn encodes_what_python_expects() {
    let mut m = Message::new("tasks.add", vec![json!(2), json!(3)], Map::new());
    m.headers.origin = Some("gen1@h".into());
    let out = encode(&m, "tag-1").unwrap();
    let (env, body) = python_view(&out);
    assert_eq!(
        body,
        json!([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
    );
    let id = m.headers.id.as_str();
    assert_eq!(
        env["headers"],
        json!({"lang": "rs", "task": "tasks.add", "id": id, "shadow": null, "eta": null,
            "expires": null, "group": null, "group_index": null, "retries": 0,
            "timelimit": [null, null], "root_id": id, "parent_id": null, "argsrepr": "(2, 3)",
            "kwargsrepr": "{}", "origin": "gen1@h", "ignore_result": false,
            "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}})
    );
    assert_eq!(
        env["properties"],
        json!({"correlation_id": id, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": "tag-1"})
    );
    // Python-like key order for the top level.
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("{\"body\":"), "{text}");
}

#[test]
fn encodes_every_optional_field() {
    let mut m = Message::new("tasks.x", vec![json!("a")], Map::new());
    m.set_queue("emails");
    m.headers.eta = Some(Utc.with_ymd_and_hms(2026, 11, 23, 11, 1, 56).unwrap());
    m.headers.expires = Some(Utc.with_ymd_and_hms(2026, 11, 23, 11, 3, 26).unwrap());
    m.headers.timelimit = TimeLimit {
        hard: Some(10.0),
        soft: Some(2.5),
    };
    m.headers.retries = 2;
    m.headers.group = Some("g".into());
    m.headers.group_index = Some(1);
    m.headers.extra.insert("x-custom".into(), json!(1));
    m.headers.extra.insert("compression".into(), json!("gzip"));
    m.headers.extra.insert("redelivered".into(), json!(true));
    m.headers.extra.insert("task".into(), json!("shadowed"));
    m.properties.priority = Some(12);
    m.properties.reply_to = Some("oid".into());
    m.properties.expiration = Some("120000".into());
    m.properties.extra.insert("x-prop".into(), json!("v"));
    let (env, _) = python_view(&encode(&m, "t").unwrap());
    let h = &env["headers"];
    assert_eq!(h["eta"], "2026-11-23T11:01:56.000000+00:00");
    assert_eq!(h["expires"], "2026-11-23T11:03:26.000000+00:00");
    assert_eq!(h["timelimit"], json!([10, 2.5]));
    assert_eq!(h["retries"], 2);
    assert_eq!(h["group"], "g");
    assert_eq!(h["group_index"], 1);
    assert_eq!(h["argsrepr"], "('a',)");
    assert_eq!(h["x-custom"], 1);
    assert_eq!(h["task"], "tasks.x");
    assert!(h.get("redelivered").is_none());
    let p = &env["properties"];
    assert_eq!(p["priority"], 9);
    assert_eq!(p["reply_to"], "oid");
    assert_eq!(p["expiration"], "120000");
    assert_eq!(p["x-prop"], "v");
    assert_eq!(p["delivery_info"]["routing_key"], "emails");
}

#[test]
fn round_trips_through_decode() {
    let mut m = Message::new(
        "tasks.add",
        vec![json!(1), json!("☃ \u{1F600}")],
        Map::new(),
    );
    m.headers.eta = Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
    m.body.embed.callbacks = Some(vec![json!({"task": "tasks.echo", "args": [], "kwargs": {},
        "options": {}, "subtask_type": null, "immutable": false})]);
    let d = decode(&encode(&m, "tag").unwrap(), "celery");
    let back = d.message.unwrap();
    assert_eq!(back.body, m.body);
    assert_eq!(back.headers.eta, m.headers.eta);
    assert_eq!(back.headers.id, m.headers.id);
    assert_eq!(back.properties.delivery_tag.as_deref(), Some("tag"));
}

#[test]
fn encode_refuses_what_would_poison_python() {
    let mut m = Message::new("t", vec![], Map::new());
    m.set_queue("");
    assert_eq!(
        encode(&m, "tag").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let m = Message::new("", vec![], Map::new());
    assert!(encode(&m, "tag").is_err());
    let mut m = Message::new("t", vec![], Map::new());
    m.headers.id = TaskId::from("");
    assert!(encode(&m, "tag").is_err());
    let m = Message::new("t", vec![], Map::new());
    assert!(encode(&m, "").is_err());
}

#[test]
fn row1_not_json() {
    for bad in [
        &b"not json"[..],
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b"\"str\"",
        b"{",
    ] {
        let d = decode(bad, "celery");
        let e = err_text(&d);
        assert!(e.contains("envelope"), "{e}");
        assert_eq!(d.id, None);
        assert_eq!(d.routing_key, "celery");
        assert_eq!(d.exchange, "");
        assert_eq!(d.delivery_tag, None);
    }
}

#[test]
fn row2_body_not_base64() {
    let mut v = captured();
    v["body"] = json!("%%% not base64 %%%");
    let d = decode(&raw(&v), "celery");
    let e = err_text(&d);
    assert!(e.contains("base64"), "{e}");
    assert_eq!(d.id.as_ref().map(TaskId::as_str), Some(ID));
    assert_eq!(d.task.as_deref(), Some("tasks.add"));
    assert_eq!(
        d.delivery_tag.as_deref(),
        Some("d0673ac2-5a33-4a3e-8107-fe53e5c269ec")
    );
    // Unpadded or wrapped base64 is read as Python's b64decode would.
    let mut v = captured();
    let body = v["body"].as_str().unwrap().trim_end_matches('=').to_owned();
    v["body"] = json!(format!("{}\n{}", &body[..10], &body[10..]));
    assert!(decode(&raw(&v), "celery").message.is_ok());
}

#[test]
fn row3_unknown_body_encoding() {
    for enc in [json!("rot13"), json!(5)] {
        let mut v = captured();
        v["properties"]["body_encoding"] = enc;
        let d = decode(&raw(&v), "celery");
        let e = err_text(&d);
        assert!(e.contains("body_encoding"), "{e}");
        assert_eq!(d.id.as_ref().map(TaskId::as_str), Some(ID));
    }
    // Case does not matter (kombu lowercases utf-8).
    let mut v = captured();
    v["properties"]["body_encoding"] = json!("BASE64");
    assert!(decode(&raw(&v), "celery").message.is_ok());
    // Absent or utf-8: the body is the JSON text itself.
    let body = r#"[[7], {"k": "é \" q"}, {}]"#;
    for enc in [None, Some("utf-8"), Some("UTF-8")] {
        let mut v = captured();
        v["body"] = json!(body);
        match enc {
            None => {
                v["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("body_encoding");
            }
            Some(e) => v["properties"]["body_encoding"] = json!(e),
        }
        let m = decode(&raw(&v), "celery").message.unwrap();
        assert_eq!(m.body.args, vec![json!(7)]);
        assert_eq!(m.body.kwargs["k"], "é \" q");
    }
}

#[test]
fn row4_no_delivery_tag() {
    let mut v = captured();
    v["properties"]
        .as_object_mut()
        .unwrap()
        .remove("delivery_tag");
    let d = decode(&raw(&v), "celery");
    assert_eq!(d.delivery_tag, None);
    assert!(d.message.is_ok());
}

#[test]
fn row5_no_delivery_info() {
    let mut v = captured();
    v["properties"]
        .as_object_mut()
        .unwrap()
        .remove("delivery_info");
    let d = decode(&raw(&v), "emails");
    assert_eq!(d.exchange, "");
    assert_eq!(d.routing_key, "emails");
    assert_eq!(d.message.unwrap().queue(), "emails");
    // No properties at all.
    let mut v = captured();
    v.as_object_mut().unwrap().remove("properties");
    let d = decode(&raw(&v), "q");
    assert_eq!(d.routing_key, "q");
    assert_eq!(d.delivery_tag, None);
    // Without body_encoding the base64 text is not JSON: a clear error.
    assert!(err_text(&d).contains("cannot decode message body"));
}

#[test]
fn row6_no_id() {
    let mut v = captured();
    v["headers"].as_object_mut().unwrap().remove("id");
    let d = decode(&raw(&v), "celery");
    assert!(err_text(&d).contains("no task id"));
    assert_eq!(d.id, None);
    assert_eq!(d.task.as_deref(), Some("tasks.add"));
    assert!(d.delivery_tag.is_some());
}

#[test]
fn row7_8_9_bad_bodies_keep_the_id() {
    for (body, want) in [
        ("[[2, 3], {", "cannot decode message body"),
        ("[[2, 3], {}]", "got 2 elements"),
        ("[[2, 3], [], {}]", "kwargs must be an object"),
    ] {
        let mut v = captured();
        v["body"] = json!(b64(body));
        let d = decode(&raw(&v), "celery");
        let e = err_text(&d);
        assert!(e.contains(want), "{e}");
        assert!(e.contains(ID), "{e}");
        assert_eq!(d.id.as_ref().map(TaskId::as_str), Some(ID));
    }
}

#[test]
fn row12_13_content_type() {
    let mut v = captured();
    v["content-type"] = json!("application/x-python-serialize");
    let d = decode(&raw(&v), "celery");
    assert!(err_text(&d).contains("refusing to deserialize untrusted content"));
    assert_eq!(d.id.as_ref().map(TaskId::as_str), Some(ID));
    let mut v = captured();
    v.as_object_mut().unwrap().remove("content-type");
    assert!(decode(&raw(&v), "celery").message.is_ok());
}

#[test]
fn row19_v1_envelope_reports_body_ids() {
    let mut v = captured();
    v["headers"] = json!({});
    v["body"] = json!(b64(r#"{"id": "v1-id", "args": []}"#));
    let d = decode(&raw(&v), "celery");
    assert!(err_text(&d).contains("no task name"));
    assert_eq!(d.id.as_ref().map(TaskId::as_str), Some("v1-id"));
    v["body"] = json!(b64(
        r#"{"task": "tasks.add", "id": "v1-id", "args": [1, 2], "kwargs": {}}"#
    ));
    let d = decode(&raw(&v), "celery");
    assert_eq!(d.task.as_deref(), Some("tasks.add"));
    assert_eq!(d.message.unwrap().body.args, vec![json!(1), json!(2)]);
}

#[test]
fn row22_nan_in_the_envelope_takes_the_slow_path() {
    let mut text = CAPTURED.replace("\"stamps\": {}", "\"stamps\": {\"x\": NaN}");
    text = text.replace("\"priority\": 0", "\"priority\": 12");
    let d = decode(text.as_bytes(), "celery");
    assert_eq!(d.priority, 9);
    let m = d.message.unwrap();
    assert_eq!(m.headers.stamps["x"], "NaN");
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);
}

#[test]
fn mistyped_properties_keep_routing() {
    let mut v = captured();
    v["properties"]["priority"] = json!(-3);
    v["properties"]["delivery_mode"] = json!("x");
    let d = decode(&raw(&v), "celery");
    assert_eq!(d.priority, 0);
    assert!(d.message.is_ok());
    assert_eq!(d.routing_key, "celery");
    let mut v = captured();
    v["headers"] = json!([1]);
    let d = decode(&raw(&v), "celery");
    assert!(err_text(&d).contains("headers must be an object"));
    assert!(d.delivery_tag.is_some());
    let mut v = captured();
    v["body"] = json!([1]);
    assert!(err_text(&decode(&raw(&v), "celery")).contains("body must be a string"));
    let mut v = captured();
    v.as_object_mut().unwrap().remove("body");
    assert!(err_text(&decode(&raw(&v), "celery")).contains("no body"));
}

#[test]
fn priority_is_clamped_and_read() {
    let mut v = captured();
    v["properties"]["priority"] = json!(6);
    assert_eq!(decode(&raw(&v), "celery").priority, 6);
    v["properties"]["priority"] = json!(200);
    assert_eq!(decode(&raw(&v), "celery").priority, 9);
}

#[test]
fn redelivered_marks_both_places() {
    let out = redelivered(CAPTURED.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["headers"]["redelivered"], true);
    assert_eq!(v["properties"]["delivery_info"]["redelivered"], true);
    let mut want = captured();
    want["headers"]["redelivered"] = json!(true);
    want["properties"]["delivery_info"]["redelivered"] = json!(true);
    assert_eq!(v, want);
    // Still decodes, to the same message.
    let a = decode(CAPTURED.as_bytes(), "celery").message.unwrap();
    let b = decode(&out, "celery").message.unwrap();
    assert_eq!(a.body, b.body);
    assert_eq!(b.headers.extra.get("redelivered"), Some(&json!(true)));
    // Missing parts are left missing, as kombu does.
    let out = redelivered(br#"{"body": "x"}"#).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap(),
        json!({"body": "x"})
    );
    assert_eq!(redelivered(b"[1]"), None);
    assert_eq!(redelivered(b"nope"), None);
}

#[test]
fn priority_keys_like_kombu() {
    let s = DEFAULT_SEP;
    let st = &DEFAULT_STEPS;
    assert_eq!(priority_key("celery", 0, st, s), "celery");
    assert_eq!(priority_key("celery", 2, st, s), "celery");
    assert_eq!(priority_key("celery", 3, st, s), "celery\x06\x163");
    assert_eq!(priority_key("celery", 5, st, s), "celery\x06\x163");
    assert_eq!(priority_key("celery", 8, st, s), "celery\x06\x166");
    assert_eq!(priority_key("emails", 9, st, s), "emails\x06\x169");
    assert_eq!(priority_key("emails", 200, st, s), "emails\x06\x169");
    assert_eq!(priority_key("q", 7, &[0, 5], "::"), "q::5");
    assert_eq!(priority_key("q", 1, &[3, 6], "::"), "q::6");
    assert_eq!(priority_key("q", 4, &[], "::"), "q");
    for key in ["celery", "celery\x06\x163", "celery\x06\x169"] {
        assert_eq!(queue_of_key(key, s), "celery");
    }
    assert_eq!(queue_of_key("a\x06\x16b", s), "a\x06\x16b");
    assert_eq!(queue_of_key("a\x06\x16", s), "a\x06\x16");
    assert_eq!(queue_of_key("q::5", "::"), "q");
    assert_eq!(queue_of_key("q::5", ""), "q::5");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        Just(json!({"__type__": "bytes", "__value__": "raw"})),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_message_encodes_to_what_python_reads(
        task in "[a-z._]{1,20}",
        queue in "[a-z0-9_.\\-]{1,12}",
        args in prop::collection::vec(arb_json(), 0..4),
        kwargs in prop::collection::btree_map("\\PC{1,8}", arb_json(), 0..3),
        priority in prop::option::of(any::<u8>()),
        hard in prop::option::of(any::<f64>()),
        tag in "[0-9a-f-]{1,36}",
    ) {
        let mut m = Message::new(task, args, kwargs.into_iter().collect());
        m.set_queue(queue);
        m.properties.priority = priority;
        m.headers.timelimit.hard = hard;
        let out = encode(&m, &tag).unwrap();
        let (env, body) = python_view(&out);
        prop_assert_eq!(&body[0], &Value::Array(m.body.args.clone()));
        let p = env["properties"]["priority"].as_u64().unwrap();
        prop_assert!(p <= 9);
        let d = decode(&out, m.queue());
        let back = d.message.unwrap();
        prop_assert_eq!(back.body, m.body);
        prop_assert_eq!(d.delivery_tag.as_deref(), Some(tag.as_str()));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes, "q");
        let _ = redelivered(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic(at in 0usize..700, len in 0usize..8, with in any::<u8>()) {
        let mut b = CAPTURED.as_bytes().to_vec();
        let at = at.min(b.len());
        let end = (at + len).min(b.len());
        b.splice(at..end, std::iter::once(with));
        let d = decode(&b, "celery");
        prop_assert!(d.priority <= 9);
        let _ = redelivered(&b);
    }
}

fn same(a: &Decoded, b: &Decoded) {
    assert_eq!(a.id, b.id);
    assert_eq!(a.task, b.task);
    assert_eq!(a.delivery_tag, b.delivery_tag);
    assert_eq!(a.exchange, b.exchange);
    assert_eq!(a.routing_key, b.routing_key);
    assert_eq!(a.priority, b.priority);
    match (&a.message, &b.message) {
        (Ok(x), Ok(y)) => assert_eq!(x, y),
        (x, y) => panic!("fast and general paths differ: {x:?} vs {y:?}"),
    }
}

#[test]
fn fast_path_agrees_with_the_general_path() {
    let fast = fast_decode(CAPTURED.as_bytes(), "celery").expect("fast path taken");
    same(&fast, &general_decode(CAPTURED.as_bytes(), "celery"));
    let mut v = captured();
    v["properties"]
        .as_object_mut()
        .unwrap()
        .remove("delivery_info");
    v["headers"]["eta"] = json!("2026-11-23T11:01:56.630562+00:00");
    v["headers"]["expires"] = json!("2026-11-23T11:01:56.630562123Z");
    v["headers"]["timelimit"] = json!([1, 2.5]);
    v["headers"]["retries"] = json!(null);
    let r = raw(&v);
    let fast = fast_decode(&r, "emails").expect("fast path taken");
    same(&fast, &general_decode(&r, "emails"));
    assert_eq!(fast.routing_key, "emails");
    // Unusual entries leave the fast path.
    for (path, value) in [
        ("/headers/eta", json!("2026-11-23T11:01:56")),
        ("/headers/compression", json!("gzip")),
        ("/properties/body_encoding", json!("utf-8")),
        ("/content-type", json!("application/x-yaml")),
        ("/body", json!(b64("[[1], {}]"))),
        ("/body", json!(b64("[[NaN], {}, {}]"))),
    ] {
        let mut v = captured();
        let (parent, key) = path.rsplit_once('/').unwrap();
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_owned(), value);
        assert!(fast_decode(&raw(&v), "celery").is_none(), "{path}");
    }
}

proptest! {
    #[test]
    fn fast_path_agrees_on_any_message(
        args in prop::collection::vec(arb_json(), 0..4),
        kwargs in prop::collection::btree_map("\\PC{1,8}", arb_json(), 0..3),
        priority in prop::option::of(0u8..12),
        eta in prop::option::of(0i64..4_000_000_000),
    ) {
        let mut m = Message::new("tasks.t", args, kwargs.into_iter().collect());
        m.properties.priority = priority;
        m.headers.eta = eta.and_then(|s| chrono::DateTime::from_timestamp(s, 123_456_000));
        let r = encode(&m, "tag").unwrap();
        let fast = fast_decode(&r, "celery").expect("fast path taken");
        same(&fast, &general_decode(&r, "celery"));
    }
}

#[test]
fn fast_path_times_match_python() {
    let mut v = captured();
    v["headers"]["eta"] = json!("2026-11-23T11:01:56.630562999+00:00");
    let d = fast_decode(&raw(&v), "celery").expect("fast path taken");
    let eta = d.message.unwrap().headers.eta.unwrap();
    assert_eq!(eta.timestamp_subsec_nanos(), 630_562_000);
    v["headers"]["eta"] = json!("2026-12-31T23:59:60+00:00");
    assert!(fast_decode(&raw(&v), "celery").is_none());
    assert!(err_text(&decode(&raw(&v), "celery")).contains("`eta`"));
}

#[test]
fn priority_of_reads_only_the_priority() {
    assert_eq!(priority_of(CAPTURED.as_bytes()), 0);
    for (p, want) in [
        (json!(5), 5),
        (json!(200), 9),
        (json!(-1), 0),
        (json!("x"), 0),
        (json!(3.0), 3),
    ] {
        let mut v = captured();
        v["properties"]["priority"] = p;
        assert_eq!(priority_of(&raw(&v)), want);
        assert_eq!(decode(&raw(&v), "celery").priority, want);
    }
    let nan = CAPTURED
        .replace("\"stamps\": {}", "\"stamps\": NaN")
        .replace("\"priority\": 0", "\"priority\": 7");
    assert_eq!(priority_of(nan.as_bytes()), 7);
    assert_eq!(priority_of(b"[]"), 0);
    assert_eq!(priority_of(br#"{"properties": null}"#), 0);
}
