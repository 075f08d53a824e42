//! The stored result value: keys, and the JSON Celery writes and reads
//! (`celery-protocol.md` §6.1, §6.2).
//!
//! Writing follows Python's layout field by field (`status` first, then
//! `result`, `traceback`, `children`, `date_done`, `task_id`), with
//! `date_done` as Python's `isoformat()` (`+00:00`, microseconds) for the
//! ready states and `null` for the others, as Celery does. Reading accepts
//! whatever a Python worker of any 4.x/5.x release writes: the lenient
//! JSON dialect (`NaN`, big integers), the 5.7 compressed-result prefix,
//! naive or `Z` dates, and extra fields (`group_id`, `parent_id`, the
//! extended-result fields), which are ignored.

use celeriac_core::wire::{compress, json};
use celeriac_core::{Error, ErrorKind, TaskId, TaskResult, TaskState};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

/// The part of every result key after the global prefix.
pub(crate) const TASK_KEYPREFIX: &str = "celery-task-meta-";

/// Returns the key prefix of task results for a Celery
/// `global_keyprefix`: the global prefix, with `_` appended unless it ends
/// in one of `:_-.` (what Celery's `_add_global_keyprefix` does), then
/// `celery-task-meta-`.
///
/// `""` gives plain `celery-task-meta-`.
pub(crate) fn result_key_prefix(global_keyprefix: &str) -> String {
    let mut p = String::with_capacity(global_keyprefix.len() + TASK_KEYPREFIX.len() + 1);
    p.push_str(global_keyprefix);
    if let Some(last) = global_keyprefix.chars().last() {
        if !":_-.".contains(last) {
            p.push('_');
        }
    }
    p.push_str(TASK_KEYPREFIX);
    p
}

/// Returns the key (and Pub/Sub channel) of task `id`'s result, given a
/// prefix from [`result_key_prefix`].
pub(crate) fn result_key(key_prefix: &str, id: &TaskId) -> String {
    let mut k = String::with_capacity(key_prefix.len() + id.as_str().len());
    k.push_str(key_prefix);
    k.push_str(id.as_str());
    k
}

/// The stored value, field for field in Python's order.
#[derive(Serialize)]
struct Wire<'a> {
    status: &'static str,
    result: &'a Value,
    traceback: &'a Option<String>,
    children: &'a [Value],
    date_done: Option<String>,
    task_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<&'a str>,
}

/// Formats a date as Python's `datetime.isoformat()` does for an aware
/// UTC datetime: `2026-11-23T11:01:41.868986+00:00`.
pub(crate) fn python_isoformat(d: &DateTime<Utc>) -> String {
    // `Micros` gives `...41.868986Z`; Python writes the offset out.
    let mut s = d.to_rfc3339_opts(SecondsFormat::Micros, true);
    if s.ends_with('Z') {
        s.pop();
        s.push_str("+00:00");
    }
    s
}

/// Returns the JSON Celery stores for `r` (and publishes on its channel).
///
/// `task_id` is always present and `status` is uppercase; `date_done` is
/// written for the ready states only (`null` otherwise, as Celery does).
/// `group_id` and `parent_id` appear when the task had them, as Celery
/// writes them; `name`, `retries` and `worker` when set (Celery's extended
/// results). Python ignores fields it does not expect.
pub(crate) fn encode_result(r: &TaskResult) -> Result<Vec<u8>, Error> {
    if r.task_id.as_str().is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "a result needs a task id: Python clients break on results without one",
        ));
    }
    let date_done = if r.status.is_ready() {
        Some(python_isoformat(&r.date_done.unwrap_or_else(Utc::now)))
    } else {
        None
    };
    let wire = Wire {
        status: r.status.as_str(),
        result: &r.result,
        traceback: &r.traceback,
        children: &r.children,
        date_done,
        task_id: r.task_id.as_str(),
        name: &r.name,
        retries: r.retries,
        worker: &r.worker,
        group_id: &r.group_id,
        parent_id: r.parent_id.as_ref().map(TaskId::as_str),
    };
    serde_json::to_vec(&wire).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidInput,
            format!("result of task {} cannot be encoded as JSON", r.task_id),
            e,
        )
    })
}

