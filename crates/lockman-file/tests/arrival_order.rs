//! First come, first served across managers and processes in kernel-lock
//! mode (the `<stem>.queue` file, Linux only): waiters are granted in the
//! order they arrived, a waiter killed in the middle of the queue does not
//! hold up those behind it, and a queue file deleted under its waiters
//! costs order, never exclusion.
//!
//! Child processes are this test binary re-run with `LOCKMAN_ORDER_CHILD`
//! set, which makes the `child` test act out one role and exit. Every child
//! is killed when its handle drops, and every wait is bounded.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_file::{FileBackend, FileOptions};
use lockman_testkit::processes::{spawn_test_child, wait_all_succeed};

const CHILD_ENV: &str = "LOCKMAN_ORDER_CHILD";
/// The longest any wait of these tests may take before it fails.
const LIMIT: Duration = Duration::from_secs(60);

fn manager(dir: &Path) -> Arc<dyn LockManager> {
    Arc::new(FileBackend::open(FileOptions::new(dir)).expect("open").into_manager())
}

/// The queue file of `resource` (the lock file's name, `.queue` for `.lock`).
fn queue_file(dir: &Path, resource: &str) -> PathBuf {
    let backend = FileBackend::open(FileOptions::new(dir)).expect("open");
    backend.lock_file(resource).with_extension("queue")
}

/// Tickets held now in the queue file at `path`: granted write locks of
/// open file descriptions on it, from `/proc/locks`.
fn tickets(path: &Path) -> usize {
    locks_on(path, "OFDLCK")
}

/// Whether a waiter holds the gate of `resource` (waiting for the lock file
/// at the head of the line): a granted `flock` on it.
fn gate_held(dir: &Path, resource: &str) -> bool {
    let gate = queue_file(dir, resource).with_extension("gate");
    locks_on(&gate, "FLOCK") == 1
}

/// Granted write locks of `kind` (`/proc/locks` names) on the file at `path`.
fn locks_on(path: &Path, kind: &str) -> usize {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    let inode = format!(":{}", meta.ino());
    std::fs::read_to_string("/proc/locks")
        .expect("read /proc/locks")
        .lines()
        .filter(|line| !line.contains("->"))
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&kind)
                && fields.get(3) == Some(&"WRITE")
                && fields.get(5).is_some_and(|f| f.ends_with(&inode))
        })
        .count()
}

/// Lock requests blocked in the kernel now, machine-wide (`/proc/locks`
/// lists them with `->`).
fn blocked_requests() -> usize {
    std::fs::read_to_string("/proc/locks").map(|locks| locks.lines().filter(|l| l.contains("->")).count()).unwrap_or(0)
}

/// Waits (bounded) until `what` holds, checking every millisecond.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Eight managers (each its own place in the queue, as eight processes
/// would be) hammering one resource get equal shares: the queue serves them
/// in turn: fairness (fewest grants over most) at least 0.9 over 2,000
/// grants. Counting starts once all eight have been granted once (the
/// first to start runs alone until the others arrive). Without the queue,
/// `flock` lets the releaser win again about half the time (fairness 0.5
/// in the yardstick).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_are_served_in_turn() {
    const WORKERS: u64 = 8;
    const GRANTS: u64 = 2000;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let started = Arc::new(AtomicU64::new(0));
    let counted = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (locks, started, counted, inside) = (manager(dir.path()), started.clone(), counted.clone(), inside.clone());
        workers.push(tokio::spawn(async move {
            let (mut first, mut mine) = (true, 0u64);
            loop {
                let guard = locks.acquire("bus", AcquireOptions::new().timeout(LIMIT)).await.expect("acquire");
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                if first {
                    started.fetch_add(1, Ordering::SeqCst);
                    first = false;
                } else if started.load(Ordering::SeqCst) == WORKERS {
                    mine += 1;
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                let done = counted.load(Ordering::SeqCst) >= GRANTS;
                inside.store(false, Ordering::SeqCst);
                guard.release().await.expect("release");
                if done {
                    return mine;
                }
            }
        }));
    }
    let mut counts = Vec::new();
    for worker in workers {
        counts.push(worker.await.expect("worker"));
    }
    let (fewest, most) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
    let fairness = fewest as f64 / most as f64;
    assert!(fairness >= 0.9, "acquisitions per manager {counts:?}: fairness {fairness:.2} < 0.9");
}

