//! Shared (reader-writer) locks and semaphores on the kernel-lock flavour
//! (and, at the end, the lease-file flavour),
//! with several managers over one directory standing in for processes
//! (each has its own queue and its own open files, so `flock` tells them
//! apart exactly as it tells processes apart; `mode_processes.rs` runs
//! real processes).

use std::fs::{File, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

use lockman_core::{AcquireOptions, LockBackend, LockError, LockGuard, LockManager, LockMode, LockState};
use lockman_file::{
    FileBackend, FileLockManager, FileOptions, LeaseFileBackend, LeaseFileLockManager, LegacyFileBackend, LegacyOptions,
};

const BOUND: Duration = Duration::from_secs(10);

fn manager(dir: &Path) -> FileLockManager {
    FileBackend::open(FileOptions::new(dir).loss_check_interval(Duration::from_millis(50)))
        .expect("open")
        .into_manager()
}

fn shared() -> AcquireOptions {
    AcquireOptions::new().shared().no_wait()
}

fn permits(n: u32) -> AcquireOptions {
    AcquireOptions::new().permits(n).no_wait()
}

async fn take(locks: &FileLockManager, resource: &str, options: AcquireOptions) -> LockGuard {
    locks.acquire(resource, options).await.expect("acquire")
}

async fn refused(locks: &FileLockManager, resource: &str, options: AcquireOptions) -> bool {
    locks.try_acquire(resource, options).await.expect("try_acquire").is_none()
}

fn held(state: LockState) -> lockman_core::LockInfo {
    match state {
        LockState::Held(info) => info,
        other => panic!("not held: {other:?}"),
    }
}

/// Waits (bounded) until someone holds the gate file of `resource`: a
/// waiter that has passed this manager's queue and is waiting for the lock.
async fn until_gate_is_held(locks: &FileLockManager, resource: &str) {
    let lock = locks.backend().lock_file(resource);
    let gate = lock.with_extension("gate");
    let started = Instant::now();
    loop {
        if let Ok(file) = File::open(&gate)
            && matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
        {
            return;
        }
        assert!(started.elapsed() < BOUND, "nobody took the gate {}", gate.display());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn shared_holders_hold_together_in_one_manager_and_across_managers() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (manager(dir.path()), manager(dir.path()));
    let a = take(&one, "r", shared().purpose("a")).await;
    let b = take(&one, "r", shared().purpose("b")).await;
    let c = take(&two, "r", shared().purpose("c")).await;
    assert!(refused(&two, "r", AcquireOptions::new()).await, "exclusive beside readers");
    assert!(refused(&one, "r", AcquireOptions::new()).await, "exclusive beside readers (same manager)");
    let info = held(one.state("r").await.expect("state"));
    assert_eq!(info.mode, LockMode::Shared);
    let mut holders: Vec<_> = info.all_holders().map(|h| h.purpose.clone().unwrap_or_default()).collect();
    holders.sort();
    assert_eq!(holders, ["a", "b", "c"]);
    assert!(info.all_holders().all(|h| h.mode == LockMode::Shared && h.pid == std::process::id()));
    let listed = two.list().await.expect("list");
    assert_eq!(listed.len(), 1, "one LockInfo per resource: {listed:?}");
    assert_eq!(listed[0].holders.len(), 3);
    // A timeout names every holder. (Without waiting: a timed-out wait
    // leaves its helper thread blocked in the kernel for the lock, which
    // then holds it for a moment once the readers are gone, and `state`
    // below would catch that moment.)
    let err = two.acquire("r", AcquireOptions::new().no_wait()).await.expect_err("timeout");
    let LockError::Timeout { holder: Some(holder), .. } = &err else { panic!("{err}") };
    assert_eq!(holder.holders.len(), 3, "{err}");
    assert!(err.to_string().contains("also held by"), "{err}");
    for guard in [a, b, c] {
        guard.release().await.expect("release");
    }
    assert_eq!(one.state("r").await.expect("state"), LockState::Available);
    assert!(one.list().await.expect("list").is_empty());
    take(&two, "r", AcquireOptions::new().no_wait()).await.release().await.expect("release");
}

#[tokio::test]
async fn an_exclusive_holder_keeps_readers_out() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (manager(dir.path()), manager(dir.path()));
    let writer = take(&one, "r", AcquireOptions::new().no_wait()).await;
    assert!(refused(&two, "r", shared()).await);
    assert!(refused(&one, "r", shared()).await);
    let waiting = {
        let two = two.clone();
        tokio::spawn(async move { two.acquire("r", AcquireOptions::new().shared().timeout(BOUND)).await })
    };
    until_gate_is_held(&two, "r").await;
    let released = Instant::now();
    writer.release().await.expect("release");
    let reader = waiting.await.expect("join").expect("the reader got in once the writer left");
    eprintln!("reader woken {:?} after the writer released", released.elapsed());
    reader.release().await.expect("release");
}

/// A writer waiting for readers holds the gate: readers arriving after it,
/// in another manager or its own, wait behind it; then they get in together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_is_not_starved_by_new_readers() {
    let dir = tempfile::tempdir().expect("dir");
    let (readers, writers, late) = (manager(dir.path()), manager(dir.path()), manager(dir.path()));
    let first = take(&readers, "r", shared()).await;
    let writer = {
        let writers = writers.clone();
        tokio::spawn(async move { writers.acquire("r", AcquireOptions::new().timeout(BOUND)).await })
    };
    until_gate_is_held(&writers, "r").await;
    // New readers: another manager, the first reader's own, and the writer's.
    assert!(refused(&late, "r", shared()).await, "a new reader passed a waiting writer");
    assert!(refused(&readers, "r", shared()).await, "a new reader (same manager as the readers) passed the writer");
    assert!(refused(&writers, "r", shared()).await, "a new reader (the writer's manager) passed the writer");
    let queued: Vec<_> = [&late, &readers]
        .into_iter()
        .map(|locks| {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire("r", AcquireOptions::new().shared().timeout(BOUND)).await })
        })
        .collect();
    first.release().await.expect("release");
    let writer = writer.await.expect("join").expect("the writer got in after the first reader");
    assert!(!writer.is_lost());
    assert!(refused(&late, "r", shared()).await, "a reader beside the writer");
    writer.release().await.expect("release");
    let mut after = Vec::new();
    for reader in queued {
        after.push(reader.await.expect("join").expect("a queued reader got in after the writer"));
    }
    // They hold together.
    assert_eq!(held(late.state("r").await.expect("state")).holders.len(), 2);
    for guard in after {
        guard.release().await.expect("release");
    }
}

