//! The Redis backend beside raw Redis locking, measured in the same run
//! against a private `redis-server` on a free loopback port (started by
//! `lockman_testkit::redis_server`, never the one on 6379).
//!
//! The baseline is the lock people hand-write (and redis-py's `Lock`,
//! redsync and the earlier `USE_NEW_LOCKS` code do): `SET key token NX PX`
//! to take it, a compare-and-delete script by `EVALSHA` to release it, on one
//! `ConnectionManager` — the same kind of connection lockman uses. Against it:
//!
//! * **uncontended acquire + release** (criterion): lockman's `acquire` +
//!   `release()` (one `EVALSHA` each) beside the raw pair and beside
//!   [`FENCED_FLOOR`], the least a grant with a restore-safe fencing token
//!   asks of the server. All on a current-thread runtime, so none pays for
//!   a cross-thread wake-up.
//! * **server time per cycle** (printed): `INFO commandstats` over
//!   [`SERVER_TIME_CYCLES`] uncontended cycles of each, counting only the
//!   commands the client sent (a script's own calls are inside its time).
//! * **8 tasks on 1 and on 64 resources** (criterion, items/s), beside raw
//!   locks whose waiters retry every 100 ms (redis-py's default sleep).
//! * **handoff to a parked waiter** (printed after criterion, p50/p90/p99):
//!   the waiter uses a second manager (its own connections, as another
//!   process would) or the same manager; the holder gives it [`PARK`] to park,
//!   notes the time and releases; the waiter notes when its acquire returned.
//!   The 100 ms-polling baseline releases at a varying phase of the poll, as a
//!   real release would. The loopback round trip (`PING`) is measured on the
//!   same connection kind, so the handoff can be read in round trips.
//! * **fairness** (printed): acquisitions per task, fewest and most, when 8
//!   tasks hammer one resource for [`FAIRNESS_RUN`] — through one manager, and
//!   through 8 managers (as 8 processes would), beside the polling baseline.
//!
//! Run everything with `cargo bench -p lockman-benches --bench redis` (about a minute), or one
//! criterion group with a filter, e.g. `cargo bench -p lockman-benches --bench redis -- uncontended`;
//! the handoff and fairness tables are printed after criterion in every run
//! except `--test`/`--list`. Needs `redis-server` on `PATH`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use lockman::redis::{RedisBackend, RedisOptions};
use lockman::{AcquireOptions, LockBackend, LockGuard, LockManager};
use lockman_testkit::redis_server::RedisServer;
use redis::aio::ConnectionManager;

use support::{percentile, print_fairness_header, print_fairness_row};

mod support;

/// How long a holder gives the waiter to park before the measured release.
const PARK: Duration = Duration::from_millis(2);
/// Handoffs measured per lockman contender, after [`HANDOFF_WARMUP`] discarded ones.
const HANDOFF_ROUNDS: usize = 200;
/// Handoffs measured for the polling baseline (each takes up to 100 ms).
const POLLING_ROUNDS: usize = 50;
const HANDOFF_WARMUP: usize = 10;
/// The baseline's retry interval when the lock is busy (redis-py's `sleep=0.1`).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const TASKS: usize = 8;
const OPS_PER_TASK: usize = 100;
const RESOURCES: usize = 64;
/// How long the 8 tasks of the fairness table run.
const FAIRNESS_RUN: Duration = Duration::from_secs(2);
/// Lease of the raw baseline's keys (lockman uses its 30 s default).
const RAW_LEASE_MS: u64 = 30_000;

/// The baseline's release: delete the key only if it still holds our token.
const COMPARE_AND_DELETE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The least a grant with a restore-safe fencing token can ask of the
/// server (lockman's token rule, see `lockman-redis`'s `scripts::ACQUIRE`):
/// in one script, refuse a held lock, make the token `max(last + 1, server
/// now)`, and set the lock to holder and token with its lease. No queue, no
/// holder details, no reentrancy. Released by [`COMPARE_AND_DELETE`].
const FENCED_FLOOR: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local token = redis.call('INCR', KEYS[2])
if token < now then token = redis.call('INCRBY', KEYS[2], string.format('%.0f', now - token)) end
local value = ARGV[1] .. ' ' .. string.format('%.0f', token)
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"#;

/// Uncontended cycles per contender in the server-time table.
const SERVER_TIME_CYCLES: usize = 2000;

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    match workers {
        0 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .expect("runtime")
}

async fn lockman_manager(server: &RedisServer) -> Arc<dyn LockManager> {
    Arc::new(RedisBackend::connect(RedisOptions::new(server.url())).await.expect("connect lockman").into_manager())
}

