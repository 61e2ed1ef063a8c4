//! The file-backed `StatusManager`: the testkit's flag checks, and what only
//! files have — byte-exact legacy content, exact file names, files made and
//! removed by old processes, one-shot consumption across threads and
//! processes, hostile names, symlinks and permissions.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use lockman_core::{FlagOptions, LockBackend, LockError, LockManager, StatusManager};
use lockman_file::{FileBackend, FileOptions, FileStatusManager, FlagDirOptions};
use lockman_testkit::Harness;

/// Flags (and, for the harness, kernel locks) over a private temp directory.
struct Flags {
    dir: tempfile::TempDir,
    locks: Arc<dyn LockManager>,
    status: Arc<FileStatusManager>,
}

impl Flags {
    fn new() -> Self {
        Self::with(|options| options)
    }

    fn with(configure: impl FnOnce(FlagDirOptions) -> FlagDirOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let locks =
            Arc::new(FileBackend::open(FileOptions::new(dir.path().join("locks"))).expect("open locks").into_manager());
        let status =
            Arc::new(FileStatusManager::open(configure(FlagDirOptions::new(dir.path().join("flags")))).expect("open"));
        Flags { dir, locks, status }
    }

    fn flags_dir(&self) -> PathBuf {
        self.dir.path().join("flags")
    }

    /// Another handle on the same directory, as another process would open it.
    fn reopen(&self) -> FileStatusManager {
        FileStatusManager::open(FlagDirOptions::new(self.flags_dir())).expect("reopen")
    }
}

impl Harness for Flags {
    fn locks(&self) -> Arc<dyn LockManager> {
        self.locks.clone()
    }

    fn status(&self) -> Arc<dyn StatusManager> {
        self.status.clone()
    }
}