/// Four processes, queued behind a holder, then each taking the lock 400
/// times back to back, get equal shares: by the time the first has its
/// 400th grant, every other has had at least 360 (fairness 0.9). Coming
/// back, a releaser queues behind those already waiting. `flock` alone
/// lets the releaser come straight back in about half the time.
#[test]
fn processes_get_equal_shares() {
    const CHILDREN: usize = 4;
    const ROUNDS: usize = 400;
    let _serial = SERIAL.blocking_lock();
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("grants.log");
    let queue = queue_file(dir.path(), "bus");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let locks = manager(dir.path());
    let held = runtime.block_on(locks.acquire("bus", AcquireOptions::new())).expect("acquire");
    let mut children = Vec::new();
    for who in 0..CHILDREN {
        let rounds = ROUNDS.to_string();
        children.push(Proc::spawn(&["turns", dir_str(dir.path()), "bus", &rounds, &who.to_string(), dir_str(&log)]));
        // All start queued: the first waits holding the gate, each later
        // one with a ticket.
        wait_until(&format!("child {who} is waiting"), || gate_held(dir.path(), "bus") && tickets(&queue) == who);
    }
    runtime.block_on(held.release()).expect("release");
    for child in children {
        child.finish();
    }
    let log = std::fs::read_to_string(&log).expect("log");
    let grants: Vec<&str> = log.lines().filter_map(|line| line.strip_prefix("got ")).collect();
    assert_eq!(grants.len(), CHILDREN * ROUNDS);
    let mut counts = vec![0usize; CHILDREN];
    for who in &grants {
        let who: usize = who.parse().expect("child number");
        counts[who] += 1;
        if counts[who] == ROUNDS {
            break;
        }
    }
    let fewest = counts.iter().min().copied().unwrap_or(0);
    assert!(
        fewest * 10 >= ROUNDS * 9,
        "grants per child when the first had its {ROUNDS}th: {counts:?} (fairness below 0.9); all: {grants:?}"
    );
}

/// The measuring tests run one at a time (they share 2 cores).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A waiter killed with SIGKILL in the middle of the queue does not hold up
/// the one behind it: the kernel drops its ticket with the process.
#[test]
fn a_killed_waiter_does_not_hold_up_the_queue() {
    let dir = tempfile::tempdir().expect("dir");
    let line = Line::of_three(dir.path(), "middle", 1);
    line.middle.kill();
    wait_until("the killed child's ticket is gone", || tickets(&line.queue) == 1);
    line.runtime.block_on(line.held.release()).expect("release");
    line.head.finish();
    line.last.finish();
    let order = std::fs::read_to_string(&line.log).expect("log");
    let grants: Vec<&str> = order.lines().filter_map(|line| line.strip_prefix("got ")).collect();
    assert_eq!(grants, ["head", "last"]);
}

