//! Interleavings of several processes, driven step by step through the
//! test hooks (see `testhook`), for the races the file backends must survive.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager};

use crate::record::{self, RecordState};
use crate::testhook;
use crate::{FileBackend, FileOptions, LeaseFileBackend, LegacyFileBackend, LegacyOptions};

fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).expect("stat").ino()
}

fn lease_manager(dir: &Path) -> crate::LeaseFileLockManager {
    LeaseFileBackend::open(FileOptions::new(dir).loss_check_interval(Duration::from_millis(20)))
        .expect("open")
        .into_manager()
}

/// Item 8. A breaker judged a stale lease file, but by the time it moved the
/// path, another breaker had broken that file and a newcomer N had taken the
/// lease: it moved N's live file. While it held it aside, a third process C
/// created the path. Putting N's file back must not fail and leave N — the
/// live, earlier holder — without its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_file_moved_by_mistake_is_put_back_over_a_file_created_meanwhile() {
    let dir = tempfile::tempdir().expect("dir");
    let stale_holder = lease_manager(dir.path());
    let path = stale_holder.backend().lease_file("r");
    let stale = stale_holder.acquire("r", AcquireOptions::new().lease(Duration::from_millis(30))).await.expect("S");
    tokio::time::sleep(Duration::from_millis(60)).await; // its explicit lease is not renewed: stale
    // The breaker B stops after judging S and checking the path, before moving it.
    let mut before_move = testhook::pause("break.before_rename", &path);
    let breaker = {
        let locks = lease_manager(dir.path());
        tokio::spawn(async move { locks.try_acquire("r", AcquireOptions::new()).await })
    };
    before_move.reached().await;
    // Meanwhile another breaker breaks S, and the newcomer N takes the lease.
    std::fs::rename(&path, dir.path().join("broken-by-another-breaker")).expect("break S");
    let newcomer = lease_manager(dir.path());
    let n = newcomer.acquire("r", AcquireOptions::new().no_wait()).await.expect("N");
    let n_inode = inode(&path);
    // As B moves N's file aside, a third process C creates the path (its
    // record says it came after N: a higher token).
    let third = {
        let path = path.clone();
        let file = std::fs::File::open(&path).expect("open N's file");
        let record::FileRecord::Found(mut record, _) = record::read_from(&file).expect("read") else {
            panic!("N's record is not readable")
        };
        record.token += 1;
        record.holder = "third".into();
        move || std::fs::write(&path, record.encode(RecordState::Held)).expect("C creates the lease file")
    };
    testhook::arm("break.moved", &path, third);
    before_move.resume();
    let b = breaker.await.expect("join").expect("B's try_acquire");
    assert!(b.is_none(), "B went in while N held the lease");
    assert_eq!(inode(&path), n_inode, "N, the live holder, lost its lease file to the third process");
    n.extend(Duration::from_secs(30)).await.expect("N still holds its lease");
    assert!(!n.is_lost());
    n.release().await.expect("N releases");
    drop(stale);
}

/// Item 12. A creator paused past its lease between creating its lease
/// file and reading the `.seq` file, and broken meanwhile by a successor,
/// must not come back with a grant (let alone one whose token is above the
/// successor's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_creator_paused_past_its_lease_gets_no_grant_above_its_successor() {
    let dir = tempfile::tempdir().expect("dir");
    let path = lease_manager(dir.path()).backend().lease_file("r");
    let mut created = testhook::pause("lease.created", &path);
    let paused = {
        let locks = lease_manager(dir.path());
        tokio::spawn(async move {
            let guard = locks.try_acquire("r", AcquireOptions::new().lease(Duration::from_millis(30))).await;
            (guard, locks)
        })
    };
    created.reached().await;
    tokio::time::sleep(Duration::from_millis(60)).await; // the paused creator's lease runs out
    let successor_locks = lease_manager(dir.path());
    let successor = successor_locks
        .try_acquire("r", AcquireOptions::new())
        .await
        .expect("successor's try_acquire")
        .expect("the successor did not break the expired lease");
    created.resume();
    let (guard, _locks) = paused.await.expect("join");
    if let Some(guard) = guard.expect("paused creator's try_acquire") {
        panic!(
            "the paused creator came back with token {} while its successor holds token {}",
            guard.fencing_token(),
            successor.fencing_token()
        );
    }
    assert!(!successor.is_lost());
    successor.release().await.expect("successor releases");
}

