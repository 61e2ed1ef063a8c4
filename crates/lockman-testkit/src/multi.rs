//! `acquire_all`: several locks, all or nothing, without deadlock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockman_core::blocking::BlockingLockManager;
use lockman_core::{AcquireOptions, LockError, LockManagerExt, LockState, LostReason};

use crate::exclusion::patient;
use crate::modes::other;
use crate::release::LOSS_NOTICE;
use crate::{Harness, require};

/// Two parties taking overlapping sets given in opposite orders, over and
/// over, never deadlock and are never inside together.
pub async fn acquire_all_in_opposite_orders_never_deadlocks(h: &dyn Harness) {
    const ROUNDS: usize = 20;
    let managers = [h.locks(), other(h)];
    let inside = Arc::new(AtomicU32::new(0));
    let overlaps = Arc::new(AtomicU32::new(0));
    let sets: [&[&str]; 2] = [&["a", "b", "c"], &["c", "b", "a"]];
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let locks = managers[task % 2].clone();
            let set = sets[task % 2];
            let (inside, overlaps) = (inside.clone(), overlaps.clone());
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let all = locks.acquire_all(set, patient()).await.expect("acquire_all");
                    if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    all.release().await.expect("release");
                }
            })
        })
        .collect();
    let all_done = async {
        for task in tasks {
            task.await.expect("task panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all_done).await.expect("acquire_all deadlocked");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders of the same set were inside at once");
    for resource in ["a", "b", "c"] {
        assert_eq!(h.locks().state(resource).await.expect("state"), LockState::Available, "{resource} left held");
    }
}

/// When one resource stays busy past the wait, `acquire_all` fails with a
/// timeout naming it, within the one overall wait, and holds nothing.
pub async fn acquire_all_is_all_or_nothing(h: &dyn Harness) {
    let locks = h.locks();
    let blocker = other(h).acquire("b", patient().purpose("blocker")).await.expect("acquire");
    let wait = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let err = locks
        .acquire_all(["c", "a", "b"], AcquireOptions::new().timeout(wait))
        .await
        .expect_err("acquire_all succeeded while a resource was held");
    let took = started.elapsed();
    match &err {
        LockError::Timeout { resource, waited, .. } => {
            assert_eq!(resource, "b", "the error should name the busy resource: {err}");
            assert!(*waited >= wait - Duration::from_millis(5), "waited only {waited:?} of {wait:?}");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(took < wait + Duration::from_secs(1), "the overall wait was not honoured: {took:?}");
    assert_eq!(locks.state("a").await.expect("state"), LockState::Available, "\"a\" kept after a failed acquire_all");
    assert_eq!(locks.state("c").await.expect("state"), LockState::Available, "\"c\" taken after a failed acquire_all");
    blocker.release().await.expect("release");
    let all = locks.acquire_all(["c", "a", "b", "a"], patient()).await.expect("acquire_all once free");
    assert_eq!(all.resources().collect::<Vec<_>>(), ["a", "b", "c"], "name order, duplicates dropped");
    all.release().await.expect("release");
}

/// The guard of several locks reports the loss of any of them, and its
/// release says so.
pub async fn acquire_all_reports_a_lost_part(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    if !require(&caps, "lost_detection", caps.lost_detection) {
        return;
    }
    let all = locks.acquire_all(["x", "y"], patient()).await.expect("acquire_all");
    let lost = all.lost();
    other(h).force_release("y", "operator").await.expect("force").expect("held");
    let (resource, reason) = tokio::time::timeout(LOSS_NOTICE, lost).await.expect("the loss was never reported");
    assert_eq!(resource, "y");
    assert!(matches!(reason, LostReason::ForceReleased { .. } | LostReason::Stolen { .. }), "{reason}");
    assert!(all.is_lost());
    let err = all.release().await.expect_err("release of a partly lost set succeeded");
    assert!(err.is_lost(), "{err}");
    assert_eq!(locks.state("x").await.expect("state"), LockState::Available, "the intact part was not released");
}

/// `acquire_all` in shared mode: two readers take the same set together.
pub async fn acquire_all_shared_sets_overlap(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    if !require(&caps, "shared_mode", caps.shared_mode) {
        return;
    }
    let first = locks.acquire_all(["p", "q"], patient().shared()).await.expect("shared set");
    let second = other(h)
        .acquire_all(["q", "p"], AcquireOptions::new().timeout(Duration::from_secs(1)).shared())
        .await
        .expect("a second shared set was refused");
    first.release().await.expect("release");
    second.release().await.expect("release");
}

/// Plain threads using the blocking API take overlapping sets in opposite
/// orders without deadlock, never inside together.
pub async fn blocking_acquire_all_never_deadlocks(h: &dyn Harness) {
    const ROUNDS: usize = 15;
    let managers = [BlockingLockManager::new(h.locks()), BlockingLockManager::new(other(h))];
    let inside = Arc::new(AtomicU32::new(0));
    let overlaps = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..2)
        .map(|thread| {
            let locks = managers[thread].clone();
            let (inside, overlaps) = (inside.clone(), overlaps.clone());
            let set: &'static [&'static str] = if thread == 0 { &["m", "n"] } else { &["n", "m"] };
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let all = locks.acquire_all(set, patient()).expect("acquire_all");
                    if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::yield_now();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(all.resources(), ["m", "n"]);
                    all.release().expect("release");
                }
            })
        })
        .collect();
    let joined = tokio::task::spawn_blocking(move || threads.into_iter().all(|thread| thread.join().is_ok()));
    let joined = tokio::time::timeout(Duration::from_secs(30), joined).await.expect("blocking acquire_all deadlocked");
    assert!(joined.expect("join"), "a thread panicked");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders of the same set were inside at once");
}
