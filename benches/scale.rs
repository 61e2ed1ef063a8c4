//! Scale curves (issue 16 item 5): how the cost of a lock operation grows
//! with the work around it, per backend, through `Arc<dyn LockManager>` from
//! `lockman::connect`. Custom timing loops, not criterion: each point needs
//! its own setup (thousands of held locks, a queue of waiters, a crowd of
//! managers), which criterion's iteration model would repeat or share badly.
//!
//! * **cycle vs held locks**: the mean acquire + release of one resource
//!   (median of [`BATCHES`] batches) while the same manager holds N other
//!   locks, N = 1 … 100,000, grown in place. Capped where the backend cannot
//!   hold that many here (see [`Plan::held_cap`]).
//! * **handoff vs waiters**: W waiters (1 … 1,000) queued on one resource
//!   behind its holder: W + 1 contenders, spread round robin over
//!   [`WAITER_MANAGERS`] managers (Redis and the file backend queue a
//!   manager's own waiters locally, so only its first one waits on the
//!   store; several managers put several in the store's queue). Each notes
//!   when it got the lock, holds it [`HANDOFF_HOLD`], notes when it lets it
//!   go and queues again at the tail, so the queue stays W long and every
//!   handoff is "previous release → next grant": p50 and p90 of
//!   [`HANDOFF_SAMPLES`] of them.
//! * **cycle vs managers**: one manager's uncontended cycle on its own
//!   resource while M managers (it included, 1 … 64) are connected to the
//!   same store, the others *busy*: pairs of them share a resource and each
//!   takes it once per [`Plan::bg_period`] for [`BG_HOLD`], the second half a
//!   hold after the first, so one release per pair and period has a waiter.
//!   On Redis only such a release publishes, and every manager's
//!   `PSUBSCRIBE` hears every message: that fan-out is the curve (the bench
//!   prints the messages published per second).
//! * **list() / cleanup_stale() vs stale locks** (file backend): N = 1 …
//!   100,000 locks left by crashed holders (child processes that took their
//!   locks and exited without releasing, once; every sample writes those
//!   bytes into a fresh directory). Each is two files, its `.lock` (the
//!   holder's record) and its `.gate` (the last fencing token). `list()` probes every file (and
//!   returns none: nobody holds them); `cleanup_stale()` removes them all.
//!
//! Run everything with `cargo bench -p lockman-benches --bench scale` (about
//! 4–6 minutes on two cores), or a subset by naming backends and/or curves:
//! `cargo bench -p lockman-benches --bench scale -- memory file handoff`.
//! Results are printed as a table and written as JSON to
//! `target/scale/scale.json` (or `$LOCKMAN_SCALE_OUT`), which
//! `benches/plot_scale.py` draws as `docs/scale.svg`. Redis and etcd run on
//! private servers on free loopback ports (never 6379/2379), skipped with a
//! message when `redis-server` / `etcd` is not on `PATH`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockman::{AcquireOptions, LockGuard, LockManager};
use lockman_testkit::etcd_server::EtcdServer;
use lockman_testkit::redis_server::RedisServer;
use parking_lot::Mutex;

use support::percentile;

mod support;

/// Set (to `<dir>:<first>:<count>`) when this binary runs as a crashing
/// holder that leaves stale locks for the list/cleanup curve.
const CHILD_ENV: &str = "LOCKMAN_SCALE_BENCH_CHILD";

const HELD: [usize; 6] = [1, 10, 100, 1_000, 10_000, 100_000];
const WAITERS: [usize; 4] = [1, 10, 100, 1_000];
const MANAGERS: [usize; 4] = [1, 4, 16, 64];
const FILES: [usize; 4] = [1, 100, 10_000, 100_000];

/// Timed batches per cycle point (after one discarded warm-up batch).
const BATCHES: usize = 7;
/// How many acquisitions run at once while filling up the held locks.
const FILL_WIDTH: usize = 64;
/// The managers the waiters of the handoff curve are spread over.
const WAITER_MANAGERS: usize = 8;
/// Handoffs measured per point, after [`HANDOFF_WARMUP`] discarded ones
/// (the first wakes a waiter that sat through the whole queueing).
const HANDOFF_SAMPLES: usize = 60;
const HANDOFF_WARMUP: usize = 5;
/// How long each contender holds the lock: every handoff wakes a waiter
/// that has been parked at least this long.
const HANDOFF_HOLD: Duration = Duration::from_millis(1);
/// How long a busy background manager holds its lock per cycle.
const BG_HOLD: Duration = Duration::from_millis(2);
/// Stale locks made per crashing child (its descriptors stay below the limit).
const STALE_PER_CHILD: usize = 10_000;

