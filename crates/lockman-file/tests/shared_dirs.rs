//! Lock directories other users can write (issue 18, items 1 and 7): a
//! symlink another user planted is refused before anything is touched,
//! cleanup and listing never touch files lockman did not name, and the users
//! of one group share a `2770` directory with `file_mode(0o660)`.
//!
//! Tests that play another user need root (to `chown` to uid 65534 and to
//! run children under other uids); elsewhere they print a loud SKIPPED line
//! and return. Children are this test binary re-run with `SHARED_CHILD` set,
//! which makes the `child` test act out one role and exit; every child is
//! waited for with a bound and killed past it.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lockman_core::{AcquireOptions, FlagOptions, LockBackend, LockError, LockManager, StatusManager};
use lockman_file::{
    FileBackend, FileOptions, FileStatusManager, FlagDirOptions, LeaseFileBackend, LegacyFileBackend, LegacyOptions,
};

const CHILD_ENV: &str = "SHARED_CHILD";
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    // Straight to the stream, past the harness's capture: a skip must show.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test} needs root to play another user");
    true
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

fn assert_mode(path: &Path, expected: u32, what: &str) {
    let mode = mode_of(path);
    assert!(mode == expected, "{what} {path:?} has mode {mode:04o}, not {expected:04o}");
}

/// Every file in `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            let entry = entry.expect("entry");
            let content = String::from_utf8_lossy(&std::fs::read(entry.path()).expect("read")).into_owned();
            (entry.file_name().to_string_lossy().into_owned(), content)
        })
        .collect()
}

/// Opens every flavour (and the flag manager) over `dir`, as `lockctl` would.
fn open_all(dir: &Path) -> Vec<(&'static str, Result<(), LockError>)> {
    vec![
        ("file", FileBackend::open(FileOptions::new(dir)).map(drop)),
        ("lease", LeaseFileBackend::open(FileOptions::new(dir)).map(drop)),
        ("legacy", LegacyFileBackend::open(LegacyOptions::givtcp(dir, 1)).map(drop)),
        ("flags", FileStatusManager::open(FlagDirOptions::new(dir)).map(drop)),
    ]
}

/// A project folder of root's with files that look like lock files.
fn victim(base: &Path) -> PathBuf {
    let project = base.join("project");
    std::fs::create_dir(&project).expect("mkdir");
    for (name, content) in [
        ("Cargo.lock", "# cargo\n"),
        ("yarn.lock", "# yarn\n"),
        ("x.lock", ""),
        ("inverter_read-0f31e7d22c525e215b910d4411a7eeb8.lock", ""),
    ] {
        std::fs::write(project.join(name), content).expect("write");
    }
    project
}

/// The reproduction: in a sticky world-writable directory, another
/// user makes `app/locks` a symlink to root's project (and, more simply,
/// `locks` itself). Every flavour refuses the path with an error naming it
/// and the fix, and nothing in the project changes; the same link made by
/// root itself is followed.
#[tokio::test]
async fn planted_symlink_by_another_user_is_refused() {
    if skip_unless_root("planted_symlink_by_another_user_is_refused") {
        return;
    }
    let base = tempfile::tempdir().expect("dir");
    let project = victim(base.path());
    let before = snapshot(&project);
    let shared = base.path().join("tmp");
    std::fs::create_dir(&shared).expect("mkdir");
    chmod(&shared, 0o1777);

    // Through a directory of the other user's.
    let app = shared.join("app");
    std::fs::create_dir(&app).expect("mkdir");
    std::os::unix::fs::chown(&app, Some(NOBODY), Some(NOBODY)).expect("chown");
    let through_dir = app.join("locks");
    std::os::unix::fs::symlink(&project, &through_dir).expect("symlink");
    std::os::unix::fs::lchown(&through_dir, Some(NOBODY), Some(NOBODY)).expect("lchown");
    // Directly in the sticky directory.
    let direct = shared.join("locks");
    std::os::unix::fs::symlink(&project, &direct).expect("symlink");
    std::os::unix::fs::lchown(&direct, Some(NOBODY), Some(NOBODY)).expect("lchown");

    for (dir, culprit) in [(&through_dir, &app), (&direct, &direct)] {
        for (flavour, opened) in open_all(dir) {
            match opened {
                Err(LockError::Config(message)) => {
                    for needle in [&*dir.to_string_lossy(), &*culprit.to_string_lossy(), "uid 65534", "as root"] {
                        assert!(message.contains(needle), "{flavour} on {dir:?}: {message:?} lacks {needle:?}");
                    }
                }
                other => panic!("{flavour} accepted {dir:?}, a symlink planted by another user: {other:?}"),
            }
        }
        // lockctl cleanup's path: nothing opened, nothing touched.
        assert_eq!(snapshot(&project), before, "the project changed");
    }

    // The same link owned by root is root's own doing: followed.
    std::os::unix::fs::lchown(&direct, Some(0), Some(0)).expect("lchown");
    for (flavour, opened) in open_all(&direct) {
        opened.unwrap_or_else(|e| panic!("{flavour} refused root's own symlink: {e}"));
    }
}

