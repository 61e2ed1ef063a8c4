//! `FencedKey`: a Redis key that refuses writes carrying a fencing token
//! lower than the last one written. Each test runs its own `redis-server`
//! on a free loopback port (never 6379).

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, FencingToken, LockBackend, LockManager};
use lockman_redis::{FencedKey, RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;

const LIMIT: Duration = Duration::from_secs(10);

async fn backend(server: &RedisServer) -> RedisBackend {
    tokio::time::timeout(LIMIT, RedisBackend::connect(RedisOptions::new(server.url())))
        .await
        .expect("connect hung")
        .expect("connect")
}

#[tokio::test]
async fn stale_token_is_refused_and_equal_token_accepted() {
    let Some(server) = RedisServer::start() else { return };
    let key = FencedKey::new(&backend(&server).await, "regcache");
    assert_eq!(key.last_token().await.unwrap(), None);
    key.write(FencingToken::new(8), b"eight").await.unwrap();
    key.write(FencingToken::new(8), b"eight again").await.unwrap();
    let refused = key.write(FencingToken::new(7), b"seven").await.unwrap_err();
    assert!(refused.is_stale(), "{refused}");
    assert!(refused.to_string().contains("token 8 already wrote"), "{refused}");
    assert_eq!(server.command(&["GET", "regcache"]).unwrap().trim(), "eight again");
    assert_eq!(key.last_token().await.unwrap(), Some(FencingToken::new(8)));
    // Compared as numbers, not as strings: 10 is above 9.
    key.write(FencingToken::new(10), b"ten").await.unwrap();
    assert!(key.write(FencingToken::new(9), b"nine").await.unwrap_err().is_stale());
    // Above 2^53, where a Lua number would round.
    let big = (1u64 << 53) + 1; // as a double, big - 1 == big
    key.write(FencingToken::new(big), b"big").await.unwrap();
    assert!(key.write(FencingToken::new(big - 1), b"big-1").await.unwrap_err().is_stale());
    assert_eq!(server.command(&["GET", "regcache"]).unwrap().trim(), "big");
}

/// Two holders of one lock: the first pauses past its lease, the second
/// takes the lock and writes; the first wakes up and writes — refused.
#[tokio::test]
async fn paused_holder_past_its_lease_cannot_overwrite_the_next_holder() {
    let Some(server) = RedisServer::start() else { return };
    let backend = backend(&server).await;
    let key = FencedKey::new(&backend, "regcache");
    let locks: Arc<dyn LockManager> = Arc::new(backend.into_manager());

    let first = locks.acquire("inverter_read", AcquireOptions::new().lease(Duration::from_millis(200))).await.unwrap();
    // "Paused": the first holder does nothing until its lease is gone and the second holder got the lock.
    let second = tokio::time::timeout(LIMIT, locks.acquire("inverter_read", AcquireOptions::new().timeout(LIMIT)))
        .await
        .expect("second acquire hung")
        .unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    key.write(second.fencing_token(), b"second").await.unwrap();

    let late = key.write(first.fencing_token(), b"first, late").await.unwrap_err();
    assert!(late.is_stale(), "{late}");
    assert_eq!(server.command(&["GET", "regcache"]).unwrap().trim(), "second");
    second.release().await.unwrap();
    assert!(first.release().await.unwrap_err().is_lost());
}

/// Many writers at once, each with its own token: whatever order the
/// script runs them in, a lower token is never written after a higher one,
/// so the key ends with the highest token's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_leave_the_highest_token() {
    let Some(server) = RedisServer::start() else { return };
    let key = FencedKey::new(&backend(&server).await, "regcache");
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let mut writers = tokio::task::JoinSet::new();
    for token in 1..=16u64 {
        let (key, start) = (key.clone(), start.clone());
        writers.spawn(async move {
            start.wait().await;
            match key.write(FencingToken::new(token), token.to_string().as_bytes()).await {
                Ok(()) => true,
                Err(e) if e.is_stale() => false,
                Err(e) => panic!("{e}"),
            }
        });
    }
    let mut accepted = 0;
    while let Some(done) = tokio::time::timeout(LIMIT, writers.join_next()).await.expect("writers hung") {
        accepted += u32::from(done.unwrap());
    }
    assert!(accepted >= 1);
    assert_eq!(server.command(&["GET", "regcache"]).unwrap().trim(), "16");
    assert_eq!(key.last_token().await.unwrap(), Some(FencingToken::new(16)));
}