/// The raw `SET NX PX` + compare-and-delete lock.
#[derive(Clone)]
struct RawLock {
    connection: ConnectionManager,
    release: Arc<redis::Script>,
    tokens: Arc<AtomicU64>,
}

impl RawLock {
    async fn connect(server: &RedisServer) -> RawLock {
        let client = redis::Client::open(server.url()).expect("client");
        let connection = client.get_connection_manager().await.expect("connect the baseline");
        RawLock { connection, release: Arc::new(redis::Script::new(COMPARE_AND_DELETE)), tokens: Arc::default() }
    }

    /// One `SET NX PX`: the token if we got the lock.
    async fn try_lock(&self, key: &str) -> Option<String> {
        let token = format!("{}-{}", std::process::id(), self.tokens.fetch_add(1, Ordering::Relaxed));
        let mut connection = self.connection.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(RAW_LEASE_MS)
            .query_async(&mut connection)
            .await
            .expect("SET NX PX");
        set.map(|_| token)
    }

    /// `SET NX PX` until it succeeds, sleeping [`POLL_INTERVAL`] between tries.
    async fn lock_polling(&self, key: &str) -> String {
        loop {
            if let Some(token) = self.try_lock(key).await {
                return token;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn unlock(&self, key: &str, token: &str) {
        let mut connection = self.connection.clone();
        let deleted: i64 =
            self.release.key(key).arg(token).invoke_async(&mut connection).await.expect("compare-and-delete");
        assert_eq!(deleted, 1, "the baseline lost its lock");
    }

    /// [`FENCED_FLOOR`]'s grant: the lock's value (holder and token).
    async fn fenced_lock(&self, key: &str, fence: &str) -> Option<String> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(FENCED_FLOOR));
        let holder = format!("{}-{}", std::process::id(), self.tokens.fetch_add(1, Ordering::Relaxed));
        let mut connection = self.connection.clone();
        SCRIPT
            .key(key)
            .key(fence)
            .arg(holder)
            .arg(RAW_LEASE_MS)
            .invoke_async(&mut connection)
            .await
            .expect("fenced grant")
    }

    async fn ping(&self) -> Duration {
        let mut connection = self.connection.clone();
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut connection).await.expect("PING");
        started.elapsed()
    }
}

/// A lock a task takes on a named resource, held until [`Held::release`].
#[derive(Clone)]
enum TaskLock {
    /// The raw baseline, retrying every [`POLL_INTERVAL`] while busy.
    Polling(RawLock),
    /// lockman's Redis backend.
    Lockman(Arc<dyn LockManager>),
}

enum Held {
    Raw(RawLock, String, String),
    Guard(LockGuard),
}

impl TaskLock {
    async fn lock(&self, resource: &str) -> Held {
        match self {
            TaskLock::Polling(raw) => {
                let key = format!("raw:{resource}");
                let token = raw.lock_polling(&key).await;
                Held::Raw(raw.clone(), key, token)
            }
            TaskLock::Lockman(locks) => {
                Held::Guard(locks.acquire(resource, AcquireOptions::new()).await.expect("acquire"))
            }
        }
    }
}

impl Held {
    async fn release(self) {
        match self {
            Held::Raw(raw, key, token) => raw.unlock(&key, &token).await,
            Held::Guard(guard) => guard.release().await.expect("release"),
        }
    }
}

fn uncontended(c: &mut Criterion, server: &RedisServer) {
    let mut group = c.benchmark_group("redis: uncontended acquire+release");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let rt = runtime(0);
    let raw = rt.block_on(RawLock::connect(server));
    group.bench_function("baseline: SET NX PX + EVALSHA compare-and-delete", |b| {
        b.to_async(&rt).iter(|| async {
            let token = raw.try_lock("raw:inverter_read").await.expect("uncontended SET NX");
            raw.unlock("raw:inverter_read", black_box(&token)).await;
        })
    });
    group.bench_function("floor: fenced grant script + EVALSHA compare-and-delete", |b| {
        b.to_async(&rt).iter(|| async {
            let value = raw.fenced_lock("floor:{inverter_read}", "floor:{inverter_read}:fence").await;
            raw.unlock("floor:{inverter_read}", black_box(&value.expect("uncontended fenced grant"))).await;
        })
    });
    let locks = rt.block_on(lockman_manager(server));
    group.bench_function("lockman redis: acquire + release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
            black_box(&guard);
            guard.release().await.expect("release");
        })
    });
    group.bench_function("lockman redis: acquire shared + release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = locks.acquire("regcache", AcquireOptions::new().shared()).await.expect("acquire shared");
            black_box(&guard);
            guard.release().await.expect("release");
        })
    });
    group.finish();
}

