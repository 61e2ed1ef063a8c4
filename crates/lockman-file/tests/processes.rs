//! Real processes against one directory, for each file flavour: a shared
//! counter under one lock, holders killed with SIGKILL or paused with
//! SIGSTOP, util-linux `flock(1)` on the same lock file, and old daemons
//! following legacy protocols A and B beside lockman processes.
//!
//! Child processes are this test binary re-run with `LOCKMAN_FILE_CHILD` set,
//! which makes the `child` test act out one role and exit. Every child is
//! killed when its handle drops, and every wait is bounded.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockman_core::{AcquireOptions, LockBackend, LockError, LockManager};
use lockman_file::{
    FileBackend, FileOptions, LeaseFileBackend, LegacyFileBackend, LegacyOptions, LegacyPolicy, LegacyResource,
};

const CHILD_ENV: &str = "LOCKMAN_FILE_CHILD";
/// The longest any child may run before the test kills it and fails.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

/// Opens one flavour over `dir` the same way in parent and children.
fn open(flavour: &str, dir: &Path) -> Arc<dyn LockManager> {
    match flavour {
        "file" => Arc::new(FileBackend::open(FileOptions::new(dir)).expect("open").into_manager()),
        "lease" => {
            let options = FileOptions::new(dir).default_lease(Duration::from_secs(1));
            Arc::new(LeaseFileBackend::open(options).expect("open").into_manager())
        }
        "legacy" => Arc::new(LegacyFileBackend::open(legacy_options(dir)).expect("open").into_manager()),
        other => panic!("unknown flavour {other}"),
    }
}

fn legacy_options(dir: &Path) -> LegacyOptions {
    LegacyOptions::givtcp(dir, 1)
        .resource("stale-demo", LegacyResource::new(".stale_lockfile").stale_after(Duration::from_secs(1)))
        .resource("inverter_read", LegacyResource::new(".lockfile").policy(LegacyPolicy::SkipIfBusy))
}

/// The child side: acts out the role in `LOCKMAN_FILE_CHILD` and exits.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let args: Vec<&str> = spec.split('\t').collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        match args.as_slice() {
            ["count", flavour, dir, resource, n, who, log] => {
                let locks = open(flavour, Path::new(dir));
                count(&*locks, Path::new(dir), resource, n.parse().expect("n"), who, Some(Path::new(log))).await;
            }
            ["count", flavour, dir, resource, n, who] => {
                let locks = open(flavour, Path::new(dir));
                count(&*locks, Path::new(dir), resource, n.parse().expect("n"), who, None).await;
            }
            ["hold", flavour, dir, resource] => {
                let locks = open(flavour, Path::new(dir));
                let guard = locks
                    .acquire(resource, AcquireOptions::new().purpose("held by a child"))
                    .await
                    .expect("child acquire");
                say(&format!("held {}", guard.fencing_token()));
                let reason = guard.lost().await;
                say(&format!("lost {reason}"));
            }
            other => panic!("unknown child role {other:?}"),
        }
    });
    std::process::exit(0);
}