/// A waiter stopped (SIGSTOP) with its ticket does not hold up the queue
/// for long: the one behind it finds the gate free twice running after a
/// second of waiting and goes on out of turn, while the stopped one is
/// still stopped, and its next two acquisitions pass over the stopped
/// ticket at once (paying that second each, they would take 3.75 s).
#[test]
fn a_stopped_waiter_holds_up_the_queue_for_a_moment_only() {
    let dir = tempfile::tempdir().expect("dir");
    let Line { runtime, holder: _holder, held, head, middle: stopped, last, log, .. } =
        Line::of_three(dir.path(), "stopped", 3);
    stopped.signal(rustix::process::Signal::STOP);
    // A stop lands asynchronously: one still running could take the gate.
    wait_until("the stopped child's threads all stop", || stopped.is_stopped());
    runtime.block_on(held.release()).expect("release");
    let granted = |who: &str| {
        std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| *l == format!("got {who}")).count()
    };
    let released = Instant::now();
    let deadline = released + Duration::from_secs(10);
    while granted("last") == 0 {
        assert!(Instant::now() < deadline, "the queue stayed stuck behind a stopped waiter for 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(released.elapsed() >= Duration::from_secs(1), "went out of turn before the stopped waiter had a second");
    while granted("last") < 3 {
        assert!(Instant::now() < deadline, "the last child's later acquisitions stayed stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = released.elapsed();
    assert!(took < Duration::from_secs(3), "three acquisitions behind a stopped ticket took {took:?}");
    assert_eq!(granted("stopped"), 0, "the stopped child was granted");
    stopped.signal(rustix::process::Signal::CONT);
    head.finish();
    last.finish();
    stopped.finish();
}

/// The queue file deleted while waiters hold tickets in it: newcomers start
/// a new one, and everyone is still granted, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_costs_order_not_exclusion() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = queue_file(dir.path(), "bus");
    let holder = manager(dir.path());
    let held = holder.acquire("bus", AcquireOptions::new()).await.expect("acquire");
    let inside = Arc::new(AtomicBool::new(false));
    let granted = Arc::new(AtomicU64::new(0));
    let wait = |locks: Arc<dyn LockManager>| {
        let (inside, granted) = (inside.clone(), granted.clone());
        tokio::spawn(async move {
            let guard = locks.acquire("bus", AcquireOptions::new().timeout(LIMIT)).await.expect("acquire");
            assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
            tokio::time::sleep(Duration::from_millis(2)).await;
            inside.store(false, Ordering::SeqCst);
            granted.fetch_add(1, Ordering::SeqCst);
            guard.release().await.expect("release");
        })
    };
    let mut waiters = vec![wait(manager(dir.path()))];
    for queued in 1..=2 {
        waiters.push(wait(manager(dir.path())));
        let queue = queue.clone();
        tokio::task::spawn_blocking(move || wait_until("a waiter holds a ticket", || tickets(&queue) == queued))
            .await
            .expect("wait");
    }
    std::fs::remove_file(&queue).expect("delete the queue file");
    for _ in 0..2 {
        waiters.push(wait(manager(dir.path())));
    }
    held.release().await.expect("release");
    for waiter in waiters {
        tokio::time::timeout(LIMIT, waiter).await.expect("a waiter was never granted").expect("waiter");
    }
    assert_eq!(granted.load(Ordering::SeqCst), 5);
}

/// A queue path that names a named pipe, or a symlink (to `/dev/zero`),
/// is never opened as a queue: waiters go on unqueued, and every one is
/// granted in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_queue_path_only_costs_order() {
    for plant in ["fifo", "symlink"] {
        let dir = tempfile::tempdir().expect("dir");
        let queue = queue_file(dir.path(), "bus");
        match plant {
            "fifo" => rustix::fs::mknodat(
                rustix::fs::CWD,
                &queue,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o666),
                0,
            )
            .expect("mkfifo"),
            _ => std::os::unix::fs::symlink("/dev/zero", &queue).expect("symlink"),
        }
        let holder = manager(dir.path());
        let held = holder.acquire("bus", AcquireOptions::new()).await.expect("acquire");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let locks = manager(dir.path());
                tokio::spawn(async move {
                    locks.acquire("bus", AcquireOptions::new().timeout(LIMIT)).await?.release().await
                })
            })
            .collect();
        // All three blocked in the kernel: one for the lock, two for the gate.
        tokio::task::spawn_blocking(|| wait_until("three waiters block", || blocked_requests() >= 3))
            .await
            .expect("wait");
        held.release().await.expect("release");
        for waiter in waiters {
            waiter.await.expect("join").unwrap_or_else(|e| panic!("a waiter failed with a planted {plant}: {e}"));
        }
        let kind = std::fs::symlink_metadata(&queue).expect("the planted file").file_type();
        assert!(!kind.is_file(), "the planted {plant} was replaced");
    }
}

