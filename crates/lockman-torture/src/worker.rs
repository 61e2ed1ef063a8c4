//! A lockman worker: acquire the shared resource, read-modify-write the
//! fenced counter while holding it (with a sleep between the read and the
//! write, so an overlap turns into a lost update), release; repeat until the
//! run's deadline. Everything it does and sees goes to its own log.
//!
//! Under `--mode rw` most sections are shared: they read the counter, hold,
//! and read it again (a writer slipping in between shows as two different
//! values). Under `--mode permits=N` a section takes one permit and leaves the
//! counter alone: N holders together are allowed, so there is no single
//! value to protect, and the checker judges the intervals instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use lockman::{AcquireOptions, Config, LockError, LockGuard, LockManager, LockMode};
use tokio::sync::watch;

use crate::history::{Event, Kind, Log, now_us};
use crate::mode::RunMode;
use crate::store::{Fenced, FencedCounter};

/// What one worker does.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Its name in the histories.
    pub name: String,
    /// The lock URL.
    pub url: String,
    /// A legacy bridge URL (`legacy-file://…`) taken after the lock, if any.
    pub bridge: Option<String>,
    /// The resource every worker contends for.
    pub resource: String,
    /// The fenced counter.
    pub counter: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// When to stop (µs of `CLOCK_MONOTONIC`).
    pub until_us: u64,
    /// Seeds its choices of hold times and extends.
    pub seed: u64,
    /// Hold times are drawn uniformly from this range (ms).
    pub hold_ms: (u64, u64),
    /// How long one acquire waits at most.
    pub wait: Duration,
    /// The pause after each section is drawn uniformly from this range (ms).
    pub idle_ms: (u64, u64),
    /// In how many of 100 sections to `extend` the lease (to three leases)
    /// and then hold longer than the default lease.
    pub extend_percent: u32,
    /// Skip the lock entirely (the checker's self-test).
    pub no_lock: bool,
    /// Whether the counter checks tokens (off: the checker's self-test).
    pub check_tokens: bool,
    /// How sections take the resource.
    pub mode: RunMode,
}

/// How a critical section ended.
enum Outcome {
    Done,
    Lost,
    Fenced,
    Failed(String),
}

