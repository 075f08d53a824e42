//! Lenient JSON: reads what Python's `json.dumps` emits (`celery-protocol.md` §3.2).
//!
//! The fast path is plain `serde_json`. Only when that fails is the input
//! repaired and parsed once more. The repair touches nothing but tokens that
//! strict JSON rejects, so valid JSON is never changed:
//!
//! | Python emits | read as |
//! |---|---|
//! | bare `NaN`, `Infinity`, `-Infinity` (outside strings) | the JSON **strings** `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | a lone surrogate escape such as `"\ud800"` | U+FFFD, the replacement character |
//! | bytes that are not UTF-8 | U+FFFD each (Python never sends them) |
//! | an integer beyond 64 bits, e.g. `2**70` | the nearest `f64` (exact for powers of two; `serde_json`'s own rule) |
//!
//! A non-finite float therefore arrives as a string. A task that wants it as
//! a number takes a [`PyFloat`] argument (or uses [`deserialize_f64`] on a
//! field), which accepts both numbers and those three strings:
//!
//! ```
//! use celeriac_core::wire::json::{self, PyFloat};
//! use serde_json::{json, Value};
//!
//! let v: Value = json::to_value(br#"[NaN, -Infinity, 1.5, 1180591620717411303424]"#).unwrap();
//! assert_eq!(v, json!(["NaN", "-Infinity", 1.5, 1180591620717411303424.0]));
//!
//! let xs: Vec<PyFloat> = json::from_slice(b"[NaN, Infinity, 2]").unwrap();
//! assert!(xs[0].0.is_nan());
//! assert_eq!(xs[1].0, f64::INFINITY);
//! assert_eq!(xs[2].0, 2.0);
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::error::{Error, ErrorKind};

/// Parses Python-emitted JSON into any deserializable type.
///
/// Errors are [`ErrorKind::Malformed`] and name what `serde_json` rejected.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(first) => match repair(bytes) {
            None => Err(malformed(first)),
            Some(fixed) => serde_json::from_slice(&fixed).map_err(|e| {
                Error::with_source(
                    ErrorKind::Malformed,
                    "invalid JSON (after reading NaN/Infinity as strings)",
                    e,
                )
            }),
        },
    }
}

/// Parses Python-emitted JSON into a [`Value`]; see the module docs for
/// what the non-standard tokens become.
pub fn to_value(bytes: &[u8]) -> Result<Value, Error> {
    from_slice(bytes)
}

fn malformed(e: serde_json::Error) -> Error {
    Error::with_source(ErrorKind::Malformed, "invalid JSON", e)
}

