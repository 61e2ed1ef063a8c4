//! The memory backend beside its baselines, measured in the same run:
//! a bare `parking_lot::ReentrantMutex`, `tokio::sync::Mutex`, the naive
//! `Mutex<HashMap<String, Arc<ReentrantMutex<()>>>>` get-or-insert map, and
//! [`ContractFloor`]: the least a lock map can do per grant and still give
//! what lockman's API promises (the floor under any implementation of it).
//!
//! `cargo bench -p lockman-benches --bench memory` runs three criterion groups (uncontended
//! cycle, handoff to a parked waiter, 8 workers on 1 and 64 resources) and
//! then prints handoff percentiles and fairness (fewest / most acquisitions
//! per worker) for every contender.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lockman::blocking::BlockingLockManager;
use lockman::{AcquireOptions, LockManager, MemoryLockManager};
use parking_lot::{Mutex, ReentrantMutex};

use support::percentile;

mod support;

/// The naive lock map: get-or-insert an `Arc<ReentrantMutex>` per name.
#[derive(Default)]
struct NaiveMap(Mutex<HashMap<String, Arc<ReentrantMutex<()>>>>);

impl NaiveMap {
    fn get(&self, name: &str) -> Arc<ReentrantMutex<()>> {
        let mut map = self.0.lock();
        if let Some(lock) = map.get(name) {
            return lock.clone();
        }
        map.entry(name.to_owned()).or_default().clone()
    }
}

/// The least per grant that lockman's contract asks for, done as cheaply
/// as we know how: `acquire` through an object-safe trait (a boxed future,
/// as `async_trait` makes for `Arc<dyn LockManager>`), a map entry per live
/// lock that the release removes (memory bounded by live locks, not by every
/// name used), a fencing token, an acquired-at wall-clock time, and grant
/// state shared between the guard and the backend (for `info()`, `lost()`).
/// No reentrancy, waiting, events, metrics or validation: whatever lockman
/// does above this is its own overhead; this is the floor under it.
#[derive(Default)]
struct ContractFloor {
    live: Mutex<HashMap<Arc<str>, u64>>,
    last_token: std::sync::atomic::AtomicU64,
}

/// What the floor's guard shares with its map.
struct FloorGrant {
    resource: Arc<str>,
    token: u64,
    acquired_at: std::time::SystemTime,
    lost: AtomicBool,
}

/// Releases on drop, as lockman's guard does.
struct FloorGuard {
    grant: Arc<FloorGrant>,
    map: Arc<ContractFloor>,
}

impl Drop for FloorGuard {
    fn drop(&mut self) {
        self.map.live.lock().remove(&self.grant.resource);
    }
}

type BoxedAcquire<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Option<FloorGuard>> + Send + 'a>>;

/// The object-safe acquire (what `#[async_trait]` generates).
trait FloorAcquire: Send + Sync {
    fn acquire<'a>(self: Arc<Self>, resource: &'a str) -> BoxedAcquire<'a>;
}

impl FloorAcquire for ContractFloor {
    fn acquire<'a>(self: Arc<Self>, resource: &'a str) -> BoxedAcquire<'a> {
        Box::pin(async move {
            let token = self.last_token.fetch_add(1, Ordering::Relaxed) + 1;
            let resource: Arc<str> = {
                let mut live = self.live.lock();
                if live.contains_key(resource) {
                    return None;
                }
                let resource: Arc<str> = Arc::from(resource);
                live.insert(resource.clone(), token);
                resource
            };
            let grant =
                FloorGrant { resource, token, acquired_at: std::time::SystemTime::now(), lost: AtomicBool::new(false) };
            Some(FloorGuard { grant: Arc::new(grant), map: self })
        })
    }
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("runtime")
}

fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("uncontended acquire+release");
    let rt = runtime(1);

    let mutex = ReentrantMutex::new(());
    group.bench_function("baseline: parking_lot::ReentrantMutex", |b| b.iter(|| drop(black_box(mutex.lock()))));

    let tokio_mutex = tokio::sync::Mutex::new(());
    group.bench_function("baseline: tokio::sync::Mutex", |b| {
        b.to_async(&rt).iter(|| async { drop(black_box(tokio_mutex.lock().await)) })
    });

    let naive = NaiveMap::default();
    group.bench_function("baseline: naive Mutex<HashMap<String, Arc<ReentrantMutex>>>", |b| {
        b.iter(|| {
            let lock = naive.get(black_box("inverter_read"));
            drop(black_box(lock.lock()));
        })
    });

    let floor: Arc<dyn FloorAcquire> = Arc::new(ContractFloor::default());
    group.bench_function("floor: the contract's per-grant minimum", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = floor.clone().acquire(black_box("inverter_read")).await.expect("the floor map is free");
            black_box((guard.grant.token, guard.grant.acquired_at, guard.grant.lost.load(Ordering::Relaxed)));
        })
    });

    let locks = MemoryLockManager::default();
    group.bench_function("lockman memory: acquire (async)", |b| {
        b.to_async(&rt).iter(|| async {
            drop(black_box(locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire")))
        })
    });
    let tokio_rwlock = tokio::sync::RwLock::new(());
    group.bench_function("baseline: tokio::sync::RwLock read", |b| {
        b.to_async(&rt).iter(|| async { drop(black_box(tokio_rwlock.read().await)) })
    });
    group.bench_function("lockman memory: acquire shared (async)", |b| {
        b.to_async(&rt).iter(|| async {
            drop(black_box(locks.acquire("regcache", AcquireOptions::new().shared()).await.expect("acquire")))
        })
    });
    group.bench_function("lockman memory: acquire with holder (async)", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = locks.acquire("inverter_read", AcquireOptions::new().holder("poller")).await;
            drop(black_box(guard.expect("acquire")))
        })
    });
    let blocking = BlockingLockManager::new(Arc::new(MemoryLockManager::default()));
    group.bench_function("lockman memory: blocking API", |b| {
        b.iter(|| drop(black_box(blocking.lock("inverter_read").expect("acquire"))))
    });
    group.finish();
}

/// One contender's handoff: the waiter is parked (given time to park), the
/// holder notes the time and releases, the waiter notes when it got the lock.
trait Handoff: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Runs `rounds` handoffs and returns each one's latency.
    fn run(&self, rounds: usize) -> Vec<Duration>;
}

/// Gives a waiter time to park before the release being measured.
const PARK: Duration = Duration::from_micros(300);

/// Handoff between two OS threads through a blocking lock.
struct ThreadHandoff<L> {
    name: &'static str,
    lock: Arc<L>,
}

trait BlockingLock: Send + Sync + 'static {
    /// Runs `f` while holding the lock; the lock is released as `f` returns.
    fn with<R>(&self, f: impl FnOnce() -> R) -> R;
}

impl BlockingLock for ReentrantMutex<()> {
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = self.lock();
        f()
    }
}

impl BlockingLock for NaiveMap {
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        let lock = self.get("inverter_read");
        let _held = lock.lock();
        f()
    }
}

impl BlockingLock for BlockingLockManager {
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = self.lock("inverter_read").expect("acquire");
        f()
    }
}

impl<L: BlockingLock> Handoff for ThreadHandoff<L> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, rounds: usize) -> Vec<Duration> {
        let mut latencies = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let (held_tx, held_rx) = mpsc::channel();
            let (parked_tx, parked_rx) = mpsc::channel();
            let lock = self.lock.clone();
            let waiter = std::thread::spawn(move || {
                held_rx.recv().expect("holder gone");
                parked_tx.send(()).expect("holder gone");
                lock.with(Instant::now)
            });
            let released_at = self.lock.with(|| {
                held_tx.send(()).expect("waiter gone");
                parked_rx.recv().expect("waiter gone");
                std::thread::sleep(PARK);
                Instant::now()
            });
            let granted_at = waiter.join().expect("waiter panicked");
            latencies.push(granted_at.saturating_duration_since(released_at));
        }
        latencies
    }
}

/// Handoff between two tokio tasks through an async lock.
struct TaskHandoff {
    name: &'static str,
    rt: Arc<tokio::runtime::Runtime>,
    contender: AsyncContender,
}

#[derive(Clone)]
enum AsyncContender {
    Tokio(Arc<tokio::sync::Mutex<()>>),
    Lockman(Arc<dyn LockManager>),
}

