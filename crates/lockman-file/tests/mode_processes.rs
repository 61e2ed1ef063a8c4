//! Shared locks and semaphores across real processes, on the kernel-lock
//! flavour and the lease-file flavour: readers overlap, writers are alone,
//! a semaphore of 3 never has a fourth holder, and a killed holder frees its
//! share at once (kernel locks; lease files on this host, whose dead pid
//! is seen) — or, frozen, once its own lease lapses (lease files).
//!
//! Children are this test binary re-run with `LOCKMAN_MODES_CHILD` set,
//! which makes the `child` test act out one role and exit. A `cycle` child
//! says `ready`, waits for a line on stdin (so all start together), then
//! acquires and releases in its mode, appending `<mode> <start µs> <end µs>`
//! per hold to its own log file, on the system-wide monotonic clock (read
//! after the grant and before the release, so logged intervals lie inside
//! the real holds). The parent sweeps the logs. Every child is killed if the
//! test fails, and every wait is bounded.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager, LockState};
use lockman_file::{FileBackend, FileOptions, LeaseFileBackend};
use lockman_testkit::processes::{HoldingChild, say_held_and_wait_for_stdin, wait_all_succeed};

const CHILD_ENV: &str = "LOCKMAN_MODES_CHILD";
/// The longest a run of children may take before the test kills them and fails.
const LIMIT: Duration = Duration::from_secs(60);

/// The lease the lease-file flavour's children hold with (renewed every
/// third of it): short, so a frozen holder lapses quickly.
const LEASE: Duration = Duration::from_millis(1500);

/// `file` (kernel locks) or `lease` (lease files).
fn open(flavour: &str, dir: &Path) -> Arc<dyn LockManager> {
    match flavour {
        "file" => Arc::new(FileBackend::open(FileOptions::new(dir)).expect("open").into_manager()),
        "lease" => {
            let options = FileOptions::new(dir).default_lease(LEASE).loss_check_interval(Duration::from_millis(100));
            Arc::new(LeaseFileBackend::open(options).expect("open").into_manager())
        }
        other => panic!("unknown flavour {other:?}"),
    }
}

/// `shared`, `exclusive` or `permits:N`.
fn options(mode: &str) -> AcquireOptions {
    let options = AcquireOptions::new().timeout(Duration::from_secs(30)).purpose(mode);
    match mode.split_once(':') {
        Some(("permits", n)) => options.permits(n.parse().expect("permit count")),
        _ if mode == "shared" => options.shared(),
        _ => options,
    }
}

/// Microseconds on CLOCK_MONOTONIC, which every process on the host shares.
fn monotonic_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).expect("secs") * 1_000_000 + u64::try_from(now.tv_nsec).expect("nanos") / 1_000
}

/// The child side: acts out the role in `LOCKMAN_MODES_CHILD` and exits.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let args: Vec<&str> = spec.split('\t').collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        match args.as_slice() {
            ["cycle", flavour, dir, resource, mode, rounds, hold_ms, log] => {
                let locks = open(flavour, Path::new(dir));
                println!("ready");
                std::io::stdout().flush().expect("flush");
                let mut go = String::new();
                std::io::stdin().read_line(&mut go).expect("wait for go");
                let hold = Duration::from_millis(hold_ms.parse().expect("hold"));
                let mut lines = String::new();
                for _ in 0..rounds.parse::<u32>().expect("rounds") {
                    let guard = locks.acquire(resource, options(mode)).await.expect("child acquire");
                    let start = monotonic_us();
                    tokio::time::sleep(hold).await; // the work done under the lock
                    let end = monotonic_us();
                    guard.release().await.expect("child release");
                    lines.push_str(&format!("{mode} {start} {end}\n"));
                }
                std::fs::write(log, lines).expect("write the log");
            }
            ["hold", flavour, dir, resource, mode] => {
                let locks = open(flavour, Path::new(dir));
                let guard = locks.acquire(resource, options(mode)).await.expect("child acquire");
                say_held_and_wait_for_stdin(guard.fencing_token());
                guard.release().await.expect("child release");
            }
            other => panic!("unknown child role {other:?}"),
        }
    });
    std::process::exit(0);
}

/// Children killed when dropped, so none outlives a failing test.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One hold from a log: its mode and its interval.
#[derive(Clone, Debug)]
struct Hold {
    mode: String,
    start: u64,
    end: u64,
}

