//! Faults and bad input for the file backends: lock files deleted, replaced
//! or cleaned up under holders and waiters, symlinks, unusable directories,
//! truncated records, and names that try to escape the directory.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use lockman_core::{AcquireOptions, LockBackend, LockError, LockManager, LockState, LostReason};
use lockman_file::{FileBackend, FileOptions, LeaseFileBackend, LegacyFileBackend, LegacyOptions};

/// How long a holder may take to notice its file is gone (the loss check
/// interval used below, plus scheduling slack).
const NOTICE: Duration = Duration::from_secs(2);

fn quick(dir: &Path) -> FileOptions {
    FileOptions::new(dir).loss_check_interval(Duration::from_millis(50))
}

fn kernel(dir: &Path) -> (FileBackend, Arc<dyn LockManager>) {
    let backend = FileBackend::open(quick(dir)).expect("open");
    let locks = Arc::new(FileBackend::open(quick(dir)).expect("open").into_manager());
    (backend, locks)
}

/// py-filelock #574: deleting lock files must not break mutual exclusion.
/// Our `cleanup_stale` deletes every unlocked lock file, over and over,
/// while four managers (as four processes would) take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deleting_lock_files_never_breaks_exclusion() {
    let dir = tempfile::tempdir().expect("dir");
    let inside = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let cleaner = {
        let locks = kernel(dir.path()).1;
        let done = done.clone();
        tokio::spawn(async move {
            let mut passes = 0u32;
            while !done.load(Ordering::Acquire) {
                locks.cleanup_stale().await.expect("cleanup");
                passes += 1;
                tokio::task::yield_now().await;
            }
            passes
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let locks = kernel(dir.path()).1;
            let inside = inside.clone();
            tokio::spawn(async move {
                for _ in 0..300 {
                    let guard = locks.acquire("shared", AcquireOptions::new()).await.expect("acquire");
                    assert_eq!(inside.fetch_add(1, Ordering::AcqRel), 0, "two holders at once");
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::AcqRel);
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    done.store(true, Ordering::Release);
    let passes = cleaner.await.expect("cleaner");
    assert!(passes > 10, "the cleaner hardly ran ({passes} passes)");
}

/// A holder whose lock file is deleted by an outside tool learns it lost the
/// lock; a newcomer gets a fresh file and a larger fencing token.
#[tokio::test]
async fn deleted_lock_file_makes_the_holder_lost() {
    let dir = tempfile::tempdir().expect("dir");
    let (backend, locks) = kernel(dir.path());
    let guard = locks.acquire("victim", AcquireOptions::new()).await.expect("acquire");
    std::fs::remove_file(backend.lock_file("victim")).expect("delete");
    let reason = tokio::time::timeout(NOTICE, guard.lost()).await.expect("the holder never noticed");
    assert!(matches!(reason, LostReason::Stolen { .. }), "{reason:?}");
    let other = kernel(dir.path()).1;
    let next = other.acquire("victim", AcquireOptions::new().no_wait()).await.expect("a fresh file is free");
    assert!(next.fencing_token() > guard.fencing_token());
    let err = guard.release().await.expect_err("releasing a lost lock succeeded");
    assert!(err.is_lost());
}

/// The same when another file is renamed over it.
#[tokio::test]
async fn replaced_lock_file_makes_the_holder_lost() {
    let dir = tempfile::tempdir().expect("dir");
    let (backend, locks) = kernel(dir.path());
    let guard = locks.acquire("victim", AcquireOptions::new()).await.expect("acquire");
    let impostor = dir.path().join("impostor");
    std::fs::write(&impostor, "").expect("write");
    std::fs::rename(&impostor, backend.lock_file("victim")).expect("replace");
    tokio::time::timeout(NOTICE, guard.lost()).await.expect("the holder never noticed");
    assert!(guard.release().await.expect_err("release of a lost lock").is_lost());
}

/// A waiter blocked on a file that is deleted moves on to the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_follows_a_deleted_and_recreated_lock_file() {
    let dir = tempfile::tempdir().expect("dir");
    let (backend, locks) = kernel(dir.path());
    let holder = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
    let waiter = {
        let locks = kernel(dir.path()).1;
        tokio::spawn(async move { locks.acquire("r", AcquireOptions::new().timeout(Duration::from_secs(10))).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await; // let the waiter block on the old file
    std::fs::remove_file(backend.lock_file("r")).expect("delete");
    let got = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("waiter stuck").expect("join");
    let got = got.expect("the waiter did not move to the new file");
    // The old holder is lost; the waiter holds the file the path names now.
    tokio::time::timeout(NOTICE, holder.lost()).await.expect("old holder not told");
    assert!(locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "new holder not excluding");
    drop(got);
}

/// Fencing tokens keep increasing across managers, and after the lock file
/// (and the token stored in it) was deleted.
#[tokio::test]
async fn fencing_tokens_increase_across_managers_and_deletion() {
    let dir = tempfile::tempdir().expect("dir");
    let (backend, first) = kernel(dir.path());
    let second = kernel(dir.path()).1;
    let mut last = 0;
    for round in 0..20 {
        let locks = if round % 2 == 0 { &first } else { &second };
        let guard = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
        let token = guard.fencing_token().get();
        assert!(token > last, "round {round}: token {token} after {last}");
        last = token;
        guard.release().await.expect("release");
        if round == 10 {
            std::fs::remove_file(backend.lock_file("r")).expect("delete");
        }
    }
}

/// A lock file replaced by a symlink is refused, and nothing is written
/// through it.
#[tokio::test]
async fn symlinked_lock_file_is_refused() {
    let root = tempfile::tempdir().expect("dir");
    let dir = root.path().join("locks");
    let backend = FileBackend::open(FileOptions::new(&dir)).expect("open");
    let outside = root.path().join("outside.txt");
    std::fs::write(&outside, "precious").expect("write");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, backend.lock_file("victim")).expect("symlink");
    let locks = backend.into_manager();
    let err = locks.acquire("victim", AcquireOptions::new().no_wait()).await.expect_err("followed a symlink");
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(locks.state("victim").await.is_err(), "state read through a symlink");
    assert_eq!(std::fs::read_to_string(&outside).expect("read"), "precious");
}

/// A path that is a file, or under one, is a configuration error naming it.
#[test]
fn unusable_directories_are_config_errors() {
    let root = tempfile::tempdir().expect("dir");
    let file = root.path().join("not-a-dir");
    std::fs::write(&file, "").expect("write");
    for dir in [file.clone(), file.join("below")] {
        let err = FileBackend::open(FileOptions::new(&dir)).expect_err("opened an unusable directory");
        assert!(matches!(err, LockError::Config(_)), "{err}");
        assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err} does not name {dir:?}");
    }
}

/// A new directory is private to its user unless configured otherwise.
#[cfg(unix)]
#[test]
fn new_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("dir");
    let private = root.path().join("private");
    FileBackend::open(FileOptions::new(&private)).expect("open");
    assert_eq!(std::fs::metadata(&private).expect("meta").permissions().mode() & 0o777, 0o700);
    let shared = root.path().join("shared");
    FileBackend::open(FileOptions::new(&shared).dir_mode(0o750)).expect("open");
    assert_eq!(std::fs::metadata(&shared).expect("meta").permissions().mode() & 0o777, 0o750);
}

/// An unwritable directory gives a clear error (root bypasses permissions,
/// so this only runs as another user).
#[cfg(unix)]
#[tokio::test]
async fn unwritable_directory_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    if rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: running as root, which writes to any directory");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let locks = FileBackend::open(FileOptions::new(dir.path())).expect("open").into_manager();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let err = locks.acquire("r", AcquireOptions::new().no_wait()).await.expect_err("wrote to a read-only directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod back");
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("permission"), "{err}");
}

/// A truncated record is survived: the state reads, the lock is granted,
/// and the token still increases (the clock floors it).
#[tokio::test]
async fn truncated_record_is_recovered_from() {
    let dir = tempfile::tempdir().expect("dir");
    let (backend, locks) = kernel(dir.path());
    let first = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
    let token = first.fencing_token();
    let path = backend.lock_file("r");
    std::fs::OpenOptions::new().write(true).open(&path).expect("open").set_len(12).expect("truncate");
    let state = locks.state("r").await.expect("state of a held lock with a torn record");
    assert!(state.is_held(), "{state:?}");
    first.release().await.expect("release");
    std::fs::write(&path, b"LMF1 H garbage that is no record").expect("corrupt");
    assert_eq!(locks.state("r").await.expect("state"), LockState::Available);
    let next = locks.acquire("r", AcquireOptions::new().no_wait()).await.expect("acquire over a corrupt record");
    assert!(next.fencing_token() > token);
}

/// A corrupt lease file is judged by its age: held while young, stale (and
/// broken) once older than the default lease.
#[tokio::test]
async fn corrupt_lease_file_is_broken_after_the_default_lease() {
    let dir = tempfile::tempdir().expect("dir");
    let backend =
        LeaseFileBackend::open(FileOptions::new(dir.path()).default_lease(Duration::from_secs(5))).expect("open");
    let path = backend.lease_file("r");
    let locks = backend.into_manager();
    std::fs::write(&path, b"\x00\x01 not a record").expect("corrupt");
    assert!(locks.state("r").await.expect("state").is_held());
    assert!(locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "broke a young lease file");
    let old = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(&path).expect("open").set_modified(old).expect("age it");
    assert!(matches!(locks.state("r").await.expect("state"), LockState::Stale(_)));
    let guard = locks.try_acquire("r", AcquireOptions::new()).await.expect("try");
    assert!(guard.is_some(), "a stale corrupt lease file was not broken");
}

/// Hostile names never create anything outside the directory, in any flavour.
#[tokio::test]
async fn hostile_names_stay_inside_the_directory() {
    let root = tempfile::tempdir().expect("dir");
    let dir = root.path().join("locks");
    let flavours: Vec<Arc<dyn LockManager>> = vec![
        Arc::new(FileBackend::open(FileOptions::new(&dir)).expect("open").into_manager()),
        Arc::new(LeaseFileBackend::open(FileOptions::new(&dir)).expect("open").into_manager()),
        Arc::new(LegacyFileBackend::open(LegacyOptions::new(&dir)).expect("open").into_manager()),
    ];
    for locks in flavours {
        let mut guards = Vec::new();
        for name in lockman_testkit::names::hostile_names() {
            match locks.try_acquire(&name, AcquireOptions::new()).await {
                Ok(Some(guard)) => guards.push(guard),
                Ok(None) => panic!("{}: {name:?} collided", locks.name()),
                Err(LockError::InvalidName { .. }) => {}
                Err(e) => panic!("{}: {name:?}: {e}", locks.name()),
            }
        }
        assert!(guards.len() >= 15, "{}: most hostile names should simply work", locks.name());
    }
    let mut outside: Vec<String> = std::fs::read_dir(root.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    outside.sort();
    assert_eq!(outside, vec!["locks".to_owned()], "something was created outside the lock directory");
    for entry in std::fs::read_dir(&dir).expect("ls") {
        assert!(entry.expect("entry").file_type().expect("type").is_file(), "a subdirectory was created");
    }
}

/// Lease-mode timeouts say who holds the lock, where, since when, and why.
#[tokio::test]
async fn lease_timeout_names_user_host_pid_since_and_purpose() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = LeaseFileBackend::open(FileOptions::new(dir.path())).expect("open").into_manager();
    let _held = locks.acquire("report", AcquireOptions::new().purpose("nightly render")).await.expect("acquire");
    let other = LeaseFileBackend::open(FileOptions::new(dir.path())).expect("open").into_manager();
    let err = other.acquire("report", AcquireOptions::new().no_wait()).await.expect_err("a held lease was granted");
    let message = err.to_string();
    for part in [
        lockman_core::hostname().to_owned(),
        format!("(pid {})", std::process::id()),
        "since ".to_owned(),
        "nightly render".to_owned(),
    ] {
        assert!(message.contains(&part), "{message:?} lacks {part:?}");
    }
    if let Some(user) = lockman_core::username() {
        assert!(message.contains(&format!("(user {user})")), "{message:?} lacks the user");
    }
}

/// An old daemon that deletes our legacy file and makes its own (protocol
/// B's steal) takes the lock from us: the guard reports it lost.
#[tokio::test]
async fn legacy_lock_stolen_by_an_old_process_is_reported_lost() {
    let dir = tempfile::tempdir().expect("dir");
    let options = LegacyOptions::givtcp(dir.path(), 1).loss_check_interval(Duration::from_millis(50));
    let locks = LegacyFileBackend::open(options).expect("open").into_manager();
    let guard = locks.acquire("regcache", AcquireOptions::new()).await.expect("acquire");
    let path = dir.path().join(".regcache_lockfile_1");
    std::fs::remove_file(&path).expect("steal: delete");
    std::fs::write(&path, "2025-11-10T12:34:56.123456+00:00").expect("steal: create");
    let reason = tokio::time::timeout(NOTICE, guard.lost()).await.expect("the theft went unnoticed");
    assert!(reason.to_string().contains("old"), "{reason}");
    assert!(guard.release().await.expect_err("released a stolen lock").is_lost());
    assert!(path.exists(), "our release removed the old process's file");
}

/// An old daemon that checked for the file just before we created it, and
/// then truncates ours with its plain open, keeps the lock: we wait for it
/// instead of both going in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_old_process_racing_our_create_keeps_the_lock() {
    let dir = tempfile::tempdir().expect("dir");
    let resource = lockman_file::LegacyResource::new(".lockfile").settle(Duration::from_millis(400));
    let options = LegacyOptions::new(dir.path()).resource("inverter_read", resource);
    let locks = LegacyFileBackend::open(options).expect("open").into_manager();
    let path = dir.path().join(".lockfile");
    let acquiring = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks.acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(10))).await
        })
    };
    // Observe our create, then act as the racing old process: a truncating open.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "lockman never created the legacy file");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    std::fs::File::create(&path).expect("old process: open(path, 'w')");
    tokio::time::sleep(Duration::from_millis(600)).await; // well past the settle
    assert!(!acquiring.is_finished(), "went in while the old process held its (truncated) file");
    std::fs::remove_file(&path).expect("old process: done, delete");
    let guard = tokio::time::timeout(Duration::from_secs(5), acquiring).await.expect("stuck").expect("join");
    let guard = guard.expect("acquire after the old process finished");
    assert!(path.exists());
    guard.release().await.expect("release");
}

