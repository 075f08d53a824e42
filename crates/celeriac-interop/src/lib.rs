//! Interop between celeriac and Python Celery on one Redis.
//!
//! This crate holds:
//!
//! - [`tasks`]: the Rust twins of the Python fixture `examples/tasks.py`
//!   (`tasks.add`, `tasks.echo`, `tasks.fail`, `tasks.fail_custom`,
//!   `tasks.flaky`, `tasks.sleep`, plus `tasks.sleep_started` and
//!   `tasks.track` for the tests), registered by [`app_builder`];
//! - the `celery_worker` example, a celeriac worker for those tasks:
//!   `cargo run --release --example celery_worker -- worker --broker redis://127.0.0.1:6379/0 -Q celery -c 8`;
//! - [`harness`]: what the interop tests under `tests/` use to run Python
//!   clients and workers, Rust workers, and to look at Redis directly.
//!
//! ```no_run
//! # async fn demo() -> Result<(), celeriac::Error> {
//! // A Rust producer calling the Python worker's `tasks.add`:
//! let app = celeriac_interop::app_builder().build().await?;
//! let r = celeriac_interop::tasks::add::delay(&app, 2, 3).await?;
//! # Ok(()) }
//! ```

pub mod harness;
pub mod tasks;

use celeriac::{App, AppBuilder};

/// The broker (and result backend) the example uses when neither
/// `--broker` nor `CELERIAC_BROKER` says otherwise: the same default as the
/// Python fixture's `CELERY_BROKER_URL`.
pub const DEFAULT_BROKER: &str = "redis://127.0.0.1:6379/0";

/// Returns an app builder on [`DEFAULT_BROKER`] with every fixture task
/// registered; set another broker with [`AppBuilder::broker`].
pub fn app_builder() -> AppBuilder {
    App::builder()
        .broker(DEFAULT_BROKER)
        .task(tasks::add)
        .task(tasks::Echo)
        .task(tasks::fail)
        .task(tasks::fail_custom)
        .task(tasks::flaky)
        .task(tasks::sleep)
        .task(tasks::SleepStarted)
        .task(tasks::track)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn registers_the_fixture_tasks() {
        let app = super::app_builder()
            .broker("memory://")
            .build()
            .await
            .expect("memory app");
        assert_eq!(
            app.task_names(),
            [
                "tasks.add",
                "tasks.echo",
                "tasks.fail",
                "tasks.fail_custom",
                "tasks.flaky",
                "tasks.sleep",
                "tasks.sleep_started",
                "tasks.track"
            ]
        );
    }
}