/// Rewrites the tokens strict JSON rejects; `None` if there is none to
/// rewrite (then the input is broken some other way).
fn repair(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    let mut changed = matches!(text, Cow::Owned(_));
    let src = text.as_bytes();
    let mut out = Vec::with_capacity(src.len() + 16);
    let mut i = 0;
    let mut in_string = false;
    while i < src.len() {
        let b = src[i];
        if in_string {
            match b {
                b'"' => {
                    in_string = false;
                    out.push(b);
                    i += 1;
                }
                b'\\' if src.get(i + 1) == Some(&b'u') => {
                    let (len, lone) = unicode_escape(src, i);
                    if lone {
                        out.extend_from_slice(br"\ufffd");
                        changed = true;
                    } else {
                        out.extend_from_slice(&src[i..i + len]);
                    }
                    i += len;
                }
                b'\\' => {
                    let end = (i + 2).min(src.len());
                    out.extend_from_slice(&src[i..end]);
                    i = end;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
            continue;
        }
        let rest = &src[i..];
        let token: Option<&[u8]> = [&b"NaN"[..], b"Infinity", b"-Infinity"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match (b, token) {
            (_, Some(t)) => {
                out.push(b'"');
                out.extend_from_slice(t);
                out.push(b'"');
                i += t.len();
                changed = true;
            }
            (b'"', None) => {
                in_string = true;
                out.push(b);
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Looks at the `\uXXXX` escape at `i`: returns how many bytes it (and a
/// following low surrogate, for a valid pair) spans, and whether it is a
/// lone surrogate.
fn unicode_escape(src: &[u8], i: usize) -> (usize, bool) {
    let Some(unit) = hex4(src, i + 2) else {
        // Not four hex digits: leave it for serde_json to report.
        return (2, false);
    };
    match unit {
        0xD800..=0xDBFF => {
            let pair = src.get(i + 6) == Some(&b'\\')
                && src.get(i + 7) == Some(&b'u')
                && matches!(hex4(src, i + 8), Some(0xDC00..=0xDFFF));
            if pair {
                (12, false)
            } else {
                (6, true)
            }
        }
        0xDC00..=0xDFFF => (6, true),
        _ => (6, false),
    }
}

fn hex4(src: &[u8], at: usize) -> Option<u16> {
    let digits = src.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    if !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

/// A Python float: a JSON number, or one of the strings `"NaN"`,
/// `"Infinity"`, `"-Infinity"` that [`to_value`] makes of Python's bare
/// tokens. Serializes as a number; non-finite values as those strings (a
/// JSON number cannot hold them).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct PyFloat(pub f64);

impl From<PyFloat> for f64 {
    fn from(v: PyFloat) -> f64 {
        v.0
    }
}

impl<'de> Deserialize<'de> for PyFloat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_f64(d).map(PyFloat)
    }
}

impl Serialize for PyFloat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match nonfinite_name(self.0) {
            Some(name) => s.serialize_str(name),
            None => s.serialize_f64(self.0),
        }
    }
}

fn nonfinite_name(x: f64) -> Option<&'static str> {
    if x.is_nan() {
        Some("NaN")
    } else if x == f64::INFINITY {
        Some("Infinity")
    } else if x == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// Reads an `f64` from a JSON number or from `"NaN"`, `"Infinity"` or
/// `"-Infinity"`; for `#[serde(deserialize_with = "...")]`.
pub fn deserialize_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct F64Visitor;
    impl Visitor<'_> for F64Visitor {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            float_from_str(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(F64Visitor)
}

/// Returns the float a JSON value stands for: a number, or one of the
/// strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
///
/// ```
/// use celeriac_core::wire::json::as_f64;
/// use serde_json::json;
/// assert_eq!(as_f64(&json!("-Infinity")), Some(f64::NEG_INFINITY));
/// assert_eq!(as_f64(&json!(3)), Some(3.0));
/// assert_eq!(as_f64(&json!("3")), None);
/// ```
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => float_from_str(s),
        _ => None,
    }
}

fn float_from_str(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn strict_json_takes_the_fast_path_unchanged() {
        let src = br#"{"a": [1, 2.5, "NaN inside", "Infinity"], "b": null}"#;
        assert_eq!(repair(src), None);
        assert_eq!(
            to_value(src).unwrap(),
            json!({"a": [1, 2.5, "NaN inside", "Infinity"], "b": null})
        );
    }

    #[test]
    fn bare_nonfinite_tokens_become_strings() {
        let v = to_value(br#"[[NaN, Infinity, -Infinity], {"x": NaN}, {"s": "NaN, Infinity"}]"#)
            .unwrap();
        assert_eq!(
            v,
            json!([["NaN", "Infinity", "-Infinity"], {"x": "NaN"}, {"s": "NaN, Infinity"}])
        );
    }

    #[test]
    fn tokens_inside_strings_with_escaped_quotes_are_left_alone() {
        let v = to_value(br#"["a \"NaN\" b", NaN, "\\", Infinity]"#).unwrap();
        assert_eq!(v, json!(["a \"NaN\" b", "NaN", "\\", "Infinity"]));
    }

    #[test]
    fn huge_integers_parse() {
        let v = to_value(b"[1180591620717411303424, -1180591620717411303424]").unwrap();
        assert_eq!(v[0].as_f64(), Some(2f64.powi(70)));
        assert_eq!(v[1].as_f64(), Some(-(2f64.powi(70))));
        let u: Value = to_value(b"18446744073709551615").unwrap();
        assert_eq!(u.as_u64(), Some(u64::MAX));
    }

    #[test]
    fn surrogates() {
        // A valid pair is an astral character, as Python's ensure_ascii writes it.
        let v = to_value(br#"["\ud83d\ude00", "caf\u00e9 \u2603"]"#).unwrap();
        assert_eq!(v, json!(["😀", "café ☃"]));
        // Lone ones become U+FFFD; the rest of the string survives.
        let v = to_value(br#"["a\ud800b", "\udc00", "\ud800\ud800", "x\ud83d"]"#).unwrap();
        assert_eq!(
            v,
            json!(["a\u{fffd}b", "\u{fffd}", "\u{fffd}\u{fffd}", "x\u{fffd}"])
        );
        // Mixed with NaN in one document.
        let v = to_value(br#"["\udfff", NaN]"#).unwrap();
        assert_eq!(v, json!(["\u{fffd}", "NaN"]));
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let v = to_value(b"[\"a\xffb\"]").unwrap();
        assert_eq!(v, json!(["a\u{fffd}b"]));
    }

    #[test]
    fn broken_json_is_malformed() {
        for bad in [
            &b""[..],
            b"[1,",
            b"{\"a\" 1}",
            b"Nan",
            b"[NaNx]",
            b"\"\\u12\"",
            b"[1] trailing",
        ] {
            let err = to_value(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Malformed, "{bad:?}");
            assert!(
                err.chain_text().contains("invalid JSON"),
                "{}",
                err.chain_text()
            );
        }
    }

    #[test]
    fn tagged_values_pass_through_as_plain_objects() {
        let v = to_value(
            br#"[{"__type__": "datetime", "__value__": "2026-01-02T03:04:05+00:00"}, {"__type__": "nope", "__value__": 1}]"#,
        )
        .unwrap();
        assert_eq!(v[0]["__type__"], "datetime");
        assert_eq!(v[1], json!({"__type__": "nope", "__value__": 1}));
    }

    #[test]
    fn py_float_reads_numbers_and_names() {
        let xs: Vec<PyFloat> =
            from_slice(br#"[1, -2, 2.5, "NaN", "Infinity", -Infinity]"#).unwrap();
        assert_eq!(xs[0].0, 1.0);
        assert_eq!(xs[1].0, -2.0);
        assert_eq!(xs[2].0, 2.5);
        assert!(xs[3].0.is_nan());
        assert_eq!(xs[4].0, f64::INFINITY);
        assert_eq!(xs[5].0, f64::NEG_INFINITY);
        assert!(from_slice::<PyFloat>(br#""nan""#).is_err());
        assert_eq!(
            serde_json::to_value([PyFloat(f64::NAN), PyFloat(1.5)]).unwrap(),
            json!(["NaN", 1.5])
        );
        // As a task argument read from an already parsed Value.
        let x: PyFloat = serde_json::from_value(json!("-Infinity")).unwrap();
        assert_eq!(x.0, f64::NEG_INFINITY);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = to_value(&bytes);
        }

        #[test]
        fn json_like_text_never_panics(s in r#"[\[\]{}",:\\u0-9a-fdDNaIinfty -]{0,64}"#) {
            let _ = to_value(s.as_bytes());
        }

        #[test]
        fn valid_json_is_never_changed(v in arb_json()) {
            let text = serde_json::to_vec(&v).unwrap();
            prop_assert_eq!(repair(&text), None);
            prop_assert_eq!(to_value(&text).unwrap(), v);
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
