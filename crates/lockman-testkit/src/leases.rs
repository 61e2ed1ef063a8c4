//! Leases, renewal and fencing tokens.

use std::time::{Duration, SystemTime};

use lockman_core::{AcquireOptions, LockError, LockGuard, LockManager, LostReason};
use tokio::sync::oneshot;

use crate::exclusion::patient;
use crate::release::LOSS_NOTICE;
use crate::{Harness, handoff_bound, poll_once, require};

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

/// `extend` on a guard whose default lease the watchdog renews is not undone
/// by the watchdog: after `extend(long)` the lock stays held well past the
/// default lease (another manager keeps failing to take it) and the store
/// shows the extended expiry. The extension becomes the length the watchdog
/// renews with, so a later, shorter `extend` is kept alive too. Skipped for
/// backends without a (short) default lease.
pub async fn extend_outlasts_the_default_lease(h: &dyn Harness) {
    let locks = h.locks();
    let Some(default) = short_renewed_default_lease(&*locks) else { return };
    // Another process where the backend has one, else another holder here.
    let other = h.second_locks().unwrap_or_else(|| locks.clone());
    let guard = locks.acquire("r", patient().holder("extender")).await.expect("acquire");
    let long = default * 20;
    let extended_at = SystemTime::now();
    guard.extend(long).await.expect("extend");
    // Clocks store milliseconds; the renewal may be dated from its sending.
    let extended_until = extended_at + long - Duration::from_millis(50);
    assert_stays_held(&*other, &guard, default * 3, extended_until).await;

    // Shorter than the default: renewed with the new length, still held.
    let short = default * 3 / 4;
    guard.extend(short).await.expect("extend to a shorter lease");
    let started = SystemTime::now();
    assert_stays_held(&*other, &guard, default * 3, started).await;
    let expiry = guard.info().lease_expires_at.expect("a leased lock has an expiry");
    assert!(
        expiry <= SystemTime::now() + short + Duration::from_millis(50),
        "the watchdog did not keep the {short:?} lease the caller set: it expires at {expiry:?}"
    );
    guard.release().await.expect("release");
}

/// A lease shortened by `extend` is lost at its new end: `lost()` completes
/// then, not at the end of the lease it replaced.
pub async fn shortened_lease_is_lost_at_its_end(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    if !require(&caps, "renewal", caps.renewal) {
        return;
    }
    let guard = locks.acquire("r", patient().lease(Duration::from_secs(20))).await.expect("acquire");
    // Some work under the long lease first (by then any timer for its end is set).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let short = Duration::from_millis(200);
    guard.extend(short).await.expect("extend to a shorter lease");
    let expiry = guard.info().lease_expires_at.expect("a leased lock has an expiry");
    let reason = tokio::time::timeout(LOSS_NOTICE, guard.lost())
        .await
        .expect("lost() did not complete when the shortened lease ended");
    let noticed = SystemTime::now();
    assert_eq!(reason, LostReason::LeaseExpired);
    assert!(noticed + Duration::from_millis(5) >= expiry, "reported lost before its lease ended");
    let late = noticed.duration_since(expiry).unwrap_or_default();
    assert!(late <= Duration::from_millis(250), "lost() completed {late:?} after the lease ended");
    assert!(guard.release().await.expect_err("released an expired lock").is_lost());
}

/// A guard on the default lease, extended at once to a fifth of it — a
/// lease that ends before the watchdog's first renewal of the default one
/// was due — is renewed with the new length and stays held for twice the
/// default lease. (The watchdog of a fresh grant starts only when its first
/// renewal is due; an `extend` must start it at once.) Skipped for
/// backends without a (short) default lease.
pub async fn a_lease_shorter_than_the_renewal_period_is_renewed(h: &dyn Harness) {
    let locks = h.locks();
    let Some(default) = short_renewed_default_lease(&*locks) else { return };
    let other = h.second_locks().unwrap_or_else(|| locks.clone());
    let guard = locks.acquire("r", patient().holder("shortener")).await.expect("acquire");
    let short = default / 5;
    guard.extend(short).await.expect("extend to a short lease");
    let started = SystemTime::now();
    assert_stays_held(&*other, &guard, default * 2, started).await;
    guard.release().await.expect("release");
}

/// The backend's default lease, if it renews leases and has a default one
/// short enough to outlive in a test; else says why the test is skipped.
fn short_renewed_default_lease(locks: &dyn LockManager) -> Option<Duration> {
    let caps = locks.capabilities();
    if !require(&caps, "renewal", caps.renewal) {
        return None;
    }
    let Some(default) = caps.default_lease else {
        require(&caps, "default_lease", false);
        return None;
    };
    if default > Duration::from_secs(3) {
        eprintln!(
            "SKIPPED: default lease {default:?} is too long to outlive in a test; configure a short one in the harness"
        );
        return None;
    }
    Some(default)
}