#[tokio::test]
async fn a_semaphore_admits_its_permit_count_and_refuses_other_kinds() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (manager(dir.path()), manager(dir.path()));
    let mut guards = vec![take(&one, "api", permits(3)).await, take(&two, "api", permits(3)).await];
    guards.push(take(&one, "api", permits(3)).await);
    assert!(refused(&two, "api", permits(3)).await, "a fourth permit of 3");
    assert!(refused(&one, "api", permits(3)).await, "a fourth permit of 3 (same manager)");
    for (options, theirs) in [
        (permits(5), "5 permits"),
        (AcquireOptions::new().no_wait(), "exclusive"),
        (AcquireOptions::new().shared().no_wait(), "shared"),
    ] {
        for locks in [&one, &two] {
            let err = locks.try_acquire("api", options.clone()).await.expect_err("a disagreeing mode");
            let text = err.to_string();
            assert!(matches!(err, LockError::Config(_)), "{text}");
            assert!(text.contains("3 permits") && text.contains(theirs), "{text}");
        }
    }
    let info = held(two.state("api").await.expect("state"));
    assert_eq!(info.mode, LockMode::Permits(3));
    assert_eq!(info.holders.len(), 3);
    assert!(info.to_string().contains("3 of 3 permits"), "{info}");
    let tokens: Vec<_> = guards.iter().map(LockGuard::fencing_token).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    // A freed permit goes to a waiter at once.
    let waiter = {
        let two = two.clone();
        tokio::spawn(async move { two.acquire("api", AcquireOptions::new().permits(3).timeout(BOUND)).await })
    };
    until_gate_is_held(&two, "api").await;
    guards.remove(0).release().await.expect("release");
    let fourth = waiter.await.expect("join").expect("the waiter got the freed permit");
    assert!(fourth.fencing_token() > tokens[2]);
    for guard in guards.into_iter().chain([fourth]) {
        guard.release().await.expect("release");
    }
    assert_eq!(one.state("api").await.expect("state"), LockState::Available);
    // Free again, the resource can be used another way.
    take(&one, "api", permits(5)).await.release().await.expect("release");
    take(&one, "api", AcquireOptions::new().no_wait()).await.release().await.expect("release");
}