/// One measured point of one curve.
struct Point {
    backend: &'static str,
    curve: &'static str,
    x: usize,
    /// Nanoseconds: the median (cycles, list, cleanup) or p50 (handoff).
    value_ns: f64,
    /// p90 for handoffs; the time per lock for list and cleanup.
    extra_ns: Option<f64>,
}

/// A store the managers of one backend share.
enum Store {
    Memory,
    File(tempfile::TempDir),
    Redis(RedisServer),
    Etcd(EtcdServer),
}

/// Per-backend sizes: as large as the curve asks, unless this machine or the
/// bench's 10-minute budget says otherwise (the reason is printed).
struct Plan {
    /// Cycles per timed batch.
    per_batch: usize,
    held_cap: Option<(usize, &'static str)>,
    /// Period of a busy background manager's cycle.
    bg_period: Duration,
    /// Time the waiters get to queue after the last one called `acquire`.
    settle: Duration,
    settle_per_waiter: Duration,
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::File(_) => "file",
            Store::Redis(_) => "redis",
            Store::Etcd(_) => "etcd",
        }
    }

    /// A new manager on this store, with connections of its own (as another process's).
    async fn manager(&self) -> Arc<dyn LockManager> {
        let url = match self {
            // A named map: every manager of this process on it shares one table.
            Store::Memory => "memory://scale".to_owned(),
            Store::File(dir) => format!("file://{}", dir.path().display()),
            Store::Redis(server) => server.url(),
            Store::Etcd(server) => server.url(),
        };
        lockman::connect(&url).await.unwrap_or_else(|e| panic!("connect to {url}: {e}")).locks
    }

    /// `PUBLISH`es the Redis server has run so far (inside the release
    /// script too); `None` for the other stores.
    fn publishes(&self) -> Option<u64> {
        let Store::Redis(server) = self else { return None };
        let stats = server.command(&["INFO", "commandstats"]).ok()?;
        let calls = stats.lines().find_map(|line| line.strip_prefix("cmdstat_publish:calls="));
        Some(calls.and_then(|rest| rest.split(',').next()?.parse().ok()).unwrap_or(0))
    }

    fn plan(&self) -> Plan {
        let ms = Duration::from_millis;
        match self {
            Store::Memory => {
                Plan { per_batch: 2_000, held_cap: None, bg_period: ms(20), settle: ms(10), settle_per_waiter: ms(0) }
            }
            Store::File(_) => Plan {
                per_batch: 200,
                held_cap: Some((
                    10_000,
                    "a held kernel lock is an open descriptor; this machine's hard limit is 20,000",
                )),
                bg_period: ms(20),
                settle: ms(50),
                settle_per_waiter: Duration::from_micros(100),
            },
            Store::Redis(_) => {
                Plan { per_batch: 100, held_cap: None, bg_period: ms(20), settle: ms(100), settle_per_waiter: ms(0) }
            }
            Store::Etcd(_) => Plan {
                per_batch: 20,
                held_cap: Some((
                    10_000,
                    "the 10-minute budget: every etcd grant is a fsynced write plus a watch stream and a task of its own",
                )),
                bg_period: ms(200),
                settle: ms(200),
                settle_per_waiter: ms(3),
            },
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Mean nanoseconds of one acquire + release of `resource`: the median of
/// [`BATCHES`] batches of `per_batch` cycles.
async fn cycle_ns(locks: &Arc<dyn LockManager>, resource: &str, per_batch: usize) -> f64 {
    let mut means = Vec::with_capacity(BATCHES);
    for batch in 0..=BATCHES {
        let started = Instant::now();
        for _ in 0..per_batch {
            let guard = locks.acquire(resource, AcquireOptions::new()).await.expect("acquire");
            guard.release().await.expect("release");
        }
        if batch > 0 {
            means.push(started.elapsed().as_nanos() as f64 / per_batch as f64);
        }
    }
    means.sort_by(f64::total_cmp);
    means[means.len() / 2]
}

/// Acquires every name, `width` at a time.
async fn acquire_many(locks: &Arc<dyn LockManager>, names: Vec<String>, width: usize) -> Vec<LockGuard> {
    let mut guards = Vec::with_capacity(names.len());
    for chunk in names.chunks(width) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|name| {
                let (locks, name) = (locks.clone(), name.clone());
                tokio::spawn(async move { locks.acquire(&name, AcquireOptions::new()).await })
            })
            .collect();
        for task in tasks {
            guards.push(task.await.expect("acquire task panicked").expect("acquire a lock to hold"));
        }
    }
    guards
}

