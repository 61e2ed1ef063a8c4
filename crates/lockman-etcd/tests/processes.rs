//! Eight OS processes increment one counter under one etcd lock: no update
//! is lost, and every write carries a fencing token higher than the last.
//!
//! The child is this test binary re-run with `LOCKMAN_ETCD_COUNTER_CHILD`
//! set (`endpoint<TAB>increments`). The counter is a plain etcd key holding
//! `value token`, read and written with separate requests, so a broken
//! exclusion shows as a lost update.

use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, WatchOptions};
use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_etcd::{EtcdBackend, EtcdOptions};
use lockman_testkit::etcd_server::EtcdServer;
use lockman_testkit::processes::wait_all_succeed;

const CHILD_ENV: &str = "LOCKMAN_ETCD_COUNTER_CHILD";
const COUNTER: &str = "test/counter";
const PROCESSES: u64 = 8;
const INCREMENTS: u64 = 250;

#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let [endpoint, increments] = spec.split('\t').collect::<Vec<_>>()[..] else { panic!("bad spec {spec}") };
    let increments: u64 = increments.parse().expect("a count");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let locks = EtcdBackend::connect(EtcdOptions::new([endpoint])).await.expect("connect").into_manager();
        let mut raw = Client::connect([endpoint], None).await.expect("raw client");
        for _ in 0..increments {
            let guard = locks
                .acquire("counter", AcquireOptions::new().timeout(Duration::from_secs(60)))
                .await
                .expect("acquire");
            let token = guard.fencing_token().get();
            let read = raw.get(COUNTER, None).await.expect("read the counter");
            let (value, last) = match read.kvs().first() {
                Some(kv) => {
                    let text = kv.value_str().expect("utf-8");
                    let (value, last) = text.split_once(' ').expect("value token");
                    (value.parse::<u64>().expect("value"), last.parse::<u64>().expect("token"))
                }
                None => (0, 0),
            };
            assert!(token > last, "fencing token {token} after {last}: not strictly increasing");
            raw.put(COUNTER, format!("{} {token}", value + 1), None).await.expect("write the counter");
            guard.release().await.expect("release");
        }
    });
    std::process::exit(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_lose_no_update() {
    let Some(server) = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start") else { return };
    let endpoint = server.endpoint();
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(std::env::current_exe().expect("the test binary's path"))
                .args(["--exact", "child", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{endpoint}\t{INCREMENTS}"))
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn a child")
        })
        .collect();
    tokio::task::spawn_blocking(move || wait_all_succeed(&mut children, Duration::from_secs(240)))
        .await
        .expect("children");
    let mut raw = Client::connect([endpoint.as_str()], None).await.expect("raw client");
    let read = raw.get(COUNTER, None).await.expect("read");
    let text = read.kvs().first().expect("the counter was written").value_str().expect("utf-8").to_owned();
    let value: u64 = text.split_once(' ').expect("value token").0.parse().expect("value");
    assert_eq!(value, PROCESSES * INCREMENTS, "lost updates: {text}");
}

const FIFO_CHILD_ENV: &str = "LOCKMAN_ETCD_FIFO_CHILD";
const ORDER: &str = "test/order";

#[test]
fn fifo_child() {
    let Ok(spec) = std::env::var(FIFO_CHILD_ENV) else { return };
    let [endpoint, index] = spec.split('\t').collect::<Vec<_>>()[..] else { panic!("bad spec {spec}") };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let locks = EtcdBackend::connect(EtcdOptions::new([endpoint])).await.expect("connect").into_manager();
        let mut raw = Client::connect([endpoint], None).await.expect("raw client");
        let guard =
            locks.acquire("fifo", AcquireOptions::new().timeout(Duration::from_secs(60))).await.expect("acquire");
        let read = raw.get(ORDER, None).await.expect("read the order");
        let order = read.kvs().first().map(|kv| kv.value_str().expect("utf-8").to_owned()).unwrap_or_default();
        raw.put(ORDER, format!("{order}{index} "), None).await.expect("write the order");
        guard.release().await.expect("release");
    });
    std::process::exit(0);
}

/// Waiters in eight processes, queued one after another behind a holder,
/// get the lock in the order they asked: FIFO across processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_eight_processes_are_served_in_arrival_order() {
    let Some(server) = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start") else { return };
    let endpoint = server.endpoint();
    let locks = EtcdBackend::connect(EtcdOptions::new([endpoint.as_str()])).await.expect("connect").into_manager();
    let mut raw = Client::connect([endpoint.as_str()], None).await.expect("raw client");
    let guard = locks.acquire("fifo", AcquireOptions::new()).await.expect("acquire");
    let mut queue = raw.watch("lockman/lock/fifo/", Some(WatchOptions::new().with_prefix())).await.expect("watch");
    let mut children = Vec::new();
    for index in 0..PROCESSES {
        children.push(
            Command::new(std::env::current_exe().expect("the test binary's path"))
                .args(["--exact", "fifo_child", "--nocapture", "--test-threads=1"])
                .env(FIFO_CHILD_ENV, format!("{endpoint}\t{index}"))
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn a child"),
        );
        // The next child starts only once this one's key is queued (created).
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let response = queue.message().await.expect("watch the queue").expect("the watch ended");
                if response.events().iter().any(|e| e.kv().is_some_and(|kv| kv.version() == 1)) {
                    break;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("child {index} never queued"));
    }
    guard.release().await.expect("release");
    tokio::task::spawn_blocking(move || wait_all_succeed(&mut children, Duration::from_secs(60)))
        .await
        .expect("children");
    let read = raw.get(ORDER, None).await.expect("read");
    let order = read.kvs().first().expect("the order was written").value_str().expect("utf-8").to_owned();
    let expected: String = (0..PROCESSES).map(|index| format!("{index} ")).collect();
    assert_eq!(order, expected, "waiters were not served in arrival order");
}