impl Hold {
    fn overlaps(&self, other: &Hold) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// Runs one `cycle` child per mode in `modes` on `resource`, all starting
/// together, and returns every hold they logged.
fn run_cycles(flavour: &str, dir: &Path, resource: &str, modes: &[&str], rounds: u32, hold_ms: u64) -> Vec<Hold> {
    let logs: Vec<PathBuf> = (0..modes.len()).map(|i| dir.join(format!("log-{i}"))).collect();
    let locks = dir.join("locks");
    let mut children = Children(Vec::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for (mode, log) in modes.iter().zip(&logs) {
        let spec = format!(
            "cycle\t{flavour}\t{}\t{resource}\t{mode}\t{rounds}\t{hold_ms}\t{}",
            locks.display(),
            log.display()
        );
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a child");
        let stdout = child.stdout.take().expect("stdout");
        let ready_tx = ready_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have written `test child ... ` on the same line.
                if line.ends_with("ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        children.0.push(child);
    }
    for _ in modes {
        ready_rx.recv_timeout(LIMIT).expect("a child never got ready");
    }
    for child in &mut children.0 {
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).expect("start a child");
    }
    wait_all_succeed(&mut children.0, LIMIT);
    let mut holds = Vec::new();
    for log in &logs {
        for line in std::fs::read_to_string(log).expect("a child's log").lines() {
            let [mode, start, end] = line.split(' ').collect::<Vec<_>>()[..] else { panic!("bad log line {line:?}") };
            let (start, end) = (start.parse().expect("start"), end.parse().expect("end"));
            assert!(start <= end, "{line}");
            holds.push(Hold { mode: mode.to_owned(), start, end });
        }
    }
    assert_eq!(holds.len(), modes.len() * rounds as usize, "a child logged too few holds");
    holds
}

/// The most holds in progress at once (a hold ending at the instant
/// another starts does not overlap it).
fn most_at_once(holds: &[Hold]) -> usize {
    let mut events: Vec<(u64, i32)> = holds.iter().flat_map(|h| [(h.start, 1), (h.end, -1)]).collect();
    events.sort(); // at one instant, ends (-1) come before starts
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in events {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).expect("count")
}

/// Four reader processes each hold shared for 300 ms: together, far below
/// the 1.2 s they would take one after another.
fn reader_processes_hold_together(flavour: &str) {
    const HOLD_MS: u64 = 300;
    let dir = tempfile::tempdir().expect("dir");
    let holds = run_cycles(flavour, dir.path(), "report", &["shared"; 4], 1, HOLD_MS);
    let span = holds.iter().map(|h| h.end).max().expect("holds") - holds.iter().map(|h| h.start).min().expect("holds");
    let most = most_at_once(&holds);
    eprintln!(
        "{flavour}: 4 readers x {HOLD_MS} ms: {} ms from the first start to the last end, {most} at once",
        span / 1000
    );
    assert!(most >= 2, "{flavour}: reader processes never held together");
    assert!(span < 3 * HOLD_MS * 1000, "{flavour}: 4 readers of {HOLD_MS} ms took {} ms: serialised", span / 1000);
}

#[test]
fn kernel_reader_processes_hold_together() {
    reader_processes_hold_together("file");
}

#[test]
fn lease_reader_processes_hold_together() {
    reader_processes_hold_together("lease");
}

/// Three reader and three writer processes, twelve holds each: no writer's
/// hold overlaps anyone's, and every writer finishes (none is starved).
fn writer_processes_are_alone(flavour: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let modes = ["shared", "exclusive", "shared", "exclusive", "shared", "exclusive"];
    let holds = run_cycles(flavour, dir.path(), "table", &modes, 12, 5);
    for writer in holds.iter().filter(|h| h.mode == "exclusive") {
        for other in &holds {
            assert!(
                std::ptr::eq(writer, other) || !writer.overlaps(other),
                "a writer's hold {writer:?} overlapped {other:?}"
            );
        }
    }
    let readers: Vec<Hold> = holds.iter().filter(|h| h.mode == "shared").cloned().collect();
    eprintln!("{flavour}: 3 readers + 3 writers x 12: at most {} readers at once", most_at_once(&readers));
}

#[test]
fn kernel_writer_processes_are_alone() {
    writer_processes_are_alone("file");
}

#[test]
fn lease_writer_processes_are_alone() {
    writer_processes_are_alone("lease");
}

/// Eight processes share a semaphore of 3: never a fourth holder, and all
/// three permits in use at some point.
fn semaphore_processes_never_exceed_their_permits(flavour: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let holds = run_cycles(flavour, dir.path(), "jobs", &["permits:3"; 8], 6, 20);
    let most = most_at_once(&holds);
    eprintln!("{flavour}: 8 processes x semaphore(3): at most {most} at once over {} holds", holds.len());
    assert!(most <= 3, "{flavour}: {most} holders of a semaphore of 3 at once");
    assert_eq!(most, 3, "{flavour}: the semaphore of 3 never had 3 holders: permits were withheld");
}

#[test]
fn kernel_semaphore_processes_never_exceed_their_permits() {
    semaphore_processes_never_exceed_their_permits("file");
}

#[test]
fn lease_semaphore_processes_never_exceed_their_permits() {
    semaphore_processes_never_exceed_their_permits("lease");
}

/// A reader or permit holder killed with SIGKILL frees its share at once;
/// cleanup then reports the record it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_processes_free_their_share() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = open("file", dir.path());
    for mode in ["shared", "permits:2"] {
        let spec = format!("hold\tfile\t{}\tr\t{mode}", dir.path().display());
        let child = HoldingChild::spawn("child", CHILD_ENV, &spec, LIMIT);
        let info = match locks.state("r").await.expect("state") {
            LockState::Held(info) => info,
            other => panic!("{mode}: the child's hold is not shown: {other:?}"),
        };
        assert_ne!(info.pid, std::process::id());
        // An exclusive waiter meets a disagreeing semaphore with an error, so
        // waits only for the reader.
        let waiting = mode == "shared";
        let writer = waiting.then(|| {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire("r", options("exclusive")).await })
        });
        drop(child); // SIGKILL
        if let Some(writer) = writer {
            writer
                .await
                .expect("join")
                .expect("the writer got in once the reader was killed")
                .release()
                .await
                .expect("release");
        }
        assert_eq!(locks.state("r").await.expect("state"), LockState::Available, "{mode}");
        // The reader's record file, or the permit's slot, still says held.
        let crashed = locks.cleanup_stale().await.expect("cleanup");
        assert_eq!(crashed.len(), 1, "{mode}: {crashed:?}");
        assert_eq!(crashed[0].pid, info.pid, "{mode}");
        assert_eq!(crashed[0].purpose.as_deref(), Some(mode));
    }
}