/// Runs a worker until its deadline. `stall_until` (for in-process workers)
/// lets the fault injector make a section stall, ignoring its guard, until
/// that time — the in-process stand-in for `SIGSTOP`.
pub async fn run(spec: WorkerSpec, stall_until: Option<Arc<AtomicU64>>) -> Result<(), String> {
    let mut log = Log::create(&spec.log).map_err(|e| format!("cannot create {}: {e}", spec.log.display()))?;
    log.write(&Event::Start { t: now_us(), w: spec.name.clone(), pid: std::process::id(), kind: Kind::New });
    let locks = if spec.no_lock { None } else { Some(connect(&spec, &mut log).await?) };
    let lease = locks.as_ref().and_then(|locks| {
        let capabilities = locks.capabilities();
        capabilities.leases.then_some(capabilities.default_lease).flatten()
    });
    let mut worker = Worker {
        counter: FencedCounter::new(&spec.counter, spec.check_tokens),
        rng: fastrand::Rng::with_seed(spec.seed),
        spec,
        lease,
        stall_until,
        log,
    };
    while now_us() < worker.spec.until_us {
        let left = Duration::from_micros(worker.spec.until_us.saturating_sub(now_us()));
        // Drawn before the acquire, so `--no-lock` runs log the mode they would have taken.
        let mode = worker.spec.mode.draw(&mut worker.rng);
        worker.log.write(&Event::Acquire { t: now_us() });
        let guard = match &locks {
            None => None,
            Some(locks) => {
                let options = AcquireOptions::new().timeout(worker.spec.wait.min(left)).purpose("torture");
                let options = match mode {
                    LockMode::Exclusive => options,
                    LockMode::Shared => options.shared(),
                    LockMode::Permits(n) => options.permits(n),
                };
                match locks.acquire(&worker.spec.resource, options).await {
                    Ok(guard) => Some(guard),
                    Err(LockError::Timeout { .. }) => {
                        worker.log.write(&Event::Timeout { t: now_us() });
                        continue;
                    }
                    Err(error) => {
                        worker.log.write(&Event::Error { t: now_us(), msg: error.to_string() });
                        tokio::time::sleep(Duration::from_millis(worker.rng.u64(20..=60))).await;
                        continue;
                    }
                }
            }
        };
        let token = guard.as_ref().map(|guard| guard.fencing_token().get());
        let lease_ms = lease.map(|l| l.as_millis() as u64);
        let age_us = guard.as_ref().map(|guard| {
            SystemTime::now().duration_since(guard.info().acquired_at).unwrap_or_default().as_micros() as u64
        });
        // Exclusive is the default: left out, so exclusive runs log what they always did.
        let logged_mode = (mode != LockMode::Exclusive).then_some(mode);
        worker.log.write(&Event::Grant { t: now_us(), token, lease_ms, age_us, mode: logged_mode });
        if let Outcome::Failed(msg) = worker.section(guard.as_ref(), mode).await {
            worker.log.write(&Event::Error { t: now_us(), msg });
        }
        worker.log.write(&Event::End { t: now_us() });
        if let Some(guard) = guard {
            let result = guard.release().await;
            let err = result.err().map(|e| e.to_string());
            worker.log.write(&Event::Released { t: now_us(), ok: err.is_none(), err });
        }
        let (idle_min, idle_max) = worker.spec.idle_ms;
        tokio::time::sleep(Duration::from_micros(worker.rng.u64(idle_min * 1_000..=idle_max.max(idle_min) * 1_000)))
            .await;
    }
    worker.log.write(&Event::Exit { t: now_us() });
    Ok(())
}

/// A running worker.
struct Worker {
    spec: WorkerSpec,
    counter: FencedCounter,
    /// The backend's default lease, if it has leases.
    lease: Option<Duration>,
    stall_until: Option<Arc<AtomicU64>>,
    rng: fastrand::Rng,
    log: Log,
}

