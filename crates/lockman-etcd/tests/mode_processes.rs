//! Shared and permit grants across real OS processes on one private etcd:
//! the checks of [`lockman_testkit::mode_processes`] (readers overlap,
//! writers overlap nobody, a semaphore of 3 never has a fourth holder
//! across 8 processes and does reach 3), and what a crashed or frozen
//! holder costs on etcd, where a process's keys are bound to its manager's
//! etcd lease: a killed reader keeps a writer out until that lease lapses
//! (one TTL after its last keep-alive: whole seconds, at least etcd's
//! minimum — 2 s for a private server), a reader frozen past its grant's
//! lease is passed by a writer once that lease lapses and told on waking
//! that it lost the grant, and a killed permit holder's permit goes to a
//! waiter in another process.
//!
//! The children are this test binary re-run by the testkit's `Proc`, acting
//! out their role in the `child` test.
#![cfg(unix)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, SortOrder, SortTarget};
use lockman_core::{AcquireOptions, LockBackend, LockManager, LockMode};
use lockman_etcd::{EtcdBackend, EtcdOptions};
use lockman_testkit::etcd_server::EtcdServer;
use lockman_testkit::mode_processes::{BOUND, Proc};

/// A manager whose default lease — and etcd lease TTL, rounded up to whole
/// seconds — is `lease`.
async fn manager(endpoint: String, lease: Duration) -> Arc<dyn LockManager> {
    let options = EtcdOptions::new([endpoint]).default_lease(lease);
    Arc::new(EtcdBackend::connect(options).await.expect("connect").into_manager())
}

lockman_testkit::mode_process_tests!(connect = manager, server = EtcdServer::start(), url = endpoint);

/// The lease of a holder process's manager, and so the TTL it asks etcd for
/// its keys' lease (etcd raises it to its minimum, 2 s).
const HOLDER_LEASE: Duration = Duration::from_secs(1);

/// A private etcd, a raw client on it (every request bounded by [`BOUND`]),
/// and a manager of this process.
struct Etcd {
    _server: EtcdServer,
    endpoint: String,
    raw: Client,
    locks: Arc<dyn LockManager>,
}

/// A holding child process, as it said it holds.
struct Holder {
    proc: Proc,
    /// Its grant's fencing token.
    token: u64,
    /// Its manager's etcd lease, which its key is bound to.
    lease: i64,
    /// That lease's TTL as etcd granted it, in seconds (etcd raises a TTL
    /// below its minimum, 2 s with its default election timeout).
    granted_ttl: i64,
}

impl Etcd {
    /// `None` (after a loud SKIPPED line) if etcd is not installed.
    async fn start() -> Option<Etcd> {
        let server = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start")?;
        let endpoint = server.endpoint();
        let bounded = ConnectOptions::new().with_connect_timeout(BOUND).with_timeout(BOUND);
        let raw = Client::connect([endpoint.as_str()], Some(bounded)).await.expect("raw client");
        let locks = manager(endpoint.clone(), Duration::from_secs(5)).await;
        Some(Etcd { _server: server, endpoint, raw, locks })
    }

    /// A child process holding `resource` in `mode`, with a manager whose
    /// default lease is `lease` (its etcd lease: `lease` in whole seconds).
    async fn holder(&mut self, resource: &str, mode: LockMode, lease: Duration) -> Holder {
        let (proc, token) = said(Proc::hold(&self.endpoint, resource, mode, lease), "held").await;
        let token: u64 = token.parse().expect("a token");
        let key = self.keys(resource).await.into_iter().find(|kv| u64::try_from(kv.create_revision()) == Ok(token));
        let lease = key.expect("the holder's key").lease();
        let granted_ttl = self.raw.lease_time_to_live(lease, None).await.expect("the lease's TTL").granted_ttl();
        Holder { proc, token, lease, granted_ttl }
    }