/// A reader frozen while passing the gate — after naming its file in the
/// registry, before or after creating it — whose gate is broken as stale
/// meanwhile, and a writer that takes the gate: the writer is granted (at
/// once if the reader's file did not exist yet, else once the reader gives
/// it up), the reader finds the gate gone, removes its file and waits
/// behind the writer; the two never hold together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reader_frozen_at_the_gate_never_holds_beside_a_writer() {
    const BOUND: Duration = Duration::from_secs(10);
    for point in ["lease.registered", "lease.holder_file_created"] {
        let dir = tempfile::tempdir().expect("dir");
        let gate = lease_manager(dir.path()).backend().lease_file("r");
        let reader_file = gate.with_extension("reader-0.lease");
        let mut frozen = testhook::pause(point, &reader_file);
        let reader = {
            let locks = lease_manager(dir.path());
            tokio::spawn(async move {
                let guard = locks.acquire("r", AcquireOptions::new().shared().timeout(BOUND)).await;
                (guard, locks)
            })
        };
        frozen.reached().await;
        // Another process breaks the reader's gate as stale (as if it froze past its lease)...
        std::fs::rename(&gate, dir.path().join("broken-gate")).expect("break the gate");
        // ...and a writer takes it.
        let writers = lease_manager(dir.path());
        let writer = {
            let writers = writers.clone();
            tokio::spawn(async move { writers.acquire("r", AcquireOptions::new().timeout(BOUND)).await })
        };
        if point == "lease.registered" {
            // The reader's file does not exist yet: the writer is granted at once.
            let writer = writer.await.expect("join").expect("the writer");
            frozen.resume();
            assert!(
                tokio::time::timeout(Duration::from_millis(300), async {
                    while !reader.is_finished() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .is_err(),
                "{point}: the reader came back with a grant beside the writer"
            );
            assert!(!reader_file.exists(), "{point}: the reader's file stayed beside the writer");
            assert!(!writer.is_lost(), "{point}");
            let writer_token = writer.fencing_token();
            writer.release().await.expect("release");
            let (guard, _locks) = reader.await.expect("join");
            let guard = guard.expect("the reader got in after the writer");
            assert!(guard.fencing_token() > writer_token, "{point}");
            guard.release().await.expect("release");
        } else {
            // The reader's file exists: the writer waits for it until the
            // reader, resumed, finds its gate gone and gives its file up.
            until(|| gate.exists(), BOUND).await;
            assert!(!writer.is_finished(), "{point}: the writer passed a reader's file");
            frozen.resume();
            let writer = writer.await.expect("join").expect("the writer got in once the reader gave up");
            assert!(!reader.is_finished(), "{point}: the reader holds beside the writer");
            writer.release().await.expect("release");
            let (guard, _locks) = reader.await.expect("join");
            guard.expect("the reader got in after the writer").release().await.expect("release");
        }
    }
}

/// Waits (bounded) until `condition` holds.
async fn until(condition: impl Fn() -> bool, bound: Duration) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < bound, "never happened");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Item 13, kernel files. `force_release` breaks H's lock file, and before
/// it reports H lost, a newcomer N of the same manager takes the lock on a
/// fresh file: only H may be reported lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_force_release_reports_only_the_grant_it_broke() {
    let dir = tempfile::tempdir().expect("dir");
    let open = || FileBackend::open(FileOptions::new(dir.path()).loss_check_interval(Duration::from_secs(60)));
    let holder_locks = open().expect("open").into_manager();
    let h = holder_locks.acquire("r", AcquireOptions::new()).await.expect("H");
    let admin = open().expect("open").into_manager();
    let path = admin.backend().lock_file("r");
    let mut broken = testhook::pause("kernel.force_release.broken", &path);
    let force = {
        let admin = admin.clone();
        tokio::spawn(async move { admin.force_release("r", "test").await })
    };
    broken.reached().await;
    let n = admin.acquire("r", AcquireOptions::new().no_wait()).await.expect("N takes the fresh lock file");
    broken.resume();
    assert!(force.await.expect("join").expect("force_release").is_some(), "H was not broken");
    assert!(!n.is_lost(), "N, granted after the break, was reported lost");
    n.release().await.expect("N releases");
    drop(h);
}

