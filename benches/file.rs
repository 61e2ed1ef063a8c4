//! The file backends beside a raw `flock`, measured in the same run.
//!
//! The baseline is what a hand-written lock file does: `std::fs::OpenOptions`
//! (read, write, create) on a file in a temporary directory, `File::lock`,
//! `File::unlock` and close. Against it:
//!
//! * **uncontended acquire + release** (criterion): lockman's kernel-lock
//!   `file` backend through the async API and through the blocking API, and
//!   for context the lease mode (`LeaseFileBackend`) and the legacy mode
//!   (`LegacyFileBackend`, a resource with no legacy mapping).
//! * **8 workers** (criterion, items/s): 8 OS threads on the blocking API
//!   hammering 1 and 64 resources, beside 8 threads doing raw `flock` cycles.
//! * **handoff to a blocked waiter** (printed after criterion, p50/p90/p99):
//!   the waiter is another thread of this process, or another process (this
//!   bench binary re-run as a child waiter, see [`CHILD_ENV`]). The holder
//!   gives the waiter [`PARK`] to block, notes the time and releases; the
//!   waiter notes when its acquire returned. Handoffs run back to back, and
//!   again [`SPACED`] apart (so one waiter's teardown cannot delay the next
//!   wake). The py-filelock figure quoted in the issue is printed beside them,
//!   labelled as quoted, not measured.
//! * **fairness** (printed): acquisitions per worker, fewest and most, when 8
//!   threads hammer one resource for [`FAIRNESS_RUN`].
//!
//! Run everything with `cargo bench -p lockman-benches --bench file` (about two minutes on two
//! cores), or one criterion group with a filter, e.g.
//! `cargo bench -p lockman-benches --bench file -- uncontended`; the handoff and fairness tables
//! are printed after criterion in every run except `--test`/`--list`.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use lockman::blocking::BlockingLockManager;
use lockman::file::{FileBackend, FileOptions, LeaseFileBackend, LegacyFileBackend, LegacyOptions};
use lockman::{AcquireOptions, LockBackend, LockManager};

use support::{percentile, print_fairness_header, print_fairness_row};

mod support;

/// Set (to `flock:<dir>` or `lockman:<dir>`) when this binary runs as the
/// child waiter of the cross-process handoff instead of as the bench.
const CHILD_ENV: &str = "LOCKMAN_FILE_BENCH_CHILD";

/// How long a holder gives the waiter to block before the measured release.
const PARK: Duration = Duration::from_millis(2);

/// The pause before each handoff of the "spaced" rows. A waiter closes its
/// inotify descriptor once it has the lock, and when watches come and go back
/// to back that close can block for several milliseconds (8-16 ms on the bench
/// machine); spaced handoffs show the wake without that in the way.
const SPACED: Duration = Duration::from_millis(25);

/// Handoffs measured per contender, after [`HANDOFF_WARMUP`] discarded ones.
const HANDOFF_ROUNDS: usize = 200;
const HANDOFF_WARMUP: usize = 10;

const WORKERS: usize = 8;
const OPS_PER_WORKER: usize = 100;
const RESOURCES: usize = 64;

/// How long the 8 workers of the fairness table run.
const FAIRNESS_RUN: Duration = Duration::from_secs(1);

/// py-filelock's median handoff as quoted in the issue (50 ms poll interval).
const PY_FILELOCK_QUOTED_P50: Duration = Duration::from_millis(28);

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// The baseline's lock: open (creating) the file and `flock` it.
fn raw_lock(path: &Path) -> File {
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).expect("open the lock file");
    file.lock().expect("flock");
    file
}

/// The baseline's release: unlock, then close.
fn raw_unlock(file: File) {
    file.unlock().expect("unlock");
    drop(file);
}

fn file_manager(dir: &Path) -> lockman::FileLockManager {
    FileBackend::open(FileOptions::new(dir)).expect("open the file backend").into_manager()
}

/// A lock a plain thread takes on resource `r` of [`RESOURCES`].
#[derive(Clone)]
enum ThreadLock {
    /// Raw `flock`: open + lock, unlock + close, every cycle.
    Flock(Arc<[PathBuf]>),
    /// lockman's blocking API over the kernel-lock file backend.
    Lockman(BlockingLockManager, Arc<[String]>),
}

impl ThreadLock {
    /// `kind` is `flock` or `lockman`; both name their files after `resource-<r>`.
    fn new(kind: &str, dir: &Path) -> ThreadLock {
        let names: Arc<[String]> = (0..RESOURCES).map(|r| format!("resource-{r}")).collect();
        match kind {
            "flock" => ThreadLock::Flock(names.iter().map(|name| dir.join(format!("{name}.lock"))).collect()),
            "lockman" => ThreadLock::Lockman(BlockingLockManager::new(Arc::new(file_manager(dir))), names),
            other => panic!("unknown lock kind {other:?}"),
        }
    }

