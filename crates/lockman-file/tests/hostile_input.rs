//! Hostile neighbours and hostile input in a shared lock directory (issue 18):
//! named pipes and oversized files planted where lockman reads, fencing
//! tokens at their maximum, records with times from the far future, and flag
//! metadata another user controls. Every operation that could hang runs on
//! its own thread, bounded by a timeout.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockman_core::{AcquireOptions, FlagOptions, LockBackend, LockError, LockManager, LockState, StatusManager};
use lockman_file::{
    FileBackend, FileOptions, FileStatusManager, FlagDirOptions, LeaseFileBackend, LegacyFileBackend, LegacyOptions,
};

/// How long any single operation may take here; a hang is a failure.
const BOUND: Duration = Duration::from_secs(10);

/// Runs `op` (async) on its own thread and runtime, failing the test if it
/// takes longer than [`BOUND`]. A thread stuck opening one of `fifos` is
/// released (we open the pipe's other end) so it does not outlive the test.
fn bounded<T: Send + 'static>(
    what: &str,
    fifos: &[PathBuf],
    op: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let _ = tx.send(runtime.block_on(op));
    });
    match rx.recv_timeout(BOUND) {
        Ok(value) => {
            thread.join().expect("join");
            value
        }
        Err(_) => {
            for fifo in fifos {
                // O_RDWR never blocks on a FIFO (Linux) and gives a stuck reader its writer.
                let _ = std::fs::OpenOptions::new().read(true).write(true).open(fifo);
            }
            panic!("{what} did not return within {BOUND:?}: it hung on a planted named pipe");
        }
    }
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o666), 0)
        .expect("mkfifo");
}

/// A lockman record as stored in a lock or lease file, with any body.
fn record_bytes(state: u8, body: &serde_json::Value) -> Vec<u8> {
    let body = serde_json::to_vec(body).expect("json");
    let mut out =
        format!("LMF1 {} {:08x} {:010}\n", char::from(state), crc32fast::hash(&body), body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

fn body(token: u64, acquired_at_us: u64, heartbeat_us: Option<u64>, lease_ms: Option<u64>) -> serde_json::Value {
    serde_json::json!({
        "resource": "r", "holder": "planted", "user": "mallory", "host": "elsewhere", "pid": 1,
        "purpose": null, "acquired_at_us": acquired_at_us, "lease_ms": lease_ms,
        "heartbeat_us": heartbeat_us, "token": token,
    })
}

fn now_us() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_micros()).expect("µs")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// ---------------------------------------------------------------- item 3

/// A named pipe planted as a `*.lock` file: list, status and cleanup neither
/// hang nor fail because of it; inspecting or acquiring its resource is a
/// clear error naming the path.
#[test]
fn fifo_lock_files_never_hang_list_status_cleanup_or_acquire() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = FileBackend::open(FileOptions::new(dir.path())).expect("open");
    let victim = backend.lock_file("victim");
    let stray = dir.path().join("stray.lock");
    mkfifo(&victim);
    mkfifo(&stray);
    let fifos = vec![victim.clone(), stray.clone()];
    let locks: Arc<dyn LockManager> = Arc::new(backend.into_manager());

    let l = locks.clone();
    let listed = bounded("list", &fifos, async move { l.list().await });
    assert!(listed.expect("list").is_empty());
    let l = locks.clone();
    let state = bounded("state", &fifos, async move { l.state("victim").await });
    let err = state.expect_err("a named pipe read as a lock file");
    assert!(err.to_string().contains("named pipe") && err.to_string().contains(&*victim.to_string_lossy()), "{err}");
    let l = locks.clone();
    let cleaned = bounded("cleanup", &fifos, async move { l.cleanup_stale().await });
    assert!(cleaned.expect("cleanup").is_empty());
    let l = locks.clone();
    let acquired =
        bounded("acquire", &fifos, async move { l.acquire("victim", AcquireOptions::new().no_wait()).await.map(drop) });
    let err = acquired.expect_err("locked a named pipe");
    assert!(err.to_string().contains("named pipe"), "{err}");
    assert!(victim.exists() && stray.exists(), "cleanup removed something that is not a lock file");
}

