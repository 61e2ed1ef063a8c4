//! Plain exclusive locks are first come, first served across managers
//! (processes): a waiter that finds the lock busy joins the resource's queue
//! in Redis, so when the lock is released the longest waiter gets it —
//! whichever manager it is on — and not whoever hears the release first.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;

const BOUND: Duration = Duration::from_secs(5);
const MANAGERS: usize = 6;

async fn manager(server: &RedisServer) -> Arc<dyn LockManager> {
    Arc::new(RedisBackend::connect(RedisOptions::new(server.url())).await.expect("connect").into_manager())
}

/// Waiters on six managers, each queued after the one before, are granted
/// in that order — also the waiter on the releasing holder's own manager,
/// which hears the release first, waits for its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_several_managers_are_served_in_arrival_order() {
    let Some(server) = RedisServer::start() else { return };
    let mut managers = Vec::new();
    for _ in 0..MANAGERS {
        managers.push(manager(&server).await);
    }
    let holder = managers[0].acquire("fifo", AcquireOptions::new()).await.expect("acquire");
    let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
    // The last waiter is on the holder's manager.
    let mut waiters = Vec::new();
    for (place, index) in (1..MANAGERS).chain([0]).enumerate() {
        let (locks, order_tx) = (managers[index].clone(), order_tx.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locks.acquire("fifo", AcquireOptions::new().timeout(BOUND)).await.expect("acquire");
            order_tx.send(place).expect("send");
            guard.release().await.expect("release");
        }));
        server.until_queued("fifo", place + 1).await;
    }
    holder.release().await.expect("release");
    for waiter in waiters {
        tokio::time::timeout(BOUND, waiter).await.expect("a waiter hung").expect("join");
    }
    let order: Vec<usize> = std::iter::from_fn(|| order_rx.try_recv().ok()).collect();
    assert_eq!(order, (0..MANAGERS).collect::<Vec<_>>(), "waiters were not served in arrival order");
}

/// A waiter that times out has left the queue when its `acquire` returns
/// (not later, in the background): a process that exits on the timeout
/// must not hold back the next request for the rest of its queue lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_waiter_has_left_the_queue_when_acquire_returns() {
    let Some(server) = RedisServer::start() else { return };
    let (holder, waiter) = (manager(&server).await, manager(&server).await);
    let held = holder.acquire("busy", AcquireOptions::new()).await.expect("acquire");
    let timed_out = waiter.acquire("busy", AcquireOptions::new().timeout(Duration::from_millis(200))).await;
    assert!(matches!(timed_out, Err(lockman_core::LockError::Timeout { .. })), "{timed_out:?}");
    let queued = server.command(&["ZCARD", "lockman:{busy}:queue"]).expect("ZCARD");
    assert_eq!(queued, "0", "the timed-out waiter is still queued");
    held.release().await.expect("release");
    let next = holder.try_acquire("busy", AcquireOptions::new()).await.expect("try");
    assert!(next.is_some(), "a free lock was refused behind a waiter that gave up");
}

async fn manager_with_lease(server: &RedisServer, lease: Duration) -> Arc<dyn LockManager> {
    let options = RedisOptions::new(server.url()).default_lease(lease);
    Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager())
}