mod conformance {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flag_set_get_clear() {
        lockman_testkit::flags::flag_set_get_clear(&Flags::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flag_value_round_trips() {
        lockman_testkit::flags::flag_value_round_trips(&Flags::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flag_ttl_expires() {
        lockman_testkit::flags::flag_ttl_expires(&Flags::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flag_list_is_sorted_and_complete() {
        lockman_testkit::flags::flag_list_is_sorted_and_complete(&Flags::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flag_take_is_exactly_once() {
        lockman_testkit::flags::flag_take_is_exactly_once(&Flags::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flag_names_are_validated() {
        lockman_testkit::flags::flag_names_are_validated(&Flags::new()).await;
    }
}

/// The names of the entries directly in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every path under `root` (relative), not descending into `skip`.
fn tree(root: &Path, skip: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            found.insert(path.strip_prefix(root).expect("under root").to_owned());
            if path != skip && std::fs::symlink_metadata(&path).expect("stat").is_dir() {
                pending.push(path);
            }
        }
    }
    found
}

fn sidecar_count(flags_dir: &Path) -> usize {
    match std::fs::read_dir(flags_dir.join(".lockman-flags")) {
        Ok(dir) => dir.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("cannot read the metadata directory: {e}"),
    }
}

fn backend_message(err: &LockError) -> &str {
    match err {
        LockError::Backend { message, backend, .. } => {
            assert_eq!(backend, "file");
            message
        }
        other => panic!("expected a Backend error, got {other}"),
    }
}

#[tokio::test]
async fn legacy_value_is_byte_exact_on_disk() {
    let h = Flags::new();
    let path = h.flags_dir().join(".FCRunning1");
    assert_eq!(h.status.flag_file(".FCRunning1"), path);

    h.status.set(".FCRunning1", FlagOptions::new().value("job-7\n15:00").ttl(Duration::from_secs(3600))).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"job-7\n15:00", "not what a v3 reader expects");
    // Old readers globbing the directory see the flag file and nothing of ours
    // but the hidden metadata directory.
    assert_eq!(entries(&h.flags_dir()), [".FCRunning1", ".lockman-flags"]);

    h.status.set(".FCRunning1", FlagOptions::new().value("")).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    assert_eq!(h.status.get(".FCRunning1").await.unwrap().unwrap().value.as_deref(), Some(""));

    h.status.set(".FCRunning1", FlagOptions::new()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"", "a flag without a value is an empty file");
    let info = h.status.get(".FCRunning1").await.unwrap().unwrap();
    assert_eq!(info.value, None);
    assert_eq!(info.expires_at, None, "setting again kept the old TTL");
    assert_eq!(sidecar_count(&h.flags_dir()), 1, "replaced sets left metadata behind");
}

#[tokio::test]
async fn exact_file_names_map_flags_to_legacy_files() {
    let h = Flags::with(|o| o.file_name("force_charge", ".FCRunning1").file_name("force_export", ".FERunning1"));
    let fc = h.flags_dir().join(".FCRunning1");
    let fe = h.flags_dir().join(".FERunning1");
    assert_eq!(h.status.flag_file("force_charge"), fc);

    h.status.set("force_charge", FlagOptions::new().value("job-7\n15:00")).await.unwrap();
    assert_eq!(std::fs::read(&fc).unwrap(), b"job-7\n15:00");
    assert!(!h.flags_dir().join("force_charge").exists(), "the flag's own name was used as a file");
    assert_eq!(h.status.get("force_charge").await.unwrap().unwrap().value.as_deref(), Some("job-7\n15:00"));

    let err = h.status.set(".FCRunning1", FlagOptions::new()).await.unwrap_err();
    assert!(matches!(err, LockError::InvalidName { .. }), "a mapped file name was usable as a second flag: {err}");

    // An old daemon starts a force export: listed under the configured name.
    std::fs::write(&fe, "job-9\n16:00").unwrap();
    let listed = h.status.list().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["force_charge", "force_export"]);
    assert_eq!(listed[1].value.as_deref(), Some("job-9\n16:00"));

    // An old daemon ends the force charge.
    std::fs::remove_file(&fc).unwrap();
    assert!(!h.status.is_set("force_charge").await.unwrap());
    let names: Vec<String> = h.status.list().await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["force_export"]);
    assert!(h.status.clear("force_export").await.unwrap());
    assert!(!fe.exists());
}

#[test]
fn bad_file_name_mappings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["../x", "a/b", "/etc/passwd", "..", ".", "", ".lockman-flags", "x y", "a\\b", "é"] {
        let err = FileStatusManager::open(FlagDirOptions::new(dir.path().join("flags")).file_name("f", bad))
            .expect_err("a bad exact file name was accepted");
        assert!(matches!(err, LockError::Config(_)), "{bad:?}: {err}");
        assert!(err.to_string().contains("plain file name"), "{bad:?}: unhelpful message {err}");
    }
    let twice =
        FlagDirOptions::new(dir.path().join("flags")).file_name("a", ".FCRunning1").file_name("b", ".FCRunning1");
    assert!(matches!(FileStatusManager::open(twice), Err(LockError::Config(_))), "two flags shared one file");
    let empty = FlagDirOptions::new(dir.path().join("flags")).file_name("", ".FCRunning1");
    assert!(matches!(FileStatusManager::open(empty), Err(LockError::Config(_))), "an empty flag name was mapped");
    assert_eq!(entries(dir.path()), Vec::<String>::new(), "a refused configuration created the directory");
}

#[tokio::test]
async fn files_made_and_removed_by_old_processes_are_seen() {
    let h = Flags::new();
    let dir = h.flags_dir();

    std::fs::write(dir.join(".FERunning1"), "job-9").unwrap();
    let info = h.status.get(".FERunning1").await.unwrap().expect("an old process's flag reads as clear");
    assert_eq!(info.value.as_deref(), Some("job-9"));
    assert_eq!(info.expires_at, None);
    assert_eq!(info.set_at, std::fs::metadata(dir.join(".FERunning1")).unwrap().modified().unwrap());

    std::fs::write(dir.join(".FERunning2"), "").unwrap();
    assert_eq!(h.status.get(".FERunning2").await.unwrap().unwrap().value, None, "an empty legacy file has no value");

    std::fs::write(dir.join(".FERunning3"), b"job\xff\n12:00").unwrap();
    let info = h.status.get(".FERunning3").await.unwrap().expect("non-UTF-8 content must not hide a flag");
    assert_eq!(info.value.as_deref(), Some("job\u{fffd}\n12:00"));

    std::fs::remove_file(dir.join(".FERunning1")).unwrap();
    assert!(!h.status.is_set(".FERunning1").await.unwrap());
    assert!(!h.status.clear(".FERunning1").await.unwrap());

    // Files of old processes under names nobody configured are not listed.
    assert_eq!(h.status.list().await.unwrap(), []);
}

#[tokio::test]
async fn stale_sidecars_are_ignored() {
    let h = Flags::new();
    let path = h.flags_dir().join(".FCRunning1");

    // Set by lockman with a TTL and the value "", then replaced by an old
    // process with its own content: the TTL and the "" must not stick.
    let hour = FlagOptions::new().value("").ttl(Duration::from_secs(3600));
    h.status.set(".FCRunning1", hour).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "job-1\n10:00").unwrap();
    let info = h.status.get(".FCRunning1").await.unwrap().unwrap();
    assert_eq!(info.value.as_deref(), Some("job-1\n10:00"));
    assert_eq!(info.expires_at, None, "the metadata of a deleted file was applied to its replacement");
    assert_eq!(h.status.list().await.unwrap(), [], "a file recreated by an old process is listed as lockman's");

    // The other way round: a value, then an empty file from an old process.
    h.status.set(".FCRunning2", FlagOptions::new().value("x").ttl(Duration::from_secs(3600))).await.unwrap();
    let path = h.flags_dir().join(".FCRunning2");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "").unwrap();
    let info = h.status.get(".FCRunning2").await.unwrap().unwrap();
    assert_eq!(info.value, None);
    assert_eq!(info.expires_at, None);

    // Deleted by an old process: clear, whatever the metadata says.
    std::fs::remove_file(&path).unwrap();
    assert!(h.status.get(".FCRunning2").await.unwrap().is_none());
}

#[tokio::test]
async fn stale_sidecars_are_swept_after_a_grace_period() {
    let h = Flags::new();
    let path = h.flags_dir().join(".FCRunning1");
    h.status.set(".FCRunning1", FlagOptions::new().value("x").ttl(Duration::from_secs(3600))).await.unwrap();
    std::fs::remove_file(&path).unwrap(); // an old process clears it
    let meta_dir = h.flags_dir().join(".lockman-flags");
    let sidecar = meta_dir.join(&entries(&meta_dir)[0]);

    // Young: it may belong to a `set` about to rename its file into place.
    h.status.list().await.unwrap();
    assert!(sidecar.exists(), "a fresh sidecar was swept");

    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options().write(true).open(&sidecar).unwrap().set_modified(old).unwrap();
    h.status.list().await.unwrap();
    assert!(!sidecar.exists(), "a stale sidecar outlived the grace period");
}

#[tokio::test]
async fn corrupt_metadata_falls_back_to_the_flag_file() {
    let h = Flags::new();
    h.status.set(".FCRunning4", FlagOptions::new().value("v").ttl(Duration::from_secs(3600))).await.unwrap();
    let meta_dir = h.flags_dir().join(".lockman-flags");
    let sidecars = entries(&meta_dir);
    assert_eq!(sidecars.len(), 1);
    std::fs::write(meta_dir.join(&sidecars[0]), "{not json").unwrap();
    let info = h.status.get(".FCRunning4").await.unwrap().expect("corrupt metadata hid a set flag");
    assert_eq!(info.value.as_deref(), Some("v"));
    assert_eq!(info.expires_at, None);
    assert!(h.status.clear(".FCRunning4").await.unwrap());
}

#[tokio::test]
async fn expired_flags_are_deleted_lazily() {
    let h = Flags::new();
    let ttl = FlagOptions::new().value("x").ttl(Duration::from_millis(100));
    h.status.set("short", ttl.clone()).await.unwrap();
    h.status.set("short2", ttl).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = h.status.flag_file("short");
    assert!(path.exists(), "nobody has read the flag yet, so its file is still there");
    assert!(h.status.get("short").await.unwrap().is_none(), "an expired flag reads as set");
    assert!(!path.exists(), "reading an expired flag did not delete it");
    assert!(h.status.take("short2").await.unwrap().is_none(), "an expired flag was taken");
    assert!(!h.status.flag_file("short2").exists());
    assert_eq!(entries(&h.flags_dir()), [".lockman-flags"]);
    assert_eq!(sidecar_count(&h.flags_dir()), 0, "metadata of expired flags was left behind");
}

#[tokio::test]
async fn clear_and_take_remove_the_file_and_its_metadata() {
    let h = Flags::new();
    h.status.set(".FCRunning1", FlagOptions::new().value("job").ttl(Duration::from_secs(60))).await.unwrap();
    let taken = h.status.take(".FCRunning1").await.unwrap().expect("take found nothing");
    assert_eq!(taken.value.as_deref(), Some("job"));
    assert!(taken.expires_at.is_some());
    assert!(h.status.take(".FCRunning1").await.unwrap().is_none());

    h.status.set(".FERunning1", FlagOptions::new()).await.unwrap();
    assert!(h.status.clear(".FERunning1").await.unwrap());
    assert_eq!(entries(&h.flags_dir()), [".lockman-flags"], "a flag file or temp file was left behind");
    assert_eq!(sidecar_count(&h.flags_dir()), 0);
}

#[tokio::test]
async fn another_manager_on_the_directory_sees_the_same_flags() {
    let h = Flags::new();
    let other = h.reopen();
    h.status.set("a/b", FlagOptions::new().value("").ttl(Duration::from_secs(3600))).await.unwrap();
    let mine = h.status.get("a/b").await.unwrap().unwrap();
    let theirs = other.get("a/b").await.unwrap().expect("another process does not see the flag");
    assert_eq!(theirs, mine);
    assert_eq!(theirs.value.as_deref(), Some(""));
    let listed: Vec<String> = other.list().await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(listed, ["a/b"], "the real name of an encoded flag was not recovered");
    assert!(other.take("a/b").await.unwrap().is_some());
    assert!(h.status.get("a/b").await.unwrap().is_none());
}

#[test]
fn legacy_one_shot_flag_is_taken_once_by_racing_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let h = Flags::new();
    let path = h.flags_dir().join(".fullrefresh");
    for round in 0..20 {
        std::fs::write(&path, "").unwrap(); // an old process asks for a full refresh
        let start = Arc::new(Barrier::new(8));
        let takers: Vec<_> = (0..8)
            .map(|_| {
                let (status, start, handle) = (Arc::clone(&h.status), Arc::clone(&start), runtime.handle().clone());
                std::thread::spawn(move || {
                    start.wait();
                    handle.block_on(status.take(".fullrefresh"))
                })
            })
            .collect();
        let mut winners = 0;
        for taker in takers {
            if let Some(info) = taker.join().expect("taker panicked").expect("take") {
                assert_eq!(info.name, ".fullrefresh");
                assert_eq!(info.value, None);
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}: the one-shot flag was consumed {winners} times");
        assert!(!path.exists());
    }
    assert_eq!(entries(&h.flags_dir()), Vec::<String>::new(), "consumed flags left internal files behind");
}

const CHILD_DIR: &str = "LOCKMAN_TEST_TAKE_CHILD_DIR";
const CHILD_GATE: &str = "LOCKMAN_TEST_TAKE_CHILD_GATE";

/// Runs only as a child of `legacy_one_shot_flag_is_taken_once_by_processes`:
/// waits at the gate (a file the parent holds locked), then races to take
/// `.fullrefresh` and prints whether it won.
#[test]
fn take_child_process() {
    let (Some(dir), Some(gate)) = (std::env::var_os(CHILD_DIR), std::env::var_os(CHILD_GATE)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let status = FileStatusManager::open(FlagDirOptions::new(dir)).unwrap();
    let gate = std::fs::File::open(gate).unwrap();
    println!("FLAGCHILD ready");
    gate.lock_shared().unwrap();
    let taken = runtime.block_on(status.take(".fullrefresh")).unwrap();
    println!("FLAGCHILD {}", if taken.is_some() { "won" } else { "lost" });
}

#[test]
fn legacy_one_shot_flag_is_taken_once_by_racing_processes() {
    if std::env::var_os(CHILD_DIR).is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let h = Flags::new();
    let path = h.flags_dir().join(".fullrefresh");
    let gate_path = h.dir.path().join("gate");
    for round in 0..3 {
        std::fs::write(&path, "").unwrap();
        let gate = std::fs::File::create(&gate_path).unwrap();
        gate.lock().unwrap();
        let mut children: Vec<_> = (0..4)
            .map(|_| {
                let mut child = Command::new(&exe)
                    .args(["--exact", "take_child_process", "--nocapture", "--test-threads=1"])
                    .env(CHILD_DIR, h.flags_dir())
                    .env(CHILD_GATE, &gate_path)
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdout = BufReader::new(child.stdout.take().unwrap());
                let mut line = String::new();
                while !line.contains("FLAGCHILD ready") {
                    line.clear();
                    assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "a child exited before reaching the gate");
                }
                (child, stdout)
            })
            .collect();
        gate.unlock().unwrap(); // all four are at the gate: go
        let mut winners = 0;
        for (child, stdout) in &mut children {
            let rest: Vec<String> = stdout.lines().map(Result::unwrap).collect();
            assert!(child.wait().unwrap().success(), "a child failed: {rest:?}");
            let verdicts: Vec<&String> = rest.iter().filter(|l| l.starts_with("FLAGCHILD ")).collect();
            assert_eq!(verdicts.len(), 1, "a child did not report: {rest:?}");
            winners += usize::from(verdicts[0] == "FLAGCHILD won");
        }
        assert_eq!(winners, 1, "round {round}: {winners} processes consumed the one-shot flag");
        assert!(!path.exists());
    }
}

#[tokio::test]
async fn hostile_names_stay_inside_the_directory_and_are_distinct() {
    let root = tempfile::tempdir().unwrap();
    let flags_dir = root.path().join("a").join("b").join("flags");
    let status = FileStatusManager::open(FlagDirOptions::new(&flags_dir)).unwrap();
    let before = tree(root.path(), &flags_dir);
    let long = "x".repeat(1024);
    let names = [
        "../../etc/passwd",
        "../flags2",
        "a/b",
        "a_b",
        "..",
        ".",
        "/abs/path",
        "a\\b",
        "zürich-🔒",
        "Zürich-🔒",
        long.as_str(),
        ".lockman-flags",
        ".lockman-new-x",
        "@x",
        "with space",
        "~",
        ".FCRunning1",
    ];
    for (i, name) in names.iter().enumerate() {
        status.set(name, FlagOptions::new().value(i.to_string())).await.unwrap_or_else(|e| panic!("{name:?}: {e}"));
        let file = status.flag_file(name);
        assert_eq!(file.parent(), Some(flags_dir.as_path()), "{name:?} lives at {}", file.display());
    }
    for (i, name) in names.iter().enumerate() {
        let info = status.get(name).await.unwrap().unwrap_or_else(|| panic!("{name:?} reads as clear"));
        assert_eq!(info.value, Some(i.to_string()), "{name:?} shares a file with another name");
    }
    let files: BTreeSet<PathBuf> = names.iter().map(|n| status.flag_file(n)).collect();
    assert_eq!(files.len(), names.len(), "two names share a flag file");
    let mut expected: Vec<&str> = names.to_vec();
    expected.sort();
    let listed: Vec<String> = status.list().await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(listed, expected);

    let too_long = "x".repeat(1025);
    for bad in [too_long.as_str(), "", "a\0b"] {
        let err = status.set(bad, FlagOptions::new()).await.unwrap_err();
        assert!(matches!(err, LockError::InvalidName { .. }), "{err}");
    }
    assert_eq!(tree(root.path(), &flags_dir), before, "something was created outside the flag directory");
    // Inside: only flag files and the metadata directory, nothing nested.
    for entry in entries(&flags_dir) {
        let path = flags_dir.join(&entry);
        if entry == ".lockman-flags" {
            assert!(entries(&path).iter().all(|e| std::fs::symlink_metadata(path.join(e)).unwrap().is_file()));
        } else {
            assert!(files.contains(&path), "unexpected entry {entry}");
            assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        }
    }
    for name in names {
        assert!(status.clear(name).await.unwrap(), "{name:?}");
    }
    assert_eq!(entries(&flags_dir), [".lockman-flags"]);
}

#[cfg(unix)]
#[tokio::test]
async fn symlinked_flag_files_are_refused_not_followed() {
    let h = Flags::with(|o| o.file_name("force_charge", ".FCRunning1"));
    let secret = h.dir.path().join("secret.txt");
    std::fs::write(&secret, "secret").unwrap();
    let link = h.flags_dir().join(".FCRunning1");
    std::os::unix::fs::symlink(&secret, &link).unwrap();

    let err = h.status.get("force_charge").await.expect_err("read through a symlink");
    let message = backend_message(&err);
    assert!(message.contains(&link.display().to_string()), "the error does not name the path: {message}");
    assert!(message.contains("symlink"), "{message}");
    assert!(h.status.is_set("force_charge").await.is_err());
    assert!(h.status.take("force_charge").await.is_err());
    assert!(h.status.clear("force_charge").await.is_err());
    assert!(h.status.list().await.is_err(), "a symlinked configured flag file was listed or skipped silently");
    let err = h.status.set("force_charge", FlagOptions::new().value("overwritten")).await.unwrap_err();
    backend_message(&err);

    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink was consumed");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret", "the symlink's target was touched");

