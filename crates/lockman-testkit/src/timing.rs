//! Waiting: timeouts, wake-ups, fairness, and waiters that give up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockman_core::{AcquireOptions, LockError, LockState};
use tokio::sync::{Barrier, oneshot};
use tokio::time::Instant;

use crate::exclusion::patient;
use crate::{Harness, TIMEOUT_MAX_SLACK, TIMEOUT_MEDIAN_SLACK, handoff_bound, median, poll_once, require};

/// A timed-out `acquire` returns no earlier than its timeout and within a
/// few milliseconds after it.
pub async fn timeouts_are_accurate(h: &dyn Harness) {
    let locks = h.locks();
    let _held = locks.acquire("r", patient()).await.expect("acquire");
    let mut late = Vec::new();
    for timeout_ms in [10u64, 25, 50, 75, 100, 10, 25, 50, 75] {
        let timeout = Duration::from_millis(timeout_ms);
        let started = Instant::now();
        let err = locks.acquire("r", AcquireOptions::new().timeout(timeout)).await.expect_err("granted a held lock");
        let waited = started.elapsed();
        assert!(err.is_timeout(), "expected a timeout, got {err}");
        assert!(waited >= timeout, "gave up after {waited:?}, before the {timeout:?} timeout");
        late.push(waited - timeout);
    }
    let worst = *late.iter().max().expect("samples");
    let typical = median(&mut late);
    assert!(typical <= TIMEOUT_MEDIAN_SLACK, "timeouts fire {typical:?} late (median)");
    assert!(worst <= TIMEOUT_MAX_SLACK, "a timeout fired {worst:?} late");
}

/// The timeout error names who holds the lock and why.
pub async fn timeout_error_names_the_holder(h: &dyn Harness) {
    let locks = h.locks();
    let _held = locks.acquire("r", patient().holder("poller-7").purpose("reading registers")).await.expect("acquire");
    let err = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_millis(20)))
        .await
        .expect_err("granted a held lock");
    let LockError::Timeout { holder, resource, .. } = &err else {
        panic!("expected a timeout, got {err}");
    };
    assert_eq!(resource, "r");
    let holder = holder.as_ref().expect("the timeout error does not say who holds the lock");
    assert_eq!(holder.holder.name(), "poller-7");
    let message = err.to_string();
    for expected in ["poller-7", "reading registers", lockman_core::hostname(), locks.name()] {
        assert!(message.contains(expected), "{message:?} does not mention {expected:?}");
    }
}

/// A parked waiter gets the lock promptly after release (median of 15
/// handoffs, measured from just before the release to the waiter's grant).
pub async fn waiters_are_woken_promptly(h: &dyn Harness) {
    let locks = h.locks();
    let bound = handoff_bound(&locks.capabilities());
    let mut handoffs = Vec::new();
    for _ in 0..15 {
        let holder = locks.acquire("r", patient()).await.expect("acquire");
        let (parked_tx, parked_rx) = oneshot::channel();
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let mut acquire = Box::pin(locks.acquire("r", patient()));
                let early = poll_once(&mut acquire).await;
                assert!(early.is_none(), "granted while held");
                parked_tx.send(()).expect("test gone");
                let guard = acquire.await.expect("waiter acquire");
                let granted_at = Instant::now();
                guard.release().await.expect("release");
                granted_at
            })
        };
        parked_rx.await.expect("waiter did not park");
        let released_at = Instant::now();
        holder.release().await.expect("release");
        let granted_at = waiter.await.expect("waiter panicked");
        handoffs.push(granted_at.saturating_duration_since(released_at));
    }
    let typical = median(&mut handoffs);
    assert!(typical < bound, "median handoff {typical:?} (bound {bound:?})");
}