/// Releases every guard, [`FILL_WIDTH`] at a time; how many reported a lost lock.
async fn release_many(guards: Vec<LockGuard>) -> usize {
    let mut lost = 0;
    let mut guards = guards.into_iter();
    loop {
        let tasks: Vec<_> = guards.by_ref().take(FILL_WIDTH).map(|guard| tokio::spawn(guard.release())).collect();
        if tasks.is_empty() {
            return lost;
        }
        for task in tasks {
            lost += usize::from(task.await.expect("release task panicked").is_err());
        }
    }
}

async fn cycle_vs_held(store: &Store, plan: &Plan, points: &mut Vec<Point>) {
    let locks = store.manager().await;
    let mut held = Vec::new();
    for n in HELD {
        if let Some((cap, why)) = plan.held_cap
            && n > cap
        {
            println!("  {}: cycle vs held locks capped at {cap}: {why}", store.name());
            break;
        }
        let started = Instant::now();
        let names = (held.len()..n).map(|i| format!("held-{i}")).collect();
        held.extend(acquire_many(&locks, names, FILL_WIDTH).await);
        let filled = started.elapsed();
        let ns = cycle_ns(&locks, "probe", plan.per_batch).await;
        println!("  {}: cycle with {n} held: {:.1?} (filled in {filled:.1?})", store.name(), ns_duration(ns));
        points.push(Point { backend: store.name(), curve: "cycle vs held locks", x: n, value_ns: ns, extra_ns: None });
    }
    let count = held.len();
    let lost = release_many(held).await;
    if lost > 0 {
        println!("  {}: NOTE {lost} of the {count} held locks were reported lost at release", store.name());
    }
}

/// Grant and release instants, appended by each holder while it holds the
/// lock, so both lists are in grant order. `releases[0]` is the first holder's.
#[derive(Default)]
struct Chain {
    grants: Vec<Instant>,
    releases: Vec<Instant>,
}