#[tokio::test]
async fn a_semaphore_of_one_excludes_and_a_waiter_is_refused_early_for_another_count() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (manager(dir.path()), manager(dir.path()));
    let only = take(&one, "r", permits(1)).await;
    assert!(refused(&two, "r", permits(1)).await);
    // Queued behind a holder in its own manager, a disagreeing request is
    // refused at once rather than after its wait.
    let started = Instant::now();
    let err = one.acquire("r", AcquireOptions::new().permits(2).timeout(BOUND)).await.expect_err("2 vs 1");
    assert!(matches!(err, LockError::Config(_)), "{err}");
    assert!(started.elapsed() < BOUND / 2);
    only.release().await.expect("release");
}

#[tokio::test]
async fn fencing_tokens_increase_across_modes_and_managers() {
    let dir = tempfile::tempdir().expect("dir");
    let managers = [manager(dir.path()), manager(dir.path())];
    let mut last = None;
    for round in 0..3 {
        let mut guards = Vec::new();
        for locks in &managers {
            guards.push(take(locks, "r", shared()).await);
        }
        let exclusive_after = guards.iter().map(LockGuard::fencing_token).max();
        for guard in &guards {
            assert!(last.is_none_or(|last| guard.fencing_token() > last), "round {round}");
            last = Some(guard.fencing_token());
        }
        for guard in guards {
            guard.release().await.expect("release");
        }
        let writer = take(&managers[round % 2], "r", AcquireOptions::new().no_wait()).await;
        assert!(Some(writer.fencing_token()) > exclusive_after);
        last = Some(writer.fencing_token());
        writer.release().await.expect("release");
    }
}

#[tokio::test]
async fn force_release_breaks_every_holder() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (manager(dir.path()), manager(dir.path()));
    for options in [shared(), permits(2)] {
        let guards = [take(&one, "r", options.clone()).await, take(&two, "r", options.clone()).await];
        // A waiter of the same kind that holds the gate (a permit of a full
        // semaphore) keeps it: the gate is no holder's file.
        let mut waiter = Some({
            let (locks, options) = (manager(dir.path()), options.clone());
            tokio::spawn(async move { locks.acquire("r", options.timeout(BOUND)).await })
        });
        let gate = one.backend().lock_file("r").with_extension("gate");
        let shared_round = options.mode == LockMode::Shared;
        if shared_round {
            // Readers join at once: nobody waits at the gate.
            let reader = waiter.take().expect("spawned").await.expect("join").expect("a reader joins");
            reader.release().await.expect("release");
        } else {
            until_gate_is_held(&one, "r").await;
        }
        let gate_before = std::fs::metadata(&gate).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).expect("gate");
        let info = one.force_release("r", "test").await.expect("force").expect("it was held");
        assert_eq!(info.holders.len(), 2, "{info:?}");
        let gate_after = std::fs::metadata(&gate).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).expect("gate");
        assert_eq!(gate_before, gate_after, "force_release removed the gate a waiter holds");
        for guard in &guards {
            tokio::time::timeout(BOUND, guard.lost()).await.expect("every holder is told it lost the lock");
        }
        if let Some(waiter) = waiter {
            waiter.await.expect("join").expect("the waiter got a freed permit").release().await.expect("release");
        }
        // Newcomers find every permit free.
        let fresh = [take(&one, "r", options.clone()).await, take(&two, "r", options.clone()).await];
        for guard in guards {
            assert!(guard.release().await.expect_err("released a broken grant").is_lost());
        }
        for guard in fresh {
            guard.release().await.expect("release");
        }
    }
}

