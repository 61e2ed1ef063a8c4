//! Releasing: on drop, explicitly, by force; and what a lost guard reports.

use std::time::Duration;

use lockman_core::{AcquireOptions, LockError, LockEventKind, LockManagerExt, LockState, LostReason};

use crate::Harness;
use crate::exclusion::patient;

/// How long a guard may take to learn that its lock was broken.
pub(crate) const LOSS_NOTICE: Duration = Duration::from_secs(5);

/// Dropping the guard releases the lock (backends that release on a task do
/// so promptly).
pub async fn drop_releases(h: &dyn Harness) {
    let locks = h.locks();
    let guard = locks.acquire("r", patient()).await.expect("acquire");
    drop(guard);
    let again = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_secs(5)))
        .await
        .expect("a dropped guard did not release its lock");
    again.release().await.expect("release");
}

/// `release().await` frees the lock before it returns.
pub async fn explicit_release_releases(h: &dyn Harness) {
    let locks = h.locks();
    let guard = locks.acquire("r", patient()).await.expect("acquire");
    guard.release().await.expect("release");
    assert_eq!(locks.state("r").await.expect("state"), LockState::Available);
    let again = locks.try_acquire("r", AcquireOptions::new()).await.expect("try");
    assert!(again.is_some(), "released lock not free");
}

/// `with_lock` holds the lock while the work runs and releases it after.
pub async fn with_lock_releases_after_work(h: &dyn Harness) {
    let locks = h.locks();
    let inner = locks.clone();
    let held_during = locks
        .with_lock("r", patient(), || async move { inner.state("r").await.map(|s| s.is_held()) })
        .await
        .expect("with_lock");
    assert!(held_during.expect("state"), "not held while the work ran");
    assert_eq!(locks.state("r").await.expect("state"), LockState::Available);
}

/// `force_release` breaks the lock: it returns the old holder, the guard
/// learns it lost the lock, a `ForceReleased` event carries the reason, and
/// someone else can take the lock.
pub async fn force_release_makes_guard_lost(h: &dyn Harness) {
    let locks = h.locks();
    let mut events = locks.events();
    let guard = locks.acquire("r", patient().holder("stuck-job")).await.expect("acquire");
    let broken = locks
        .force_release("r", "operator cleared a stuck job")
        .await
        .expect("force_release")
        .expect("force_release found no holder");
    assert_eq!(broken.holder.name(), "stuck-job");
    let reason =
        tokio::time::timeout(LOSS_NOTICE, guard.lost()).await.expect("the guard never learned its lock was broken");
    assert!(guard.is_lost());
    if let LostReason::ForceReleased { reason } = &reason {
        assert_eq!(reason, "operator cleared a stuck job");
    }
    let forced = loop {
        let event = tokio::time::timeout(LOSS_NOTICE, events.recv())
            .await
            .expect("no ForceReleased event")
            .expect("event stream closed");
        if event.kind == LockEventKind::ForceReleased {
            break event;
        }
    };
    assert_eq!(forced.resource, "r");
    assert_eq!(forced.reason.as_deref(), Some("operator cleared a stuck job"));
    let next = locks.try_acquire("r", AcquireOptions::new()).await.expect("try");
    assert!(next.is_some(), "a force-released lock is not free");
}

/// Releasing a guard whose lock was lost is an error, not a silent success.
pub async fn release_of_lost_guard_errors(h: &dyn Harness) {
    let locks = h.locks();
    let guard = locks.acquire("r", patient()).await.expect("acquire");
    locks.force_release("r", "test").await.expect("force_release");
    let _ = tokio::time::timeout(LOSS_NOTICE, guard.lost()).await;
    let err = guard.release().await.expect_err("releasing a lost lock succeeded");
    assert!(matches!(err, LockError::Lost { .. }), "expected Lost, got {err}");
    assert!(err.to_string().contains("\"r\""), "{err} does not name the resource");
}

/// Force-releasing a free resource is a no-op that says so.
pub async fn force_release_of_free_resource_is_none(h: &dyn Harness) {
    let locks = h.locks();
    let broken = locks.force_release("nobody-holds-this", "test").await.expect("force_release");
    assert_eq!(broken, None);
}
