//! The conformance suite every celeriac backend must pass: memory and
//! SQLite today, Redis, AMQP and PostgreSQL later.
//!
//! **Semver-exempt**: cases are added and tightened as the contract in
//! [`celeriac_core::broker`] and [`celeriac_core::backend`] is refined.
//! The crate is a dev-dependency of backends and is never published.
//!
//! # Adopting the suite
//!
//! A backend implements [`Fixture`] (how to open handles on one isolated
//! store) in `tests/conformance.rs` and invokes [`suite!`] with an
//! expression that makes a fresh fixture. The expression is evaluated once
//! per case, so every case gets its own store. (The examples are not
//! compiled here, since backends depend on this crate;
//! `crates/celeriac-sqlite/tests/conformance.rs` is the real thing.)
//!
//! ```text
//! use celeriac_conformance::{Fixture, FixtureOptions};
//! use celeriac_sqlite::SqliteBroker;
//!
//! struct Sqlite(tempfile::TempDir);
//!
//! impl Fixture for Sqlite {
//!     type Broker = SqliteBroker;
//!     async fn open_with(&self, opts: FixtureOptions) -> SqliteBroker {
//!         let mut b = SqliteBroker::builder(self.0.path().join("q.db"));
//!         if let Some(n) = opts.max_queue_length { b = b.max_queue_length(n); }
//!         if let Some(d) = opts.result_expiry { b = b.result_expiry(d); }
//!         b.open().await.unwrap()
//!     }
//! }
//!
//! celeriac_conformance::suite!(async { Some(Sqlite(tempfile::tempdir().unwrap())) });
//! ```
//!
//! A backend that needs a server reads its URL with [`external`] and
//! isolates each case with [`unique_ns`]:
//!
//! ```text
//! celeriac_conformance::suite!(|| async {
//!     let url = celeriac_conformance::external("CELERIAC_TEST_REDIS_URL")?;
//!     Some(RedisFixture::new(url, celeriac_conformance::unique_ns()))
//! });
//! ```
//!
//! When the expression yields `None` the case prints a visible
//! `skipped: ...` line and passes, unless `CELERIAC_REQUIRE_SERVICES=1`
//! (as in CI), when it fails.
//!
//! [`suite!`] expands to one `#[test]` per case, in one module per area
//! (`cargo test -p celeriac-sqlite --test conformance fencing::`), each on a
//! fresh multi-thread runtime with two workers and a deadline of
//! [`CASE_TIMEOUT`], so a hung fetch fails its case instead of the run.
//! Every case is also a public `async fn case<F: Fixture>(f: &F)`, so a
//! backend may call one directly.
//!
//! Cases skip, with a printed note, what the broker's
//! [`Capabilities`](celeriac_core::Capabilities) do not claim; the
//! [`capabilities`] cases check that what it claims works.
//!
//! # Layout
//!
//! | module | cases |
//! |---|---|
//! | [`basic`] | publish, fetch, ack, release; batch publish; max and FIFO |
//! | [`wakeup`] | blocking fetch: waits, wakes on publish (any handle), cancel safety |
//! | [`lease`] | expiry and redelivery, extend, delivery counts, no double lease |
//! | [`delay`] | eta honoured; retry replaces the message with a new eta |
//! | [`priority`] | 9 before 0, FIFO within a priority |
//! | [`fairness`] | each fetch starts from another queue; round-robin batches |
//! | [`fencing`] | stale or settled attempts cannot settle, extend or overwrite a result |
//! | [`dead_letter`] | dead-letter with reason, list, replay, purge |
//! | [`revoke`] | waiting removed, running flagged, unknown reported and remembered |
//! | [`results`] | store, get, wait (woken by another handle), forget, expiry |
//! | [`admin`] | queue statistics, purge, maximum length (publish all or none) |
//! | [`durability`] | a restart keeps messages, leases, results, dead letters |
//! | [`capabilities`] | the report is stable and truthful |
//! | [`fixture`] | [`Fixture`] and [`FixtureOptions`] |
//! | [`service`] | [`external`], [`unique_ns`], skip notes |
//! | [`support`] | message builders and assertions the cases share |
//!
//! # Timing
//!
//! Brokers read the wall clock, so the cases use real time with short
//! leases and etas (a few hundred milliseconds) and never sleep to order
//! events: they wait on the operation under test (a fetch, a `wait`) with
//! a bound. The one exception, result expiry, is marked where it occurs.

pub mod admin;
pub mod basic;
pub mod capabilities;
pub mod dead_letter;
pub mod delay;
pub mod durability;
pub mod fairness;
pub mod fencing;
pub mod fixture;
pub mod lease;
pub mod priority;
pub mod results;
pub mod revoke;
pub mod service;
pub mod support;
pub mod wakeup;

pub use fixture::{Fixture, FixtureOptions};
pub use service::{external, services_required, unique_ns, REQUIRE_SERVICES_VAR};

use std::time::Duration;