#[tokio::test]
async fn cleanup_leaves_no_files_and_reports_no_crash_after_clean_use() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = manager(dir.path());
    for options in [shared(), permits(3), AcquireOptions::new().no_wait()] {
        let guards = [take(&locks, "r", options.clone()).await, take(&locks, "s", options.clone()).await];
        for guard in guards {
            guard.release().await.expect("release");
        }
    }
    let live = take(&locks, "live", shared()).await;
    assert_eq!(locks.cleanup_stale().await.expect("cleanup"), vec![]);
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    // The gate stays while the resource is in use: it keeps the last token.
    assert_eq!(left.len(), 3, "only the live reader's lock file, gate and record stay: {left:?}");
    assert!(left.iter().all(|name| name.starts_with("live-")), "{left:?}");
    assert!(locks.state("live").await.expect("state").is_held());
    let joined = take(&locks, "live", shared()).await;
    assert!(joined.fencing_token() > live.fencing_token());
    live.release().await.expect("release");
    joined.release().await.expect("release");
    assert_eq!(locks.cleanup_stale().await.expect("cleanup"), vec![]);
    assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0, "files left after a full cleanup");
}

/// A crashed holder's record file is left unlocked: it is no holder, and
/// cleanup removes and reports it.
#[tokio::test]
async fn an_unlocked_holder_file_is_no_holder_and_cleanup_reports_it() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = manager(dir.path());
    let guard = take(&locks, "r", shared().purpose("crashes")).await;
    let record = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains(".reader-"))
        .expect("a reader record");
    let name = record.file_name().expect("name").to_string_lossy().into_owned();
    let (stem, _) = name.rsplit_once(".reader-").expect("a reader record's name");
    let copy = record.with_file_name(format!("{stem}.reader-0123456789abcdef0123456789abcdef"));
    std::fs::copy(&record, &copy).expect("copy");
    // The copy is unlocked, like a crashed holder's.
    assert_eq!(held(locks.state("r").await.expect("state")).all_holders().count(), 1);
    guard.release().await.expect("release");
    let crashed = locks.cleanup_stale().await.expect("cleanup");
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    assert_eq!(crashed[0].purpose.as_deref(), Some("crashes"));
    assert_eq!(crashed[0].mode, LockMode::Shared);
    assert!(!copy.exists());
}

#[tokio::test]
async fn the_kernel_and_lease_flavours_declare_modes_and_legacy_refuses_them() {
    let dir = tempfile::tempdir().expect("dir");
    assert!(manager(dir.path()).backend().capabilities().shared_mode);
    assert!(manager(dir.path()).backend().capabilities().permits);
    let lease = LeaseFileBackend::open(FileOptions::new(dir.path().join("lease"))).expect("open");
    assert!(lease.capabilities().shared_mode && lease.capabilities().permits);
    let legacy =
        LegacyFileBackend::open(LegacyOptions::givtcp(dir.path().join("legacy"), 1)).expect("open").into_manager();
    let err = legacy.acquire("r", AcquireOptions::new().shared().no_wait()).await.expect_err("shared");
    assert!(matches!(err, LockError::Config(_)) && err.to_string().contains("shared_mode = false"), "{err}");
    let err = legacy.acquire("r", AcquireOptions::new().permits(2).no_wait()).await.expect_err("permits");
    assert!(matches!(err, LockError::Config(_)), "{err}");
}

/// A waiter for a permit is woken by the release, not by its backoff (which
/// reaches 250 ms after half a second of waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permit_waiters_wake_on_release() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (manager(dir.path()), manager(dir.path()));
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let holder = take(&one, "r", permits(1)).await;
        let waiter = {
            let two = two.clone();
            tokio::spawn(async move {
                let guard = two.acquire("r", AcquireOptions::new().permits(1).timeout(BOUND)).await;
                (Instant::now(), guard)
            })
        };
        until_gate_is_held(&two, "r").await;
        // Let the waiter's backoff grow to its cap: only a notification wakes it fast now.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let released = Instant::now();
        holder.release().await.expect("release");
        let (woke, guard) = waiter.await.expect("join");
        guard.expect("the waiter got the permit").release().await.expect("release");
        slowest = slowest.max(woke - released);
    }
    eprintln!("slowest permit hand-over: {slowest:?}");
    assert!(slowest < Duration::from_millis(100), "a waiter took {slowest:?} to notice a release");
}

