//! What the observability tests share: one scenario that grants, times
//! out, releases and loses a lock.

use std::time::Duration;

use lockman::{AcquireOptions, LockManager, MemoryLockManager};

/// Grant, time out, release, then let a 1 ms lease expire and release late.
pub async fn scenario(locks: &MemoryLockManager) {
    let held = locks.acquire("bus", AcquireOptions::new()).await.expect("acquire");
    let err = locks
        .acquire("bus", AcquireOptions::new().timeout(Duration::from_millis(5)))
        .await
        .expect_err("granted a held lock");
    assert!(err.is_timeout());
    held.release().await.expect("release");
    let leased = locks.acquire("bus", AcquireOptions::new().lease(Duration::from_millis(1))).await.expect("acquire");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(leased.release().await.is_err(), "an expired lease released cleanly");
}