/// Connects, retrying while the backend is unreachable (a Redis restart).
async fn connect(spec: &WorkerSpec, log: &mut Log) -> Result<Arc<dyn LockManager>, String> {
    let mut config = Config::for_url(spec.url.clone());
    config.legacy_bridge = spec.bridge.clone();
    loop {
        match lockman::connect_with(&config).await {
            Ok(backends) => return Ok(backends.locks),
            Err(LockError::Config(msg)) => return Err(msg),
            Err(error) if now_us() < spec.until_us => {
                log.write(&Event::Error { t: now_us(), msg: format!("connect: {error}") });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(format!("connect: {error}")),
        }
    }
}

impl Worker {
    /// The critical section: read, hold, write — ending early when the guard
    /// reports the lock lost (within the checker's reaction bound) or the store
    /// refuses the token.
    async fn section(&mut self, guard: Option<&LockGuard>, mode: LockMode) -> Outcome {
        // The guard's loss report, timed by a task of its own so that the time is
        // when the report arrived, even while the section stalls.
        let (lost_tx, mut lost_rx) = watch::channel(None::<(u64, String)>);
        // Without a guard (`--no-lock`) the sender stays here, so the channel
        // never closes (a closed channel would read as a loss).
        let mut unused_sender = None;
        let watcher = match guard {
            Some(guard) => {
                let lost = guard.lost();
                Some(tokio::spawn(async move {
                    let why = lost.await;
                    let _ = lost_tx.send(Some((now_us(), why.to_string())));
                }))
            }
            None => {
                unused_sender = Some(lost_tx);
                None
            }
        };
        let outcome = self.section_body(guard, mode, &mut lost_rx).await;
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        drop(unused_sender);
        if let Some((t, why)) = lost_rx.borrow().clone() {
            self.log.write(&Event::Lost { t, why });
        }
        outcome
    }

    async fn section_body(
        &mut self,
        guard: Option<&LockGuard>,
        mode: LockMode,
        lost: &mut watch::Receiver<Option<(u64, String)>>,
    ) -> Outcome {
        let Worker { spec, counter, lease, stall_until, rng, log } = self;
        let lease = *lease;
        let token = guard.map(|guard| guard.fencing_token().get());
        let mut hold = Duration::from_millis(rng.u64(spec.hold_ms.0..=spec.hold_ms.1.max(spec.hold_ms.0)));
        if let (Some(guard), Some(lease)) = (guard, lease)
            && rng.u32(0..100) < spec.extend_percent
        {
            let longer = lease * 3;
            // Real code does some work between the grant and the extend: let
            // the guard's background tasks (the watchdog) start first.
            tokio::time::sleep(Duration::from_millis(rng.u64(1..=5))).await;
            let asked = now_us();
            match guard.extend(longer).await {
                Ok(()) => {
                    let t = now_us();
                    log.write(&Event::Extend { t, lease_ms: longer.as_millis() as u64, took_us: t - asked });
                    // Hold past the default lease: only the extension keeps the lock.
                    hold = lease.mul_f64(1.2 + rng.f64() * 0.6);
                }
                Err(error) => return Outcome::Failed(format!("extend: {error}")),
            }
        }
        // A permit holder shares the resource with others that may write no
        // more than it does: nothing to read or write, only its interval.
        let read = match mode {
            LockMode::Exclusive => Some(counter.read(token)),
            LockMode::Shared => Some(counter.read_shared(token)),
            LockMode::Permits(_) => None,
        };
        let value = match read {
            None => 0,
            Some(Ok(Ok(value))) => {
                log.write(&Event::Read { t: now_us(), ok: true, value });
                value
            }
            Some(Ok(Err(Fenced { seen }))) => {
                log.write(&Event::Read { t: now_us(), ok: false, value: seen });
                return Outcome::Fenced;
            }
            Some(Err(error)) => return Outcome::Failed(format!("counter read: {error}")),
        };
        tokio::select! {
            biased;
            _ = lost.wait_for(Option::is_some) => return Outcome::Lost,
            () = tokio::time::sleep(hold) => {}
        }
        if let Some(stall) = stall_until {
            // An in-process "stop": the section stalls without looking at its guard.
            let until = stall.swap(0, Ordering::SeqCst);
            if until > now_us() {
                tokio::time::sleep(Duration::from_micros(until - now_us())).await;
            }
        }
        if lost.borrow().is_some() {
            return Outcome::Lost;
        }
        if guard.is_some_and(LockGuard::is_lost) {
            // Seen before the loss report reached the watcher task (after a
            // freeze, both come due at once): this check is when the worker learned.
            log.write(&Event::Lost { t: now_us(), why: "is_lost() after the hold".to_owned() });
            return Outcome::Lost;
        }
        match mode {
            LockMode::Exclusive => {}
            LockMode::Permits(_) => return Outcome::Done,
            // Read again: no writer may have changed the value while this
            // reader held (the checker compares the two).
            LockMode::Shared => {
                return match counter.read_shared(token) {
                    Ok(Ok(value)) => {
                        log.write(&Event::Read { t: now_us(), ok: true, value });
                        Outcome::Done
                    }
                    Ok(Err(Fenced { seen })) => {
                        log.write(&Event::Read { t: now_us(), ok: false, value: seen });
                        Outcome::Fenced
                    }
                    Err(error) => Outcome::Failed(format!("counter read: {error}")),
                };
            }
        }
        log.write(&Event::WriteStart { t: now_us() });
        match counter.write(token, value + 1) {
            Ok(Ok(())) => {
                log.write(&Event::Write { t: now_us(), ok: true });
                Outcome::Done
            }
            Ok(Err(Fenced { .. })) => {
                log.write(&Event::Write { t: now_us(), ok: false });
                Outcome::Fenced
            }
            Err(error) => Outcome::Failed(format!("counter write: {error}")),
        }
    }
}
