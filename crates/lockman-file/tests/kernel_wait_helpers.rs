//! Kernel waits that time out (see `kernel_wait`): alone in this test
//! binary, because it counts the process's helper threads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_file::{FileBackend, FileOptions};

fn manager(dir: &Path) -> Arc<dyn LockManager> {
    Arc::new(FileBackend::open(FileOptions::new(dir)).expect("open").into_manager())
}

/// Waits that time out leave at most one helper blocked per file, and it
/// lets go of the lock when it gets it with nobody waiting: repeated
/// timeouts do not pile up threads, and the lock is free after the holder
/// releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_waits_share_one_helper_that_lets_go() {
    let dir = tempfile::tempdir().expect("dir");
    let (holder, impatient, later) = (manager(dir.path()), manager(dir.path()), manager(dir.path()));
    let held = holder.acquire("bus", AcquireOptions::new()).await.expect("acquire");
    let helpers_before = helper_threads();
    for _ in 0..20 {
        let err = impatient
            .acquire("bus", AcquireOptions::new().timeout(Duration::from_millis(5)))
            .await
            .expect_err("granted while held");
        assert!(err.is_timeout(), "{err}");
    }
    let added = helper_threads().saturating_sub(helpers_before);
    assert!(added <= 1, "20 timed-out waits left {added} helper threads");
    held.release().await.expect("release");
    // The pending helper gets the lock and lets go at once.
    let got = later.acquire("bus", AcquireOptions::new().timeout(Duration::from_secs(2))).await;
    got.expect("the lock stayed with a helper nobody waited for").release().await.expect("release");
}

/// Threads of this process named as kernel-wait helpers.
fn helper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm")).is_ok_and(|name| name.trim() == "lockman-flock")
                })
                .count()
        })
        .unwrap_or(0)
}