/// Things planted where a resource's gate, permit or reader record should
/// be are refused with an error naming the path, never followed or written
/// through; `state`, `list` and `cleanup_stale` skip them.
#[tokio::test]
async fn planted_family_files_are_refused_not_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("dir");
    let outside = tempfile::tempdir().expect("outside");
    let target = outside.path().join("target");
    std::fs::write(&target, b"precious").expect("target");
    let locks = manager(dir.path());
    let lock = locks.backend().lock_file("r");
    let gate = lock.with_extension("gate");
    symlink(&target, &gate).expect("symlink");
    let err = locks.acquire("r", shared()).await.expect_err("locked through a symlinked gate");
    assert!(matches!(err, LockError::Backend { .. }) && err.to_string().contains(&*gate.to_string_lossy()), "{err}");
    std::fs::remove_file(&gate).expect("unplant");

    let slot = lock.with_extension("slot-1");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &slot,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .expect("mkfifo");
    let first = take(&locks, "r", permits(2)).await;
    let err = locks.acquire("r", permits(2)).await.expect_err("a permit in a named pipe");
    assert!(err.to_string().contains(&*slot.to_string_lossy()) && err.to_string().contains("pipe"), "{err}");
    let name =
        lock.file_name().expect("name").to_string_lossy().replace(".lock", ".reader-0123456789abcdef0123456789abcdef");
    symlink(&target, lock.with_file_name(name)).expect("symlink a reader record");
    assert_eq!(held(locks.state("r").await.expect("state")).all_holders().count(), 1);
    assert_eq!(locks.list().await.expect("list").len(), 1);
    first.release().await.expect("release");
    assert!(locks.cleanup_stale().await.expect("cleanup").is_empty());
    assert_eq!(std::fs::read(&target).expect("target"), b"precious");
}

/// The lock file held for a moment by someone who is no holder of a kind —
/// a party that has just found it free and not yet written its record, a
/// `state` probe — while its record still names an ended period's kind:
/// semaphore requests wait for that moment to pass, and are not refused as
/// disagreeing (neither at the gate nor queued in their own manager).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outdated_record_under_a_momentary_lock_refuses_nobody() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = manager(dir.path());
    let lock = locks.backend().lock_file("r");
    // An ended period of readers leaves its kind record ("shared", held).
    take(&locks, "r", shared()).await.release().await.expect("release");
    for exclusive in [false, true] {
        let momentary = File::open(&lock).expect("open");
        if exclusive { momentary.lock() } else { momentary.lock_shared() }.expect("lock");
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let locks = locks.clone();
                tokio::spawn(async move { locks.acquire("r", AcquireOptions::new().permits(2).timeout(BOUND)).await })
            })
            .collect();
        until_gate_is_held(&locks, "r").await;
        drop(momentary);
        for waiter in waiters {
            let guard = waiter.await.expect("join").expect("a permit was refused over an outdated record");
            guard.release().await.expect("release");
        }
        // Back to a readers' record for the next round.
        take(&locks, "r", shared()).await.release().await.expect("release");
    }
}

// ---------------------------------------------------------------------------
// The lease-file flavour (`file:///dir?mode=lease`): the lease file is the
// gate; readers and permit holders keep lease files of their own.
// ---------------------------------------------------------------------------

fn lease_manager(dir: &Path) -> LeaseFileLockManager {
    let options =
        FileOptions::new(dir).default_lease(Duration::from_millis(900)).loss_check_interval(Duration::from_millis(50));
    LeaseFileBackend::open(options).expect("open").into_manager()
}

async fn lease_take(locks: &LeaseFileLockManager, resource: &str, options: AcquireOptions) -> LockGuard {
    locks.acquire(resource, options).await.expect("acquire")
}

async fn lease_refused(locks: &LeaseFileLockManager, resource: &str, options: AcquireOptions) -> bool {
    locks.try_acquire(resource, options).await.expect("try_acquire").is_none()
}

/// The files in `dir` whose names contain `part`.
fn files_with(dir: &Path, part: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(part)))
        .collect()
}