    /// Runs `f` holding resource `r`; releases as `f` returns.
    fn with<R>(&self, r: usize, f: impl FnOnce() -> R) -> R {
        match self {
            ThreadLock::Flock(paths) => {
                let file = raw_lock(&paths[r]);
                let out = f();
                raw_unlock(file);
                out
            }
            ThreadLock::Lockman(locks, names) => {
                let guard = locks.lock(&names[r]).expect("acquire");
                let out = f();
                guard.release().expect("release");
                out
            }
        }
    }
}

/// The contenders of the handoff, throughput and fairness measurements.
const THREAD_CONTENDERS: [(&str, &str); 2] =
    [("flock", "baseline: raw open+flock+unlock+close"), ("lockman", "lockman file: blocking API")];

fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("file: uncontended acquire+release");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    let raw_dir = temp_dir();
    let raw_path = raw_dir.path().join("inverter_read.lock");
    group.bench_function("baseline: raw open+flock+unlock+close", |b| b.iter(|| raw_unlock(raw_lock(&raw_path))));
    let open = raw_lock(&raw_path);
    open.unlock().expect("unlock");
    group.bench_function("context: flock+unlock on an open file", |b| {
        b.iter(|| {
            open.lock().expect("flock");
            open.unlock().expect("unlock");
        })
    });

    let file_dir = temp_dir();
    let locks = file_manager(file_dir.path());
    group.bench_function("lockman file: acquire+release (async)", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
            black_box(&guard);
            guard.release().await.expect("release");
        })
    });
    group.bench_function("baseline: raw open+flock(LOCK_SH)+unlock+close", |b| {
        b.iter(|| {
            let file =
                File::options().read(true).write(true).create(true).truncate(false).open(&raw_path).expect("open");
            file.lock_shared().expect("flock LOCK_SH");
            raw_unlock(file);
        })
    });
    group.bench_function("lockman file: acquire shared + release (async)", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = locks.acquire("regcache", AcquireOptions::new().shared()).await.expect("acquire shared");
            black_box(&guard);
            guard.release().await.expect("release");
        })
    });
    let blocking = BlockingLockManager::new(Arc::new(file_manager(file_dir.path())));
    group.bench_function("lockman file: blocking API", |b| {
        b.iter(|| blocking.lock("inverter_read").expect("acquire").release().expect("release"))
    });

    let lease_dir = temp_dir();
    let lease =
        LeaseFileBackend::open(FileOptions::new(lease_dir.path())).expect("open the lease backend").into_manager();
    let legacy_dir = temp_dir();
    let legacy =
        LegacyFileBackend::open(LegacyOptions::new(legacy_dir.path())).expect("open the legacy backend").into_manager();
    let context: [(&str, &dyn LockManager); 2] =
        [("context: lockman lease mode (async)", &lease), ("context: lockman legacy mode, unmapped (async)", &legacy)];
    for (name, locks) in context {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let guard = locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
                black_box(&guard);
                guard.release().await.expect("release");
            })
        });
    }
    group.bench_function("context: lockman lease mode, acquire shared + release (async)", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = lease.acquire("regcache", AcquireOptions::new().shared()).await.expect("acquire shared");
            black_box(&guard);
            guard.release().await.expect("release");
        })
    });
    group.finish();
}

/// `WORKERS` threads each doing `OPS_PER_WORKER` cycles over `resources`
/// resources, round robin.
fn hammer(lock: &ThreadLock, resources: usize) -> Duration {
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (lock, start) = (lock.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..OPS_PER_WORKER {
                    lock.with((w + i) % resources, || black_box(i));
                }
            })
        })
        .collect();
    start.wait();
    let started = Instant::now();
    for worker in workers {
        worker.join().expect("worker panicked");
    }
    started.elapsed()
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("file: {WORKERS} workers"));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Elements((WORKERS * OPS_PER_WORKER) as u64));
    for resources in [1usize, RESOURCES] {
        for (kind, name) in THREAD_CONTENDERS {
            let dir = temp_dir();
            let lock = ThreadLock::new(kind, dir.path());
            group.bench_with_input(BenchmarkId::new(name, resources), &resources, |b, &resources| {
                b.iter_custom(|iters| (0..iters).map(|_| hammer(&lock, resources)).sum())
            });
        }
    }
    group.finish();
}

/// Handoffs to a waiter in another thread: `Instant` at release to `Instant`
/// when the waiter's acquire returned.
fn thread_handoff(lock: &ThreadLock, gap: Duration) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(HANDOFF_ROUNDS);
    for round in 0..HANDOFF_WARMUP + HANDOFF_ROUNDS {
        std::thread::sleep(gap);
        let (held_tx, held_rx) = mpsc::channel();
        let (waiting_tx, waiting_rx) = mpsc::channel();
        let waiter_lock = lock.clone();
        let waiter = std::thread::spawn(move || {
            held_rx.recv().expect("holder gone");
            waiting_tx.send(()).expect("holder gone");
            waiter_lock.with(0, Instant::now)
        });
        let released_at = lock.with(0, || {
            held_tx.send(()).expect("waiter gone");
            waiting_rx.recv().expect("waiter gone");
            std::thread::sleep(PARK);
            Instant::now()
        });
        let granted_at = waiter.join().expect("waiter panicked");
        if round >= HANDOFF_WARMUP {
            latencies.push(granted_at.saturating_duration_since(released_at));
        }
    }
    latencies
}