/// `cleanup_stale` removes a queue file nobody uses along with the lock and
/// the gate, and leaves one with a ticket in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_an_unused_queue_only() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = queue_file(dir.path(), "bus");
    let locks = manager(dir.path());
    let held = locks.acquire("bus", AcquireOptions::new()).await.expect("acquire");
    let (head, queued) = (manager(dir.path()), manager(dir.path()));
    let take = |locks: Arc<dyn LockManager>| {
        tokio::spawn(async move { locks.acquire("bus", AcquireOptions::new().timeout(LIMIT)).await?.release().await })
    };
    let (first, second) = (take(head), take(queued));
    let watched = queue.clone();
    tokio::task::spawn_blocking(move || wait_until("a waiter holds a ticket", || tickets(&watched) == 1))
        .await
        .expect("wait");
    locks.cleanup_stale().await.expect("cleanup");
    assert!(queue.exists(), "cleanup removed a queue file with a ticket in it");
    held.release().await.expect("release");
    first.await.expect("join").expect("first waiter");
    second.await.expect("join").expect("second waiter");
    locks.cleanup_stale().await.expect("cleanup");
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).expect("read dir").filter_map(Result::ok).map(|e| e.path()).collect();
    assert!(left.is_empty(), "cleanup left {left:?}");
}

/// A holder in this process and three child processes queued behind it:
/// `head` waiting for the lock holding the gate, then `middle` and `last`
/// with tickets, in that order. Each child takes the lock once.
struct Line {
    runtime: tokio::runtime::Runtime,
    holder: Arc<dyn LockManager>,
    held: lockman_core::LockGuard,
    head: Proc,
    middle: Proc,
    last: Proc,
    /// The children's log (`got <name>` as each is granted).
    log: PathBuf,
    queue: PathBuf,
}

impl Line {
    /// The line on resource `bus` in `dir`; the middle child is called
    /// `middle`; the last takes the lock `last_rounds` times.
    fn of_three(dir: &Path, middle: &str, last_rounds: usize) -> Line {
        let log = dir.join("grants.log");
        let queue = queue_file(dir, "bus");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let holder = manager(dir);
        let held = runtime.block_on(holder.acquire("bus", AcquireOptions::new())).expect("acquire");
        let spawn = |who: &str, rounds: usize| {
            Proc::spawn(&["turns", dir_str(dir), "bus", &rounds.to_string(), who, dir_str(&log)])
        };
        let head = spawn("head", 1);
        wait_until("the first child holds the gate", || gate_held(dir, "bus"));
        let middle = spawn(middle, 1);
        wait_until("the middle child holds a ticket", || tickets(&queue) == 1);
        let last = spawn("last", last_rounds);
        wait_until("the last child holds a ticket", || tickets(&queue) == 2);
        Line { runtime, holder, held, head, middle, last, log, queue }
    }
}

/// The child side: acts out the role in `LOCKMAN_ORDER_CHILD` and exits.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let args: Vec<&str> = spec.split('\t').collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        match args.as_slice() {
            ["turns", dir, resource, rounds, who, log] => {
                let locks = manager(Path::new(dir));
                let mut out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log");
                for _ in 0..rounds.parse::<usize>().expect("rounds") {
                    // One write each, so lines of different children never mix.
                    out.write_all(format!("want {who}\n").as_bytes()).expect("log the request");
                    let guard =
                        locks.acquire(resource, AcquireOptions::new().timeout(LIMIT)).await.expect("child acquire");
                    out.write_all(format!("got {who}\n").as_bytes()).expect("log the grant");
                    guard.release().await.expect("child release");
                }
            }
            other => panic!("unknown child role {other:?}"),
        }
    });
}

/// A child process (this binary's `child` test), killed if still running
/// when dropped.
struct Proc(Child);

impl Proc {
    fn spawn(role: &[&str]) -> Proc {
        Proc(spawn_test_child("child", CHILD_ENV, &role.join("\t")))
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.0.id()).expect("pid")).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal child");
    }

    /// Whether every thread of the child is stopped (state `T` in
    /// `/proc/<pid>/task/*/stat`).
    fn is_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.0.id())) else { return false };
        tasks.filter_map(Result::ok).all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
                .unwrap_or(false)
        })
    }

    fn kill(mut self) {
        self.0.kill().expect("kill child");
        self.0.wait().expect("reap child");
    }

    /// Waits (bounded) for the child to exit successfully.
    fn finish(mut self) {
        wait_all_succeed(std::slice::from_mut(&mut self.0), LIMIT);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dir_str(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 temp dir")
}