/// Waits (bounded) until the gate (the lease file) of `resource` exists: a
/// waiter of `locks`'s directory holds it.
async fn until_lease_gate_is_held(locks: &LeaseFileLockManager, resource: &str) {
    let gate = locks.backend().lease_file(resource);
    let started = Instant::now();
    while !gate.exists() {
        assert!(started.elapsed() < BOUND, "nobody took the gate {}", gate.display());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn lease_shared_holders_hold_together_and_exclude_writers() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (lease_manager(dir.path()), lease_manager(dir.path()));
    let a = lease_take(&one, "r", shared().purpose("a")).await;
    let b = lease_take(&one, "r", shared().purpose("b")).await;
    let c = lease_take(&two, "r", shared().purpose("c")).await;
    assert_eq!(files_with(dir.path(), ".reader-").len(), 3, "one lease file per reader");
    assert!(!one.backend().lease_file("r").exists(), "a reader kept the gate");
    assert!(lease_refused(&two, "r", AcquireOptions::new()).await, "exclusive beside readers");
    assert!(lease_refused(&one, "r", AcquireOptions::new()).await, "exclusive beside readers (same manager)");
    let info = held(one.state("r").await.expect("state"));
    assert_eq!(info.mode, LockMode::Shared);
    let mut holders: Vec<_> = info.all_holders().map(|h| h.purpose.clone().unwrap_or_default()).collect();
    holders.sort();
    assert_eq!(holders, ["a", "b", "c"]);
    assert!(info.all_holders().all(|h| h.mode == LockMode::Shared && h.lease_expires_at.is_some()));
    let listed = two.list().await.expect("list");
    assert_eq!(listed.len(), 1, "one LockInfo per resource: {listed:?}");
    assert_eq!(listed[0].holders.len(), 3);
    let err = two.acquire("r", AcquireOptions::new().timeout(Duration::from_millis(50))).await.expect_err("timeout");
    let LockError::Timeout { holder: Some(holder), .. } = &err else { panic!("{err}") };
    assert_eq!(holder.holders.len(), 3, "{err}");
    // The writer that timed out let the gate go.
    assert!(!one.backend().lease_file("r").exists(), "a timed-out writer left the gate behind");
    let tokens: Vec<_> = [&a, &b, &c].iter().map(|g| g.fencing_token()).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    for guard in [a, b, c] {
        guard.release().await.expect("release");
    }
    assert!(files_with(dir.path(), ".reader-").is_empty(), "a released reader's file stayed");
    assert_eq!(one.state("r").await.expect("state"), LockState::Available);
    assert!(one.list().await.expect("list").is_empty());
    let writer = lease_take(&two, "r", AcquireOptions::new().no_wait()).await;
    assert!(writer.fencing_token() > tokens[2]);
    assert!(lease_refused(&one, "r", shared()).await, "a reader beside a writer");
    writer.release().await.expect("release");
}

/// A writer waiting for readers holds the gate: readers arriving after it
/// wait behind it, and get in together once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_a_waiting_writer_is_not_starved_by_new_readers() {
    let dir = tempfile::tempdir().expect("dir");
    let (readers, writers, late) = (lease_manager(dir.path()), lease_manager(dir.path()), lease_manager(dir.path()));
    let first = lease_take(&readers, "r", shared()).await;
    let writer = {
        let writers = writers.clone();
        tokio::spawn(async move { writers.acquire("r", AcquireOptions::new().timeout(BOUND)).await })
    };
    until_lease_gate_is_held(&writers, "r").await;
    assert!(lease_refused(&late, "r", shared()).await, "a new reader passed a waiting writer");
    assert!(lease_refused(&readers, "r", shared()).await, "a new reader (the readers' manager) passed the writer");
    // The waiting writer is no holder: the reader is shown.
    assert_eq!(held(late.state("r").await.expect("state")).mode, LockMode::Shared);
    let queued: Vec<_> = [&late, &readers]
        .into_iter()
        .map(|locks| {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire("r", AcquireOptions::new().shared().timeout(BOUND)).await })
        })
        .collect();
    // The writer holds the gate for longer than its lease: it renews it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!writer.is_finished(), "the writer got in beside a reader");
    first.release().await.expect("release");
    let writer = writer.await.expect("join").expect("the writer got in after the first reader");
    assert!(!writer.is_lost());
    assert!(lease_refused(&late, "r", shared()).await, "a reader beside the writer");
    writer.release().await.expect("release");
    let mut after = Vec::new();
    for reader in queued {
        after.push(reader.await.expect("join").expect("a queued reader got in after the writer"));
    }
    assert_eq!(held(late.state("r").await.expect("state")).holders.len(), 2);
    for guard in after {
        guard.release().await.expect("release");
    }
}

