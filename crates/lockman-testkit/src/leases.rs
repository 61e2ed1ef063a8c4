//! Leases, renewal and fencing tokens.

use std::time::Duration;

use lockman_core::{AcquireOptions, LockError, LostReason};

use crate::exclusion::patient;
use crate::release::LOSS_NOTICE;
use crate::{Harness, require};

/// A holder that outlives its lease loses the lock to the waiter.
pub async fn lease_expiry_hands_lock_to_waiter(h: &dyn Harness) {
    let locks = h.locks();
    if !require(&locks.capabilities(), "leases", locks.capabilities().leases) {
        return;
    }
    let lease = Duration::from_millis(100);
    let sleeper = locks.acquire("r", patient().lease(lease)).await.expect("acquire");
    let started = tokio::time::Instant::now();
    let waiter = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_secs(5)))
        .await
        .expect("the lease never expired");
    assert!(started.elapsed() >= lease - Duration::from_millis(5), "granted before the lease ran out");
    assert!(waiter.fencing_token() > sleeper.fencing_token());
    assert!(sleeper.is_lost(), "the expired holder does not know it lost the lock");
    let reason = tokio::time::timeout(LOSS_NOTICE, sleeper.lost()).await.expect("lost() never completed");
    assert!(matches!(reason, LostReason::LeaseExpired | LostReason::Stolen { .. }), "{reason}");
    let err = sleeper.release().await.expect_err("released an expired lock");
    assert!(err.is_lost(), "expected Lost, got {err}");
    // The expired holder's release must not free the new holder's lock.
    assert!(locks.state("r").await.expect("state").is_held());
    waiter.release().await.expect("release");
}

/// With nobody waiting, an expired lease still makes the guard lost.
pub async fn lease_expiry_marks_guard_lost(h: &dyn Harness) {
    let locks = h.locks();
    if !require(&locks.capabilities(), "leases", locks.capabilities().leases) {
        return;
    }
    let guard = locks.acquire("r", patient().lease(Duration::from_millis(50))).await.expect("acquire");
    assert!(!guard.is_lost());
    let reason = tokio::time::timeout(LOSS_NOTICE, guard.lost()).await.expect("lost() never completed");
    assert_eq!(reason, LostReason::LeaseExpired);
    assert!(matches!(guard.release().await, Err(LockError::Lost { .. })));
}

/// `extend` pushes the lease out, so the lock survives its first lease.
pub async fn extend_keeps_the_lock(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    if !require(&caps, "renewal", caps.renewal) {
        return;
    }
    let guard = locks.acquire("r", patient().lease(Duration::from_millis(150))).await.expect("acquire");
    let before = guard.info().lease_expires_at.expect("a leased lock has an expiry");
    guard.extend(Duration::from_secs(30)).await.expect("extend");
    let after = guard.info().lease_expires_at.expect("expiry");
    assert!(after > before + Duration::from_secs(20), "extend did not move the expiry");
    let err = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_millis(300)))
        .await
        .expect_err("the extended lock expired at its first lease");
    assert!(err.is_timeout());
    assert!(!guard.is_lost());
    guard.release().await.expect("release");
}

/// A guard with the backend's default lease keeps the lock past that lease
/// (the watchdog renews it). Skipped for backends without a default lease.
pub async fn default_lease_is_renewed_while_held(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    let Some(lease) = caps.default_lease else {
        require(&caps, "default_lease", false);
        return;
    };
    if lease > Duration::from_secs(3) {
        eprintln!(
            "SKIPPED: default lease {lease:?} is too long to outlive in a test; configure a short one in the harness"
        );
        return;
    }
    let guard = locks.acquire("r", patient()).await.expect("acquire");
    tokio::time::sleep(lease * 2).await;
    assert!(!guard.is_lost(), "the default lease was not renewed");
    assert!(locks.state("r").await.expect("state").is_held());
    guard.release().await.expect("release");
}

/// Every new grant of a resource carries a larger fencing token, whoever gets it.
pub async fn fencing_tokens_strictly_increase(h: &dyn Harness) {
    let locks = h.locks();
    if !require(&locks.capabilities(), "fencing", locks.capabilities().fencing) {
        return;
    }
    let mut last = None;
    for i in 0..20 {
        let guard = locks.acquire("r", patient().holder(format!("h{}", i % 3))).await.expect("acquire");
        let token = guard.fencing_token();
        if let Some(previous) = last {
            assert!(token > previous, "token {token} after {previous}");
        }
        last = Some(token);
        guard.release().await.expect("release");
    }
    // Across contention too: a waiter's grant outranks the holder's.
    let first = locks.acquire("r", patient()).await.expect("acquire");
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.acquire("r", patient()).await.map(|g| g.fencing_token()) })
    };
    tokio::task::yield_now().await;
    let first_token = first.fencing_token();
    first.release().await.expect("release");
    let second_token = waiter.await.expect("waiter panicked").expect("acquire");
    assert!(second_token > first_token);
}

/// Re-entering does not make a new grant: the token stays.
pub async fn fencing_token_is_kept_on_reentry(h: &dyn Harness) {
    let locks = h.locks();
    let outer = locks.acquire("r", patient().holder("job")).await.expect("acquire");
    let inner = locks.acquire("r", patient().holder("job")).await.expect("re-enter");
    assert_eq!(outer.fencing_token(), inner.fencing_token());
    let token = outer.fencing_token();
    drop(inner);
    drop(outer);
    let next = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_secs(5)))
        .await
        .expect("acquire after the reentrant guards were dropped");
    assert!(next.fencing_token() > token, "a new grant reused the token");
}