/// Decodes a stored (or published) result value.
///
/// Accepts Celery 5.7's compressed-result prefix and Python's JSON
/// dialect. A value that is not an object, has no `task_id`, or has a
/// status that is not one of Celery's states is an error of kind
/// [`ErrorKind::Malformed`] naming what is wrong; it never panics.
pub(crate) fn decode_result(raw: &[u8]) -> Result<TaskResult, Error> {
    let value = parse_value(raw)?;
    from_value(value)
}

/// Turns the raw bytes into a JSON value: strips a compression prefix,
/// then reads Python's JSON dialect (bare `NaN`/`Infinity` become the
/// strings `"NaN"`/`"Infinity"`, integers beyond 64 bits the nearest
/// float; see `celeriac_core::wire::json`).
fn parse_value(raw: &[u8]) -> Result<Value, Error> {
    let plain = compress::strip_result_compression(raw).map_err(|e| {
        Error::with_source(
            e.kind(),
            "stored result is compressed and cannot be decompressed",
            e,
        )
    })?;
    json::to_value(&plain)
        .map_err(|e| Error::with_source(ErrorKind::Malformed, "stored result is not valid JSON", e))
}

fn malformed(msg: String) -> Error {
    Error::new(ErrorKind::Malformed, msg)
}

/// Builds a [`TaskResult`] from a decoded value.
fn from_value(value: Value) -> Result<TaskResult, Error> {
    let Value::Object(mut obj) = value else {
        return Err(malformed(format!(
            "stored result is not a JSON object: {}",
            short(&value)
        )));
    };
    let task_id = match obj.get("task_id") {
        Some(Value::String(s)) if !s.is_empty() => TaskId::from(s.as_str()),
        Some(other) => {
            return Err(malformed(format!(
                "stored result has an invalid task_id: {}",
                short(other)
            )))
        }
        None => return Err(malformed("stored result has no task_id".to_owned())),
    };
    let status = match obj.get("status") {
        Some(Value::String(s)) => parse_state(s).ok_or_else(|| {
            malformed(format!(
                "stored result of task {task_id} has unknown status `{s}`"
            ))
        })?,
        Some(other) => {
            return Err(malformed(format!(
                "stored result of task {task_id} has an invalid status: {}",
                short(other)
            )))
        }
        None => {
            return Err(malformed(format!(
                "stored result of task {task_id} has no status"
            )))
        }
    };
    let result = obj.remove("result").unwrap_or(Value::Null);
    let traceback = match obj.remove("traceback") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    let children = match obj.remove("children") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => Vec::new(),
        Some(other) => vec![other],
    };
    let date_done = match obj.get("date_done") {
        Some(Value::String(s)) => Some(parse_date(s).ok_or_else(|| {
            malformed(format!(
                "stored result of task {task_id} has an unreadable date_done `{s}`"
            ))
        })?),
        _ => None,
    };
    let name = match obj.remove("name") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let worker = match obj.remove("worker") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let retries = obj
        .get("retries")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let group_id = match obj.remove("group_id") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let parent_id = match obj.remove("parent_id") {
        Some(Value::String(s)) => Some(TaskId::from(s)),
        _ => None,
    };
    Ok(TaskResult {
        status,
        result,
        traceback,
        children,
        date_done,
        task_id,
        name,
        retries,
        worker,
        group_id,
        parent_id,
    })
}

/// Returns Celery's state for its uppercase name.
fn parse_state(s: &str) -> Option<TaskState> {
    Some(match s {
        "PENDING" => TaskState::Pending,
        "RECEIVED" => TaskState::Received,
        "STARTED" => TaskState::Started,
        "SUCCESS" => TaskState::Success,
        "FAILURE" => TaskState::Failure,
        "RETRY" => TaskState::Retry,
        "REVOKED" => TaskState::Revoked,
        _ => return None,
    })
}