async fn handoff_vs_waiters(store: &Store, plan: &Plan, points: &mut Vec<Point>) {
    let mut managers = Vec::with_capacity(WAITER_MANAGERS);
    for _ in 0..WAITER_MANAGERS {
        managers.push(store.manager().await);
    }
    for w in WAITERS {
        let resource = format!("queue-{w}");
        let head = managers[0].acquire(&resource, AcquireOptions::new()).await.expect("acquire the head");
        let chain = Arc::new(Mutex::new(Chain::default()));
        let calling = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        // w + 1 contenders: one holds, w wait, and whoever releases queues again.
        let contenders: Vec<_> = (0..=w)
            .map(|i| {
                let locks = managers[i % managers.len()].clone();
                let (resource, chain, calling, stop) = (resource.clone(), chain.clone(), calling.clone(), stop.clone());
                tokio::spawn(async move {
                    calling.fetch_add(1, Ordering::SeqCst);
                    loop {
                        let guard = locks.acquire(&resource, AcquireOptions::new()).await.expect("waiter acquire");
                        let done = stop.load(Ordering::SeqCst);
                        if !done {
                            chain.lock().grants.push(Instant::now());
                            tokio::time::sleep(HANDOFF_HOLD).await;
                            let mut chain = chain.lock();
                            chain.releases.push(Instant::now());
                            if chain.grants.len() >= HANDOFF_WARMUP + HANDOFF_SAMPLES {
                                stop.store(true, Ordering::SeqCst);
                            }
                        }
                        guard.release().await.expect("waiter release");
                        if done {
                            return;
                        }
                    }
                })
            })
            .collect();
        while calling.load(Ordering::SeqCst) <= w {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(plan.settle + plan.settle_per_waiter * w as u32).await;
        chain.lock().releases.push(Instant::now());
        head.release().await.expect("release the head");
        for contender in contenders {
            contender.await.expect("waiter panicked");
        }
        let chain = chain.lock();
        let mut samples: Vec<Duration> = (HANDOFF_WARMUP..HANDOFF_WARMUP + HANDOFF_SAMPLES)
            .map(|k| chain.grants[k].saturating_duration_since(chain.releases[k]))
            .collect();
        samples.sort();
        let (p50, p90) = (percentile(&samples, 0.5), percentile(&samples, 0.9));
        println!("  {}: handoff with {w} waiters: p50 {p50:.1?}, p90 {p90:.1?}", store.name());
        points.push(Point {
            backend: store.name(),
            curve: "handoff vs waiters",
            x: w,
            value_ns: p50.as_nanos() as f64,
            extra_ns: Some(p90.as_nanos() as f64),
        });
    }
}

async fn cycle_vs_managers(store: &Store, plan: &Plan, points: &mut Vec<Point>) {
    for m in MANAGERS {
        let measured = store.manager().await;
        let mut others = Vec::with_capacity(m - 1);
        for _ in 1..m {
            others.push(store.manager().await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let background: Vec<_> = others
            .iter()
            .enumerate()
            .map(|(i, locks)| {
                // Pairs share a resource in lockstep: the first takes it at the
                // top of each period, the second asks half a hold later, so every
                // period one release hands over to a waiter (on Redis: publishes).
                let (locks, stop, resource) = (locks.clone(), stop.clone(), format!("busy-{m}-{}", i / 2));
                let pairs = m.div_ceil(2) as u32;
                let phase =
                    plan.bg_period * (i / 2) as u32 / pairs + if i % 2 == 1 { BG_HOLD / 2 } else { Duration::ZERO };
                let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, plan.bg_period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        ticks.tick().await;
                        let guard = locks.acquire(&resource, AcquireOptions::new()).await.expect("background acquire");
                        tokio::time::sleep(BG_HOLD).await;
                        guard.release().await.expect("background release");
                    }
                })
            })
            .collect();
        tokio::time::sleep(plan.bg_period * 2).await;
        let (publishes, started) = (store.publishes(), Instant::now());
        let ns = cycle_ns(&measured, &format!("own-{m}"), plan.per_batch).await;
        if let (Some(before), Some(after)) = (publishes, store.publishes()) {
            let rate = (after - before) as f64 / started.elapsed().as_secs_f64();
            println!("  {}: {m} managers: {rate:.0} release messages/s published", store.name());
        }
        stop.store(true, Ordering::Relaxed);
        for task in background {
            task.await.expect("background manager panicked");
        }
        println!("  {}: cycle with {m} managers connected: {:.1?}", store.name(), ns_duration(ns));
        points.push(Point { backend: store.name(), curve: "cycle vs managers", x: m, value_ns: ns, extra_ns: None });
    }
}

/// A stale lock's files (its `.lock` and its `.gate`): (name, bytes).
type StaleLock = Vec<(std::ffi::OsString, Vec<u8>)>;

/// Leaves [`FILES`]' largest count of stale locks in a directory (by
/// crashing child holders) and returns their files, lock by lock.
fn stale_locks() -> Vec<StaleLock> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let total = FILES[FILES.len() - 1];
    let exe = std::env::current_exe().expect("path of the bench binary");
    for first in (0..total).step_by(STALE_PER_CHILD) {
        let count = STALE_PER_CHILD.min(total - first);
        let status = Command::new(&exe)
            .env(CHILD_ENV, format!("{first}:{count}:{}", dir.path().display()))
            .status()
            .expect("start a crashing holder");
        assert!(status.success(), "a crashing holder failed: {status}");
    }
    let mut by_lock = std::collections::BTreeMap::<std::ffi::OsString, StaleLock>::new();
    for entry in std::fs::read_dir(dir.path()).expect("read the stale directory") {
        let path = entry.expect("read a stale file's entry").path();
        let stem = path.file_stem().expect("lock files have names").to_owned();
        let name = path.file_name().expect("lock files have names").to_owned();
        by_lock.entry(stem).or_default().push((name, std::fs::read(&path).expect("read a stale file")));
    }
    assert_eq!(by_lock.len(), total, "one family of files per crashed holder");
    by_lock.into_values().collect()
}