impl AsyncContender {
    /// Takes the handoff lock; released when the box is dropped.
    async fn lock(&self) -> Box<dyn Send> {
        match self {
            AsyncContender::Tokio(mutex) => Box::new(mutex.clone().lock_owned().await),
            AsyncContender::Lockman(locks) => {
                Box::new(locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire"))
            }
        }
    }
}

impl Handoff for TaskHandoff {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, rounds: usize) -> Vec<Duration> {
        let contender = self.contender.clone();
        self.rt.block_on(async move {
            let mut latencies = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let (parked_tx, parked_rx) = tokio::sync::oneshot::channel();
                let held = contender.lock().await;
                let waiter = {
                    let contender = contender.clone();
                    tokio::spawn(async move {
                        let _ = parked_tx.send(());
                        let _held = contender.lock().await;
                        Instant::now()
                    })
                };
                parked_rx.await.expect("waiter gone");
                tokio::time::sleep(PARK).await;
                let released_at = Instant::now();
                drop(held);
                latencies.push(waiter.await.expect("waiter").saturating_duration_since(released_at));
            }
            latencies
        })
    }
}

fn handoff_contenders() -> Vec<Box<dyn Handoff>> {
    let rt = Arc::new(runtime(2));
    vec![
        Box::new(ThreadHandoff {
            name: "baseline: parking_lot::ReentrantMutex (threads)",
            lock: Arc::new(ReentrantMutex::new(())),
        }),
        Box::new(TaskHandoff {
            name: "baseline: tokio::sync::Mutex (tasks)",
            rt: rt.clone(),
            contender: AsyncContender::Tokio(Arc::new(tokio::sync::Mutex::new(()))),
        }),
        Box::new(ThreadHandoff { name: "baseline: naive map (threads)", lock: Arc::new(NaiveMap::default()) }),
        Box::new(TaskHandoff {
            name: "lockman memory (tasks)",
            rt,
            contender: AsyncContender::Lockman(Arc::new(MemoryLockManager::default())),
        }),
        Box::new(ThreadHandoff {
            name: "lockman memory: blocking API (threads)",
            lock: Arc::new(BlockingLockManager::new(Arc::new(MemoryLockManager::default()))),
        }),
    ]
}

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff to a parked waiter");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for contender in handoff_contenders() {
        group.bench_function(contender.name(), |b| {
            b.iter_custom(|iters| contender.run(iters as usize).into_iter().sum())
        });
    }
    group.finish();
}

const WORKERS: usize = 8;
const OPS_PER_WORKER: usize = 2_000;

/// 8 workers each doing `OPS_PER_WORKER` acquire+release cycles over
/// `resources` resources; returns the elapsed time and each worker's count of
/// acquisitions made before the first worker finished (for fairness).
trait Hammer: Send + Sync {
    fn name(&self) -> &'static str;
    fn run(&self, resources: usize) -> (Duration, Vec<u64>);
}

struct ThreadThroughput<F> {
    name: &'static str,
    cycle: F,
}

impl<F: Fn(usize) + Send + Sync + Clone + 'static> Hammer for ThreadThroughput<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, resources: usize) -> (Duration, Vec<u64>) {
        let start = Arc::new(Barrier::new(WORKERS + 1));
        let finished = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (cycle, start, finished) = (self.cycle.clone(), start.clone(), finished.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut before_first_finished = 0u64;
                    for i in 0..OPS_PER_WORKER {
                        cycle((w + i) % resources);
                        if !finished.load(Ordering::Relaxed) {
                            before_first_finished += 1;
                        }
                    }
                    finished.store(true, Ordering::Relaxed);
                    before_first_finished
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        let counts = workers.into_iter().map(|w| w.join().expect("worker panicked")).collect();
        (started.elapsed(), counts)
    }
}

struct TaskThroughput {
    name: &'static str,
    rt: Arc<tokio::runtime::Runtime>,
    contender: AsyncContender,
    mutexes: Arc<Vec<tokio::sync::Mutex<()>>>,
}

