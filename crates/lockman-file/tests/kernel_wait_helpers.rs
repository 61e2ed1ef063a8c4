//! Kernel waits that time out (see `kernel_wait`), and waits for a turn in
//! the arrival queue: alone in this test binary, and one at a time, because
//! they count the process's helper threads.

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
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let (holder, impatient, later) = (manager(dir.path()), manager(dir.path()), manager(dir.path()));
    let held = holder.acquire("bus", AcquireOptions::new()).await.expect("acquire");
    let helpers_before = helper_threads();
    time_out_20_times(&*impatient).await;
    let added = helper_threads().saturating_sub(helpers_before);
    assert!(added <= 1, "20 timed-out waits left {added} helper threads");
    held.release().await.expect("release");
    // The pending helper gets the lock and lets go at once.
    let got = later.acquire("bus", AcquireOptions::new().timeout(Duration::from_secs(2))).await;
    got.expect("the lock stayed with a helper nobody waited for").release().await.expect("release");
}

/// Twenty acquisitions of `bus` that each time out after 5 ms.
async fn time_out_20_times(impatient: &dyn LockManager) {
    for _ in 0..20 {
        let err = impatient
            .acquire("bus", AcquireOptions::new().timeout(Duration::from_millis(5)))
            .await
            .expect_err("granted while held");
        assert!(err.is_timeout(), "{err}");
    }
}

/// One test at a time: each counts every helper thread of the process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lock requests blocked in the kernel now, machine-wide (`/proc/locks`
/// lists them with `->`): a helper, idle or new, blocked for a waiter.
#[cfg(target_os = "linux")]
fn blocked_requests() -> usize {
    std::fs::read_to_string("/proc/locks").map(|locks| locks.lines().filter(|l| l.contains("->")).count()).unwrap_or(0)
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

/// Waits for a turn in the arrival queue that time out share one helper
/// too: 20 impatient attempts queued behind a waiter add at most one
/// helper thread to the two the waiters ahead use, and once the queue
/// moves on the lock is free for the next comer.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_turns_share_one_helper() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let holder = manager(dir.path());
    let held = holder.acquire("bus", AcquireOptions::new()).await.expect("acquire");
    let helpers_before = helper_threads();
    // Two patient waiters: the first waits for the lock holding the gate,
    // the second (with a ticket) for the gate; one helper each.
    let patient = |locks: Arc<dyn LockManager>| {
        tokio::spawn(async move {
            locks.acquire("bus", AcquireOptions::new().timeout(Duration::from_secs(30))).await?.release().await
        })
    };
    let mut waiters = Vec::new();
    for ahead in 1..=2 {
        waiters.push(patient(manager(dir.path())));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while blocked_requests() < ahead {
            assert!(std::time::Instant::now() < deadline, "waiter {ahead} never blocked");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let impatient = manager(dir.path());
    time_out_20_times(&*impatient).await;
    let added = helper_threads().saturating_sub(helpers_before);
    assert!(added <= 3, "20 timed-out turns behind 2 waiters left {added} helper threads");
    held.release().await.expect("release");
    for waiter in waiters {
        waiter.await.expect("join").expect("a patient waiter");
    }
    let got = impatient.acquire("bus", AcquireOptions::new().timeout(Duration::from_secs(2))).await;
    got.expect("the queue stayed blocked by a turn nobody waited for").release().await.expect("release");
}