/// The child side of [`stale_locks`]: take `count` locks and exit without
/// releasing, as a crashed holder would (the kernel drops the locks; the
/// holder records stay).
fn crashing_holder(spec: &str) {
    let mut parts = spec.splitn(3, ':');
    let mut number = || parts.next().and_then(|n| n.parse::<usize>().ok()).expect("child spec is first:count:dir");
    let (first, count) = (number(), number());
    let dir = spec.splitn(3, ':').nth(2).expect("child spec is first:count:dir");
    runtime().block_on(async {
        let locks = lockman::connect(&format!("file://{dir}")).await.expect("open the stale directory").locks;
        let names = (first..first + count).map(|i| format!("stale-{i}")).collect();
        let guards = acquire_many(&locks, names, FILL_WIDTH).await;
        std::mem::forget(guards);
    });
    std::process::exit(0);
}

fn write_files(dir: &Path, locks: &[StaleLock]) {
    for (name, bytes) in locks.iter().flatten() {
        std::fs::write(dir.join(name), bytes).expect("write a stale lock file");
    }
}

async fn list_and_cleanup(points: &mut Vec<Point>) {
    let started = Instant::now();
    let stale = tokio::task::spawn_blocking(stale_locks).await.expect("making stale locks panicked");
    let files: usize = stale.iter().map(Vec::len).sum();
    println!(
        "  file: {} stale locks ({files} files) made by crashing holders in {:.1?}",
        stale.len(),
        started.elapsed()
    );
    for n in FILES {
        let files = &stale[..n];
        let dir = tempfile::tempdir().expect("temporary directory");
        write_files(dir.path(), files);
        let locks = lockman::connect(&format!("file://{}", dir.path().display())).await.expect("open").locks;
        let mut lists = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let listed = locks.list().await.expect("list");
            lists.push(started.elapsed());
            assert!(listed.is_empty(), "nobody holds the stale files");
        }
        let mut cleanups = Vec::new();
        // One sample at the largest count: rewriting its files takes seconds.
        for sample in 0..if n >= 100_000 { 1 } else { 3 } {
            if sample > 0 {
                write_files(dir.path(), files);
            }
            let started = Instant::now();
            let broken = locks.cleanup_stale().await.expect("cleanup_stale");
            cleanups.push(started.elapsed());
            assert_eq!(broken.len(), n, "cleanup_stale reports every crashed holder");
        }
        for (curve, mut times) in [("list() vs stale locks", lists), ("cleanup_stale() vs stale locks", cleanups)] {
            times.sort();
            let median = times[(times.len() - 1) / 2].as_nanos() as f64;
            println!(
                "  file: {curve} with {n}: {:.1?} ({:.1?} per lock)",
                ns_duration(median),
                ns_duration(median / n as f64)
            );
            points.push(Point { backend: "file", curve, x: n, value_ns: median, extra_ns: Some(median / n as f64) });
        }
    }
}

fn ns_duration(ns: f64) -> Duration {
    Duration::from_nanos(ns as u64)
}

/// Words on the command line: backend names pick backends, other words pick
/// curves by substring (`held`, `handoff`, `managers`, `list`); none: everything.
struct Selection {
    backends: Vec<String>,
    curves: Vec<String>,
}

impl Selection {
    fn from_args() -> Selection {
        let words: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
        let (backends, curves) =
            words.into_iter().partition(|w| matches!(w.as_str(), "memory" | "file" | "redis" | "etcd"));
        Selection { backends, curves }
    }

    fn backend(&self, name: &str) -> bool {
        self.backends.is_empty() || self.backends.iter().any(|b| b == name)
    }

