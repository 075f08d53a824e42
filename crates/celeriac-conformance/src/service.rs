//! Reaching external services and reporting skips.
//!
//! Backends that need a server (Redis, RabbitMQ, PostgreSQL) read its URL
//! from an environment variable with [`external`]. When the variable is
//! unset the case is skipped with a visible message, unless
//! `CELERIAC_REQUIRE_SERVICES=1` is set (as CI does), in which case it fails.

use std::io::Write;

/// The environment variable that turns every skip into a failure.
pub const REQUIRE_SERVICES_VAR: &str = "CELERIAC_REQUIRE_SERVICES";

/// Returns true if `CELERIAC_REQUIRE_SERVICES=1`: a missing service is then
/// a failure, not a skip.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| v.trim() == "1")
}

/// Returns the server URL held by the environment variable `var`.
///
/// When it is unset or empty, prints a visible `skipped: ...` line and
/// returns `None`, so a fixture can write `external("VAR")?`.
///
/// # Panics
///
/// Panics when the variable is unset and `CELERIAC_REQUIRE_SERVICES=1`.
///
/// ```
/// // Nothing sets this variable, so the service counts as unavailable
/// // (and, where services are required, its absence would panic).
/// if !celeriac_conformance::services_required() {
///     assert_eq!(celeriac_conformance::external("CELERIAC_DOCTEST_UNSET_URL"), None);
/// }
/// ```
pub fn external(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            let why = format!("{var} is not set");
            if services_required() {
                panic!("{why}, and {REQUIRE_SERVICES_VAR}=1 requires the service");
            }
            note(&format!("skipped: {why}"));
            None
        }
    }
}

/// Returns a fresh namespace (key prefix, schema, vhost) so that tests
/// sharing one server never see each other's data.
///
/// ```
/// let a = celeriac_conformance::unique_ns();
/// let b = celeriac_conformance::unique_ns();
/// assert_ne!(a, b);
/// assert!(a.starts_with("celeriac_test_"));
/// ```
pub fn unique_ns() -> String {
    format!("celeriac_test_{}", uuid::Uuid::new_v4().simple())
}

/// Prints a line to the real standard error, past the test harness's
/// output capture, so skips are seen without `--nocapture`.
pub fn note(line: &str) {
    // The `eprintln!` macro goes through the harness's capture and would hide
    // the line for a passing test; writing to the handle does not. A failed
    // write to stderr has nowhere better to go, so it is ignored.
    let _ = writeln!(std::io::stderr(), "{line}");
}
