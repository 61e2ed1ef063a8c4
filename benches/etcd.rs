//! The etcd backend beside raw etcd locking from the same `etcd-client`,
//! measured in the same run against a private `etcd` on free loopback ports
//! (started by `lockman_testkit::etcd_server`, never the one on 2379).
//!
//! Two baselines, both on the same `etcd-client` (0.21) lockman uses:
//!
//! * **raw txn pair** — the lock people hand-write on etcd: a transaction
//!   `if create_revision(key) == 0 then put(key, lease)` to take it, and a
//!   transaction `if create_revision(key) == ours then delete(key)` to
//!   release it. Two round trips, nothing else: the floor for any etcd lock
//!   (lockman's acquire and release are one transaction each too). It has no
//!   waiting, so it appears only in the uncontended row.
//! * **etcd's lock service** (`v3lock`: `Lock` / `Unlock`, what `etcdctl
//!   lock` uses) — the ready-made lock a user would pick instead; it waits
//!   and hands off server-side, FIFO. It is the baseline of the contended
//!   rows: throughput, handoff and fairness.
//!
//! Against them:
//!
//! * **uncontended acquire + release** (criterion), on a current-thread runtime.
//! * **8 tasks on 1 and on 64 resources** (criterion, items/s).
//! * **handoff to a parked waiter** (printed after criterion, p50/p90/p99):
//!   the waiter uses a second manager (its own connection and etcd lease, as
//!   another process would); the holder gives it [`PARK`] to park, notes the
//!   time and releases; the waiter notes when its acquire returned. The
//!   loopback round trip (a `get` of a missing key) is measured on the same
//!   client, so the handoff can be read in round trips.
//! * **fairness** (printed): acquisitions per task, fewest and most, when 8
//!   tasks on 8 managers (as 8 processes would) hammer one resource for
//!   [`FAIRNESS_RUN`].
//!
//! Run everything with `cargo bench -p lockman-benches --bench etcd` (about a
//! minute), or one criterion group with a filter, e.g.
//! `cargo bench -p lockman-benches --bench etcd -- uncontended`; the handoff
//! and fairness tables are printed after criterion in every run except
//! `--test`/`--list`. Needs `etcd` on `PATH`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use etcd_client::{Client, Compare, CompareOp, LockOptions, PutOptions, Txn, TxnOp};
use lockman::etcd::{EtcdBackend, EtcdOptions};
use lockman::{AcquireOptions, LockBackend, LockGuard, LockManager};
use lockman_testkit::etcd_server::EtcdServer;

use support::{percentile, print_fairness_header, print_fairness_row};

mod support;

/// How long a holder gives the waiter to park before the measured release.
const PARK: Duration = Duration::from_millis(2);
/// Handoffs measured per contender, after [`HANDOFF_WARMUP`] discarded ones.
const HANDOFF_ROUNDS: usize = 200;
const HANDOFF_WARMUP: usize = 10;
const TASKS: usize = 8;
const OPS_PER_TASK: usize = 50;
const RESOURCES: usize = 64;
/// How long the 8 tasks of the fairness table run.
const FAIRNESS_RUN: Duration = Duration::from_secs(2);
/// TTL of the baselines' etcd leases: longer than the whole run, so they
/// need no keep-alive (lockman keeps its own 30 s lease alive).
const RAW_LEASE_SECS: i64 = 600;

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    match workers {
        0 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .expect("runtime")
}

async fn lockman_manager(server: &EtcdServer) -> Arc<dyn LockManager> {
    let backend = EtcdBackend::connect(EtcdOptions::new([server.endpoint()])).await.expect("connect lockman");
    Arc::new(backend.into_manager())
}

/// A raw `etcd-client` connection with an etcd lease of its own (as one
/// process of a hand-written lock would have).
#[derive(Clone)]
struct Raw {
    client: Client,
    lease: i64,
}

impl Raw {
    async fn connect(server: &EtcdServer) -> Raw {
        let client = Client::connect([server.endpoint()], None).await.expect("connect the baseline");
        let lease = client.lease_client().grant(RAW_LEASE_SECS, None).await.expect("lease").id();
        Raw { client, lease }
    }

    /// The raw txn lock: put the key if it does not exist; its create
    /// revision if we got it.
    async fn try_lock(&self, key: &str) -> Option<i64> {
        let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            "holder",
            Some(PutOptions::new().with_lease(self.lease)),
        )]);
        let response = self.client.kv_client().txn(txn).await.expect("txn put");
        response.succeeded().then(|| response.header().map_or(0, |h| h.revision()))
    }

    /// The raw txn unlock: delete the key if it is still ours.
    async fn unlock(&self, key: &str, revision: i64) {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(key, None)]);
        let response = self.client.kv_client().txn(txn).await.expect("txn delete");
        assert!(response.succeeded(), "the baseline lost its lock");
    }

    /// One round trip: a read of a key that does not exist.
    async fn ping(&self) -> Duration {
        let started = Instant::now();
        self.client.kv_client().get("bench/ping", None).await.expect("get");
        started.elapsed()
    }
}

/// A lock a task takes on a named resource, held until [`Held::release`].
#[derive(Clone)]
enum TaskLock {
    /// etcd's lock service (`Lock`/`Unlock`), with the connection's lease
    /// (boxed: an etcd-client `Client` is several kilobytes).
    Service(Arc<Raw>),
    /// lockman's etcd backend.
    Lockman(Arc<dyn LockManager>),
}