/// Paths of one's own are used as before: through our own symlinks (also
/// relative ones and `..`), and a link we own in a sticky directory.
#[tokio::test]
async fn own_symlinks_and_dotdot_are_followed() {
    let base = tempfile::tempdir().expect("dir");
    let real = base.path().join("real/locks");
    std::fs::create_dir_all(&real).expect("mkdir");
    std::os::unix::fs::symlink("real", base.path().join("relative")).expect("symlink");
    std::os::unix::fs::symlink(&real, base.path().join("absolute")).expect("symlink");
    let sticky = base.path().join("sticky");
    std::fs::create_dir(&sticky).expect("mkdir");
    chmod(&sticky, 0o1777);
    std::os::unix::fs::symlink(&real, sticky.join("locks")).expect("symlink");
    for dir in [
        base.path().join("relative/locks"),
        base.path().join("absolute"),
        base.path().join("real/locks/../locks"),
        base.path().join("absolute/../locks"),
        sticky.join("locks"),
    ] {
        for (flavour, opened) in open_all(&dir) {
            opened.unwrap_or_else(|e| panic!("{flavour} refused {dir:?}: {e}"));
        }
    }
    // And a missing directory below our own symlink is created where it leads.
    FileBackend::open(FileOptions::new(base.path().join("absolute/new"))).expect("open");
    assert!(real.join("new").is_dir());
}

/// A directory every user can write without the sticky bit lets anyone
/// delete or replace lock files: refused, existing or about to be created.
/// The sticky variant (`/run/lock`, `/tmp`) is fine.
#[tokio::test]
async fn world_writable_directory_without_sticky_bit_is_refused() {
    let base = tempfile::tempdir().expect("dir");
    let open = base.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    chmod(&open, 0o777);
    for (flavour, opened) in open_all(&open) {
        match opened {
            Err(LockError::Config(message)) => {
                assert!(
                    message.contains(&*open.to_string_lossy()) && message.contains("sticky"),
                    "{flavour}: {message:?}"
                );
            }
            other => panic!("{flavour} accepted a 0777 directory: {other:?}"),
        }
    }
    let new = base.path().join("new");
    match FileBackend::open(FileOptions::new(&new).dir_mode(0o777)) {
        Err(LockError::Config(message)) => assert!(message.contains("0o1777"), "{message:?}"),
        other => panic!("dir_mode 0777 accepted: {other:?}"),
    }
    assert!(!new.exists(), "created a directory it then refuses");
    chmod(&open, 0o1777);
    for (flavour, opened) in open_all(&open) {
        opened.unwrap_or_else(|e| panic!("{flavour} refused a sticky 1777 directory: {e}"));
    }
}