fn unix_nanos(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos()
}

/// Handoffs to a waiter in a child process (this binary, see [`child_waiter`]):
/// wall-clock time at release to wall-clock time when the child's acquire
/// returned.
fn process_handoff(kind: &str, lock: &ThreadLock, dir: &Path, gap: Duration) -> Vec<Duration> {
    let exe = std::env::current_exe().expect("path of the bench binary");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, format!("{kind}:{}", dir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child waiter");
    let mut to_child = child.stdin.take().expect("child stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("child stdout"));
    let mut latencies = Vec::with_capacity(HANDOFF_ROUNDS);
    let mut line = String::new();
    for round in 0..HANDOFF_WARMUP + HANDOFF_ROUNDS {
        std::thread::sleep(gap);
        let released_at = lock.with(0, || {
            writeln!(to_child, "go").and_then(|()| to_child.flush()).expect("child gone");
            std::thread::sleep(PARK);
            SystemTime::now()
        });
        line.clear();
        from_child.read_line(&mut line).expect("read from the child");
        let granted_at: u128 = line.trim().parse().expect("the child waiter stopped");
        if round >= HANDOFF_WARMUP {
            let nanos = granted_at.saturating_sub(unix_nanos(released_at));
            latencies.push(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)));
        }
    }
    drop(to_child);
    let status = child.wait().expect("wait for the child waiter");
    assert!(status.success(), "child waiter failed: {status}");
    latencies
}

/// The child side of [`process_handoff`]: for every line on stdin, acquire
/// (blocking until the parent releases), note the wall-clock time, release,
/// and print that time in nanoseconds since the epoch.
fn child_waiter(spec: &str) {
    let (kind, dir) = spec.split_once(':').expect("child spec is <kind>:<dir>");
    let lock = ThreadLock::new(kind, Path::new(dir));
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        line.expect("read from the parent");
        let granted_at = lock.with(0, SystemTime::now);
        writeln!(stdout, "{}", unix_nanos(granted_at)).and_then(|()| stdout.flush()).expect("parent gone");
    }
}

/// `WORKERS` threads on one resource for `FAIRNESS_RUN`, each with the lock
/// `lock_for(worker)` gives it; acquisitions per worker.
fn fairness(lock_for: impl Fn(usize) -> ThreadLock) -> Vec<u64> {
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (lock, start, stop) = (lock_for(worker), start.clone(), stop.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut acquired = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    lock.with(0, || acquired += 1);
                }
                acquired
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(FAIRNESS_RUN);
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().map(|w| w.join().expect("worker panicked")).collect()
}

/// Handoff percentiles and fairness, every contender from this same run.
fn summary() {
    println!("\nfile: handoff to a blocked waiter ({HANDOFF_ROUNDS} handoffs each, waiter given {PARK:?} to block)");
    println!("{:<70} {:>10} {:>10} {:>10}", "contender", "p50", "p90", "p99");
    for (kind, name) in THREAD_CONTENDERS {
        for (pace, gap) in [("back to back", Duration::ZERO), ("spaced", SPACED)] {
            let dir = temp_dir();
            let lock = ThreadLock::new(kind, dir.path());
            let waiters: [(&str, Vec<Duration>); 2] = [
                ("other thread", thread_handoff(&lock, gap)),
                ("other process", process_handoff(kind, &lock, dir.path(), gap)),
            ];
            for (waiter, mut latencies) in waiters {
                latencies.sort();
                println!(
                    "{:<70} {:>10.1?} {:>10.1?} {:>10.1?}",
                    format!("{name} ({waiter}, {pace})"),
                    percentile(&latencies, 0.50),
                    percentile(&latencies, 0.90),
                    percentile(&latencies, 0.99)
                );
            }
        }
    }
    println!(
        "{:<70} {:>10.1?} {:>10} {:>10}",
        "py-filelock, 50 ms poll (quoted in the issue, not measured)", PY_FILELOCK_QUOTED_P50, "-", "-"
    );

    println!("\nfile: fairness, {WORKERS} workers on 1 resource for {FAIRNESS_RUN:?}, acquisitions per worker");
    print_fairness_header();
    for (kind, name) in THREAD_CONTENDERS {
        let dir = temp_dir();
        let shared = ThreadLock::new(kind, dir.path());
        print_fairness_row(name, &fairness(|_| shared.clone()));
    }
    // Eight managers stand in for eight processes: each queues on its own,
    // so only the cross-process queue (`<stem>.queue`) keeps the order.
    let dir = temp_dir();
    let counts = fairness(|_| ThreadLock::new("lockman", dir.path()));
    print_fairness_row("lockman file: blocking API, a manager per thread (as processes)", &counts);
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_waiter(&spec);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    uncontended(&mut criterion);
    throughput(&mut criterion);
    criterion.final_summary();
    // `cargo test --benches` runs the bench in test mode; skip the long summary there.
    if !std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        summary();
    }
}