    fn curve(&self, name: &str) -> bool {
        self.curves.is_empty() || self.curves.iter().any(|c| name.contains(c.as_str()))
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_json(path: &Path, points: &[Point], notes: &[String], started: &str) {
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let machine = format!(
        "{cores} cores (shared), load average at the end {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"date\": {},", json_string(started));
    let _ = writeln!(json, "  \"commit\": {},", json_string(&commit));
    let _ = writeln!(json, "  \"machine\": {},", json_string(&machine));
    let notes: Vec<_> = notes.iter().map(|n| json_string(n)).collect();
    let _ = writeln!(json, "  \"notes\": [{}],", notes.join(", "));
    json.push_str("  \"points\": [\n");
    for (i, p) in points.iter().enumerate() {
        let extra = p.extra_ns.map_or("null".to_owned(), |e| format!("{e:.0}"));
        let _ = write!(
            json,
            "    {{\"backend\": {}, \"curve\": {}, \"x\": {}, \"value_ns\": {:.0}, \"extra_ns\": {}}}",
            json_string(p.backend),
            json_string(p.curve),
            p.x,
            p.value_ns,
            extra
        );
        json.push_str(if i + 1 < points.len() { ",\n" } else { "\n" });
    }
    json.push_str("  ]\n}\n");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the output directory");
    }
    std::fs::write(path, json).expect("write the JSON results");
}

fn print_table(points: &[Point]) {
    println!("\nscale curves: {:<8} {:<32} {:>8} {:>12} {:>24}", "backend", "curve", "x", "value", "extra");
    for p in points {
        let extra = match (p.curve, p.extra_ns) {
            ("handoff vs waiters", Some(e)) => format!("p90 {:.1?}", ns_duration(e)),
            (_, Some(e)) => format!("{:.1?} per lock", ns_duration(e)),
            (_, None) => String::new(),
        };
        println!(
            "scale curves: {:<8} {:<32} {:>8} {:>12} {:>24}",
            p.backend,
            p.curve,
            p.x,
            format!("{:.1?}", ns_duration(p.value_ns)),
            extra
        );
    }
}

fn output_path() -> PathBuf {
    std::env::var_os("LOCKMAN_SCALE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scale/scale.json"))
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        crashing_holder(&spec);
        return;
    }
    // `cargo test --benches` and `--list` run bench binaries too: nothing to do there.
    if std::env::args().any(|arg| matches!(arg.as_str(), "--test" | "--list")) {
        return;
    }
    let selection = Selection::from_args();
    let started = command_output("date", &["-u", "+%Y-%m-%dT%H:%MZ"]);
    let bench_started = Instant::now();
    let mut points = Vec::new();
    let mut notes = Vec::new();
    let rt = runtime();
    for name in ["memory", "file", "redis", "etcd"] {
        if !selection.backend(name) {
            continue;
        }
        let store = match name {
            "memory" => Store::Memory,
            "file" => Store::File(tempfile::tempdir().expect("temporary directory")),
            "redis" => match RedisServer::start() {
                Some(server) => Store::Redis(server),
                None => {
                    eprintln!("SKIPPED: the Redis scale curves need redis-server on PATH");
                    notes.push("redis skipped: no redis-server on PATH".to_owned());
                    continue;
                }
            },
            _ => match EtcdServer::start() {
                Some(server) => Store::Etcd(server),
                None => {
                    eprintln!("SKIPPED: the etcd scale curves need etcd on PATH");
                    notes.push("etcd skipped: no etcd on PATH".to_owned());
                    continue;
                }
            },
        };
        let plan = store.plan();
        println!("scale: {name}");
        if let Some((cap, why)) = plan.held_cap
            && selection.curve("cycle vs held locks")
        {
            notes.push(format!("{name}: cycle vs held locks capped at {cap} ({why})"));
        }
        let backend_started = Instant::now();
        rt.block_on(async {
            if selection.curve("cycle vs held locks") {
                cycle_vs_held(&store, &plan, &mut points).await;
            }
            if selection.curve("handoff vs waiters") {
                handoff_vs_waiters(&store, &plan, &mut points).await;
            }
            if selection.curve("cycle vs managers") {
                cycle_vs_managers(&store, &plan, &mut points).await;
            }
            if name == "file" && (selection.curve("list() vs stale locks") || selection.curve("cleanup_stale()")) {
                list_and_cleanup(&mut points).await;
            }
        });
        println!("scale: {name} done in {:.1?}", backend_started.elapsed());
    }
    print_table(&points);
    let path = output_path();
    write_json(&path, &points, &notes, &started);
    println!("\nscale: {} points in {:.1?}; JSON written to {}", points.len(), bench_started.elapsed(), path.display());
}