/// Files another program keeps in the lock directory (`/run/lock` holds
/// `LCK..ttyS0`; a project holds `Cargo.lock`) are never listed, broken or
/// removed by any flavour's `list` or `cleanup_stale`, however old, while
/// lockman's own leftovers still are.
#[tokio::test]
async fn cleanup_never_removes_foreign_files() {
    let base = tempfile::tempdir().expect("dir");
    let dir = base.path().join("run-lock");
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o1777);
    let foreign = [
        "Cargo.lock",
        "yarn.lock",
        "x.lock",
        "foo.lock",
        "LCK..ttyS0",
        "backup-2024.lock",
        "job.lease",
        "job.seq",
        "app.lockfile",
        "app.lockfile.flock",
        "Inverter-0f31e7d22c525e215b910d4411a7eeb8.lock",
    ];
    let day_ago = SystemTime::now() - Duration::from_secs(86_400);
    for name in foreign {
        let path = dir.join(name);
        std::fs::write(&path, format!("{name} belongs to someone else\n")).expect("write");
        std::fs::File::options().write(true).open(&path).expect("open").set_modified(day_ago).expect("mtime");
    }
    let before = snapshot(&dir);

    let kernel = FileBackend::open(FileOptions::new(&dir)).expect("open").into_manager();
    let lease = LeaseFileBackend::open(FileOptions::new(&dir).default_lease(Duration::from_secs(1)))
        .expect("open")
        .into_manager();
    let legacy = LegacyFileBackend::open(LegacyOptions::new(&dir).stale_after(Duration::from_secs(1)))
        .expect("open")
        .into_manager();
    // Lockman's own leftover: a released kernel lock file.
    kernel.acquire("mine", AcquireOptions::new().no_wait()).await.expect("acquire").release().await.expect("release");
    let mine = FileBackend::open(FileOptions::new(&dir)).expect("open").lock_file("mine");
    assert!(mine.exists());

    let managers: [(&str, Arc<dyn LockManager>); 3] =
        [("file", Arc::new(kernel)), ("lease", Arc::new(lease)), ("legacy", Arc::new(legacy))];
    // Another program holds one of its lock files right now.
    let held = std::fs::File::open(dir.join("foo.lock")).expect("open");
    held.lock().expect("flock");
    let mut wrongs = Vec::new();
    for (flavour, locks) in &managers {
        let listed: Vec<String> = locks.list().await.expect("list").into_iter().map(|info| info.resource).collect();
        if !listed.is_empty() {
            wrongs.push(format!("{flavour}'s list showed {listed:?}"));
        }
        locks.cleanup_stale().await.expect("cleanup");
        // Put back what was removed, so each flavour meets every file.
        for (name, content) in &before {
            if std::fs::read(dir.join(name)).ok().as_deref() != Some(content.as_bytes()) {
                wrongs.push(format!("{flavour}'s cleanup removed or changed {name}"));
                std::fs::write(dir.join(name), content).expect("restore");
            }
        }
    }
    assert!(wrongs.is_empty(), "foreign files touched:\n{}", wrongs.join("\n"));
    assert!(!mine.exists(), "the kernel flavour's cleanup left lockman's own unused lock file");
}

/// `dir_mode` is applied exactly as given (setgid and sticky bits too),
/// whatever the umask, and only to the directory lockman creates — missing
/// parents get the default mode; `file_mode` gives every file lockman
/// creates exactly its mode; the flags' metadata directory mirrors the flag
/// directory exactly.
#[tokio::test]
async fn dir_mode_and_file_mode_are_exact_under_umask_022() {
    // Process-wide, but 022 is what every other test here expects anyway.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let base = tempfile::tempdir().expect("dir");

    let group = base.path().join("a/b/group");
    let kernel =
        FileBackend::open(FileOptions::new(&group).dir_mode(0o2770).file_mode(0o660)).expect("open").into_manager();
    assert_mode(&group, 0o2770, "dir_mode");
    assert_mode(&base.path().join("a"), 0o755, "a parent lockman created");
    assert_mode(&base.path().join("a/b"), 0o755, "a parent lockman created");
    kernel.acquire("job", AcquireOptions::new().no_wait()).await.expect("acquire").release().await.expect("release");
    let lock_file = FileBackend::open(FileOptions::new(&group)).expect("open").lock_file("job");
    assert_mode(&lock_file, 0o660, "kernel lock file");

    let sticky = base.path().join("sticky");
    let lease = LeaseFileBackend::open(FileOptions::new(&sticky).dir_mode(0o1770).file_mode(0o640))
        .expect("open")
        .into_manager();
    assert_mode(&sticky, 0o1770, "dir_mode");
    let guard = lease.acquire("job", AcquireOptions::new().no_wait()).await.expect("acquire");
    let lease_file = LeaseFileBackend::open(FileOptions::new(&sticky)).expect("open").lease_file("job");
    assert_mode(&lease_file, 0o640, "lease file");
    assert_mode(&lease_file.with_extension("seq"), 0o640, "sequence file");
    guard.release().await.expect("release");

    let legacy_dir = base.path().join("legacy");
    let legacy = LegacyFileBackend::open(LegacyOptions::givtcp(&legacy_dir, 1).dir_mode(0o770).file_mode(0o660))
        .expect("open")
        .into_manager();
    assert_mode(&legacy_dir, 0o770, "dir_mode");
    let guard = legacy.acquire("regcache", AcquireOptions::new().no_wait()).await.expect("acquire");
    assert_mode(&legacy_dir.join(".regcache_lockfile_1"), 0o660, "legacy file");
    assert_mode(&legacy_dir.join(".regcache_lockfile_1.flock"), 0o660, "sidecar");
    guard.release().await.expect("release");

    let flags_dir = base.path().join("flags");
    let flags =
        FileStatusManager::open(FlagDirOptions::new(&flags_dir).dir_mode(0o2770).file_mode(0o660)).expect("open");
    flags.set("f", FlagOptions::new().value("v").ttl(Duration::from_secs(60))).await.expect("set");
    assert_mode(&flags_dir, 0o2770, "flag dir_mode");
    assert_mode(&flags_dir.join(".lockman-flags"), 0o2770, "metadata directory");
    assert_mode(&flags_dir.join("f"), 0o660, "flag file");
    for sidecar in std::fs::read_dir(flags_dir.join(".lockman-flags")).expect("read") {
        assert_mode(&sidecar.expect("entry").path(), 0o660, "flag metadata file");
    }
}