/// A named pipe planted as a `*.lease` file or as a lease's `.seq` file:
/// nothing hangs; the resource's acquire and state are clear errors.
#[test]
fn fifo_lease_and_sequence_files_never_hang() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = LeaseFileBackend::open(FileOptions::new(dir.path())).expect("open");
    let lease = backend.lease_file("victim");
    let sequence = backend.lease_file("counted").with_extension("seq");
    mkfifo(&lease);
    mkfifo(&sequence);
    let fifos = vec![lease.clone(), sequence.clone()];
    let locks: Arc<dyn LockManager> = Arc::new(backend.into_manager());

    let l = locks.clone();
    let err =
        bounded("acquire", &fifos, async move { l.acquire("victim", AcquireOptions::new().no_wait()).await.map(drop) })
            .expect_err("acquired over a named pipe");
    assert!(err.to_string().contains("named pipe"), "{err}");
    let l = locks.clone();
    let err = bounded("state", &fifos, async move { l.state("victim").await }).expect_err("state of a named pipe");
    assert!(err.to_string().contains("named pipe"), "{err}");
    let l = locks.clone();
    assert!(bounded("list", &fifos, async move { l.list().await }).expect("list").is_empty());
    let l = locks.clone();
    assert!(bounded("cleanup", &fifos, async move { l.cleanup_stale().await }).expect("cleanup").is_empty());
    let l = locks.clone();
    let err = bounded("acquire with a FIFO sequence file", &fifos, async move {
        l.acquire("counted", AcquireOptions::new().no_wait()).await.map(drop)
    })
    .expect_err("read a named pipe as the token sequence");
    assert!(err.to_string().contains("named pipe") && err.to_string().contains(".seq"), "{err}");
    // No lease file of ours is left behind by the failed grant.
    let l = locks.clone();
    assert!(matches!(bounded("state", &fifos, async move { l.state("counted").await }), Ok(LockState::Available)));
}

/// A `.seq` file that is a symlink to `/dev/zero`, or a huge regular file,
/// is refused with a clear error instead of being read into memory.
#[test]
fn sequence_file_is_read_bounded_and_never_through_a_symlink() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = LeaseFileBackend::open(FileOptions::new(dir.path())).expect("open");
    let zero = backend.lease_file("zero").with_extension("seq");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    let huge = backend.lease_file("huge").with_extension("seq");
    std::fs::File::create(&huge).and_then(|f| f.set_len(1 << 30)).expect("sparse 1 GiB sequence file");
    let fifos = vec![];
    let locks: Arc<dyn LockManager> = Arc::new(backend.into_manager());

    let l = locks.clone();
    let err =
        bounded("acquire", &fifos, async move { l.acquire("zero", AcquireOptions::new().no_wait()).await.map(drop) })
            .expect_err("read the token sequence through a symlink");
    assert!(err.to_string().contains("symlink") && err.to_string().contains(".seq"), "{err}");
    let l = locks.clone();
    let err =
        bounded("acquire", &fifos, async move { l.acquire("huge", AcquireOptions::new().no_wait()).await.map(drop) })
            .expect_err("accepted a 1 GiB token sequence file");
    assert!(err.to_string().contains("longer than 64 bytes"), "{err}");
}

/// A flag file far larger than any value is reported as corrupt (by `get`
/// and `take`, which leaves it in place) instead of being read into memory;
/// `set` refuses such a value; a named pipe as a flag file never blocks.
#[test]
fn oversized_and_fifo_flag_files_are_errors_not_allocations() {
    let dir = tempfile::tempdir().expect("dir");
    let status = Arc::new(FileStatusManager::open(FlagDirOptions::new(dir.path())).expect("open"));
    let big = status.flag_file(".fullrefresh");
    std::fs::File::create(&big).and_then(|f| f.set_len(2 << 30)).expect("sparse 2 GiB flag file");
    let pipe = status.flag_file(".FCRunning1");
    mkfifo(&pipe);
    let fifos = vec![pipe.clone()];

    let s = status.clone();
    let err = bounded("get", &fifos, async move { s.get(".fullrefresh").await }).expect_err("read a 2 GiB flag");
    assert!(err.to_string().contains("longer than") && err.to_string().contains(".fullrefresh"), "{err}");
    let s = status.clone();
    let err = bounded("take", &fifos, async move { s.take(".fullrefresh").await }).expect_err("took a 2 GiB flag");
    assert!(err.to_string().contains("longer than"), "{err}");
    assert!(big.exists(), "an unreadable flag file was consumed");
    let s = status.clone();
    let err = bounded("get", &fifos, async move { s.get(".FCRunning1").await }).expect_err("read a named pipe");
    assert!(err.to_string().contains(".FCRunning1"), "{err}");
    let s = status.clone();
    let huge_value = "x".repeat(2 << 20);
    let err = bounded("set", &fifos, async move { s.set("big", FlagOptions::new().value(huge_value)).await })
        .expect_err("set a 2 MiB value");
    assert!(err.to_string().contains("longer than flag files may be"), "{err}");
}