/// The longest one case may run before it fails as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Expands to one test per conformance case for the backend whose fixture
/// the expression makes.
///
/// The argument is an expression evaluated once per case to a future of
/// `Option<impl Fixture>` (an `async` block, or a call of an `async fn`),
/// or a closure `|| async { ... }` returning one. `None` means the
/// backend's service is not available: see the [crate docs](crate).
#[macro_export]
macro_rules! suite {
    (|| $make:expr) => {
        $crate::suite!(@areas $make);
    };
    (move || $make:expr) => {
        $crate::suite!(@areas $make);
    };
    (@areas $make:expr) => {
        $crate::suite!(@cases $make;
            basic {
                publish_fetch_ack_with_result,
                ack_without_result_stores_nothing,
                message_round_trips,
                release_makes_ready_at_once,
                batch_publish_delivers_every_message,
                empty_publish_is_ok,
                fetch_respects_max_and_fifo,
                fetch_without_wait_returns_at_once,
                queues_are_separate,
            }
            wakeup {
                fetch_waits_when_empty,
                fetch_wakes_on_publish,
                fetch_wakes_on_publish_from_another_handle,
                fetch_wakes_for_any_of_its_queues,
                fetch_wakes_on_release,
                dropped_fetch_leases_nothing,
            }
            lease {
                lease_expiry_redelivers,
                late_settle_before_redelivery_succeeds,
                exactly_one_ack_under_expiry_races,
                extend_keeps_lease,
                extend_moves_lease_end,
                extend_reports_each_lease_in_order,
                deliveries_count_every_redelivery,
                never_leased_twice_under_concurrency,
            }
            delay {
                eta_is_honoured,
                blocked_fetch_sees_eta_published_later,
                past_eta_is_ready_at_once,
                delayed_message_does_not_block_ready_ones,
                retry_with_new_eta_is_honoured,
                retry_without_eta_is_ready_at_once,
            }
            priority {
                higher_priority_first,
                batch_is_in_priority_order,
                priority_above_nine_counts_as_nine,
            }
            fairness {
                busy_queue_does_not_starve_another,
                each_fetch_starts_from_a_different_queue,
                batches_round_robin_across_queues,
                empty_queues_are_skipped,
            }
            fencing {
                stale_attempt_cannot_settle_or_extend,
                settled_attempt_cannot_settle_again,
                forged_token_is_refused,
                tokens_are_fresh_per_delivery,
                settle_many_fences_each_settlement,
            }
            dead_letter {
                dead_letter_removes_and_stores_result,
                dead_letters_are_listed_with_reason,
                replay_puts_dead_letters_back,
                purge_dead_letters_empties_the_list,
            }
            revoke {
                revoke_waiting_removes_it,
                revoke_running_is_reported_on_extend,
                revoke_unknown_is_remembered,
            }
            results {
                store_get_replace_forget,
                wait_returns_at_once_when_ready,
                wait_wakes_on_store_from_another_handle,
                ack_result_wakes_waiter,
                wait_times_out_with_latest,
                results_expire,
            }
            admin {
                queue_stats_count_ready_delayed_leased,
                purge_removes_waiting_messages,
                max_length_refuses_whole_batch,
            }
            durability {
                survives_reopen,
            }
            capabilities {
                capabilities_are_stable,
                claimed_capabilities_work,
                unclaimed_operations_fail_cleanly,
            }
        );
    };
    (@cases $make:expr; $( $area:ident { $( $case:ident ),* $(,)? } )*) => {
        $(
            mod $area {
                #[allow(unused_imports)]
                use super::*;
                $(
                    #[test]
                    fn $case() {
                        const NAME: &str = concat!(stringify!($area), "::", stringify!($case));
                        $crate::__private::run(NAME, async {
                            if let Some(fixture) = $crate::__private::fixture(NAME, $make).await {
                                $crate::$area::$case(&fixture).await;
                            }
                        });
                    }
                )*
            }
        )*
    };
    ($make:expr) => {
        $crate::suite!(@areas $make);
    };
}

/// What [`suite!`] expands to calls; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;

    use crate::service::{note, services_required, REQUIRE_SERVICES_VAR};
    use crate::{Fixture, CASE_TIMEOUT};

    /// Runs one case on a fresh multi-thread runtime with two workers (as
    /// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`
    /// would, without asking the backend crate for tokio's macros), failing
    /// it when it outlives [`CASE_TIMEOUT`].
    #[allow(clippy::expect_used)]
    pub fn run(name: &str, case: impl Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the case");
        rt.block_on(async {
            if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
                panic!("{name} did not finish within {CASE_TIMEOUT:?}: something hung");
            }
        });
    }

    /// Awaits the fixture; reports a skip when there is none (or fails,
    /// when services are required).
    pub async fn fixture<F: Fixture>(
        name: &str,
        make: impl Future<Output = Option<F>>,
    ) -> Option<F> {
        let f = make.await;
        if f.is_none() {
            if services_required() {
                panic!("{name}: the backend is unavailable and {REQUIRE_SERVICES_VAR}=1");
            }
            note(&format!("skipped {name}: the backend is unavailable"));
        }
        f
    }
}