/// For `period`, `other` cannot take `r` from `guard`, the guard is not lost,
/// and the store's expiry stays at or after `expires_no_earlier_than`.
async fn assert_stays_held(
    other: &dyn LockManager,
    guard: &LockGuard,
    period: Duration,
    expires_no_earlier_than: SystemTime,
) {
    let until = tokio::time::Instant::now() + period;
    let step = period / 12;
    while tokio::time::Instant::now() < until {
        let taken = other.try_acquire("r", AcquireOptions::new().holder("intruder")).await.expect("try_acquire");
        assert!(taken.is_none(), "another manager took the lock while the extended guard held it");
        assert!(!guard.is_lost(), "the extended guard was lost: {:?}", guard.check());
        let state = other.state("r").await.expect("state");
        let info = state.info().expect("the extended lock is not held");
        assert_eq!(info.fencing_token, guard.fencing_token(), "someone else holds the lock");
        let expiry = info.lease_expires_at.expect("a leased lock has an expiry");
        assert!(
            expiry >= expires_no_earlier_than,
            "the store's lease was shortened: it ends at {expiry:?}, before {expires_no_earlier_than:?}"
        );
        tokio::time::sleep(step).await;
    }
}

/// An expired lease passes the lock to the next waiter at the lease's end,
/// with no other activity on the resource: A holds (no explicit lease), B
/// queues with a short lease, C queues with no deadline; A releases, B gets
/// the lock and stalls; C must get it when B's lease ends (not before).
pub async fn expired_lease_passes_lock_to_next_waiter(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    if !require(&caps, "leases", caps.leases) || !require(&caps, "fifo", caps.fifo) {
        return;
    }
    let lease = Duration::from_millis(150);
    let a = locks.acquire("r", patient().holder("a")).await.expect("acquire");

    // B, then C, park behind A in this order.
    let (b_parked, b_parked_rx) = oneshot::channel();
    let b = {
        let locks = locks.clone();
        tokio::spawn(async move {
            let mut acquire = Box::pin(locks.acquire("r", patient().holder("b").lease(lease)));
            assert!(poll_once(&mut acquire).await.is_none(), "B was granted a held lock");
            b_parked.send(()).expect("test gone");
            acquire.await.expect("B's acquire")
        })
    };
    b_parked_rx.await.expect("B did not park");
    // A store round trip on the same manager before C starts: on a network
    // store, "pending after one poll" means B's request was sent, not that
    // the store has it (etcd serves concurrent requests in either order).
    locks.state("r").await.expect("state");
    let (c_parked, c_parked_rx) = oneshot::channel();
    let c = {
        let locks = locks.clone();
        tokio::spawn(async move {
            let mut acquire =
                Box::pin(locks.acquire("r", AcquireOptions::new().holder("c").timeout(Duration::from_secs(10))));
            assert!(poll_once(&mut acquire).await.is_none(), "C was granted a held lock");
            c_parked.send(()).expect("test gone");
            let guard = acquire.await;
            (guard, SystemTime::now())
        })
    };
    c_parked_rx.await.expect("C did not park");

    a.release().await.expect("release A");
    // B holds now, and stalls: it neither renews nor releases.
    let b = b.await.expect("B panicked");
    let b_expiry = b.info().lease_expires_at.expect("B's lease has an expiry");
    let (c, c_granted_at) = c.await.expect("C panicked");
    let c = c.unwrap_or_else(|e| panic!("C never got the lock after B's {lease:?} lease ran out: {e}"));
    assert!(
        c_granted_at + Duration::from_millis(5) >= b_expiry,
        "C was granted {:?} before B's lease ended",
        b_expiry.duration_since(c_granted_at).unwrap_or_default()
    );
    let late = c_granted_at.duration_since(b_expiry).unwrap_or_default();
    let bound = handoff_bound(&caps) + Duration::from_millis(250);
    assert!(late <= bound, "C got the lock {late:?} after B's lease ended (bound {bound:?})");
    assert!(c.fencing_token() > b.fencing_token());
    let reason = tokio::time::timeout(LOSS_NOTICE, b.lost()).await.expect("B never learned its lease ran out");
    assert!(matches!(reason, LostReason::LeaseExpired | LostReason::Stolen { .. }), "{reason}");
    assert!(b.release().await.expect_err("B released a lock it lost").is_lost());
    assert_eq!(locks.state("r").await.expect("state").info().map(|i| i.fencing_token), Some(c.fencing_token()));
    c.release().await.expect("release C");
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
