//! Mutual exclusion: two holders never hold one resource at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use lockman_core::blocking::BlockingLockManager;
use lockman_core::{AcquireOptions, LockManager};

use crate::{Harness, require};

/// Long enough that a correct backend never hits it in the suite; a hang
/// becomes a failure instead.
pub(crate) fn patient() -> AcquireOptions {
    AcquireOptions::new().timeout(Duration::from_secs(20))
}

/// A counter updated the non-atomic way (read, yield, write), which loses
/// updates unless callers are excluded, plus a detector of overlap.
#[derive(Default)]
pub(crate) struct Critical {
    value: AtomicU64,
    inside: AtomicU32,
    overlaps: AtomicU32,
}

impl Critical {
    pub(crate) fn enter(&self) -> u64 {
        if self.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.value.load(Ordering::SeqCst)
    }

    pub(crate) fn leave(&self, read: u64) {
        self.value.store(read + 1, Ordering::SeqCst);
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn assert_exclusive(&self, expected: u64) {
        assert_eq!(self.overlaps.load(Ordering::SeqCst), 0, "two holders were inside at once");
        assert_eq!(self.value.load(Ordering::SeqCst), expected, "updates were lost");
    }
}

/// 16 tasks increment a shared counter non-atomically under one lock.
pub async fn sixteen_tasks_never_overlap(h: &dyn Harness) {
    const TASKS: u64 = 16;
    const ROUNDS: u64 = 25;
    let locks = h.locks();
    let critical = Arc::new(Critical::default());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (locks, critical) = (locks.clone(), critical.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = locks.acquire("counter", patient()).await.expect("acquire");
                let read = critical.enter();
                tokio::task::yield_now().await;
                critical.leave(read);
                guard.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    critical.assert_exclusive(TASKS * ROUNDS);
}

/// Plain OS threads using the blocking API exclude each other.
pub async fn plain_threads_never_overlap(h: &dyn Harness) {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 25;
    let locks = BlockingLockManager::new(h.locks());
    let critical = Arc::new(Critical::default());
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (locks, critical) = (locks.clone(), critical.clone());
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let guard = locks.acquire("counter", patient()).expect("acquire");
                    let read = critical.enter();
                    std::thread::yield_now();
                    critical.leave(read);
                    guard.release().expect("release");
                }
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            thread.join().expect("thread panicked");
        }
    })
    .await
    .expect("join");
    critical.assert_exclusive(THREADS * ROUNDS);
}

/// A second manager over the same store (another process's view) is excluded.
pub async fn second_manager_is_excluded(h: &dyn Harness) {
    let locks = h.locks();
    let Some(other) = h.second_locks() else {
        require(&locks.capabilities(), "second manager over the same store", false);
        return;
    };
    let guard = locks.acquire("shared", patient()).await.expect("acquire");
    assert!(
        other.try_acquire("shared", AcquireOptions::new()).await.expect("try").is_none(),
        "a second manager got a held lock"
    );
    guard.release().await.expect("release");
    let theirs = other.try_acquire("shared", AcquireOptions::new()).await.expect("try");
    assert!(theirs.is_some(), "the second manager could not take a released lock");
}

/// Holding one resource does not block another.
pub async fn distinct_resources_do_not_block(h: &dyn Harness) {
    let locks = h.locks();
    let _a = locks.acquire("a", patient()).await.expect("acquire a");
    let b = locks.try_acquire("b", AcquireOptions::new()).await.expect("try b");
    assert!(b.is_some(), "holding `a` blocked `b`");
}

/// `try_acquire` on a free resource grants it.
pub async fn try_acquire_free_resource_grants(h: &dyn Harness) {
    let locks = h.locks();
    let guard = locks.try_acquire("free", AcquireOptions::new()).await.expect("try");
    let guard = guard.expect("a free resource was not granted");
    assert!(locks.state("free").await.expect("state").is_held());
    guard.release().await.expect("release");
}

/// `try_acquire` on a held resource returns `None` at once, even when the
/// options ask to wait.
pub async fn try_acquire_held_resource_is_none(h: &dyn Harness) {
    let locks = h.locks();
    let _held = locks.acquire("held", patient()).await.expect("acquire");
    let started = tokio::time::Instant::now();
    let second = locks.try_acquire("held", AcquireOptions::new().timeout(Duration::from_secs(5))).await.expect("try");
    assert!(second.is_none(), "a held resource was granted twice");
    assert!(started.elapsed() < Duration::from_secs(1), "try_acquire waited");
}

/// `acquire` with `no_wait` fails with a timeout at once.
pub async fn no_wait_acquire_fails_at_once(h: &dyn Harness) {
    let locks: Arc<dyn LockManager> = h.locks();
    let _held = locks.acquire("held", patient()).await.expect("acquire");
    let started = tokio::time::Instant::now();
    let err =
        locks.acquire("held", AcquireOptions::new().no_wait()).await.expect_err("a held resource was granted twice");
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    assert!(started.elapsed() < Duration::from_secs(1), "no_wait waited");
}