// ---------------------------------------------------------------- item 9

/// A kernel lock file whose record holds `u64::MAX - 1`: the next grant gets
/// `u64::MAX`, the one after is refused (never a wrapped or repeated token).
#[tokio::test]
async fn kernel_fencing_token_exhaustion_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = FileBackend::open(FileOptions::new(dir.path())).expect("open");
    let path = backend.lock_file("r");
    std::fs::write(&path, record_bytes(b'R', &body(u64::MAX - 1, now_us(), None, None))).expect("plant");
    let locks = backend.into_manager();
    let guard = locks.acquire("r", AcquireOptions::new().no_wait()).await.expect("acquire");
    assert_eq!(guard.fencing_token().get(), u64::MAX);
    guard.release().await.expect("release");
    let err = locks.acquire("r", AcquireOptions::new().no_wait()).await.expect_err("issued a token after u64::MAX");
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("exhausted") && err.to_string().contains(&*path.to_string_lossy()), "{err}");
    // The failed grant let go of the kernel lock.
    assert!(matches!(locks.state("r").await.expect("state"), LockState::Available));
}

/// A lease `.seq` file holding `u64::MAX - 1`: one more grant, then refused;
/// the refused attempt leaves no lease file behind.
#[tokio::test]
async fn lease_fencing_token_exhaustion_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = LeaseFileBackend::open(FileOptions::new(dir.path())).expect("open");
    let sequence = backend.lease_file("r").with_extension("seq");
    std::fs::write(&sequence, (u64::MAX - 1).to_string()).expect("plant");
    let locks = backend.into_manager();
    let guard = locks.acquire("r", AcquireOptions::new().no_wait()).await.expect("acquire");
    assert_eq!(guard.fencing_token().get(), u64::MAX);
    guard.release().await.expect("release");
    let err = locks.acquire("r", AcquireOptions::new().no_wait()).await.expect_err("issued a token after u64::MAX");
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("exhausted") && err.to_string().contains(".seq"), "{err}");
    assert!(matches!(locks.state("r").await.expect("state"), LockState::Available));
}

/// The lease `.seq` file in its two-slot layout: each grant overwrites the
/// smaller slot of the same file in place (the inode stays: no file written
/// aside and renamed over, which ext4 flushes to disk first), and the file
/// reads as the last token.
#[cfg(unix)]
#[tokio::test]
async fn lease_sequence_file_is_updated_in_place() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("dir");
    let backend = LeaseFileBackend::open(FileOptions::new(dir.path())).expect("open");
    let sequence = backend.lease_file("r").with_extension("seq");
    let locks = backend.into_manager();
    let mut inode = None;
    let mut last = 0;
    for round in 0..4 {
        let guard = locks.acquire("r", AcquireOptions::new().no_wait()).await.expect("acquire");
        let token = guard.fencing_token().get();
        assert!(token > last, "round {round}: token {token} after {last}");
        last = token;
        guard.release().await.expect("release");
        let bytes = std::fs::read(&sequence).expect("read .seq");
        let text = String::from_utf8(bytes).expect("text");
        let slots: Vec<u64> = text.lines().map(|line| line.parse().expect("a slot")).collect();
        assert_eq!(text.len(), 42, "two slots of 20 digits: {text:?}");
        assert_eq!(slots.iter().max(), Some(&token), "round {round}: {text:?}");
        let now = std::fs::metadata(&sequence).expect("stat").ino();
        assert_eq!(
            *inode.get_or_insert(now),
            now,
            "round {round}: the sequence file was replaced, not updated in place"
        );
    }
}

/// A two-slot `.seq` file with one slot damaged (torn by a crash or a racing
/// write) or reading low: the larger whole slot still counts, so the next
/// token is above it.
#[tokio::test]
async fn lease_sequence_damaged_slot_keeps_the_other() {
    const PLANTED: u64 = 9_000_000_000_000_000; // far above the clock in µs
    for other in ["0000000000000000x000", "00000000000000000001", "12345"] {
        let dir = tempfile::tempdir().expect("dir");
        let backend = LeaseFileBackend::open(FileOptions::new(dir.path())).expect("open");
        let sequence = backend.lease_file("r").with_extension("seq");
        std::fs::write(&sequence, format!("{other}\n{PLANTED:020}\n")).expect("plant");
        let locks = backend.into_manager();
        let guard = locks.acquire("r", AcquireOptions::new().no_wait()).await.expect("acquire");
        assert_eq!(guard.fencing_token().get(), PLANTED + 1, "slot 0 {other:?}");
        guard.release().await.expect("release");
    }
}

