//! Redis faults: the server killed, restarted, or dropping our connection
//! while locks are held; locks broken by another manager; and real processes
//! sharing a counter under one Redis lock. Each test runs its own
//! `redis-server` on a free loopback port.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockman_core::{AcquireOptions, LockBackend, LockError, LockManager, LostReason};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;

const CHILD_ENV: &str = "LOCKMAN_REDIS_CHILD";

fn options(server: &RedisServer) -> RedisOptions {
    RedisOptions::new(server.url())
        .default_lease(Duration::from_millis(600))
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
}

async fn manager(options: RedisOptions) -> Arc<dyn LockManager> {
    Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager())
}

/// Killed server: the holder's guard reports the lock lost once renewal
/// fails past the lease, and a new acquire errors within its timeout —
/// never a false grant, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_loses_the_lock_and_acquire_errors_in_time() {
    let Some(mut server) = RedisServer::start() else { return };
    let locks = manager(options(&server)).await;
    let guard = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
    server.kill();
    let reason = tokio::time::timeout(Duration::from_secs(3), guard.lost()).await.expect("the guard never noticed");
    assert!(matches!(reason, LostReason::BackendUnreachable { .. }), "{reason:?}");
    let started = Instant::now();
    let err = locks
        .acquire("other", AcquireOptions::new().timeout(Duration::from_millis(250)))
        .await
        .expect_err("granted a lock with Redis down");
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(450), "took {:?}", started.elapsed());
    assert!(!err.to_string().contains("password"));
}

/// After a restart that lost every key, the same manager works again and
/// fencing tokens keep increasing (floored at the server's clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_recovers_and_tokens_keep_increasing() {
    let Some(mut server) = RedisServer::start() else { return };
    let locks = manager(options(&server)).await;
    let before = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
    let token = before.fencing_token();
    before.release().await.expect("release");
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match locks.acquire("r", AcquireOptions::new().timeout(Duration::from_millis(300))).await {
            Ok(guard) => break guard,
            Err(e) => assert!(Instant::now() < deadline, "never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(after.fencing_token() > token, "token {} after {token} across a restart", after.fencing_token());
}

/// Our connections killed by the server (`CLIENT KILL`): the manager
/// reconnects, and a held lock is never granted to someone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_reconnect_without_false_grants() {
    let Some(server) = RedisServer::start() else { return };
    let holder = manager(options(&server)).await;
    let other = manager(options(&server)).await;
    let guard = holder.acquire("r", AcquireOptions::new()).await.expect("acquire");
    server.command(&["CLIENT", "KILL", "TYPE", "normal"]).expect("client kill");
    server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).expect("client kill");
    let mut answered = 0;
    for _ in 0..20 {
        match other.try_acquire("r", AcquireOptions::new()).await {
            Ok(Some(_)) => panic!("a held lock was granted after the connections were killed"),
            Ok(None) => answered += 1,
            Err(_) => {} // the first command on a dead connection may fail; it reconnects
        }
    }
    assert!(answered > 0, "the manager never reconnected");
    assert!(!guard.is_lost());
    guard.release().await.expect("release after reconnect");
    assert!(other.try_acquire("r", AcquireOptions::new()).await.expect("try").is_some());
}

/// A lock broken by another process is reported lost at once through the
/// release channel: within 2 s, where one renewal interval is 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_by_another_process_is_noticed_at_once() {
    let Some(server) = RedisServer::start() else { return };
    let holder = manager(options(&server).default_lease(Duration::from_secs(30))).await;
    let guard = holder.acquire("r", AcquireOptions::new().purpose("stuck job")).await.expect("acquire");
    let admin = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("force\t{}\tr\toperator", server.url()))
        .stdin(Stdio::null())
        .output()
        .expect("run the admin process");
    assert!(admin.status.success(), "admin process failed: {}", String::from_utf8_lossy(&admin.stderr));
    let said = String::from_utf8_lossy(&admin.stdout);
    assert!(said.contains("broke r held for stuck job"), "the admin process did not break the lock: {said}");
    let reason = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("holder not told");
    assert_eq!(reason, LostReason::ForceReleased { reason: "operator".to_owned() });
    assert!(guard.release().await.expect_err("released a broken lock").is_lost());
}

/// The child side of the multi-process tests: `force<TAB>url<TAB>resource<TAB>reason`
/// breaks a lock; `url<TAB>counter file<TAB>n` increments the counter n times.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    if let ["force", url, resource, reason] = spec.split('\t').collect::<Vec<_>>()[..] {
        runtime.block_on(async {
            let locks = manager(RedisOptions::new(url)).await;
            let broken = locks.force_release(resource, reason).await.expect("force release").expect("held");
            println!("broke {resource} held for {}", broken.purpose.unwrap_or_default());
        });
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    }
    let [url, counter, n] = spec.split('\t').collect::<Vec<_>>()[..] else { panic!("bad spec {spec}") };
    runtime.block_on(async {
        let locks = manager(RedisOptions::new(url)).await;
        for _ in 0..n.parse::<u32>().expect("n") {
            let guard = locks
                .acquire("counter", AcquireOptions::new().timeout(Duration::from_secs(20)))
                .await
                .expect("acquire");
            let value: u64 = std::fs::read_to_string(counter).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            std::fs::write(counter, (value + 1).to_string()).expect("write");
            guard.release().await.expect("release");
        }
    });
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

/// 4 OS processes × 250 increments of a counter file under one Redis lock end at 1000.
#[test]
fn four_processes_share_a_counter() {
    let Some(server) = RedisServer::start() else { return };
    let dir = std::env::temp_dir().join(format!("lockman-redis-counter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let counter = dir.join("counter");
    std::fs::write(&counter, "0").expect("counter");
    let mut children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(std::env::current_exe().expect("exe"))
                .args(["--exact", "child", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{}\t{}\t250", server.url(), counter.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    lockman_testkit::processes::wait_all_succeed(&mut children, Duration::from_secs(60));
    let total = std::fs::read_to_string(Path::new(&counter)).expect("read");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(total.trim(), "1000", "lost updates");
}