/// Eight managers racing to break one stale lease: exactly one wins, and
/// the rest see it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_breakers_of_a_stale_lease_have_one_winner() {
    for round in 0..10 {
        let dir = tempfile::tempdir().expect("dir");
        let open = || LeaseFileBackend::open(FileOptions::new(dir.path())).expect("open").into_manager();
        let stale = open().acquire("r", AcquireOptions::new().lease(Duration::from_millis(30))).await.expect("acquire");
        tokio::time::sleep(Duration::from_millis(60)).await; // the explicit lease is not renewed
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (locks, start) = (open(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    locks.try_acquire("r", AcquireOptions::new().lease(Duration::from_secs(30))).await.expect("try")
                })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            if let Some(guard) = racer.await.expect("join") {
                winners.push(guard);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} breakers won", winners.len());
        assert!(stale.is_lost());
    }
}

/// A skip-if-busy legacy resource (GivTCP's `.lockfile`) held by an old
/// process: a caller that names a wait gets it honoured — the old process's
/// file removed ~300 ms later lets the acquire in, well within the wait.
#[tokio::test]
async fn legacy_skip_policy_honours_an_explicit_wait() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = LegacyFileBackend::open(LegacyOptions::givtcp(dir.path(), 1)).expect("open").into_manager();
    let path = dir.path().join(".lockfile");
    std::fs::write(&path, "").expect("old process: create .lockfile");
    let old_process = {
        let path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await; // its critical section
            std::fs::remove_file(&path).expect("old process: delete .lockfile");
        })
    };
    let started = std::time::Instant::now();
    let guard = locks
        .acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(10)))
        .await
        .expect("an explicit wait was not honoured on a skip-if-busy resource");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "went in after {took:?}, while the old process held its file");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    old_process.await.expect("join");
    guard.release().await.expect("release");
}