enum Held {
    Service(Arc<Raw>, Vec<u8>),
    Guard(LockGuard),
}

impl TaskLock {
    async fn lock(&self, resource: &str) -> Held {
        match self {
            TaskLock::Service(raw) => {
                let options = LockOptions::new().with_lease(raw.lease);
                let response =
                    raw.client.lock_client().lock(format!("v3lock/{resource}"), Some(options)).await.expect("Lock");
                Held::Service(raw.clone(), response.key().to_vec())
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
            Held::Service(raw, key) => {
                raw.client.lock_client().unlock(key).await.expect("Unlock");
            }
            Held::Guard(guard) => guard.release().await.expect("release"),
        }
    }
}

fn uncontended(c: &mut Criterion, server: &EtcdServer) {
    let mut group = c.benchmark_group("etcd: uncontended acquire+release");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let rt = runtime(0);
    let raw = rt.block_on(Raw::connect(server));
    group.bench_function("baseline: txn put-if-absent + txn compare-and-delete", |b| {
        b.to_async(&rt).iter(|| async {
            let revision = raw.try_lock("raw/inverter_read").await.expect("uncontended put");
            raw.unlock("raw/inverter_read", black_box(revision)).await;
        })
    });
    let service = TaskLock::Service(Arc::new(raw.clone()));
    group.bench_function("baseline: etcd lock service Lock + Unlock", |b| {
        b.to_async(&rt).iter(|| async {
            let held = service.lock("inverter_read").await;
            held.release().await;
        })
    });
    let locks = rt.block_on(lockman_manager(server));
    group.bench_function("lockman etcd: acquire + release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
            black_box(&guard);
            guard.release().await.expect("release");
        })
    });
    group.finish();
}

/// `TASKS` tasks each doing `OPS_PER_TASK` cycles over `resources`
/// resources, round robin, task `t` through `locks[t]`; returns the wall time.
async fn hammer(locks: &[TaskLock], resources: usize, names: &Arc<[String]>) -> Duration {
    let start = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (lock, start, names) = (locks[t % locks.len()].clone(), start.clone(), names.clone());
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

fn throughput(c: &mut Criterion, server: &EtcdServer) {
    let mut group = c.benchmark_group(format!("etcd: {TASKS} tasks"));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Elements((TASKS * OPS_PER_TASK) as u64));
    let rt = runtime(2);
    let names: Arc<[String]> = (0..RESOURCES).map(|r| format!("resource-{r}")).collect();
    let contenders = [
        (
            "baseline: etcd lock service, one client",
            vec![TaskLock::Service(Arc::new(rt.block_on(Raw::connect(server))))],
        ),
        ("lockman etcd: one manager", vec![TaskLock::Lockman(rt.block_on(lockman_manager(server)))]),
    ];
    for resources in [RESOURCES, 1] {
        for (name, locks) in &contenders {
            group.bench_with_input(BenchmarkId::new(*name, resources), &resources, |b, &resources| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (locks, names) = (locks.clone(), names.clone());
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += hammer(&locks, resources, &names).await;
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
async fn handoffs(holder: &TaskLock, waiter: &TaskLock, rounds: usize) -> Vec<Duration> {
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
        tokio::time::sleep(PARK).await;
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
fn summary(server: &EtcdServer) {
    let rt = runtime(2);
    rt.block_on(async {
        let raw = Raw::connect(server).await;
        let mut pings = Vec::new();
        for _ in 0..1000 {
            pings.push(raw.ping().await);
        }
        pings.sort();
        let rtt = percentile(&pings, 0.5);
        println!("\netcd: loopback round trip (a get on one etcd-client connection, 1000 samples)");
        println!("{:<62} {:>10.1?} {:>10.1?} {:>10.1?}", "get", rtt, percentile(&pings, 0.9), percentile(&pings, 0.99));

        let service_first = TaskLock::Service(Arc::new(raw.clone()));
        let service_second = TaskLock::Service(Arc::new(Raw::connect(server).await));
        let first = TaskLock::Lockman(lockman_manager(server).await);
        let second = TaskLock::Lockman(lockman_manager(server).await);
        println!("\netcd: handoff to a parked waiter (waiter given {PARK:?} to park)");
        println!("{:<62} {:>10} {:>10} {:>10} {:>10}", "contender", "p50", "p90", "p99", "p50/RTT");
        let rows = [
            (
                "baseline: etcd lock service, waiter on a second client",
                handoffs(&service_first, &service_second, HANDOFF_ROUNDS).await,
            ),
            ("lockman etcd: waiter on a second manager", handoffs(&first, &second, HANDOFF_ROUNDS).await),
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

        println!("\netcd: fairness, {TASKS} tasks on 1 resource for {FAIRNESS_RUN:?}, acquisitions per task");
        print_fairness_header();
        let mut services = Vec::new();
        let mut managers = Vec::new();
        for _ in 0..TASKS {
            services.push(TaskLock::Service(Arc::new(Raw::connect(server).await)));
            managers.push(TaskLock::Lockman(lockman_manager(server).await));
        }
        let rows = [
            ("baseline: etcd lock service, 8 clients (as 8 processes)", services),
            ("lockman etcd: 8 managers (as 8 processes)", managers),
        ];
        for (name, locks) in rows {
            let counts = fairness(locks).await;
            print_fairness_row(name, &counts);
        }
    });
}

fn main() {
    let Some(server) = EtcdServer::start() else {
        eprintln!("SKIPPED: the etcd benchmark needs etcd on PATH");
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
