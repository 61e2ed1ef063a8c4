//! Defaults that reach every caller: the manager's default wait, lease and
//! purpose apply wherever a caller left them unset — `lock()`,
//! `AcquireOptions::new()`, library code that only sees `Arc<dyn LockManager>` —
//! and a timeout behind the caller's own process says so.

#![cfg(feature = "memory")]

use std::sync::Arc;
use std::time::Duration;

use lockman::{AcquireOptions, BridgedLockManager, Config, LockError, LockManager, LockManagerExt, MemoryLockManager};

const DEFAULT_WAIT: Duration = Duration::from_millis(200);

/// Library code that knows nothing of the configuration.
async fn library_lock(locks: Arc<dyn LockManager>) -> Result<(), LockError> {
    locks.lock("inverter_read").await?.release().await
}

fn waited(error: &LockError) -> Duration {
    match error {
        LockError::Timeout { waited, .. } => *waited,
        other => panic!("expected a timeout, got {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_manager_default_wait_reaches_lock_and_fresh_options() {
    let locks: Arc<dyn LockManager> =
        Arc::new(MemoryLockManager::default().with_defaults(AcquireOptions::new().timeout(DEFAULT_WAIT)));
    let held = locks.lock("inverter_read").await.expect("free");

    // Without the default these would wait forever (the test would hang: the
    // outer timeout turns that into a failure).
    let bounded = Duration::from_secs(60);
    let error = tokio::time::timeout(bounded, library_lock(locks.clone()))
        .await
        .expect("lock() ignored the manager's default wait")
        .unwrap_err();
    assert_eq!(waited(&error), DEFAULT_WAIT, "{error}");
    let error = tokio::time::timeout(bounded, locks.acquire("inverter_read", AcquireOptions::new()))
        .await
        .expect("AcquireOptions::new() ignored the manager's default wait")
        .unwrap_err();
    assert_eq!(waited(&error), DEFAULT_WAIT, "{error}");

    // A wait the caller chose wins.
    let error = locks.acquire("inverter_read", AcquireOptions::new().no_wait()).await.unwrap_err();
    assert_eq!(waited(&error), Duration::ZERO, "{error}");
    let error =
        locks.acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(1))).await.unwrap_err();
    assert_eq!(waited(&error), Duration::from_secs(1), "{error}");
    held.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn connect_installs_the_configured_default_wait_in_the_manager() {
    let mut config = Config::for_url("memory://");
    config.default_wait = Some(DEFAULT_WAIT);
    let backends = lockman::connect_with(&config).await.expect("connect");
    let held = backends.locks.lock("inverter_read").await.expect("free");
    let error = tokio::time::timeout(Duration::from_secs(60), library_lock(backends.locks.clone()))
        .await
        .expect("LOCKMAN_DEFAULT_WAIT did not reach lock()")
        .unwrap_err();
    assert_eq!(waited(&error), DEFAULT_WAIT, "{error}");
    held.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn the_bridge_applies_its_default_wait_once_across_both_sides() {
    let primary = Arc::new(MemoryLockManager::default().with_defaults(AcquireOptions::new().timeout(DEFAULT_WAIT)));
    let legacy = Arc::new(MemoryLockManager::default().with_defaults(AcquireOptions::new().timeout(DEFAULT_WAIT)));
    let bridge: Arc<dyn LockManager> = Arc::new(
        BridgedLockManager::new(primary, legacy.clone()).with_defaults(AcquireOptions::new().timeout(DEFAULT_WAIT)),
    );
    // An old process holds the legacy side: the bridge's wait, not each
    // side's in turn, bounds the whole acquisition.
    let old = legacy.lock("inverter_read").await.expect("free");
    let error = tokio::time::timeout(Duration::from_secs(60), bridge.lock("inverter_read"))
        .await
        .expect("the bridge ignored its default wait")
        .unwrap_err();
    assert_eq!(waited(&error), DEFAULT_WAIT, "{error}");
    old.release().await.expect("release");
}

#[tokio::test]
async fn the_default_purpose_prefixes_the_callers() {
    let locks = MemoryLockManager::default().with_defaults(AcquireOptions::new().purpose("inverter daemon"));
    let guard = locks.acquire("a", AcquireOptions::new().purpose("poll")).await.expect("free");
    assert_eq!(guard.info().purpose.as_deref(), Some("inverter daemon: poll"));
    let plain = locks.lock("b").await.expect("free");
    assert_eq!(plain.info().purpose.as_deref(), Some("inverter daemon"));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_behind_this_process_says_so() {
    let locks = MemoryLockManager::default();
    let _first = locks.lock("inverter_read").await.expect("free");
    let error =
        locks.acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_millis(50))).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("held by this process; async acquisitions are not reentrant without a holder id"), "{text}");
}

// Real time: the in-process backend's lease timers do not follow tokio's
// paused clock (yet).
#[tokio::test]
async fn the_manager_default_lease_is_renewed_and_a_callers_lease_is_not() {
    let lease = Duration::from_millis(300);
    let locks = MemoryLockManager::default().with_defaults(AcquireOptions::new().lease(lease));
    let defaulted = locks.lock("a").await.expect("free");
    assert!(defaulted.info().lease_expires_at.is_some(), "the default lease was not applied");
    let explicit = locks.acquire("b", AcquireOptions::new().lease(lease)).await.expect("free");
    // The explicit lease runs out (bounded wait); by then the default lease,
    // granted first, is past its first expiry too, and held only if renewed.
    tokio::time::timeout(Duration::from_secs(10), explicit.lost()).await.expect("the explicit lease never ran out");
    assert!(!defaulted.is_lost(), "a default lease must be renewed while the guard lives");
    assert!(explicit.is_lost(), "an explicit lease is not renewed");
    defaulted.release().await.expect("release");
}