/// Reads an ISO-8601 date: with an offset (`+00:00`, `Z`), or naive
/// (Celery 4 wrote naive UTC dates), which is taken as UTC.
fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    if let Ok(d) = s.parse::<DateTime<chrono::FixedOffset>>() {
        return Some(d.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
}

/// A value for an error message, cut to a readable length.
fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 80 {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefixes_follow_celery() {
        assert_eq!(result_key_prefix(""), "celery-task-meta-");
        assert_eq!(result_key_prefix("app"), "app_celery-task-meta-");
        assert_eq!(result_key_prefix("app:"), "app:celery-task-meta-");
        assert_eq!(result_key_prefix("app."), "app.celery-task-meta-");
        let p = result_key_prefix("x-");
        assert_eq!(result_key(&p, &TaskId::from("t1")), "x-celery-task-meta-t1");
    }

    #[test]
    fn encodes_in_python_layout() {
        let mut r = TaskResult::success(TaskId::from("t1"), json!(5));
        r.date_done = Some(
            DateTime::parse_from_rfc3339("2026-11-23T11:01:41.868986123Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        let text = String::from_utf8(encode_result(&r).unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":"2026-11-23T11:01:41.868986+00:00","task_id":"t1"}"#
        );
    }

    #[test]
    fn group_and_parent_are_written_when_the_task_had_them() {
        let mut r = TaskResult::success(TaskId::from("t1"), json!(5));
        let v: Value = serde_json::from_slice(&encode_result(&r).unwrap()).unwrap();
        assert!(v.get("group_id").is_none() && v.get("parent_id").is_none());
        r.group_id = Some("g1".to_owned());
        r.parent_id = Some(TaskId::from("p1"));
        let v: Value = serde_json::from_slice(&encode_result(&r).unwrap()).unwrap();
        assert_eq!(v["group_id"], "g1");
        assert_eq!(v["parent_id"], "p1");
        let back = decode_result(&encode_result(&r).unwrap()).unwrap();
        assert_eq!(back.group_id, r.group_id);
        assert_eq!(back.parent_id, r.parent_id);
    }

    #[test]
    fn non_ready_states_have_no_date() {
        let r = TaskResult::new(TaskId::from("t1"), TaskState::Started, json!({}), None);
        let v: Value = serde_json::from_slice(&encode_result(&r).unwrap()).unwrap();
        assert_eq!(v["date_done"], Value::Null);
        assert_eq!(v["status"], "STARTED");
    }

    #[test]
    fn decodes_minimal_and_extra_fields() {
        let r = decode_result(br#"{"status": "SUCCESS", "result": 7, "task_id": "x"}"#).unwrap();
        assert_eq!(r.status, TaskState::Success);
        assert_eq!(r.result, json!(7));
        assert_eq!(r.date_done, None);
        let r = decode_result(
            br#"{"status": "SUCCESS", "result": 1, "traceback": null, "children": null,
                 "date_done": "2026-11-23T11:01:41.868986", "task_id": "x",
                 "group_id": "g", "parent_id": "p", "retries": 2, "name": "n"}"#,
        )
        .unwrap();
        assert!(r.date_done.is_some());
        assert_eq!(r.retries, Some(2));
        assert_eq!(r.name.as_deref(), Some("n"));
        assert_eq!(r.group_id.as_deref(), Some("g"));
        assert_eq!(r.parent_id, Some(TaskId::from("p")));
        let r = decode_result(
            br#"{"status": "SUCCESS", "result": 1, "date_done": "2026-11-23T11:01:41.868986123Z", "task_id": "x"}"#,
        )
        .unwrap();
        assert!(r.date_done.is_some());
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (raw, needle) in [
            (&br#"{"status": "SUCCESS", "result": 7}"#[..], "no task_id"),
            (
                br#"{"status": "success", "task_id": "x"}"#,
                "unknown status",
            ),
            (
                br#"{"status": "PROGRESS", "task_id": "x"}"#,
                "unknown status",
            ),
            (br#"[1, 2]"#, "not a JSON object"),
            (br#"{"status": 1, "task_id": "x"}"#, "invalid status"),
            (b"not json", "not valid JSON"),
        ] {
            let e = decode_result(raw).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Malformed);
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn round_trips_every_state() {
        for s in [
            TaskState::Pending,
            TaskState::Received,
            TaskState::Started,
            TaskState::Success,
            TaskState::Failure,
            TaskState::Retry,
            TaskState::Revoked,
        ] {
            let r = TaskResult::new(TaskId::from("t"), s, json!({"a": [1]}), None);
            let back = decode_result(&encode_result(&r).unwrap()).unwrap();
            assert_eq!(back.status, s);
            assert_eq!(back.result, r.result);
        }
    }
}
