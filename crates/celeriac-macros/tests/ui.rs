//! Compile-fail tests: each misuse of `#[celeriac::task]` is a clear,
//! spanned compile error. The expected messages are in `ui/*.stderr`;
//! regenerate them with `TRYBUILD=overwrite cargo test -p celeriac-macros --test ui`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
