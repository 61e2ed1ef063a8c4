//! The kernel-lock backend keeps a resource's gate and lock file open
//! between exclusive grants, and waits for a busy lock blocked in the kernel
//! (see `kernel_wait`). These tests break what that relies on: a waiter in
//! another manager must still be woken at once though the holder never
//! closes its descriptor, a kept file that was replaced must not be locked
//! again, and a descriptor handed to another process must not carry a later
//! grant.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_file::{FileBackend, FileOptions};
use lockman_testkit::{median, poll_once};
use tokio::time::Instant;

fn manager(dir: &Path) -> Arc<dyn LockManager> {
    Arc::new(FileBackend::open(FileOptions::new(dir)).expect("open").into_manager())
}

/// Renames a fresh file over `path` (what a cleanup script or
/// `lockctl release --force` followed by a newcomer amounts to).
fn replace(path: &Path) {
    let impostor = path.with_extension("impostor");
    std::fs::write(&impostor, "").expect("write");
    std::fs::rename(&impostor, path).expect("replace");
}

/// How long each round holds before releasing: long enough that a waiter
/// woken only by its backoff (up to 250 ms between looks) would be seen late.
const HOLD: Duration = Duration::from_millis(300);

/// A waiter in another manager gets the lock within milliseconds of the
/// release, though the holder keeps its descriptors open (no close for a
/// change notification to see): the kernel wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_in_another_manager_is_woken_by_the_release_itself() {
    let dir = tempfile::tempdir().expect("dir");
    let (holder, waiter) = (manager(dir.path()), manager(dir.path()));
    // The first grant opens the files; every later one reuses them.
    holder.acquire("bus", AcquireOptions::new()).await.expect("acquire").release().await.expect("release");
    let mut handoffs = Vec::new();
    for _ in 0..8 {
        let held = holder.acquire("bus", AcquireOptions::new()).await.expect("acquire");
        let mut waiting = Box::pin({
            let waiter = waiter.clone();
            async move {
                let guard = waiter.acquire("bus", AcquireOptions::new().timeout(Duration::from_secs(10))).await;
                let granted_at = Instant::now();
                guard.expect("waiter acquire").release().await.expect("release");
                granted_at
            }
        });
        assert!(poll_once(&mut waiting).await.is_none(), "granted while held");
        let waiting = tokio::spawn(waiting);
        tokio::time::sleep(HOLD).await;
        let released_at = Instant::now();
        held.release().await.expect("release");
        let granted_at = waiting.await.expect("waiter panicked");
        handoffs.push(granted_at.saturating_duration_since(released_at));
    }
    let typical = median(&mut handoffs);
    assert!(typical < Duration::from_millis(50), "median handoff {typical:?}: the waiter was not woken by the release");
}

/// A kept lock file that another process replaced is not locked again: the
/// next grant follows the path to the new file, so a manager that opens the
/// new file is excluded. (A replaced gate is followed too; exclusion never
/// rested on it, which the second round checks.)
#[tokio::test]
async fn replaced_kept_files_are_not_locked_again() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = FileBackend::open(FileOptions::new(dir.path())).expect("open");
    let lock_file = backend.lock_file("bus");
    let gate = lock_file.with_extension("gate");
    let (keeper, other) = (Arc::new(backend.into_manager()), manager(dir.path()));
    for replaced in [&lock_file, &gate] {
        keeper.acquire("bus", AcquireOptions::new()).await.expect("acquire").release().await.expect("release");
        replace(replaced);
        let held = keeper.acquire("bus", AcquireOptions::new().no_wait()).await.expect("acquire after replace");
        assert!(
            other.try_acquire("bus", AcquireOptions::new()).await.expect("try").is_none(),
            "after {} was replaced, the keeper's grant was on the old file: another manager got in",
            replaced.display()
        );
        held.release().await.expect("release");
    }
}

/// A grant whose descriptor was handed out (`lock_fd`, e.g. to a child
/// process) does not lend that descriptor to the next grant: the copy
/// keeps no hold on the lock once released.
#[cfg(unix)]
#[tokio::test]
async fn a_handed_out_descriptor_does_not_carry_a_later_grant() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = manager(dir.path());
    let guard = locks.acquire("bus", AcquireOptions::new()).await.expect("acquire");
    let copy = std::fs::File::from(guard.lock_fd().expect("a kernel lock fd").try_clone_to_owned().expect("dup"));
    guard.release().await.expect("release");
    let again = locks.acquire("bus", AcquireOptions::new()).await.expect("acquire again");
    assert!(
        matches!(copy.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        "the handed-out descriptor shares the next grant's lock"
    );
    again.release().await.expect("release");
}

/// How many of this process's descriptors name `path`.
#[cfg(target_os = "linux")]
fn open_descriptors_of(path: &Path) -> usize {
    let target = std::fs::canonicalize(path).expect("canonical path");
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|link| *link == target)
        .count()
}

/// `keep_open` bounds how many resources' files stay open after release:
/// by default the released resource's gate and lock file stay open (and the
/// next grant reuses them); with `keep_open(1)` only the last resource's;
/// with `keep_open(0)` none.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn keep_open_bounds_the_files_left_open() {
    let dir = tempfile::tempdir().expect("dir");
    for (keep, kept_a, kept_b) in [(None, 1, 1), (Some(1), 0, 1), (Some(0), 0, 0)] {
        let options = FileOptions::new(dir.path());
        let backend = FileBackend::open(match keep {
            Some(n) => options.keep_open(n),
            None => options,
        })
        .expect("open");
        let (file_a, file_b) = (backend.lock_file("a"), backend.lock_file("b"));
        let locks = backend.into_manager();
        for resource in ["a", "b"] {
            locks
                .acquire(resource, AcquireOptions::new().no_wait())
                .await
                .expect("acquire")
                .release()
                .await
                .expect("release");
        }
        assert_eq!(open_descriptors_of(&file_a), kept_a, "keep_open {keep:?}: lock file of a");
        assert_eq!(open_descriptors_of(&file_b), kept_b, "keep_open {keep:?}: lock file of b");
        drop(locks);
        assert_eq!(open_descriptors_of(&file_b), 0, "keep_open {keep:?}: dropping the manager closes them");
    }
}
