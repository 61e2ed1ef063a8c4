//! The conformance suite every lockman backend must pass.
//!
//! Like object_store's `integration.rs`: each check is a public async function
//! taking a [`Harness`] — one backend under test — and backend differences are
//! read from [`LockManager::capabilities`] instead of being copied per backend.
//! A check whose capability the backend lacks prints a `SKIPPED` line and
//! passes.
//!
//! Run the whole suite against a backend with [`conformance_suite!`]:
//!
//! ```
//! use std::sync::Arc;
//! use lockman_core::{LockManager, StatusManager};
//! use lockman_testkit::Harness;
//!
//! struct MyBackend { /* a fresh, private store */ }
//!
//! impl Harness for MyBackend {
//!     fn locks(&self) -> Arc<dyn LockManager> { todo!() }
//!     fn status(&self) -> Arc<dyn StatusManager> { todo!() }
//! }
//!
//! // In a test file:
//! // lockman_testkit::conformance_suite!(MyBackend { });
//! ```
//!
//! Every harness must give a store no other test touches: checks use fixed
//! resource names and assume they start free.
//!
//! With the `servers` feature (off by default), the `fixture` module's
//! `ServerFixture` trait and its implementations (`redis_server`,
//! `etcd_server`) start
//! private servers on loopback ports, for backend and fault tests;
//! `etcd_cluster` starts a private three-member etcd cluster (leader
//! kills, partitioned members, whole-cluster restarts).
//!
//! With the `mode-processes` feature (off by default; Unix), the
//! `mode_processes` module checks shared and permit grants across real OS
//! processes for a backend whose managers share a store, with the child
//! processes' machinery a backend's own crash tests reuse.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use lockman_core::{Capabilities, LockManager, StatusManager, WakeMechanism};

#[cfg(feature = "servers")]
pub mod etcd_cluster;
#[cfg(feature = "servers")]
pub mod etcd_server;
pub mod events;
pub mod exclusion;
#[cfg(feature = "servers")]
pub mod fixture;
pub mod flags;
pub mod holders;
pub mod inspection;
pub mod leases;
#[cfg(all(unix, feature = "mode-processes"))]
pub mod mode_processes;
pub mod modes;
pub mod multi;
pub mod names;
pub mod processes;
#[cfg(feature = "servers")]
pub mod redis_server;
pub mod reentrancy;
pub mod relay;
pub mod release;
pub mod runtimes;
pub mod timing;
pub mod url_options;

/// One backend under test, over a store private to this harness.
pub trait Harness: Send + Sync + 'static {
    /// The lock manager under test.
    fn locks(&self) -> Arc<dyn LockManager>;

    /// A second manager over the *same* store, as another process would see
    /// it (a new connection, another handle on the directory). `None` if the
    /// backend cannot share a store between managers (the memory backend).
    fn second_locks(&self) -> Option<Arc<dyn LockManager>> {
        None
    }

    /// The status manager under test.
    fn status(&self) -> Arc<dyn StatusManager>;
}

/// How late a timeout may fire on a loaded 2-core CI machine before the
/// suite calls it inaccurate (the median must stay within [`TIMEOUT_MEDIAN_SLACK`]).
pub const TIMEOUT_MAX_SLACK: Duration = Duration::from_millis(60);
/// The median lateness allowed for timeouts: "within a few milliseconds".
pub const TIMEOUT_MEDIAN_SLACK: Duration = Duration::from_millis(10);

