//! Shared and permit grants on etcd, beyond the conformance suite: what the
//! queue of keys looks like in etcd after each step (no key left behind by a
//! refused, timed-out or cancelled request), and the waits that a naive
//! "watch the key before mine" would get wrong — a permit freed by any
//! holder, not only the oldest, and readers behind a waiting writer.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use lockman_core::{AcquireOptions, LockBackend, LockError, LockManager, LockMode, LockState};
use lockman_etcd::{EtcdBackend, EtcdOptions};
use lockman_testkit::etcd_server::EtcdServer;

const BOUND: Duration = Duration::from_secs(10);

struct Setup {
    _server: EtcdServer,
    a: Arc<dyn LockManager>,
    b: Arc<dyn LockManager>,
    raw: Client,
}

/// A private etcd, two managers on it (two processes' views) and a raw client.
async fn setup() -> Option<Setup> {
    let server = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start etcd")?;
    let options = EtcdOptions::new([server.endpoint()]);
    let a = Arc::new(EtcdBackend::connect(options.clone()).await.expect("connect").into_manager());
    let b = Arc::new(EtcdBackend::connect(options).await.expect("connect").into_manager());
    let raw = Client::connect([server.endpoint()], None).await.expect("raw client");
    Some(Setup { _server: server, a, b, raw })
}

impl Setup {
    /// How many keys (holders and waiters) `resource` has in etcd.
    async fn keys(&self, resource: &str) -> usize {
        let dir = format!("{}/lock/{resource}/", lockman_etcd::DEFAULT_PREFIX);
        let got = self.raw.kv_client().get(dir, Some(GetOptions::new().with_prefix())).await.expect("read keys");
        got.kvs().len()
    }

    /// Waits (bounded) until `resource` has `n` keys.
    async fn until_keys(&self, resource: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let now = self.keys(resource).await;
            if now == n {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{resource} never had {n} keys (has {now})");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn patient() -> AcquireOptions {
    AcquireOptions::new().timeout(BOUND)
}

/// In a semaphore of 2, a waiter gets the permit the *newer* holder frees
/// while the older one holds on (a waiter that watched only the oldest key
/// would wait for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_waiter_gets_the_permit_any_holder_frees() {
    let Some(s) = setup().await else { return };
    let oldest = s.a.acquire("pool", patient().permits(2)).await.expect("permit");
    let newer = s.a.acquire("pool", patient().permits(2)).await.expect("permit");
    let b = s.b.clone();
    let waiter = tokio::spawn(async move { b.acquire("pool", patient().permits(2)).await });
    s.until_keys("pool", 3).await;
    let newer_token = newer.fencing_token();
    newer.release().await.expect("release");
    let got = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the waiter did not get the permit the newer holder freed")
        .expect("join")
        .expect("acquire");
    assert!(!oldest.is_lost());
    assert!(got.fencing_token() > newer_token);
    let state = s.a.state("pool").await.expect("state");
    let tokens: Vec<_> = state.info().expect("held").all_holders().map(|h| h.fencing_token).collect();
    assert_eq!(tokens, [oldest.fencing_token(), got.fencing_token()]);
    got.release().await.expect("release");
    oldest.release().await.expect("release");
    s.until_keys("pool", 0).await;
}

/// Readers queued behind a waiting writer wait for it, then get in together;
/// the writer gets in only when the readers before it are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_behind_a_waiting_writer_wait_then_hold_together() {
    let Some(s) = setup().await else { return };
    let first = s.a.acquire("rw", patient().shared()).await.expect("reader");
    let b = s.b.clone();
    let writer = tokio::spawn(async move { b.acquire("rw", patient()).await });
    s.until_keys("rw", 2).await;
    let late: Vec<_> = (0..2)
        .map(|_| {
            let a = s.a.clone();
            tokio::spawn(async move { a.acquire("rw", patient().shared()).await })
        })
        .collect();
    s.until_keys("rw", 4).await;
    let state = s.b.state("rw").await.expect("state");
    assert_eq!(state.info().expect("held").all_holders().count(), 1, "readers passed a waiting writer: {state:?}");
    first.release().await.expect("release");
    let writer = tokio::time::timeout(BOUND, writer).await.expect("writer").expect("join").expect("acquire");
    assert!(late.iter().all(|task| !task.is_finished()), "a reader got in beside the writer");
    writer.release().await.expect("release");
    let mut readers = Vec::new();
    for task in late {
        readers.push(tokio::time::timeout(BOUND, task).await.expect("reader").expect("join").expect("acquire"));
    }
    let state = s.b.state("rw").await.expect("state");
    let info = state.info().expect("held");
    assert_eq!((info.mode, info.all_holders().count()), (LockMode::Shared, 2), "{state:?}");
    for reader in readers {
        reader.release().await.expect("release");
    }
    s.until_keys("rw", 0).await;
}

/// A request whose mode disagrees with the holder's is refused naming both,
/// and takes its key away with it; so do a timed-out and a cancelled wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_timed_out_and_cancelled_requests_leave_no_key() {
    let Some(s) = setup().await else { return };
    let held = s.a.acquire("sem", patient().permits(3)).await.expect("permit");
    for refused in [
        s.b.acquire("sem", patient()).await.map(drop),
        s.b.acquire("sem", patient().shared()).await.map(drop),
        s.b.acquire("sem", patient().permits(2)).await.map(drop),
    ] {
        match refused {
            Err(LockError::Config(message)) => assert!(message.contains("3 permits"), "{message}"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
    assert_eq!(s.keys("sem").await, 1, "a refused request left its key");

    let writer = s.a.acquire("x", patient()).await.expect("writer");
    let timed_out = s.b.acquire("x", AcquireOptions::new().timeout(Duration::from_millis(300)).shared()).await;
    assert!(matches!(timed_out, Err(LockError::Timeout { .. })), "{timed_out:?}");
    assert_eq!(s.keys("x").await, 1, "a timed-out reader left its key");
    let b = s.b.clone();
    let cancelled = tokio::spawn(async move { b.acquire("x", patient().shared()).await });
    s.until_keys("x", 2).await;
    cancelled.abort();
    s.until_keys("x", 1).await;
    writer.release().await.expect("release");
    held.release().await.expect("release");
    assert_eq!(s.a.state("x").await.expect("state"), LockState::Available);
}