#[tokio::test]
async fn lease_a_semaphore_admits_its_permit_count_and_refuses_other_kinds() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (lease_manager(dir.path()), lease_manager(dir.path()));
    let mut guards = vec![lease_take(&one, "api", permits(3)).await, lease_take(&two, "api", permits(3)).await];
    guards.push(lease_take(&one, "api", permits(3)).await);
    assert_eq!(files_with(dir.path(), ".slot-").len(), 3);
    assert!(lease_refused(&two, "api", permits(3)).await, "a fourth permit of 3");
    assert!(lease_refused(&one, "api", permits(3)).await, "a fourth permit of 3 (same manager)");
    for (options, theirs) in [
        (permits(5), "5 permits"),
        (permits(2), "2 permits"),
        (AcquireOptions::new().no_wait(), "exclusive"),
        (AcquireOptions::new().shared().no_wait(), "shared"),
    ] {
        for locks in [&one, &two] {
            let err = locks.try_acquire("api", options.clone()).await.expect_err("a disagreeing mode");
            let text = err.to_string();
            assert!(matches!(err, LockError::Config(_)), "{text}");
            assert!(text.contains("3 permits") && text.contains(theirs), "{text}");
        }
    }
    assert!(!one.backend().lease_file("api").exists(), "a refused acquirer left the gate behind");
    let info = held(two.state("api").await.expect("state"));
    assert_eq!(info.mode, LockMode::Permits(3));
    assert_eq!(info.holders.len(), 3);
    let tokens: Vec<_> = guards.iter().map(LockGuard::fencing_token).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    // A freed permit goes to a waiter (which waits holding the gate).
    let waiter = {
        let two = two.clone();
        tokio::spawn(async move { two.acquire("api", AcquireOptions::new().permits(3).timeout(BOUND)).await })
    };
    until_lease_gate_is_held(&two, "api").await;
    guards.remove(0).release().await.expect("release");
    let fourth = waiter.await.expect("join").expect("the waiter got the freed permit");
    assert!(fourth.fencing_token() > tokens[2]);
    for guard in guards.into_iter().chain([fourth]) {
        guard.release().await.expect("release");
    }
    assert_eq!(one.state("api").await.expect("state"), LockState::Available);
    assert!(files_with(dir.path(), ".slot-").is_empty(), "a released permit's file stayed");
    // Free again, the resource can be used another way.
    lease_take(&one, "api", permits(5)).await.release().await.expect("release");
    lease_take(&one, "api", shared()).await.release().await.expect("release");
    lease_take(&one, "api", AcquireOptions::new().no_wait()).await.release().await.expect("release");
}

/// A reader whose lease lapses (a frozen reader: an explicit lease is not
/// renewed) stops blocking a waiting writer at its lease's end, not before;
/// it is told it lost its hold, and the other readers keep theirs until
/// they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_a_lapsed_reader_stops_blocking_a_writer_at_its_lease_end() {
    const LEASE: Duration = Duration::from_millis(400);
    let dir = tempfile::tempdir().expect("dir");
    let (readers, writers) = (lease_manager(dir.path()), lease_manager(dir.path()));
    let taken = Instant::now();
    let frozen = lease_take(&readers, "r", shared().lease(LEASE).purpose("frozen")).await;
    let writer = {
        let writers = writers.clone();
        tokio::spawn(async move {
            let guard = writers.acquire("r", AcquireOptions::new().timeout(BOUND)).await;
            (Instant::now(), guard)
        })
    };
    let (granted, guard) = writer.await.expect("join");
    let guard = guard.expect("the writer got in once the frozen reader's lease lapsed");
    assert!(granted - taken >= LEASE, "the writer got in {:?} after the reader, inside its lease", granted - taken);
    tokio::time::timeout(BOUND, frozen.lost()).await.expect("the lapsed reader was never told");
    assert!(files_with(dir.path(), ".reader-").is_empty(), "the lapsed reader's file was not broken");
    assert!(frozen.release().await.expect_err("released a lapsed hold").is_lost());
    guard.release().await.expect("release");
}

