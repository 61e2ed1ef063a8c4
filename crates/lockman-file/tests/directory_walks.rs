//! `list` and `cleanup_stale` open every lock file of the directory
//! (seconds at 100,000 files, see BENCHMARKS.md's scale curves): they must
//! not stall the caller's runtime meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_file::{FileBackend, FileOptions};

/// A task on the same one-thread runtime keeps running while `list` and
/// `cleanup_stale` walk a directory of 4,000 resources (8,000 files).
#[tokio::test(flavor = "current_thread")]
async fn listing_and_cleaning_a_big_directory_leave_the_runtime_free() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = FileBackend::open(FileOptions::new(dir.path())).expect("open").into_manager();
    for i in 0..4_000 {
        locks
            .acquire(&format!("r{i}"), AcquireOptions::new())
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
    }
    let held = locks.acquire("held", AcquireOptions::new()).await.expect("acquire");
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::task::yield_now().await; // the ticker starts its first sleep
    let before = ticks.load(Ordering::Relaxed);
    let listed = locks.list().await.expect("list");
    let during_list = ticks.load(Ordering::Relaxed) - before;
    assert_eq!(listed.len(), 1, "only `held` is held");
    let before = ticks.load(Ordering::Relaxed);
    locks.cleanup_stale().await.expect("cleanup");
    let during_cleanup = ticks.load(Ordering::Relaxed) - before;
    ticker.abort();
    assert!(during_list > 0, "the runtime stood still while list() walked the directory");
    assert!(during_cleanup > 0, "the runtime stood still while cleanup_stale() walked the directory");
    held.release().await.expect("release");
}