/// The legacy backend's sidecar record holding `u64::MAX`: refused, and the
/// legacy file is not left behind for old processes to wait on.
#[tokio::test]
async fn legacy_fencing_token_exhaustion_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = LegacyFileBackend::open(LegacyOptions::givtcp(dir.path(), 1)).expect("open");
    let legacy = backend.legacy_file("regcache");
    let sidecar = dir.path().join(".regcache_lockfile_1.flock");
    std::fs::write(&sidecar, record_bytes(b'R', &body(u64::MAX, now_us(), None, None))).expect("plant");
    let locks = backend.into_manager();
    let err = locks.acquire("regcache", AcquireOptions::new().no_wait()).await.expect_err("issued a token after MAX");
    assert!(err.to_string().contains("exhausted") && err.to_string().contains(".flock"), "{err}");
    assert!(!legacy.exists(), "a refused grant left the legacy lock file behind");
}

// ---------------------------------------------------------------- item 2

/// Lease files planted with times from the far future (acquired and
/// heartbeat at 3e17 µs, i.e. the year 11476), an absurd lease, or a
/// modification time centuries ahead: none is believed; each is judged like
/// a corrupt file (by its age, at most one default lease) and broken; list
/// and state report them without absurd times.
#[tokio::test]
async fn lease_files_with_times_from_the_far_future_go_stale() {
    let dir = tempfile::tempdir().expect("dir");
    let default_lease = Duration::from_millis(300);
    let backend = LeaseFileBackend::open(FileOptions::new(dir.path()).default_lease(default_lease)).expect("open");
    let far = 300_000_000_000_000_000;
    let plants = [
        ("future", record_bytes(b'H', &body(7, far, Some(far), Some(30_000)))),
        ("endless", record_bytes(b'H', &body(7, now_us(), Some(now_us()), Some(u64::MAX)))),
        ("touched", b"garbage".to_vec()),
    ];
    for (resource, bytes) in &plants {
        std::fs::write(backend.lease_file(resource), bytes).expect("plant");
    }
    let year_3000 = UNIX_EPOCH + Duration::from_secs(32_503_680_000);
    std::fs::File::options()
        .write(true)
        .open(backend.lease_file("touched"))
        .and_then(|f| f.set_modified(year_3000))
        .expect("touch");
    let locks = backend.into_manager();
    let sane = SystemTime::now() + Duration::from_secs(3600);
    for info in locks.list().await.expect("list") {
        assert!(info.acquired_at <= sane, "{:?}", info.acquired_at);
        assert!(info.lease_expires_at.is_none_or(|at| at <= sane), "{:?}", info.lease_expires_at);
        assert!(info.last_heartbeat.is_none_or(|at| at <= sane), "{:?}", info.last_heartbeat);
    }
    for (resource, _) in &plants {
        let state = locks.state(resource).await.expect("state");
        if let LockState::Held(info) | LockState::Stale(info) = &state {
            assert!(info.acquired_at <= sane, "{resource}: {:?}", info.acquired_at);
        }
        let started = std::time::Instant::now();
        let guard = locks
            .acquire(resource, AcquireOptions::new().timeout(Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| panic!("{resource}: a planted lease never went stale: {e}"));
        assert!(started.elapsed() < Duration::from_secs(5), "{resource}");
        guard.release().await.expect("release");
    }
}

/// A kernel lock file held by a process whose record claims times from the
/// far future: listed and inspected as an unknown holder, never with those
/// times.
#[tokio::test]
async fn kernel_record_with_far_future_times_is_not_believed() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = FileBackend::open(FileOptions::new(dir.path())).expect("open");
    let path = backend.lock_file("r");
    let far = 300_000_000_000_000_000;
    std::fs::write(&path, record_bytes(b'H', &body(7, far, Some(far), None))).expect("plant");
    // Hold its kernel lock as the planting process would.
    let held = std::fs::File::open(&path).expect("open");
    held.lock().expect("flock");
    let locks = backend.into_manager();
    let sane = SystemTime::now() + Duration::from_secs(3600);
    let listed = locks.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].acquired_at <= sane && listed[0].last_heartbeat.is_none_or(|at| at <= sane), "{listed:?}");
    match locks.state("r").await.expect("state") {
        LockState::Held(info) => assert!(info.acquired_at <= sane, "{info:?}"),
        other => panic!("{other:?}"),
    }
}