/// The first shared holder converts its exclusive lock to a shared one; a
/// cleanup that took the lock in that moment (the kernel's conversion is
/// not atomic) removes the file. The holder must notice and take the lock
/// on the file the path names now, not hold an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_first_reader_follows_a_lock_file_removed_while_sharing_it() {
    let dir = tempfile::tempdir().expect("dir");
    let open = || FileBackend::open(FileOptions::new(dir.path())).expect("open").into_manager();
    let (reader_locks, other) = (open(), open());
    let path = reader_locks.backend().lock_file("r");
    let aside = dir.path().join("removed-by-cleanup");
    let moved = (path.clone(), aside.clone());
    testhook::arm("kernel.sharing", &path, move || std::fs::rename(&moved.0, &moved.1).expect("remove the lock file"));
    let reader = reader_locks.acquire("r", AcquireOptions::new().shared().no_wait()).await.expect("reader");
    assert!(aside.exists(), "the hook did not run");
    assert!(
        other.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(),
        "the reader holds an orphaned lock file: a writer got the live one"
    );
    assert!(other.state("r").await.expect("state").is_held());
    reader.release().await.expect("release");
}

/// Item 13, legacy files. `force_release` judged a live new holder H and
/// broke its legacy file; before it moved the sidecar aside, H released and
/// a newcomer N took the lock (the same sidecar). The sidecar is N's now:
/// it must stay, and N must not be reported lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_force_release_leaves_a_sidecar_taken_after_its_judgement() {
    let dir = tempfile::tempdir().expect("dir");
    let open = || {
        LegacyFileBackend::open(LegacyOptions::givtcp(dir.path(), 1).loss_check_interval(Duration::from_secs(60)))
            .expect("open")
            .into_manager()
    };
    let holder_locks = open();
    let h = holder_locks.acquire("regcache", AcquireOptions::new()).await.expect("H");
    let admin = open();
    let path = admin.backend().legacy_file("regcache");
    let sidecar = dir.path().join(".regcache_lockfile_1.flock");
    let sidecar_inode = inode(&sidecar);
    let mut broken = testhook::pause("legacy.force_release.broken", &path);
    let force = {
        let admin = admin.clone();
        tokio::spawn(async move { admin.force_release("regcache", "test").await })
    };
    broken.reached().await;
    assert!(h.release().await.expect_err("H's file was broken").is_lost());
    let n = admin.acquire("regcache", AcquireOptions::new().no_wait()).await.expect("N");
    broken.resume();
    assert!(force.await.expect("join").expect("force_release").is_some(), "H was not broken");
    assert!(!n.is_lost(), "N, granted after the break, was reported lost");
    assert_eq!(inode(&sidecar), sidecar_inode, "N's sidecar was moved aside");
    let other = open();
    assert!(
        other.try_acquire("regcache", AcquireOptions::new()).await.expect("try").is_none(),
        "another new process went in beside N"
    );
    n.release().await.expect("N releases");
}

/// The primitive under item 8, driven directly: a file moved by mistake
/// (no longer breakable once moved) while a third process creates the path.
/// Without a say from the caller it is not put back over the newcomer, and
/// the break reports whose file was displaced; with one, it goes back.
#[test]
fn a_file_moved_by_mistake_is_displaced_or_restored_over_a_newcomer() {
    use crate::fsutil::{self, BreakOutcome, FileId};
    for restore in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("r.lock");
        std::fs::write(&path, "live holder").expect("holder's file");
        let _held = std::fs::File::open(&path).expect("the holder keeps it open");
        let holder = FileId::at(&path).expect("stat").expect("exists");
        let newcomer_creates = |_: &Path| {
            std::fs::write(&path, "newcomer").expect("the third process creates the path");
            false // renewed meanwhile: not breakable after all
        };
        let outcome =
            fsutil::break_by_rename_or_restore(&path, holder, newcomer_creates, |_, _| restore).expect("break");
        let now = FileId::at(&path).expect("stat").expect("the path names a file");
        if restore {
            assert_eq!(outcome, BreakOutcome::NotOurs);
            assert_eq!(now, holder, "the holder's file did not go back");
        } else {
            assert_eq!(outcome, BreakOutcome::Displaced(holder));
            assert_eq!(std::fs::read_to_string(&path).expect("read"), "newcomer");
        }
        let litter: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").filter_map(Result::ok).collect();
        assert_eq!(litter.len(), 1, "tombstones left: {litter:?}");
    }
}