/// The child holding `resource` in `locks`, as `state` shows it.
async fn child_holder(locks: &Arc<dyn LockManager>, resource: &str) -> lockman_core::LockInfo {
    let info = match locks.state(resource).await.expect("state") {
        LockState::Held(info) => info,
        other => panic!("the child's hold of {resource} is not shown: {other:?}"),
    };
    let child = info.all_holders().find(|h| h.pid != std::process::id()).cloned();
    child.unwrap_or_else(|| panic!("no holder of {resource} is the child: {info:?}"))
}

/// Lease files: a reader or permit holder process killed with SIGKILL stops
/// counting at once on this host (its pid is dead), long before its lease
/// would lapse: the writer, or the waiter for its permit, gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_killed_holder_processes_free_their_share() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = open("lease", dir.path());
    for (resource, mode, waiter_mode) in [("rw", "shared", "exclusive"), ("sem", "permits:1", "permits:1")] {
        let spec = format!("hold\tlease\t{}\t{resource}\t{mode}", dir.path().display());
        let child = HoldingChild::spawn("child", CHILD_ENV, &spec, LIMIT);
        child_holder(&locks, resource).await;
        let quick = options(waiter_mode).no_wait();
        assert!(locks.try_acquire(resource, quick).await.expect("try").is_none(), "{mode}: the child's hold let us in");
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire(resource, options(waiter_mode)).await })
        };
        drop(child); // SIGKILL
        let killed = std::time::Instant::now();
        let guard = waiter.await.expect("join").expect("the waiter got in once the holder was killed");
        eprintln!("{mode}: in {:?} after the kill", killed.elapsed());
        assert!(killed.elapsed() < LEASE, "{mode}: the dead holder counted until its lease lapsed");
        guard.release().await.expect("release");
        assert_eq!(locks.state(resource).await.expect("state"), LockState::Available, "{mode}");
    }
}

