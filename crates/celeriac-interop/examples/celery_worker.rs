//! A celeriac worker for the Python fixture's tasks (`examples/tasks.py`):
//! `tasks.add`, `tasks.echo`, `tasks.fail`, `tasks.fail_custom`,
//! `tasks.flaky`, `tasks.sleep` (and `tasks.sleep_started`, `tasks.track`),
//! with the same names and behaviour as the Python ones.
//!
//! ```sh
//! cargo run --release --example celery_worker -- worker --broker redis://127.0.0.1:6379/0 -Q celery -c 8
//! ```
//!
//! The broker comes from `--broker`, else `CELERIAC_BROKER`, else
//! `redis://127.0.0.1:6379/0`. A Python client then calls these tasks as
//! usual: `tasks.add.delay(2, 3).get()`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    celeriac_interop::app_builder().run_cli().await
}