/// With 8 workers hammering one resource, the fewest acquisitions any worker
/// got divided by the most is at least 0.9 (backends that declare FIFO).
pub async fn waiters_are_served_fairly(h: &dyn Harness) {
    const WORKERS: usize = 8;
    const TOTAL: u32 = 800;
    let locks = h.locks();
    if !require(&locks.capabilities(), "fifo", locks.capabilities().fifo) {
        return;
    }
    let taken = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(WORKERS));
    // Count only once every worker has had the lock once: before that, an OS
    // thread the machine did not schedule yet says nothing about the backend.
    let arrived = Arc::new(AtomicU32::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (locks, taken, start, arrived) = (locks.clone(), taken.clone(), start.clone(), arrived.clone());
            tokio::spawn(async move {
                start.wait().await;
                let mut mine = 0u32;
                let mut first = true;
                loop {
                    let guard = locks.acquire("hot", patient()).await.expect("acquire");
                    if first {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        first = false;
                    }
                    let counting = arrived.load(Ordering::SeqCst) == WORKERS as u32;
                    let done = counting && taken.fetch_add(1, Ordering::SeqCst) >= TOTAL;
                    tokio::task::yield_now().await;
                    guard.release().await.expect("release");
                    if done {
                        return mine;
                    }
                    if counting {
                        mine += 1;
                    }
                }
            })
        })
        .collect();
    let mut counts = Vec::new();
    for worker in workers {
        counts.push(worker.await.expect("worker panicked"));
    }
    let (fewest, most) = (counts.iter().min().copied(), counts.iter().max().copied());
    let ratio = f64::from(fewest.unwrap_or(0)) / f64::from(most.unwrap_or(1).max(1));
    assert!(ratio >= 0.9, "unfair: min/max = {ratio:.2}, counts {counts:?}");
}

/// A waiter that timed out does not hold the lock later, when it is released.
pub async fn timed_out_waiter_never_holds(h: &dyn Harness) {
    let locks = h.locks();
    let holder = locks.acquire("r", patient()).await.expect("acquire");
    let err = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_millis(20)))
        .await
        .expect_err("granted a held lock");
    assert!(err.is_timeout());
    holder.release().await.expect("release");
    assert_eq!(locks.state("r").await.expect("state"), LockState::Available, "the timed-out waiter holds it");
    let again = locks.try_acquire("r", AcquireOptions::new()).await.expect("try");
    assert!(again.is_some(), "the lock is stuck after a timed-out waiter");
}

/// A waiter whose future is dropped mid-wait never ends up holding the lock,
/// even if the release races the cancellation.
pub async fn cancelled_waiter_never_holds(h: &dyn Harness) {
    let locks = h.locks();
    for round in 0..20 {
        let holder = locks.acquire("r", patient()).await.expect("acquire");
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire("r", patient()).await.map(drop) })
        };
        tokio::task::yield_now().await;
        // Alternate: cancel before the release, or race it.
        if round % 2 == 0 {
            waiter.abort();
            holder.release().await.expect("release");
        } else {
            holder.release().await.expect("release");
            waiter.abort();
        }
        let _ = waiter.await;
        let next = locks
            .acquire("r", AcquireOptions::new().timeout(Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the lock is stuck after a cancelled waiter: {e}"));
        next.release().await.expect("release");
        assert_eq!(locks.state("r").await.expect("state"), LockState::Available);
    }
}

/// Durations too long for the clocks are handled, never a panic: a huge
/// timeout waits as long as it takes, a huge lease or extension is refused.
pub async fn extreme_durations_are_handled(h: &dyn Harness) {
    let locks = h.locks();
    let guard = locks.acquire("r", AcquireOptions::new().timeout(Duration::MAX)).await.expect("a huge timeout");
    let err = guard.extend(Duration::MAX).await.expect_err("extended a lease to the end of time");
    assert!(matches!(err, LockError::Config(_)), "{err}");
    guard.release().await.expect("release");
    let err = locks
        .acquire("r", AcquireOptions::new().lease(Duration::MAX))
        .await
        .expect_err("granted a lease to the end of time");
    assert!(matches!(err, LockError::Config(_)), "{err}");
}