/// `TASKS` tasks each doing `OPS_PER_TASK` cycles over `resources`
/// resources, round robin; returns the wall time.
async fn hammer(lock: &TaskLock, resources: usize, names: &Arc<[String]>) -> Duration {
    let start = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (lock, start, names) = (lock.clone(), start.clone(), names.clone());
            tokio::spawn(async move {
                start.wait().await;
                for i in 0..OPS_PER_TASK {
                    let held = lock.lock(&names[(t + i) % resources]).await;
                    black_box(i);
                    held.release().await;
                }
            })
        })
        .collect();
    start.wait().await;
    let started = Instant::now();
    for task in tasks {
        task.await.expect("task panicked");
    }
    started.elapsed()
}

fn throughput(c: &mut Criterion, server: &RedisServer) {
    let mut group = c.benchmark_group(format!("redis: {TASKS} tasks"));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Elements((TASKS * OPS_PER_TASK) as u64));
    let rt = runtime(2);
    let names: Arc<[String]> = (0..RESOURCES).map(|r| format!("resource-{r}")).collect();
    let contenders = [
        ("baseline: SET NX PX, 100 ms retry", TaskLock::Polling(rt.block_on(RawLock::connect(server)))),
        ("lockman redis: one manager", TaskLock::Lockman(rt.block_on(lockman_manager(server)))),
    ];
    for resources in [RESOURCES, 1] {
        for (name, lock) in &contenders {
            // The polling baseline needs seconds per sample on one resource: skip it there.
            if resources == 1 && matches!(lock, TaskLock::Polling(_)) {
                continue;
            }
            group.bench_with_input(BenchmarkId::new(*name, resources), &resources, |b, &resources| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (lock, names) = (lock.clone(), names.clone());
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += hammer(&lock, resources, &names).await;
                        }
                        total
                    }
                })
            });
        }
    }
    group.finish();
}

/// Handoffs from `holder` to a waiter using `waiter`: time at the release to
/// time when the waiter's acquire returned.
async fn handoffs(holder: &TaskLock, waiter: &TaskLock, rounds: usize, phases: bool) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..HANDOFF_WARMUP + rounds {
        let held = holder.lock("handoff").await;
        let waiter = waiter.clone();
        let (tried_tx, tried_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = tried_tx.send(());
            let held = waiter.lock("handoff").await;
            let granted_at = Instant::now();
            held.release().await;
            granted_at
        });
        tried_rx.await.expect("waiter gone");
        // A polling waiter is released at a varying phase of its 100 ms poll.
        let phase = if phases { Duration::from_millis((round as u64 * 37) % 100) } else { Duration::ZERO };
        tokio::time::sleep(PARK + phase).await;
        let released_at = Instant::now();
        held.release().await;
        let granted_at = task.await.expect("waiter panicked");
        if round >= HANDOFF_WARMUP {
            latencies.push(granted_at.saturating_duration_since(released_at));
        }
    }
    latencies.sort();
    latencies
}

/// `TASKS` tasks (one lock each) on one resource for [`FAIRNESS_RUN`]:
/// acquisitions per task.
async fn fairness(locks: Vec<TaskLock>) -> Vec<u64> {
    let start = Arc::new(tokio::sync::Barrier::new(locks.len() + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = locks
        .into_iter()
        .map(|lock| {
            let (start, stop) = (start.clone(), stop.clone());
            tokio::spawn(async move {
                start.wait().await;
                let mut acquired = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let held = lock.lock("hot").await;
                    acquired += 1;
                    held.release().await;
                }
                acquired
            })
        })
        .collect();
    start.wait().await;
    tokio::time::sleep(FAIRNESS_RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.expect("task panicked"));
    }
    counts
}

/// Round trip, handoff percentiles and fairness, every contender from this same run.
/// The server's time on the commands a client sent, in µs, from `INFO
/// commandstats` (`cmdstat_<name>:calls=…,usec=…,…`).
async fn server_usec(connection: &mut ConnectionManager, commands: &[&str]) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(connection).await.expect("INFO");
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(':'))
        .filter(|(name, _)| commands.contains(name))
        .filter_map(|(_, stats)| stats.split(',').find_map(|field| field.strip_prefix("usec="))?.parse::<u64>().ok())
        .sum()
}

