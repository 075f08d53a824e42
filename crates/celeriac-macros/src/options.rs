//! The options inside `#[celeriac::task(...)]`: parsing, validation and the
//! `TaskOptions` builder chain they turn into.
//!
//! Names follow Celery's task options. Times are seconds, written as integer
//! or float literals, and are converted to `Duration`s here, at compile time,
//! so a bad value is a compile error instead of a panic in a worker.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitBool, LitStr, Path};

/// Every option the attribute accepts, in the order the error message lists
/// them.
const KNOWN: &[&str] = &[
    "name",
    "queue",
    "priority",
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "soft_time_limit",
    "time_limit",
    "ignore_result",
    "acks_late",
    "track_started",
    "blocking",
    "crate",
];

/// A duration given in seconds, split at compile time so the generated code
/// is a plain `Duration::new(secs, nanos)` that cannot panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seconds {
    secs: u64,
    nanos: u32,
}

impl Seconds {
    /// Returns the tokens of a `Duration` of this length, through `private`.
    fn to_tokens(self, private: &TokenStream) -> TokenStream {
        let Seconds { secs, nanos } = self;
        quote!(#private::Duration::new(#secs, #nanos))
    }
}

/// The parsed options of one `#[celeriac::task(...)]` attribute.
#[derive(Default)]
pub(crate) struct TaskAttr {
    /// `name = "..."`: the task's stable name.
    pub(crate) name: Option<LitStr>,
    /// `queue = "..."`.
    queue: Option<LitStr>,
    /// `priority = 0..=9`.
    priority: Option<u8>,
    /// `max_retries = N`.
    max_retries: Option<u32>,
    /// `retry_backoff = secs`: the retry policy's base.
    retry_backoff: Option<Seconds>,
    /// `retry_backoff_max = secs`: the retry policy's cap.
    retry_backoff_max: Option<Seconds>,
    /// `retry_jitter = bool`.
    retry_jitter: Option<bool>,
    /// `soft_time_limit = secs`.
    soft_time_limit: Option<Seconds>,
    /// `time_limit = secs`.
    time_limit: Option<Seconds>,
    /// `ignore_result` or `ignore_result = bool`.
    ignore_result: Option<bool>,
    /// `acks_late = bool` (or the bare flag).
    acks_late: Option<bool>,
    /// `track_started = bool` (or the bare flag).
    track_started: Option<bool>,
    /// `blocking` or `blocking = bool`, and where it was written.
    pub(crate) blocking: Option<(bool, Span)>,
    /// `crate = path`: where the facade lives, `::celeriac` by default.
    pub(crate) krate: Option<Path>,
    /// Options seen so far, to reject duplicates.
    seen: HashSet<String>,
}

impl TaskAttr {
    /// Parses one option; called by `syn::meta::parser` for each item of the
    /// attribute's list.
    pub(crate) fn parse(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(ident) = meta.path.get_ident() else {
            return Err(meta.error(unknown_message("this path")));
        };
        let key = ident.to_string();
        if !KNOWN.contains(&key.as_str()) {
            return Err(meta.error(unknown_message(&format!("`{key}`"))));
        }
        if !self.seen.insert(key.clone()) {
            return Err(meta.error(format_args!("duplicate task option `{key}`")));
        }
        match key.as_str() {
            "name" => {
                let lit = string(&meta, &key)?;
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "the task name must not be empty",
                    ));
                }
                self.name = Some(lit);
            }
            "queue" => {
                let lit = string(&meta, &key)?;
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "the queue name must not be empty",
                    ));
                }
                self.queue = Some(lit);
            }
            "priority" => {
                let (value, span) = integer::<u8>(&meta, &key)?;
                if value > 9 {
                    return Err(syn::Error::new(span, "`priority` must be between 0 and 9"));
                }
                self.priority = Some(value);
            }
            "max_retries" => self.max_retries = Some(integer::<u32>(&meta, &key)?.0),
            "retry_backoff" => self.retry_backoff = Some(seconds(&meta, &key)?),
            "retry_backoff_max" => self.retry_backoff_max = Some(seconds(&meta, &key)?),
            "retry_jitter" => self.retry_jitter = Some(boolean(&meta, &key)?),
            "soft_time_limit" => self.soft_time_limit = Some(seconds(&meta, &key)?),
            "time_limit" => self.time_limit = Some(seconds(&meta, &key)?),
            "ignore_result" => self.ignore_result = Some(flag(&meta, &key)?),
            "acks_late" => self.acks_late = Some(flag(&meta, &key)?),
            "track_started" => self.track_started = Some(flag(&meta, &key)?),
            "blocking" => self.blocking = Some((flag(&meta, &key)?, ident.span())),
            "crate" => {
                let value = meta.value()?;
                // Both `crate = ::celeriac` and serde's `crate = "celeriac"`.
                let path = if value.peek(LitStr) {
                    value.parse::<LitStr>()?.parse::<Path>()?
                } else {
                    value.parse::<Path>()?
                };
                self.krate = Some(path);
            }
            // Every name in `KNOWN` has an arm above.
            _ => return Err(meta.error(unknown_message(&format!("`{key}`")))),
        }
        Ok(())
    }

    /// Returns whether the task runs on the blocking pool.
    pub(crate) fn is_blocking(&self) -> bool {
        matches!(self.blocking, Some((true, _)))
    }

    /// Returns the `TaskOptions` builder calls for these options, to append
    /// to `TaskOptions::new(NAME)`. `krate` is the facade's path.
    pub(crate) fn builder_calls(&self, krate: &TokenStream) -> TokenStream {
        let private = quote!(#krate::__private);
        let mut calls = TokenStream::new();
        if let Some(queue) = &self.queue {
            calls.extend(quote!(.queue(#queue)));
        }
        if let Some(priority) = self.priority {
            calls.extend(quote!(.priority(#priority)));
        }
        if let Some(n) = self.max_retries {
            calls.extend(quote!(.max_retries(#n)));
        }
        if self.retry_backoff.is_some()
            || self.retry_backoff_max.is_some()
            || self.retry_jitter.is_some()
        {
            let mut fields = TokenStream::new();
            if let Some(base) = self.retry_backoff {
                let base = base.to_tokens(&private);
                fields.extend(quote!(base: #base,));
            }
            if let Some(cap) = self.retry_backoff_max {
                let cap = cap.to_tokens(&private);
                fields.extend(quote!(cap: #cap,));
            }
            if let Some(jitter) = self.retry_jitter {
                fields.extend(quote!(jitter: #jitter,));
            }
            // Unset fields keep the defaults; with all three set, a struct
            // update would be dead code (and clippy says so).
            let rest = if self.retry_backoff.is_some()
                && self.retry_backoff_max.is_some()
                && self.retry_jitter.is_some()
            {
                quote!()
            } else {
                quote!(..::core::default::Default::default())
            };
            calls.extend(quote! {
                .retry_policy(#krate::RetryPolicy {
                    #fields
                    #rest
                })
            });
        }
        if let Some(d) = self.soft_time_limit {
            let d = d.to_tokens(&private);
            calls.extend(quote!(.soft_time_limit(#d)));
        }
        if let Some(d) = self.time_limit {
            let d = d.to_tokens(&private);
            calls.extend(quote!(.time_limit(#d)));
        }
        if let Some(yes) = self.ignore_result {
            calls.extend(quote!(.ignore_result(#yes)));
        }
        if let Some(yes) = self.acks_late {
            calls.extend(quote!(.acks_late(#yes)));
        }
        if let Some(yes) = self.track_started {
            calls.extend(quote!(.track_started(#yes)));
        }
        if self.is_blocking() {
            calls.extend(quote!(.blocking(true)));
        }
        calls
    }
}

/// Returns the message for an option the attribute does not know.
fn unknown_message(what: &str) -> String {
    format!(
        "unknown task option {what}; expected one of: {}",
        KNOWN.join(", ")
    )
}

/// Parses `= <expr>` and returns the expression's literal, or an error that
/// names the option and what it expects.
fn literal(meta: &ParseNestedMeta<'_>, key: &str, expected: &str) -> syn::Result<Lit> {
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error(format_args!("`{key}` needs a value: `{key} = {expected}`")));
    }
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Ok(lit),
        other => Err(syn::Error::new_spanned(
            other,
            format_args!("`{key}` expects {expected}"),
        )),
    }
}

/// Parses `key = "string"`.
fn string(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<LitStr> {
    match literal(meta, key, "a string literal")? {
        Lit::Str(s) => Ok(s),
        other => Err(syn::Error::new_spanned(
            other,
            format_args!("`{key}` expects a string literal"),
        )),
    }
}

/// Parses `key = <integer>` into `T`, with the literal's span.
fn integer<T>(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<(T, Span)>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match literal(meta, key, "an integer literal")? {
        Lit::Int(i) => {
            let value = i.base10_parse::<T>().map_err(|e| {
                syn::Error::new(i.span(), format_args!("`{key}` is out of range: {e}"))
            })?;
            Ok((value, i.span()))
        }
        other => Err(syn::Error::new_spanned(
            other,
            format_args!("`{key}` expects an integer literal"),
        )),
    }
}

/// Parses `key = true|false`.
fn boolean(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<bool> {
    match literal(meta, key, "`true` or `false`")? {
        Lit::Bool(LitBool { value, .. }) => Ok(value),
        other => Err(syn::Error::new_spanned(
            other,
            format_args!("`{key}` expects `true` or `false`"),
        )),
    }
}

/// Parses a bare `key` (meaning true) or `key = true|false`.
fn flag(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<bool> {
    if meta.input.peek(syn::Token![=]) {
        boolean(meta, key)
    } else {
        Ok(true)
    }
}

/// Parses `key = <seconds>`, an integer or float literal.
fn seconds(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<Seconds> {
    let expected = "seconds as an integer or float literal, e.g. `30` or `2.5`";
    match literal(meta, key, expected)? {
        Lit::Int(i) => {
            let secs = i.base10_parse::<u64>().map_err(|e| {
                syn::Error::new(i.span(), format_args!("`{key}` is out of range: {e}"))
            })?;
            Ok(Seconds { secs, nanos: 0 })
        }
        Lit::Float(f) => {
            let value = f.base10_parse::<f64>()?;
            seconds_from_f64(value).ok_or_else(|| {
                syn::Error::new(
                    f.span(),
                    format_args!("`{key}` must be a finite, non-negative number of seconds"),
                )
            })
        }
        other => Err(syn::Error::new_spanned(
            other,
            format_args!("`{key}` expects {expected}"),
        )),
    }
}

/// Splits a float number of seconds into whole seconds and nanoseconds, or
/// returns `None` when it is negative, not finite or too large.
fn seconds_from_f64(value: f64) -> Option<Seconds> {
    // `u64::MAX as f64` rounds up to 2^64, which itself does not fit.
    if !value.is_finite() || value < 0.0 || value >= u64::MAX as f64 {
        return None;
    }
    let whole = value.trunc();
    let mut secs = whole as u64;
    let mut nanos = ((value - whole) * 1e9).round() as u32;
    // Rounding 0.9999999999 gives a full second, carried over.
    if nanos >= 1_000_000_000 {
        secs = secs.checked_add(1)?;
        nanos = 0;
    }
    Some(Seconds { secs, nanos })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(tokens: TokenStream) -> syn::Result<TaskAttr> {
        let mut attr = TaskAttr::default();
        let parser = syn::meta::parser(|meta| attr.parse(meta));
        syn::parse::Parser::parse2(parser, tokens)?;
        Ok(attr)
    }

    fn err(tokens: TokenStream) -> String {
        match parse(tokens) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn splits_float_seconds() {
        assert_eq!(
            seconds_from_f64(2.5),
            Some(Seconds {
                secs: 2,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            seconds_from_f64(0.001),
            Some(Seconds {
                secs: 0,
                nanos: 1_000_000
            })
        );
        assert_eq!(
            seconds_from_f64(0.999_999_999_9),
            Some(Seconds { secs: 1, nanos: 0 })
        );
        assert_eq!(seconds_from_f64(-1.0), None);
        assert_eq!(seconds_from_f64(f64::INFINITY), None);
        assert_eq!(seconds_from_f64(1e30), None);
    }

    #[test]
    fn parses_every_option() {
        let attr = parse(quote!(
            name = "tasks.add",
            queue = "math",
            priority = 7,
            max_retries = 3,
            retry_backoff = 2,
            retry_backoff_max = 60.5,
            retry_jitter = false,
            soft_time_limit = 10,
            time_limit = 12.25,
            ignore_result,
            acks_late = false,
            blocking,
            crate = ::my::celeriac
        ))
        .unwrap();
        assert_eq!(
            attr.name.as_ref().map(LitStr::value).as_deref(),
            Some("tasks.add")
        );
        assert_eq!(attr.priority, Some(7));
        assert_eq!(attr.max_retries, Some(3));
        assert_eq!(attr.retry_backoff, Some(Seconds { secs: 2, nanos: 0 }));
        assert_eq!(
            attr.retry_backoff_max,
            Some(Seconds {
                secs: 60,
                nanos: 500_000_000
            })
        );
        assert_eq!(attr.retry_jitter, Some(false));
        assert_eq!(
            attr.time_limit,
            Some(Seconds {
                secs: 12,
                nanos: 250_000_000
            })
        );
        assert_eq!(attr.ignore_result, Some(true));
        assert_eq!(attr.acks_late, Some(false));
        assert!(attr.is_blocking());
        assert!(attr.krate.is_some());
    }

    #[test]
    fn accepts_a_string_crate_path() {
        let attr = parse(quote!(crate = "my_celeriac")).unwrap();
        let krate = attr.krate.unwrap();
        assert!(krate.is_ident("my_celeriac"));
    }

    #[test]
    fn rejects_unknown_and_duplicate_options() {
        assert!(err(quote!(retries = 3)).starts_with("unknown task option `retries`"));
        assert!(err(quote!(a::b = 3)).starts_with("unknown task option this path"));
        assert_eq!(
            err(quote!(max_retries = 1, max_retries = 2)),
            "duplicate task option `max_retries`"
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(err(quote!(name = 3)), "`name` expects a string literal");
        assert_eq!(err(quote!(name = "")), "the task name must not be empty");
        assert_eq!(
            err(quote!(name)),
            "`name` needs a value: `name = a string literal`"
        );
        assert_eq!(
            err(quote!(priority = 10)),
            "`priority` must be between 0 and 9"
        );
        assert!(err(quote!(max_retries = -1)).starts_with("`max_retries` expects an integer"));
        assert!(err(quote!(max_retries = 1.5)).starts_with("`max_retries` expects an integer"));
        assert!(err(quote!(time_limit = "10")).starts_with("`time_limit` expects seconds"));
        assert!(err(quote!(time_limit = SECS)).starts_with("`time_limit` expects seconds"));
        assert_eq!(
            err(quote!(retry_jitter = 1)),
            "`retry_jitter` expects `true` or `false`"
        );
        assert_eq!(
            err(quote!(ignore_result = "yes")),
            "`ignore_result` expects `true` or `false`"
        );
        assert!(err(quote!(max_retries = 99999999999)).starts_with("`max_retries` is out of range"));
    }

    #[test]
    fn builds_the_options_chain() {
        let attr = parse(quote!(max_retries = 3, retry_backoff = 2, blocking)).unwrap();
        let calls = attr.builder_calls(&quote!(::celeriac)).to_string();
        assert!(calls.contains(". max_retries (3u32)"), "{calls}");
        assert!(
            calls.contains("base : :: celeriac :: __private :: Duration :: new (2u64 , 0u32)"),
            "{calls}"
        );
        assert!(calls.contains(". blocking (true)"), "{calls}");
        assert!(!calls.contains("queue"), "{calls}");
    }
}