/// The same resource with no wait named: the resource's policy applies (skip
/// at once), and the error says so — not "timed out after 211µs" — and
/// names the old process's file the way a person would.
#[tokio::test]
async fn legacy_skip_policy_says_what_happened() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = LegacyFileBackend::open(LegacyOptions::givtcp(dir.path(), 1)).expect("open").into_manager();
    let path = dir.path().join(".lockfile");
    std::fs::write(&path, "").expect("old process: create .lockfile");
    let started = std::time::Instant::now();
    let err = locks.acquire("inverter_read", AcquireOptions::new()).await.expect_err("went in past an old process");
    assert!(started.elapsed() < Duration::from_secs(2), "the skip policy waited {:?}", started.elapsed());
    assert!(err.is_timeout(), "a skip is a busy lock (exit 75 in lockctl): {err}");
    let message = err.to_string();
    eprintln!("{message}");
    for part in ["skipped", &path.display().to_string(), "legacy policy is skip", "old (legacy) process"] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    for wrong in ["timed out", "pid 0", "unknown"] {
        assert!(!message.contains(wrong), "{message:?} says {wrong:?}");
    }
    // Who holds it, as `state` (and `lockctl status`) shows it.
    let state = locks.state("inverter_read").await.expect("state");
    let holder = state.info().expect("held").to_string();
    eprintln!("{holder}");
    assert!(holder.starts_with("locked by an old (legacy) process"), "{holder:?}");
    assert!(holder.contains(&path.display().to_string()), "{holder:?}");
    for wrong in ["pid 0", "unknown"] {
        assert!(!holder.contains(wrong), "{holder:?} says {wrong:?}");
    }
}