    // A symlink in place of the metadata directory is refused as well.
    let elsewhere = tempfile::tempdir().unwrap();
    let flags = h.dir.path().join("flags2");
    std::fs::create_dir(&flags).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), flags.join(".lockman-flags")).unwrap();
    let err = FileStatusManager::open(FlagDirOptions::new(&flags)).unwrap_err();
    assert!(matches!(err, LockError::Config(_)), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn unwritable_directory_gives_a_clear_backend_error() {
    use std::os::unix::fs::PermissionsExt;

    if rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: running as root, which ignores directory permissions");
        return;
    }
    let h = Flags::new();
    let dir = h.flags_dir();
    std::fs::write(dir.join(".fullrefresh"), "").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    let set = h.status.set(".FCRunning1", FlagOptions::new().value("job")).await;
    let take = h.status.take(".fullrefresh").await;
    let get = h.status.get(".fullrefresh").await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let err = set.expect_err("set in an unwritable directory");
    let message = backend_message(&err);
    assert!(message.contains("permission"), "the error does not say what to do: {message}");
    assert!(message.contains(&dir.display().to_string()), "the error does not name the directory: {message}");
    assert!(err.to_string().contains(".FCRunning1"), "the error does not name the flag: {err}");
    backend_message(&take.expect_err("take in an unwritable directory"));
    assert!(get.expect("reading needs no write permission").is_some());
    assert!(!dir.join(".FCRunning1").exists());
}
