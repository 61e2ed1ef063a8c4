//! The event stream reports what happened, in the order it happened.

use std::time::Duration;

use lockman_core::{AcquireOptions, LockEvent, LockEventKind, LockEvents};

use crate::Harness;
use crate::exclusion::patient;
use crate::release::LOSS_NOTICE;

use LockEventKind::{ForceReleased, Locked, Lost, Released, TimedOut};

/// locked → released → locked → timed out → released → (leases: locked →
/// lost) → locked → force-released + lost, each with the right resource,
/// holder and token.
pub async fn events_report_lock_lifecycle_in_order(h: &dyn Harness) {
    let locks = h.locks();
    let mut events = locks.events();
    let mut expected = Vec::new();

    let guard = locks.acquire("ev", patient().holder("first")).await.expect("acquire");
    let first_token = guard.fencing_token();
    guard.release().await.expect("release");
    expected.extend([Locked, Released]);

    let guard = locks.acquire("ev", patient()).await.expect("acquire");
    let err = locks
        .acquire("ev", AcquireOptions::new().timeout(Duration::from_millis(20)))
        .await
        .expect_err("granted a held lock");
    assert!(err.is_timeout());
    guard.release().await.expect("release");
    expected.extend([Locked, TimedOut, Released]);

    if locks.capabilities().leases {
        let guard = locks.acquire("ev", patient().lease(Duration::from_millis(40))).await.expect("acquire");
        tokio::time::timeout(LOSS_NOTICE, guard.lost()).await.expect("lease never expired");
        assert!(guard.release().await.is_err());
        expected.extend([Locked, Lost]);
    }

    let guard = locks.acquire("ev", patient()).await.expect("acquire");
    locks.force_release("ev", "events test").await.expect("force_release");
    tokio::time::timeout(LOSS_NOTICE, guard.lost()).await.expect("never lost");
    expected.extend([Locked, ForceReleased, Lost]);

    let seen = collect(&mut events, expected.len()).await;
    let mut kinds: Vec<LockEventKind> = seen.iter().map(|e| e.kind).collect();
    // The victim of a force-release may learn of it before or after the
    // breaker reports it; both orders are correct.
    let tail = kinds.len() - 2;
    kinds[tail..].sort_by_key(|k| *k == Lost);
    assert_eq!(kinds, expected, "events out of order: {seen:#?}");
    assert!(seen.iter().all(|e| e.resource == "ev" && e.backend == locks.name()));
    assert_eq!(seen[0].holder.as_ref().map(|h| h.name()), Some("first"));
    assert_eq!(seen[0].fencing_token, Some(first_token));
    assert_eq!(seen[1].fencing_token, Some(first_token));
    assert!(seen[0].waited.is_some() && seen[1].held.is_some());
    let forced = seen.iter().find(|e| e.kind == ForceReleased).expect("force-released event");
    assert_eq!(forced.reason.as_deref(), Some("events test"));
}

async fn collect(events: &mut LockEvents, count: usize) -> Vec<LockEvent> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match tokio::time::timeout(LOSS_NOTICE, events.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            Ok(Err(e)) => panic!("event stream failed after {seen:#?}: {e}"),
            Err(_) => panic!("expected {count} events, got {seen:#?}"),
        }
    }
    seen
}