/// Uids and the group of the two users sharing a directory.
const USER_A: u32 = 64_001;
const USER_B: u32 = 64_002;
const GROUP: u32 = 64_000;

/// Two users of one group share a `2770` directory owned by root: each takes
/// and releases every flavour's lock and sets a flag, A first, then B — who
/// must be able to lock the files A left behind and write flag metadata into
/// the directory A created.
#[test]
fn users_of_one_group_share_a_directory() {
    if skip_unless_root("users_of_one_group_share_a_directory") {
        return;
    }
    let base = tempfile::tempdir().expect("dir");
    chmod(base.path(), 0o755);
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::os::unix::fs::chown(&shared, Some(0), Some(GROUP)).expect("chown");
    chmod(&shared, 0o2770);
    for (user, name) in [(USER_A, "a"), (USER_B, "b")] {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}\t{name}", shared.display()))
            .uid(user)
            .gid(GROUP)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let limit = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("user {name} took over 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = child.wait_with_output().expect("output");
        assert!(
            status.success(),
            "user {name} (uid {user}, gid {GROUP}) failed in the shared directory:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The child side of [`users_of_one_group_share_a_directory`].
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (dir, name) = spec.split_once('\t').expect("spec");
    let dir = Path::new(dir);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let options = || FileOptions::new(dir).dir_mode(0o2770).file_mode(0o660);
        let managers: [(&str, Arc<dyn LockManager>); 3] = [
            ("file", Arc::new(FileBackend::open(options()).expect("open file").into_manager())),
            ("lease", Arc::new(LeaseFileBackend::open(options()).expect("open lease").into_manager())),
            (
                "legacy",
                Arc::new(
                    LegacyFileBackend::open(LegacyOptions::givtcp(dir, 1).dir_mode(0o2770).file_mode(0o660))
                        .expect("open legacy")
                        .into_manager(),
                ),
            ),
        ];
        for (flavour, locks) in managers {
            for resource in ["job", "regcache"] {
                let guard = locks
                    .acquire(resource, AcquireOptions::new().no_wait())
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {flavour} acquire {resource}: {e}"));
                guard.release().await.unwrap_or_else(|e| panic!("{name}: {flavour} release {resource}: {e}"));
            }
        }
        let flags = FileStatusManager::open(FlagDirOptions::new(dir).dir_mode(0o2770).file_mode(0o660))
            .unwrap_or_else(|e| panic!("{name}: open flags: {e}"));
        for flag in [format!("set-by-{name}"), "shared".to_owned()] {
            flags
                .set(&flag, FlagOptions::new().value(name).ttl(Duration::from_secs(600)))
                .await
                .unwrap_or_else(|e| panic!("{name}: set {flag}: {e}"));
        }
    });
}