/// A legacy lock file whose modification time is centuries ahead (anyone
/// who owns a file can set it) is judged stale, not held for ever.
#[tokio::test]
async fn legacy_file_modified_in_the_far_future_goes_stale() {
    let dir = tempfile::tempdir().expect("dir");
    let options = LegacyOptions::givtcp(dir.path(), 1).stale_after(Duration::from_secs(3600));
    let backend = LegacyFileBackend::open(options).expect("open");
    let path = backend.legacy_file("regcache");
    std::fs::write(&path, "2025-11-10T12:34:56.123456+00:00").expect("an old process's file");
    let year_3000 = UNIX_EPOCH + Duration::from_secs(32_503_680_000);
    std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(year_3000)).expect("touch");
    let locks = backend.into_manager();
    let state = locks.state("regcache").await.expect("state");
    assert!(matches!(state, LockState::Stale(_)), "{state:?}");
    if let LockState::Stale(info) = &state {
        assert!(info.acquired_at <= SystemTime::now(), "{:?}", info.acquired_at);
    }
}

// ---------------------------------------------------------------- item 6

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown");
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Rewrites every sidecar in `meta` as `attacker` would: expiry in 1970,
/// the file replaced by one the attacker owns.
fn rewrite_sidecars_as(meta: &Path, attacker: u32) -> usize {
    let mut rewritten = 0;
    for entry in std::fs::read_dir(meta).expect("read meta dir") {
        let path = entry.expect("entry").path();
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let Ok(mut sidecar) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        sidecar["expires_at_us"] = serde_json::json!(1);
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, serde_json::to_vec(&sidecar).expect("json")).expect("write");
        chown(&path, attacker);
        rewritten += 1;
    }
    rewritten
}

/// A `.lockman-flags` directory pre-created by another user (uid 65534, mode
/// 0777) in a shared flag directory is refused with an error naming it and
/// the fix; the metadata that user plants never makes root's flag read as
/// "not set" (nor gets it deleted).
#[tokio::test]
async fn foreign_flag_metadata_directory_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to play another user (foreign_flag_metadata_directory_is_refused)");
        return;
    }
    let root = tempfile::tempdir().expect("dir");
    let flags = root.path().join("flags");
    std::fs::create_dir(&flags).expect("mkdir");
    chmod(&flags, 0o1777);
    let meta = flags.join(".lockman-flags");
    std::fs::create_dir(&meta).expect("mkdir meta");
    chown(&meta, 65534);
    chmod(&meta, 0o777);
    let status = FileStatusManager::open(FlagDirOptions::new(&flags)).expect("open");
    match status.set(".FCRunning1", FlagOptions::new().ttl(Duration::from_secs(3600))).await {
        Err(err) => {
            let text = err.to_string();
            assert!(text.contains(&*meta.to_string_lossy()) && text.contains("rm -r"), "{text}");
            // An old daemon's flag file: root's get must not call it "not set".
            std::fs::write(status.flag_file(".FCRunning1"), "job").expect("old daemon");
        }
        Ok(()) => assert!(rewrite_sidecars_as(&meta, 65534) > 0, "no sidecar to rewrite"),
    }
    let got = status.get(".FCRunning1").await;
    assert!(!matches!(got, Ok(None)), "planted metadata made a set flag read as not set");
    assert!(status.flag_file(".FCRunning1").exists(), "planted metadata got root's flag deleted");
}

/// In a flag directory a group shares (2770, so lockman's own metadata
/// directory is group-writable too), a sidecar replaced by another member of
/// the group is ignored: root's flag keeps its own expiry, not the planted
/// one. (A directory everyone may write without the sticky bit is refused
/// outright: `shared_dirs::world_writable_directory_without_sticky_bit_is_refused`.)
#[tokio::test]
async fn sidecar_planted_by_another_user_is_ignored() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to play another user (sidecar_planted_by_another_user_is_ignored)");
        return;
    }
    let root = tempfile::tempdir().expect("dir");
    let flags = root.path().join("flags");
    std::fs::create_dir(&flags).expect("mkdir");
    std::os::unix::fs::chown(&flags, Some(0), Some(65534)).expect("chgrp");
    chmod(&flags, 0o2770);
    let status = FileStatusManager::open(FlagDirOptions::new(&flags)).expect("open");
    status.set(".FCRunning1", FlagOptions::new().value("job").ttl(Duration::from_secs(3600))).await.expect("set");
    assert!(rewrite_sidecars_as(&flags.join(".lockman-flags"), 65534) > 0, "no sidecar to rewrite");
    let got = status.get(".FCRunning1").await.expect("get");
    assert_eq!(got.and_then(|info| info.value).as_deref(), Some("job"), "a planted sidecar decided root's flag");
    assert!(status.flag_file(".FCRunning1").exists(), "a planted sidecar got root's flag deleted");
}