/// Server time per uncontended cycle: the raw pair, the fenced floor and
/// lockman, one after another, each counted from `CONFIG RESETSTAT`.
async fn server_time(server: &RedisServer, raw: &RawLock) {
    let mut control = raw.connection.clone();
    let locks = lockman_manager(server).await;
    println!(
        "\nredis: server time per uncontended cycle (INFO commandstats, {SERVER_TIME_CYCLES} cycles, commands the client sent)"
    );
    println!("{:<62} {:>10} {:>10}", "contender", "µs/cycle", "× raw");
    let mut raw_us = 0.0;
    for contender in [
        "baseline: SET NX PX + EVALSHA compare-and-delete",
        "floor: fenced grant script + compare-and-delete",
        "lockman redis: acquire + release",
    ] {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut control).await.expect("CONFIG RESETSTAT");
        let sent: &[&str] =
            if contender.starts_with("baseline") { &["set", "evalsha", "eval"] } else { &["evalsha", "eval"] };
        for _ in 0..SERVER_TIME_CYCLES {
            if contender.starts_with("baseline") {
                let token = raw.try_lock("raw:inverter_read").await.expect("uncontended SET NX");
                raw.unlock("raw:inverter_read", &token).await;
            } else if contender.starts_with("floor") {
                let value = raw.fenced_lock("floor:{inverter_read}", "floor:{inverter_read}:fence").await;
                raw.unlock("floor:{inverter_read}", &value.expect("uncontended fenced grant")).await;
            } else {
                let guard = locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
                guard.release().await.expect("release");
            }
        }
        let per_cycle = server_usec(&mut control, sent).await as f64 / SERVER_TIME_CYCLES as f64;
        if raw_us == 0.0 {
            raw_us = per_cycle;
        }
        println!("{contender:<62} {per_cycle:>10.1} {:>10.2}", per_cycle / raw_us);
    }
}

fn summary(server: &RedisServer) {
    let rt = runtime(2);
    rt.block_on(async {
        let raw = RawLock::connect(server).await;
        let mut pings = Vec::new();
        for _ in 0..1000 {
            pings.push(raw.ping().await);
        }
        pings.sort();
        let rtt = percentile(&pings, 0.5);
        println!("\nredis: loopback round trip (PING on a ConnectionManager, 1000 samples)");
        println!(
            "{:<62} {:>10.1?} {:>10.1?} {:>10.1?}",
            "PING",
            rtt,
            percentile(&pings, 0.9),
            percentile(&pings, 0.99)
        );

        server_time(server, &raw).await;

        let polling = TaskLock::Polling(raw.clone());
        let first = TaskLock::Lockman(lockman_manager(server).await);
        let second = TaskLock::Lockman(lockman_manager(server).await);
        println!("\nredis: handoff to a parked waiter (waiter given {PARK:?} to park)");
        println!("{:<62} {:>10} {:>10} {:>10} {:>10}", "contender", "p50", "p90", "p99", "p50/RTT");
        let rows = [
            ("baseline: SET NX PX, 100 ms retry", handoffs(&polling, &polling, POLLING_ROUNDS, true).await),
            ("lockman redis: waiter on a second manager", handoffs(&first, &second, HANDOFF_ROUNDS, false).await),
            ("lockman redis: waiter on the same manager", handoffs(&first, &first, HANDOFF_ROUNDS, false).await),
        ];
        for (name, latencies) in rows {
            let p50 = percentile(&latencies, 0.5);
            println!(
                "{:<62} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1}",
                format!("{name} ({} handoffs)", latencies.len()),
                p50,
                percentile(&latencies, 0.9),
                percentile(&latencies, 0.99),
                p50.as_secs_f64() / rtt.as_secs_f64()
            );
        }

        println!("\nredis: fairness, {TASKS} tasks on 1 resource for {FAIRNESS_RUN:?}, acquisitions per task");
        print_fairness_header();
        let mut managers = Vec::new();
        for _ in 0..TASKS {
            managers.push(TaskLock::Lockman(lockman_manager(server).await));
        }
        let rows = [
            ("baseline: SET NX PX, 100 ms retry", vec![polling; TASKS]),
            ("lockman redis: one manager", vec![first; TASKS]),
            ("lockman redis: 8 managers (as 8 processes)", managers),
        ];
        for (name, locks) in rows {
            let counts = fairness(locks).await;
            print_fairness_row(name, &counts);
        }
    });
}

fn main() {
    let Some(server) = RedisServer::start() else {
        eprintln!("SKIPPED: the Redis benchmark needs redis-server on PATH");
        return;
    };
    let mut criterion = Criterion::default().configure_from_args();
    uncontended(&mut criterion, &server);
    throughput(&mut criterion, &server);
    criterion.final_summary();
    // Skip the long summary in test mode (`cargo test --benches`), when
    // listing, and when profiling one benchmark.
    if !std::env::args().any(|arg| matches!(arg.as_str(), "--test" | "--list" | "--profile-time")) {
        summary(&server);
    }
}