/// Generates one `#[tokio::test]` per conformance check, each with a fresh
/// harness built by `$make` (an expression, evaluated inside the async test,
/// so it may `.await`).
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@tests $make;
            exclusion::sixteen_tasks_never_overlap,
            exclusion::plain_threads_never_overlap,
            exclusion::second_manager_is_excluded,
            exclusion::distinct_resources_do_not_block,
            exclusion::try_acquire_free_resource_grants,
            exclusion::try_acquire_held_resource_is_none,
            exclusion::no_wait_acquire_fails_at_once,
            reentrancy::same_holder_reenters,
            reentrancy::reentrant_release_needs_every_guard,
            reentrancy::no_holder_is_not_reentrant,
            reentrancy::different_holders_exclude,
            reentrancy::blocking_callers_reenter_per_thread,
            reentrancy::concurrent_first_acquisitions_by_one_holder,
            holders::same_holder_in_two_managers_excludes,
            holders::holder_name_is_scoped_to_its_manager,
            holders::shared_holder_in_two_managers_follows_capability,
            timing::timeouts_are_accurate,
            timing::timeout_error_names_the_holder,
            timing::waiters_are_woken_promptly,
            timing::waiters_are_served_fairly,
            timing::timed_out_waiter_never_holds,
            timing::cancelled_waiter_never_holds,
            timing::extreme_durations_are_handled,
            release::drop_releases,
            release::explicit_release_releases,
            release::with_lock_releases_after_work,
            release::force_release_makes_guard_lost,
            release::release_of_lost_guard_errors,
            release::force_release_of_free_resource_is_none,
            leases::lease_expiry_hands_lock_to_waiter,
            leases::lease_expiry_marks_guard_lost,
            leases::extend_keeps_the_lock,
            leases::default_lease_is_renewed_while_held,
            leases::extend_outlasts_the_default_lease,
            leases::shortened_lease_is_lost_at_its_end,
            leases::a_lease_shorter_than_the_renewal_period_is_renewed,
            leases::expired_lease_passes_lock_to_next_waiter,
            leases::fencing_tokens_strictly_increase,
            leases::fencing_token_is_kept_on_reentry,
            inspection::state_of_free_resource_is_available,
            inspection::state_reports_holder_details,
            inspection::list_shows_every_held_lock,
            inspection::capabilities_are_consistent,
            names::hostile_names_are_distinct_or_invalid,
            names::names_differing_in_case_are_distinct,
            names::empty_and_nul_names_are_invalid,
            events::events_report_lock_lifecycle_in_order,
            modes::unsupported_modes_are_refused,
            modes::shared_holders_hold_together,
            modes::exclusive_and_shared_exclude_each_other,
            modes::readers_overlap_and_writers_are_alone,
            modes::permits_limit_concurrent_holders,
            modes::mode_mismatch_is_a_config_error,
            modes::writer_is_not_starved_by_readers,
            modes::fencing_tokens_increase_across_modes,
            modes::every_holder_is_shown,
            modes::reentry_per_mode,
            modes::leases_and_loss_per_mode,
            multi::acquire_all_in_opposite_orders_never_deadlocks,
            multi::acquire_all_is_all_or_nothing,
            multi::acquire_all_reports_a_lost_part,
            multi::acquire_all_shared_sets_overlap,
            multi::blocking_acquire_all_never_deadlocks,
            flags::flag_set_get_clear,
            flags::flag_value_round_trips,
            flags::flag_ttl_expires,
            flags::flag_list_is_sorted_and_complete,
            flags::flag_take_is_exactly_once,
            flags::flag_names_are_validated,
        );
    };
    (@tests $make:expr; $($module:ident :: $check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let _turn = $crate::measuring_turn(stringify!($check)).await;
                let harness = $make;
                $crate::$module::$check(&harness).await;
            }
        )+
    };
}

/// The checks that measure scheduling (how fair the handoff is, how late a
/// timeout fires): they run alone in their test binary, because the other
/// checks running beside them on a 2-core machine take the CPU their
/// waiters need and make the measurement say nothing about the backend.
const MEASURING_CHECKS: &[&str] = &["waiters_are_served_fairly", "timeouts_are_accurate", "waiters_are_woken_promptly"];

/// Every check of one test binary shares this; a measuring check takes it alone.
static MEASURING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A check's turn to run: shared with other checks, or alone for the
/// checks in [`MEASURING_CHECKS`]. Used by [`conformance_suite!`].
#[doc(hidden)]
pub async fn measuring_turn(check: &str) -> MeasuringTurn {
    if MEASURING_CHECKS.contains(&check) {
        MeasuringTurn::Alone(MEASURING.write().await)
    } else {
        MeasuringTurn::Shared(MEASURING.read().await)
    }
}

/// Held while a conformance check runs (see [`measuring_turn`]).
#[doc(hidden)]
#[derive(Debug)]
pub enum MeasuringTurn {
    /// Beside other checks.
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    /// Alone.
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

/// Prints the loud line for a check the backend cannot run, and returns
/// whether the capability is present.
pub fn require(caps: &Capabilities, capability: &str, present: bool) -> bool {
    if !present {
        eprintln!("SKIPPED: this check needs capability `{capability}`, which the backend does not declare ({caps:?})");
    }
    present
}

/// How long a handoff may take before the suite calls it slow: well under a
/// poll interval for backends that are told of releases, one maximum poll
/// interval (plus margin) for polling backends.
pub fn handoff_bound(caps: &Capabilities) -> Duration {
    match caps.wake {
        WakeMechanism::Poll { max, .. } => max + Duration::from_millis(20),
        _ => Duration::from_millis(10),
    }
}

/// Polls `future` once; `Some(output)` if it completed.
pub async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *future).poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

/// The median of `samples` (sorted in place).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