/// A new process that crashed between linking its legacy file into place
/// and recording it in the sidecar left a file that carries our marker while
/// the sidecar is free: that is ours, broken at once — not judged an old
/// process's and waited for until `stale_after`. Both with a sidecar that
/// never had a record and with one whose last grant was released.
#[tokio::test]
async fn legacy_file_left_by_a_crash_before_the_sidecar_record_is_broken_at_once() {
    // A pid that is surely dead: a child we started and reaped.
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    child.wait().expect("wait");
    let dead_pid = child.id();
    let marked = format!(
        "2025-11-10T12:34:56.123456+00:00\n# lockman: held by pid {dead_pid} on {} (fencing token 7)",
        lockman_core::hostname()
    );
    for sidecar_used_before in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let locks = LegacyFileBackend::open(LegacyOptions::givtcp(dir.path(), 1)).expect("open").into_manager();
        let path = dir.path().join(".regcache_lockfile_1");
        let sidecar = dir.path().join(".regcache_lockfile_1.flock");
        if sidecar_used_before {
            let guard = locks.acquire("regcache", AcquireOptions::new()).await.expect("an earlier grant");
            guard.release().await.expect("release");
        } else {
            std::fs::write(&sidecar, "").expect("an empty sidecar");
        }
        std::fs::write(&path, &marked).expect("the crashed process's legacy file");
        let state = locks.state("regcache").await.expect("state");
        assert!(matches!(state, LockState::Stale(_)), "sidecar used before: {sidecar_used_before}: {state:?}");
        let guard = locks
            .acquire("regcache", AcquireOptions::new().no_wait())
            .await
            .unwrap_or_else(|e| panic!("sidecar used before: {sidecar_used_before}: {e}"));
        let now = std::fs::read_to_string(&path).expect("read");
        assert!(!now.contains(&format!("pid {dead_pid} ")), "the crashed process's file is still there: {now:?}");
        guard.release().await.expect("release");
    }
}