    /// The keys of `resource` (default prefix), oldest first.
    async fn keys(&mut self, resource: &str) -> Vec<etcd_client::KeyValue> {
        let options = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend);
        self.raw.get(format!("lockman/lock/{resource}/"), Some(options)).await.expect("read the keys").take_kvs()
    }

    /// Waits (at most [`BOUND`]) until `resource` has `n` keys: its holders
    /// and waiters, each process's request written.
    async fn wait_for_keys(&mut self, resource: &str, n: usize) {
        let deadline = Instant::now() + BOUND;
        loop {
            let have = self.keys(resource).await.len();
            if have == n {
                return;
            }
            assert!(Instant::now() < deadline, "{resource} never had {n} keys (has {have})");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the etcd lease `id` is gone (expired or revoked).
    async fn lease_is_gone(&mut self, id: i64) -> bool {
        self.raw.lease_time_to_live(id, None).await.expect("ask for the lease's TTL").ttl() == -1
    }
}

/// `Proc::said`, from async code.
async fn said(proc: Proc, word: &'static str) -> (Proc, String) {
    tokio::task::spawn_blocking(move || {
        let said = proc.said(word, BOUND);
        (proc, said)
    })
    .await
    .expect("join")
}

/// A reader killed with SIGKILL (its manager's etcd lease: 1 s) keeps a
/// waiting writer out until that lease lapses, and not longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_reader_keeps_a_writer_out_only_until_its_etcd_lease_lapses() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let mut reader = etcd.holder("r", LockMode::Shared, HOLDER_LEASE).await;
    let locks = etcd.locks.clone();
    assert!(locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "a writer beside a reader");
    let writer = tokio::spawn(async move {
        let guard = locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await;
        (guard, Instant::now())
    });
    etcd.wait_for_keys("r", 2).await;
    assert!(!writer.is_finished(), "the writer got in beside a live reader");
    let killed = Instant::now();
    reader.proc.kill();
    let (guard, got_in) = writer.await.expect("join");
    let guard = guard.expect("the killed reader pins r");
    assert!(got_in > killed, "the writer got in before the reader was killed");
    let took = got_in - killed;
    eprintln!(
        "etcd: writer in {took:?} after the reader (etcd lease {HOLDER_LEASE:?}, granted as {} s) was killed",
        reader.granted_ttl
    );
    assert!(etcd.lease_is_gone(reader.lease).await, "the writer got in while the reader's etcd lease lived");
    assert!(took < Duration::from_secs(5), "the killed reader kept the writer out for {took:?}");
    guard.release().await.expect("release");
}

/// A reader frozen (SIGSTOP) past its grant's lease: its process cannot end
/// the grant, so a writer gets in once the manager's etcd lease lapses;
/// once resumed, the reader is told it lost the grant, and the writer's
/// grant is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_paused_past_its_lease_is_passed_and_told_it_lost() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let grant_lease = Duration::from_millis(600);
    let reader = etcd.holder("r", LockMode::Shared, grant_lease).await;
    reader.proc.pause();
    let paused = Instant::now();
    let writer = etcd.locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await.expect("the paused reader pins r");
    let took = paused.elapsed();
    eprintln!(
        "etcd: writer in {took:?} after the reader (grant lease {grant_lease:?}, etcd lease granted as {} s) was \
         paused",
        reader.granted_ttl
    );
    assert!(etcd.lease_is_gone(reader.lease).await, "the writer got in while the reader's etcd lease lived");
    assert!(took > grant_lease, "the writer got in {took:?} after the pause, within the reader's grant lease");
    reader.proc.resume();
    let (mut reader, reason) = said(reader.proc, "lost").await;
    eprintln!("etcd: the resumed reader was told: lost {reason}");
    assert!(!reason.contains("force-released"), "the reader was told: {reason}");
    tokio::task::spawn_blocking(move || reader.finish(BOUND)).await.expect("join");
    let info = etcd.locks.state("r").await.expect("state").info().cloned().expect("held");
    assert_eq!(info.all_holders().count(), 1, "{info:?}");
    assert_eq!((info.mode, info.fencing_token), (LockMode::Exclusive, writer.fencing_token()));
    writer.release().await.expect("the resumed reader touched the writer's grant");
}

/// In a semaphore of 2, a permit holder killed with SIGKILL frees its
/// permit (once its etcd lease lapses) for a waiter in another process;
/// the other holder keeps its permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_permit_holder_frees_its_permit_for_a_waiter() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let two = || AcquireOptions::new().permits(2).timeout(BOUND);
    let mine = etcd.locks.acquire("sem", two()).await.expect("the first permit");
    let mut holder = etcd.holder("sem", LockMode::Permits(2), HOLDER_LEASE).await;
    let (waiter, _) = said(Proc::wait(&etcd.endpoint, "sem", LockMode::Permits(2)), "waiting").await;
    etcd.wait_for_keys("sem", 3).await;
    assert!(etcd.locks.try_acquire("sem", two()).await.expect("try").is_none(), "a third permit of 2");
    let killed = Instant::now();
    holder.proc.kill();
    let (mut waiter, waiter_token) = said(waiter, "held").await;
    let took = killed.elapsed();
    eprintln!(
        "etcd: the waiter got the permit {took:?} after its holder (etcd lease {HOLDER_LEASE:?}, granted as {} s) \
         was killed",
        holder.granted_ttl
    );
    assert!(etcd.lease_is_gone(holder.lease).await, "the waiter got in while the holder's etcd lease lived");
    assert!(took < Duration::from_secs(5), "the killed holder kept its permit for {took:?}");
    let waiter_token: u64 = waiter_token.parse().expect("a token");
    assert!(waiter_token > holder.token, "token {waiter_token} after {}", holder.token);
    assert!(!mine.is_lost(), "the other holder lost its permit");
    let info = etcd.locks.state("sem").await.expect("state").info().cloned().expect("held");
    let mut tokens: Vec<u64> = info.all_holders().map(|h| h.fencing_token.get()).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [mine.fencing_token().get(), waiter_token], "{info:?}");
    tokio::task::spawn_blocking(move || waiter.finish(BOUND)).await.expect("join");
    mine.release().await.expect("release the first permit");
}