impl Hammer for TaskThroughput {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, resources: usize) -> (Duration, Vec<u64>) {
        let names: Arc<Vec<String>> = Arc::new((0..resources).map(|r| format!("resource-{r}")).collect());
        let (contender, mutexes) = (self.contender.clone(), self.mutexes.clone());
        self.rt.block_on(async move {
            let start = Arc::new(tokio::sync::Barrier::new(WORKERS));
            let finished = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let workers: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let (contender, mutexes, names) = (contender.clone(), mutexes.clone(), names.clone());
                    let (start, finished) = (start.clone(), finished.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        let mut before_first_finished = 0u64;
                        for i in 0..OPS_PER_WORKER {
                            let r = (w + i) % resources;
                            match &contender {
                                AsyncContender::Tokio(_) => drop(black_box(mutexes[r].lock().await)),
                                AsyncContender::Lockman(locks) => drop(black_box(
                                    locks.acquire(&names[r], AcquireOptions::new()).await.expect("acquire"),
                                )),
                            }
                            if !finished.load(Ordering::Relaxed) {
                                before_first_finished += 1;
                            }
                        }
                        finished.store(true, Ordering::Relaxed);
                        before_first_finished
                    })
                })
                .collect();
            let mut counts = Vec::new();
            for worker in workers {
                counts.push(worker.await.expect("worker panicked"));
            }
            (started.elapsed(), counts)
        })
    }
}

fn throughput_contenders() -> Vec<Box<dyn Hammer>> {
    let rt = Arc::new(runtime(2));
    let mutexes: Arc<Vec<ReentrantMutex<()>>> = Arc::new((0..64).map(|_| ReentrantMutex::new(())).collect());
    let naive = Arc::new(NaiveMap::default());
    let names: Arc<Vec<String>> = Arc::new((0..64).map(|r| format!("resource-{r}")).collect());
    let blocking = BlockingLockManager::new(Arc::new(MemoryLockManager::default()));
    vec![
        Box::new(ThreadThroughput {
            name: "baseline: parking_lot::ReentrantMutex (threads)",
            cycle: move |r: usize| drop(black_box(mutexes[r].lock())),
        }),
        Box::new(TaskThroughput {
            name: "baseline: tokio::sync::Mutex (tasks)",
            rt: rt.clone(),
            contender: AsyncContender::Tokio(Arc::new(tokio::sync::Mutex::new(()))),
            mutexes: Arc::new((0..64).map(|_| tokio::sync::Mutex::new(())).collect()),
        }),
        Box::new(ThreadThroughput {
            name: "baseline: naive map (threads)",
            cycle: {
                let names = names.clone();
                move |r: usize| {
                    let lock = naive.get(&names[r]);
                    drop(black_box(lock.lock()));
                }
            },
        }),
        Box::new(TaskThroughput {
            name: "lockman memory (tasks)",
            rt,
            contender: AsyncContender::Lockman(Arc::new(MemoryLockManager::default())),
            mutexes: Arc::new(Vec::new()),
        }),
        Box::new(ThreadThroughput {
            name: "lockman memory: blocking API (threads)",
            cycle: move |r: usize| drop(black_box(blocking.lock(&names[r]).expect("acquire"))),
        }),
    ]
}

fn throughput(c: &mut Criterion) {
    for resources in [1usize, 64] {
        let mut group = c.benchmark_group(format!("{WORKERS} workers on {resources} resource(s)"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_millis(500))
            .throughput(Throughput::Elements((WORKERS * OPS_PER_WORKER) as u64));
        for contender in throughput_contenders() {
            group.bench_with_input(BenchmarkId::new(contender.name(), resources), &resources, |b, &resources| {
                b.iter_custom(|iters| (0..iters).map(|_| contender.run(resources).0).sum())
            });
        }
        group.finish();
    }
}

/// Handoff percentiles and fairness, every contender from this same run.
fn summary() {
    println!("\nhandoff to a parked waiter (2,000 handoffs each)");
    println!("{:<50} {:>10} {:>10}", "contender", "p50", "p99");
    for contender in handoff_contenders() {
        let mut latencies = contender.run(2_000);
        latencies.sort();
        println!(
            "{:<50} {:>10.1?} {:>10.1?}",
            contender.name(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99)
        );
    }
    println!("\nfairness: {WORKERS} workers on 1 resource, acquisitions per worker until the first finished");
    println!("{:<50} {:>10} {:>10} {:>8}", "contender", "fewest", "most", "min/max");
    for contender in throughput_contenders() {
        let (_, counts) = contender.run(1);
        let (fewest, most) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(1));
        println!("{:<50} {:>10} {:>10} {:>8.2}", contender.name(), fewest, most, fewest as f64 / most.max(1) as f64);
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    uncontended(&mut criterion);
    handoff(&mut criterion);
    throughput(&mut criterion);
    criterion.final_summary();
    // `cargo test --benches` runs the bench in test mode; skip the long summary there.
    if !std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        summary();
    }
}