/// Waits (bounded) until process `pid` is stopped.
fn until_stopped(pid: u32) {
    let started = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the child's /proc stat");
        // `pid (comm) S ...`: the state follows the last ')'.
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T')) {
            return;
        }
        assert!(started.elapsed() < LIMIT, "process {pid} never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Lease files: a reader or permit holder process frozen with SIGSTOP is
/// alive but no longer renews; it stops counting when its own lease lapses
/// — not before — and then the writer, or the waiter for its permit, gets
/// in, breaking its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_frozen_holder_processes_stop_counting_when_their_lease_lapses() {
    let dir = tempfile::tempdir().expect("dir");
    let locks = open("lease", dir.path());
    for (resource, mode, waiter_mode) in [("rw", "shared", "exclusive"), ("sem", "permits:1", "permits:1")] {
        let spec = format!("hold\tlease\t{}\t{resource}\t{mode}", dir.path().display());
        let child = HoldingChild::spawn("child", CHILD_ENV, &spec, LIMIT);
        let pid = child_holder(&locks, resource).await.pid;
        let raw = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
        rustix::process::kill_process(raw, rustix::process::Signal::STOP).expect("SIGSTOP the child");
        until_stopped(pid);
        // Its last heartbeat is final now: so is the end of its lease.
        let lapses_at = child_holder(&locks, resource).await.lease_expires_at.expect("a lease");
        let guard = locks.acquire(resource, options(waiter_mode)).await.expect("the waiter got in after the lease");
        let granted = std::time::SystemTime::now();
        eprintln!("{mode}: in {:?} after the frozen holder's lease lapsed", granted.duration_since(lapses_at));
        assert!(granted >= lapses_at, "{mode}: the waiter got in while the frozen holder's lease ran");
        let holders = match locks.state(resource).await.expect("state") {
            LockState::Held(info) => info.all_holders().map(|h| h.pid).collect::<Vec<_>>(),
            other => panic!("{mode}: {other:?}"),
        };
        assert_eq!(holders, [std::process::id()], "{mode}: the frozen holder is still shown");
        guard.release().await.expect("release");
        drop(child); // SIGKILL works on a stopped process
    }
}

/// Three reader processes keep the resource held shared without a gap; a
/// writer in this process still gets in while they go on (readers arriving
/// after it wait), instead of only once they stop.
#[test]
fn a_writer_is_not_starved_by_reader_processes() {
    let dir = tempfile::tempdir().expect("dir");
    let locks_dir = dir.path().join("locks");
    let readers = {
        let dir = dir.path().to_owned();
        std::thread::spawn(move || run_cycles("file", &dir, "table", &["shared"; 3], 60, 20))
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (granted, released) = runtime.block_on(async {
        let locks = open("file", &locks_dir);
        // Bounded by the readers' run: they hold it for over a second.
        let started = std::time::Instant::now();
        while !locks.state("table").await.expect("state").is_held() {
            assert!(started.elapsed() < LIMIT, "the readers never held the resource");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let guard = locks.acquire("table", options("exclusive")).await.expect("writer");
        let granted = monotonic_us();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let released = monotonic_us();
        guard.release().await.expect("release");
        (granted, released)
    });
    let holds = readers.join().expect("the reader processes failed");
    let writer = Hold { mode: "exclusive".to_owned(), start: granted, end: released };
    assert!(holds.iter().all(|h| !h.overlaps(&writer)), "a reader held beside the writer");
    let after = holds.iter().filter(|h| h.start >= released).count();
    let first = holds.iter().map(|h| h.start).min().expect("holds");
    eprintln!(
        "the writer got in {} ms after the readers started; {after} of {} reader holds came after it",
        (granted - first) / 1000,
        holds.len()
    );
    assert!(after >= holds.len() / 4, "the writer got in only as the readers ran out ({after} holds after it)");
}

/// `state`, `list` and `cleanup_stale` run without pause beside reader,
/// writer and permit processes: their momentary locks and file removals
/// make nobody overlap, fail or be refused as disagreeing.
#[test]
fn probes_and_cleanups_beside_holder_processes_change_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for (resource, modes, most) in
        [("table", &["shared", "exclusive", "shared", "exclusive"][..], None), ("jobs", &["permits:2"; 5][..], Some(2))]
    {
        let dir = tempfile::tempdir().expect("dir");
        let done = Arc::new(AtomicBool::new(false));
        let prober = {
            let (locks_dir, done) = (dir.path().join("locks"), done.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async {
                    std::fs::create_dir_all(&locks_dir).expect("dir");
                    let locks = open("file", &locks_dir);
                    let mut rounds = 0u32;
                    while !done.load(Ordering::SeqCst) {
                        locks.state(resource).await.expect("state");
                        locks.list().await.expect("list");
                        let crashed = locks.cleanup_stale().await.expect("cleanup");
                        assert!(crashed.is_empty(), "cleanup reported live holders as crashed: {crashed:?}");
                        rounds += 1;
                    }
                    rounds
                })
            })
        };
        let holds = run_cycles("file", dir.path(), resource, modes, 15, 3);
        done.store(true, Ordering::SeqCst);
        let rounds = prober.join().expect("the prober failed");
        for writer in holds.iter().filter(|h| h.mode == "exclusive") {
            for other in &holds {
                assert!(std::ptr::eq(writer, other) || !writer.overlaps(other), "{writer:?} overlapped {other:?}");
            }
        }
        if let Some(limit) = most {
            assert!(most_at_once(&holds) <= limit, "{} holders of a semaphore of {limit}", most_at_once(&holds));
        }
        eprintln!("{resource}: {rounds} rounds of state+list+cleanup beside {} holds", holds.len());
        assert!(rounds > 0);
    }
}
