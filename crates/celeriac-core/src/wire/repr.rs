//! Python's `repr()` of JSON values, for the `argsrepr` and `kwargsrepr`
//! headers that Celery's logs, events and Flower show.
//!
//! Celery writes `repr(args)` (a tuple) and `repr(kwargs)`, cut to 1024
//! characters ([`MAX_LEN`]). These functions render the JSON the way Python
//! would render the decoded values: `None`/`True`/`False`, strings in
//! Python's quoting, floats in Python's shortest form (`1.0`, `1e+16`).
//!
//! ```
//! use celeriac_core::wire::repr::{args_repr, kwargs_repr};
//! use serde_json::json;
//! assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
//! assert_eq!(args_repr(&[json!("it's")]), r#"("it's",)"#);
//! let kw = json!({"x": null, "y": [1.0, true]});
//! assert_eq!(kwargs_repr(kw.as_object().unwrap()), "{'x': None, 'y': [1.0, True]}");
//! ```

use std::fmt::Write;

use serde_json::{Map, Value};

/// Celery's default cap for `argsrepr` and `kwargsrepr`, in characters.
pub const MAX_LEN: usize = 1024;

/// `repr(tuple(args))`, cut to [`MAX_LEN`] characters.
pub fn args_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_value(&mut out, v);
        if out.len() > MAX_LEN * 4 {
            break;
        }
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    truncate(out)
}

/// `repr(kwargs)`, cut to [`MAX_LEN`] characters.
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_map(&mut out, kwargs);
    truncate(out)
}

/// `repr()` of one value, not cut.
pub fn repr(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn truncate(s: String) -> String {
    if s.len() <= MAX_LEN {
        return s;
    }
    match s.char_indices().nth(MAX_LEN - 3) {
        Some((cut, _)) if s.chars().count() > MAX_LEN => {
            let mut t = s[..cut].to_owned();
            t.push_str("...");
            t
        }
        _ => s,
    }
}

fn write_value(out: &mut String, v: &Value) {
    // Stop descending once far past the cap: the rest is cut anyway.
    if out.len() > MAX_LEN * 4 {
        return;
    }
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => {
                let _ = write!(out, "{i}");
            }
            (None, Some(u), _) => {
                let _ = write!(out, "{u}");
            }
            (None, None, Some(f)) => out.push_str(&py_float(f)),
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_map(out, map),
    }
}

fn write_map(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, k);
        out.push_str(": ");
        write_value(out, v);
        if out.len() > MAX_LEN * 4 {
            break;
        }
    }
    out.push('}');
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn write_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = u32::from(c);
                let _ = match n {
                    0..=0xff => write!(out, "\\x{n:02x}"),
                    0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character, without Unicode
/// tables: controls, separators other than the space, the common format
/// characters, private use and the non-characters are escaped.
fn is_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{a0}'
                | '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{1680}'
                | '\u{180e}'
                | '\u{2000}'..='\u{200f}'
                | '\u{2028}'..='\u{202f}'
                | '\u{205f}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{3000}'
                | '\u{e000}'..='\u{f8ff}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{fffe}'
                | '\u{ffff}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
                | '\u{f0000}'..='\u{10ffff}'
        ))
}

/// Python's `repr(float)`: shortest round-trip digits, positional for
/// exponents in -4..16, else `1e+16` / `1.5e-05`.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tuples() {
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(args_repr(&[json!(1)]), "(1,)");
        assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(kwargs_repr(&Map::new()), "{}");
    }

    #[test]
    fn scalars_like_python() {
        let cases = [
            (json!(null), "None"),
            (json!(true), "True"),
            (json!(-7), "-7"),
            (json!(u64::MAX), "18446744073709551615"),
            (json!(1.0), "1.0"),
            (json!(-0.5), "-0.5"),
            (json!(0.1), "0.1"),
            (json!(123.456), "123.456"),
            (json!(1e16), "1e+16"),
            (json!(1.5e20), "1.5e+20"),
            (json!(1e-5), "1e-05"),
            (json!(0.0001), "0.0001"),
            (json!(1180591620717411303424.0), "1.1805916207174113e+21"),
            (json!(9999999999999998.0), "9999999999999998.0"),
        ];
        for (v, want) in cases {
            assert_eq!(repr(&v), want, "{v}");
        }
    }

    #[test]
    fn strings_like_python() {
        let cases = [
            ("abc", "'abc'"),
            ("it's", "\"it's\""),
            ("both ' and \"", "'both \\' and \"'"),
            ("a\\b", "'a\\\\b'"),
            ("line\nnext\ttab", "'line\\nnext\\ttab'"),
            ("\u{1}\u{7f}\u{85}", "'\\x01\\x7f\\x85'"),
            ("café ☃ 😀", "'café ☃ 😀'"),
            (
                "\u{a0}\u{ad}\u{2028}\u{feff}\u{f0000}",
                "'\\xa0\\xad\\u2028\\ufeff\\U000f0000'",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(repr(&json!(s)), want, "{s:?}");
        }
    }

    #[test]
    fn nested() {
        let v = json!([{"a": [1, "x"]}, [], {}]);
        assert_eq!(repr(&v), "[{'a': [1, 'x']}, [], {}]");
    }

    #[test]
    fn long_reprs_are_cut_to_the_cap() {
        let big = json!("x".repeat(5000));
        let r = args_repr(&[big]);
        assert_eq!(r.chars().count(), MAX_LEN);
        assert!(r.ends_with("..."));
        let many: Vec<Value> = (0..10_000).map(|i| json!(i)).collect();
        let r = args_repr(&many);
        assert_eq!(r.chars().count(), MAX_LEN);
        let wide = json!("☃".repeat(2000));
        let r = args_repr(&[wide]);
        assert_eq!(r.chars().count(), MAX_LEN);
        // Exactly at the cap: unchanged.
        let exact = json!("y".repeat(MAX_LEN - 5));
        let r = args_repr(&[exact]);
        assert_eq!(r.chars().count(), MAX_LEN);
        assert!(r.ends_with("',)"));
    }
}