/// A release hands the lock to the waiter at the head of the queue in the
/// release script itself: the lock names the waiter as soon as `release`
/// returns, the waiter takes it on the release message without another
/// script run, and its first renewal turns the short claim lease the
/// release gave it into its whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_the_lock_to_the_waiter_at_the_head() {
    let Some(server) = RedisServer::start() else { return };
    let lease = Duration::from_secs(10);
    let (holder, waiter) = (manager_with_lease(&server, lease).await, manager_with_lease(&server, lease).await);
    let held = holder.acquire("handoff", AcquireOptions::new()).await.expect("acquire");
    let waiting = tokio::spawn(async move {
        let guard = waiter.acquire("handoff", AcquireOptions::new().timeout(BOUND)).await.expect("acquire");
        (guard, waiter)
    });
    server.until_queued("handoff", 1).await;
    // Every message under the prefix, with its channel.
    let client = redis::Client::open(server.url()).expect("client");
    let mut all = client.get_async_pubsub().await.expect("pubsub");
    all.psubscribe("lockman:*").await.expect("PSUBSCRIBE");
    let mut messages = all.into_on_message();
    server.command(&["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    let released_token = held.fencing_token();
    held.release().await.expect("release");
    let token = server.command(&["HGET", "lockman:{handoff}:lock", "token"]).expect("HGET");
    assert!(!token.is_empty(), "the lock was free after the release: nobody was handed it");

    let (guard, waiter) = tokio::time::timeout(BOUND, waiting).await.expect("the waiter hung").expect("join");
    assert_eq!(guard.fencing_token().get().to_string(), token, "the waiter holds another grant than the one handed");
    assert!(guard.fencing_token() > released_token);
    let stats = server.command(&["INFO", "commandstats"]).expect("INFO");
    // Script runs that ran (a first EVALSHA of a script the server has not
    // loaded yet fails, and is sent again after SCRIPT LOAD).
    let evalsha = stats.lines().find_map(|line| line.strip_prefix("cmdstat_evalsha:")).expect("EVALSHA stats");
    let field = |name: &str| -> u64 {
        evalsha
            .split(',')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let scripts = field("calls") - field("failed_calls");
    assert_eq!(scripts, 1, "the handoff took {scripts} script runs (the release, and the waiter's?)\n{stats}");
    // One message, on the waiter's manager's inbox: no other manager hears it.
    let message = tokio::time::timeout(BOUND, messages.next()).await.expect("no message").expect("pubsub ended");
    let payload: String = message.get_payload().expect("payload");
    assert!(
        message.get_channel_name().starts_with("lockman:inbox:") && payload.starts_with("grant:"),
        "the handoff was published as {payload:?} on {}",
        message.get_channel_name()
    );
    let more = tokio::time::timeout(Duration::from_millis(50), messages.next()).await;
    assert!(more.is_err(), "another message followed the handoff: {more:?}");

    // Handed with a claim lease of at most the queue lease; the first
    // renewal (a third of it) sets the whole lease.
    let pttl = |server: &RedisServer| -> i64 {
        server.command(&["PTTL", "lockman:{handoff}:lock"]).expect("PTTL").parse().expect("a number")
    };
    assert!(pttl(&server) <= 3_000, "handed with a {} ms lease", pttl(&server));
    let renewed = tokio::time::timeout(BOUND, async {
        while pttl(&server) <= 3_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(renewed.is_ok(), "the handed grant's claim lease was never lengthened: PTTL {}", pttl(&server));
    assert!(!guard.is_lost());
    guard.release().await.expect("release");
    drop(waiter);
}

/// A waiter whose process died after its last queue-lease refresh can be
/// handed the lock; it holds it only for the claim lease (here its own
/// 800 ms lease, shorter than the queue lease), and the next waiter gets
/// it after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_handed_to_a_dead_waiter_passes_on_after_its_claim_lease() {
    let Some(server) = RedisServer::start() else { return };
    let (holder, waiter) = (manager(&server).await, manager(&server).await);
    let held = holder.acquire("dead", AcquireOptions::new()).await.expect("acquire");
    // The dead waiter: first in the queue, its queue lease live for 3 s,
    // its grant details left as a live waiter's are.
    let planted = server.command(&[
        "EVAL",
        "local t = redis.call('TIME') \
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
         redis.call('ZADD', KEYS[1], 1, 'dead-waiter') \
         redis.call('HSET', KEYS[2], 'dead-waiter', string.format('%.0f', now + 3000) .. ' x', \
           'd:dead-waiter', cjson.encode({'dead-holder', '800', 'gone-host', '1', 'crashed', 'nobody'})) \
         redis.call('PEXPIRE', KEYS[1], 3000) redis.call('PEXPIRE', KEYS[2], 3000) \
         redis.call('HSET', KEYS[3], 'waited', '1') return 1",
        "3",
        "lockman:{dead}:queue",
        "lockman:{dead}:waiters",
        "lockman:{dead}:lock",
    ]);
    assert_eq!(planted, Ok("1".to_owned()));
    let waiting = tokio::spawn(async move {
        let asked = std::time::Instant::now();
        let guard = waiter.acquire("dead", AcquireOptions::new().timeout(BOUND)).await.expect("acquire");
        (guard, asked.elapsed(), waiter)
    });
    server.until_queued("dead", 2).await;
    let released = std::time::Instant::now();
    held.release().await.expect("release");
    let holder_now = server.command(&["HGET", "lockman:{dead}:lock", "holder"]).expect("HGET");
    assert_eq!(holder_now, "dead-holder", "the dead waiter at the head was not handed the lock");
    let (guard, _, waiter) = tokio::time::timeout(BOUND, waiting).await.expect("the waiter hung").expect("join");
    let after = released.elapsed();
    assert!(
        after >= Duration::from_millis(700),
        "the next waiter got in {after:?} after the handoff, within the claim"
    );
    assert!(after < Duration::from_millis(800) + Duration::from_secs(2), "the next waiter got in only after {after:?}");
    guard.release().await.expect("release");
    drop(waiter);
}

/// A free lock with a live waiter queued for it (a waiter of another
/// process, between a release that named it and its next look) is not
/// taken by a newcomer: `try_acquire` is refused, and the lock is free again
/// for newcomers once that waiter's queue entry is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_does_not_take_a_free_lock_ahead_of_a_queued_waiter() {
    let Some(server) = RedisServer::start() else { return };
    let newcomer = manager(&server).await;
    // The waiter, as the acquire script queues one: arrival score, and a
    // queue lease (server ms) with its mode.
    let now = server.command(&["TIME"]).expect("TIME");
    let seconds: u64 = now.lines().next().and_then(|s| s.parse().ok()).expect("TIME seconds");
    let (score, lease_end) = ((seconds - 1) * 1_000_000, (seconds + 60) * 1_000);
    let waiter = "other-process-manager/1";
    server.command(&["ZADD", "lockman:{barge}:queue", &score.to_string(), waiter]).expect("ZADD");
    server.command(&["HSET", "lockman:{barge}:waiters", waiter, &format!("{lease_end} x")]).expect("HSET");
    let barged = newcomer.try_acquire("barge", AcquireOptions::new()).await.expect("try_acquire");
    assert!(barged.is_none(), "a newcomer took the lock ahead of the queued waiter");
    server.command(&["DEL", "lockman:{barge}:queue", "lockman:{barge}:waiters"]).expect("DEL");
    let free = newcomer.try_acquire("barge", AcquireOptions::new()).await.expect("try_acquire");
    free.expect("a free lock with nobody queued was refused").release().await.expect("release");
}