/// Increments the counter in `dir/counter` `n` times under `resource`,
/// logging "S/E who i" around each critical section and "L who i" when the
/// lock turned out to have been lost.
async fn count(locks: &dyn LockManager, dir: &Path, resource: &str, n: u32, who: &str, log: Option<&Path>) {
    let counter = dir.join("counter");
    let mut done = 0;
    while done < n {
        let guard = match locks.acquire(resource, AcquireOptions::new().timeout(Duration::from_secs(20))).await {
            Ok(guard) => guard,
            // Held past the wait (by an old process, which the explicit wait
            // above waits for even on a skip-if-busy resource): try again, as a poller would.
            Err(LockError::Timeout { .. }) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            Err(e) => panic!("{who}: acquire failed: {e}"),
        };
        append(log, &format!("S {who} {done}"));
        let value: u64 = std::fs::read_to_string(&counter).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        std::fs::write(&counter, (value + 1).to_string()).expect("write counter");
        append(log, &format!("E {who} {done}"));
        if let Err(e) = guard.release().await {
            assert!(e.is_lost(), "{who}: release failed: {e}");
            append(log, &format!("L {who} {done}"));
        }
        done += 1;
        if log.is_some() {
            // Pace like a poller, so old processes find the lock free at times.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

fn append(log: Option<&Path>, line: &str) {
    if let Some(log) = log {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
        file.write_all(format!("{line}\n").as_bytes()).expect("append log");
    }
}

/// Tells the parent something, on a line it can find among libtest's output.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "CHILD: {line}");
    let _ = out.flush();
}

/// A child process, killed if still running when dropped.
struct Proc {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(role: &[&str]) -> Proc {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role.join("\t"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let lines = BufReader::new(child.stdout.take().expect("stdout"));
        Proc { child, lines }
    }

    fn python(script: &str, args: &[&str]) -> Proc {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/legacy").join(script);
        let mut child = Command::new("python3")
            .arg(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the legacy interop tests");
        let lines = BufReader::new(child.stdout.take().expect("stdout"));
        Proc { child, lines }
    }

    /// The next `CHILD:` line (blocking; the child writes it promptly).
    fn next_message(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.lines.read_line(&mut line).expect("read child output");
            assert!(n > 0, "child exited without saying anything");
            // libtest may have printed "test child ... " on the same line.
            if let Some((_, message)) = line.trim_end().split_once("CHILD: ") {
                return message.to_owned();
            }
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal child");
    }

    /// Waits (bounded) for the child to exit successfully.
    fn finish(mut self) {
        let deadline = Instant::now() + CHILD_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "child failed: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "child ran past {CHILD_LIMIT:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir_str(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 temp dir")
}

fn counter_in(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("counter")).expect("counter").trim().parse().expect("number")
}

/// 8 processes × 200 increments under one lock end at exactly 1600.
fn eight_processes_share_a_counter(flavour: &str) {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("counter"), "0").expect("counter");
    let children: Vec<Proc> = (0..8)
        .map(|i| Proc::spawn(&["count", flavour, dir_str(dir.path()), "counter", "200", &format!("p{i}")]))
        .collect();
    for child in children {
        child.finish();
    }
    assert_eq!(counter_in(dir.path()), 1600, "{flavour}: lost updates");
}

#[test]
fn file_eight_processes_share_a_counter() {
    eight_processes_share_a_counter("file");
}

#[test]
fn lease_eight_processes_share_a_counter() {
    eight_processes_share_a_counter("lease");
}

#[test]
fn legacy_eight_processes_share_a_counter() {
    eight_processes_share_a_counter("legacy");
}

/// A holder killed with SIGKILL; returns how long the next acquire took.
async fn acquire_after_kill(flavour: &str, resource: &str) -> Duration {
    let dir = tempfile::tempdir().expect("dir");
    let mut holder = Proc::spawn(&["hold", flavour, dir_str(dir.path()), resource]);
    assert!(holder.next_message().starts_with("held"));
    let locks = open(flavour, dir.path());
    assert!(locks.try_acquire(resource, AcquireOptions::new()).await.expect("try").is_none(), "holder not excluding");
    holder.signal(rustix::process::Signal::KILL);
    let _ = holder.child.wait();
    let started = Instant::now();
    let guard = locks.acquire(resource, AcquireOptions::new().timeout(Duration::from_secs(10))).await.expect("acquire");
    let took = started.elapsed();
    guard.release().await.expect("release");
    took
}

#[tokio::test]
async fn file_killed_holder_releases_at_once() {
    let took = acquire_after_kill("file", "victim").await;
    assert!(took < Duration::from_millis(200), "took {took:?}");
}

/// On this host a dead pid makes a lease stale at once, without waiting out the lease.
#[tokio::test]
async fn lease_killed_holder_is_broken_at_once_on_the_same_host() {
    let took = acquire_after_kill("lease", "victim").await;
    assert!(took < Duration::from_millis(200), "took {took:?}");
}

/// A crashed new process's legacy file is recognised by its sidecar record and broken at once.
#[tokio::test]
async fn legacy_killed_new_holder_is_broken_at_once() {
    let took = acquire_after_kill("legacy", "regcache").await;
    assert!(took < Duration::from_millis(200), "took {took:?}");
}

/// A paused holder (alive, but not renewing) loses its lease after it runs
/// out; when it resumes, its guard reports the loss.
#[tokio::test]
async fn lease_paused_holder_loses_its_lease_and_is_told() {
    let dir = tempfile::tempdir().expect("dir");
    let mut holder = Proc::spawn(&["hold", "lease", dir_str(dir.path()), "victim"]);
    assert!(holder.next_message().starts_with("held"));
    holder.signal(rustix::process::Signal::STOP);
    let locks = open("lease", dir.path());
    let started = Instant::now();
    let guard = locks.acquire("victim", AcquireOptions::new().timeout(Duration::from_secs(10))).await.expect("acquire");
    let took = started.elapsed();
    // The child's 1 s lease was last renewed at most a third of it before the pause.
    assert!(took >= Duration::from_millis(500), "broke a live lease after {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    holder.signal(rustix::process::Signal::CONT);
    let told = tokio::task::spawn_blocking(move || holder.next_message()).await.expect("join");
    assert!(told.starts_with("lost"), "paused holder said {told:?}");
    guard.release().await.expect("release");
}

/// util-linux `flock(1)` and lockman's file backend exclude each other.
#[tokio::test]
async fn file_interoperates_with_util_linux_flock() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = FileBackend::open(FileOptions::new(dir.path())).expect("open");
    let path = backend.lock_file("shared");
    let locks = backend.into_manager();
    let guard = locks.acquire("shared", AcquireOptions::new()).await.expect("acquire");
    let status = Command::new("flock").arg("-n").arg(&path).arg("true").status().expect("flock(1) is needed");
    assert!(!status.success(), "flock -n got a lock lockman holds");
    guard.release().await.expect("release");
    let status = Command::new("flock").arg("-n").arg(&path).arg("true").status().expect("flock");
    assert!(status.success(), "flock -n could not take a released lock");

    let mut flock = Command::new("flock")
        .arg(&path)
        .args(["sh", "-c", "echo locked; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("flock");
    let mut out = BufReader::new(flock.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "locked");
    assert!(locks.try_acquire("shared", AcquireOptions::new()).await.expect("try").is_none(), "flock(1) not excluding");
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(
            async move { locks.acquire("shared", AcquireOptions::new().timeout(Duration::from_secs(10))).await },
        )
    };
    drop(flock.stdin.take()); // `read` returns, the shell exits, flock(1) unlocks
    let guard = waiter.await.expect("join").expect("lockman never got the lock flock(1) released");
    let _ = flock.wait();
    guard.release().await.expect("release");
}

/// An old process killed inside its critical section leaves its legacy
/// file behind; it is broken once older than the resource's stale age.
#[tokio::test]
async fn legacy_file_left_by_a_killed_old_process_is_broken_after_its_age() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = open("legacy", dir.path());
    // What protocol A leaves when SIGKILLed: an empty file.
    std::fs::write(dir.path().join(".stale_lockfile"), "").expect("old lock file");
    let started = Instant::now();
    let guard =
        locks.acquire("stale-demo", AcquireOptions::new().timeout(Duration::from_secs(10))).await.expect("acquire");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "broke a fresh legacy file after {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    guard.release().await.expect("release");
}

/// Old and new processes on the same legacy file: new ones never overlap
/// each other, and every overlap with an old one comes from the old
/// protocol's own check-then-create race and is reported lost by the new process.
fn old_and_new_processes_exclude_each_other(script: &str, resource: &str, lock_file: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir_str(dir.path());
    let log = dir.path().join("log");
    let log_s = log.to_str().expect("utf-8");
    std::fs::write(dir.path().join("counter"), "0").expect("counter");
    let lock_path = dir.path().join(lock_file);
    let counter_path = dir.path().join("counter");
    let old = Proc::python(
        script,
        &[lock_path.to_str().expect("utf-8"), log_s, counter_path.to_str().expect("utf-8"), "60", "old"],
    );
    let new: Vec<Proc> =
        (0..3).map(|i| Proc::spawn(&["count", "legacy", d, resource, "60", &format!("new{i}"), log_s])).collect();
    old.finish();
    for child in new {
        child.finish();
    }
    let overlaps = check_log(&std::fs::read_to_string(&log).expect("log"));
    let total = 60 + 3 * 60;
    if overlaps == 0 {
        assert_eq!(counter_in(dir.path()), total, "lost updates without any overlap in the log");
    }
    eprintln!("{script}: {overlaps} overlap(s) caused by the old protocol, each reported lost");
}

/// Replays the critical sections in the log; returns how many overlaps
/// involved an old process, after checking that none was new-vs-new and
/// that the new process in each reported its lock lost.
fn check_log(log: &str) -> usize {
    let mut inside: HashSet<(String, String)> = HashSet::new();
    let mut overlapped: HashMap<(String, String), String> = HashMap::new();
    let mut lost: HashSet<(String, String)> = HashSet::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [kind, who, i] = parts.as_slice() else { panic!("bad log line {line:?}") };
        let key = ((*who).to_owned(), (*i).to_owned());
        match *kind {
            "S" => {
                for other in &inside {
                    assert!(
                        who.starts_with("old") || other.0.starts_with("old"),
                        "two new processes were inside at once: {key:?} and {other:?}"
                    );
                    overlapped.insert(key.clone(), other.0.clone());
                    overlapped.insert(other.clone(), (*who).to_owned());
                }
                inside.insert(key);
            }
            "E" => {
                inside.remove(&key);
            }
            "L" => {
                lost.insert(key);
            }
            "X" => {} // protocol B stole a lock after waiting 5 s
            other => panic!("bad log kind {other}"),
        }
    }
    for (section, with) in &overlapped {
        if section.0.starts_with("new") {
            assert!(lost.contains(section), "{section:?} overlapped {with} but never reported its lock lost");
        }
    }
    overlapped.keys().filter(|k| k.0.starts_with("new")).count()
}

#[test]
fn legacy_protocol_a_interop() {
    old_and_new_processes_exclude_each_other("protocol_a.py", "inverter_read", ".lockfile");
}

#[test]
fn legacy_protocol_b_interop() {
    old_and_new_processes_exclude_each_other("protocol_b.py", "regcache", ".regcache_lockfile_1");
}