/// A permit whose holder's lease lapses is taken over by a waiter; the
/// semaphore never has more than its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_a_lapsed_permit_is_reclaimed() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (lease_manager(dir.path()), lease_manager(dir.path()));
    let frozen = lease_take(&one, "sem", permits(2).lease(Duration::from_millis(300))).await;
    let steady = lease_take(&one, "sem", permits(2)).await;
    let waiter = two.acquire("sem", AcquireOptions::new().permits(2).timeout(BOUND)).await.expect("reclaimed");
    assert!(waiter.fencing_token() > steady.fencing_token());
    tokio::time::timeout(BOUND, frozen.lost()).await.expect("the lapsed permit holder was never told");
    assert!(!steady.is_lost());
    assert!(lease_refused(&two, "sem", permits(2)).await, "a third holder of a semaphore of 2");
    assert_eq!(held(two.state("sem").await.expect("state")).holders.len(), 2);
    steady.release().await.expect("release");
    waiter.release().await.expect("release");
}

/// A writer finds readers by their exact names in the registry — and, when
/// the registry was overwritten with a smaller count (a gate holder frozen
/// mid-write), by a listing as well.
#[tokio::test]
async fn lease_a_writer_finds_readers_the_registry_lost() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = lease_manager(dir.path());
    let first = lease_take(&locks, "r", shared()).await;
    let second = lease_take(&locks, "r", shared()).await;
    let registry = locks.backend().lease_file("r").with_extension("holders");
    assert_eq!(std::fs::read_to_string(&registry).expect("registry").trim(), "shared 2");
    first.release().await.expect("release");
    for lost in ["shared 0\n", "garbage"] {
        std::fs::write(&registry, lost).expect("overwrite the registry");
        assert!(lease_refused(&locks, "r", AcquireOptions::new()).await, "a writer missed a reader ({lost:?})");
    }
    second.release().await.expect("release");
    lease_take(&locks, "r", AcquireOptions::new().no_wait()).await.release().await.expect("release");
}

#[tokio::test]
async fn lease_force_release_breaks_every_holder_and_cleanup_reports_lapsed_ones() {
    let dir = tempfile::tempdir().expect("dir");
    let (one, two) = (lease_manager(dir.path()), lease_manager(dir.path()));
    for options in [shared(), permits(2)] {
        let guards = [lease_take(&one, "r", options.clone()).await, lease_take(&two, "r", options.clone()).await];
        let info = one.force_release("r", "test").await.expect("force").expect("it was held");
        assert_eq!(info.holders.len(), 2, "{info:?}");
        for guard in &guards {
            tokio::time::timeout(BOUND, guard.lost()).await.expect("every holder is told it lost the lock");
        }
        assert_eq!(one.state("r").await.expect("state"), LockState::Available);
        let fresh = [lease_take(&one, "r", options.clone()).await, lease_take(&two, "r", options.clone()).await];
        for guard in guards {
            assert!(guard.release().await.expect_err("released a broken grant").is_lost());
        }
        for guard in fresh {
            guard.release().await.expect("release");
        }
    }
    // Lapsed holders' files: shown as stale, removed and reported by cleanup.
    for options in [shared(), permits(2)] {
        let lapsed = lease_take(&one, "c", options.purpose("lapses").lease(Duration::from_millis(50))).await;
        tokio::time::timeout(BOUND, lapsed.lost()).await.expect("the lease ran out");
        assert!(matches!(one.state("c").await.expect("state"), LockState::Stale(_)));
        let broken = one.cleanup_stale().await.expect("cleanup");
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert_eq!(broken[0].purpose.as_deref(), Some("lapses"));
        assert_eq!(one.state("c").await.expect("state"), LockState::Available);
        drop(lapsed);
    }
}

/// Cancelling an acquire that waits holding the gate lets the gate go.
#[tokio::test]
async fn lease_a_cancelled_waiting_writer_lets_the_gate_go() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = lease_manager(dir.path());
    let reader = lease_take(&locks, "r", shared()).await;
    let other = lease_manager(dir.path());
    let waiting = tokio::time::timeout(Duration::from_millis(200), other.acquire("r", AcquireOptions::new())).await;
    assert!(waiting.is_err(), "the writer got in beside a reader");
    assert!(!locks.backend().lease_file("r").exists(), "a cancelled writer left the gate behind");
    assert!(!lease_refused(&locks, "r", shared()).await, "a reader was kept out after the writer gave up");
    reader.release().await.expect("release");
}
