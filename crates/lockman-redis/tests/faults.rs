//! Redis faults: the server killed, restarted (also from an older snapshot),
//! or dropping our connection while locks are held; replies delayed or lost
//! on the way (through a [`TcpRelay`] between client and server); locks
//! broken by another manager; one holder id used by two managers; and real
//! processes sharing a counter under one Redis lock. Each test runs its own
//! `redis-server` on a free loopback port.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lockman_core::{AcquireOptions, LockBackend, LockError, LockManager, LockState, LostReason};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;
use lockman_testkit::relay::{Direction, TcpRelay};

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

/// Bound on steps that should take moments.
const BOUND: Duration = Duration::from_secs(5);

/// A relay in front of `server`, and options for a manager that reaches the
/// server through it (with room for delayed replies).
async fn relayed(server: &RedisServer) -> (TcpRelay, RedisOptions) {
    let relay = TcpRelay::start(([127, 0, 0, 1], server.port()).into()).await.expect("start the relay");
    let options = RedisOptions::new(format!("redis://{}/0", relay.addr()))
        .default_lease(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(BOUND);
    (relay, options)
}

/// Polls `probe` every 5 ms until it returns `Some`, failing after [`BOUND`].
async fn poll_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {BOUND:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `n` release subscribers are connected, so that nothing but
/// the commands a test sends crosses a relay afterwards.
async fn wait_for_subscribers(server: &RedisServer, n: usize) {
    poll_until(&format!("{n} release subscribers"), || {
        let list = server.command(&["CLIENT", "LIST", "TYPE", "pubsub"]).ok()?;
        (list.lines().filter(|line| line.starts_with("id=")).count() >= n).then_some(())
    })
    .await;
}

/// One acquire + release of a resource no test uses, so that Redis has
/// loaded the acquire and release scripts: a first `EVALSHA` is answered
/// `NOSCRIPT` and sent again, which would add round trips to what a test
/// stalls or delays.
async fn warm_up(locks: &dyn LockManager) {
    let guard = locks.acquire("warm-up", AcquireOptions::new().timeout(BOUND)).await.expect("warm-up acquire");
    guard.release().await.expect("warm-up release");
}

/// The lock hash of `resource` under the default prefix.
fn lock_key(resource: &str) -> String {
    format!("lockman:{{{resource}}}:lock")
}

/// A field of the lock hash of `resource`, `(nil)` if absent.
fn lock_field(server: &RedisServer, resource: &str, field: &str) -> String {
    server.command(&["HGET", &lock_key(resource), field]).expect("HGET")
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

/// Fencing tokens never repeat after a restart that lost only the latest
/// writes: three grants, a snapshot (`SAVE`), three more grants, a crash
/// (`SIGKILL`) and a restart from the snapshot, which brings the token
/// counter back to the third grant's. Every later token must still exceed
/// every token issued before the crash (they are floored at the server's
/// clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_increase_after_a_restart_from_an_older_snapshot() {
    let Some(mut server) = RedisServer::start() else { return };
    let locks = manager(options(&server)).await;
    let mut issued = Vec::new();
    for round in 0..6 {
        if round == 3 {
            server.save().expect("SAVE");
        }
        let guard = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
        issued.push(guard.fencing_token().get());
        guard.release().await.expect("release");
    }
    let fence = server.command(&["GET", "lockman:{r}:fence"]).expect("GET the fence");
    let fence_ttl: i64 = server.command(&["PTTL", "lockman:{r}:fence"]).expect("PTTL").parse().expect("a number");
    assert!(fence_ttl > 0, "the fence key never expires (PTTL {fence_ttl}): one key kept per name ever locked");
    server.kill();
    server.restart();
    let restored = server.command(&["GET", "lockman:{r}:fence"]).expect("GET the fence");
    assert_ne!(restored, fence, "the restart did not bring back an older fence; the fault was not injected");
    let highest = *issued.iter().max().expect("six grants");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = Vec::new();
    while after.len() < 3 {
        match locks.acquire("r", AcquireOptions::new().timeout(Duration::from_millis(300))).await {
            Ok(guard) => {
                after.push(guard.fencing_token().get());
                guard.release().await.expect("release");
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never recovered after the restart: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        after.iter().all(|token| *token > highest) && after.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens before the crash {issued:?} (the snapshot kept the counter at {restored}), after the restart \
         {after:?}: a token was issued twice"
    );
}

/// A lease is dated from when the acquire was sent, not from when its reply
/// arrived: with replies delayed 1.3 s by a relay, a 1 s lease has run out
/// (server side) before the reply comes. Another client takes the lock at
/// the lease's end; by then the slow client's guard must not believe it
/// still holds the lock, and its expiry is at most `sent + lease`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_acquire_reply_dates_the_lease_from_the_request() {
    const LEASE: Duration = Duration::from_secs(1);
    const DELAY: Duration = Duration::from_millis(1300);
    let Some(server) = RedisServer::start() else { return };
    let (relay, slow_options) = relayed(&server).await;
    let slow = manager(slow_options).await;
    let other = manager(options(&server).response_timeout(BOUND)).await;
    warm_up(&*slow).await;
    wait_for_subscribers(&server, 2).await;
    relay.set_delay(Direction::ToClient, DELAY);

    let sent = SystemTime::now();
    let acquiring = tokio::spawn({
        let slow = slow.clone();
        async move {
            let guard = slow.acquire("r", AcquireOptions::new().lease(LEASE).timeout(BOUND)).await;
            (guard, SystemTime::now())
        }
    });
    poll_until("the slow client's grant", || (lock_field(&server, "r", "holder") != "(nil)").then_some(())).await;
    let taken = tokio::time::timeout(BOUND, other.acquire("r", AcquireOptions::new().timeout(BOUND)))
        .await
        .expect("the other client's acquire hung")
        .expect("the other client gets the lock when the 1 s lease runs out");
    let (guard, returned) = tokio::time::timeout(BOUND, acquiring).await.expect("slow acquire hung").expect("task");
    let guard = guard.expect("the slow client's acquire (its reply is late, not lost)");
    let expires = guard.info().lease_expires_at.expect("a leased guard has an expiry");
    let held_by_other = matches!(other.state("r").await.expect("state"), LockState::Held(info)
        if info.fencing_token == taken.fencing_token());
    assert!(held_by_other, "the other client's lock is gone");
    assert!(
        guard.is_lost(),
        "the slow client's guard believes it holds the lock until {:?} after its acquire was sent (replies delayed \
         {DELAY:?}, lease {LEASE:?}) while another client holds it",
        expires.duration_since(sent).unwrap_or_default()
    );
    assert!(expires >= sent + LEASE, "expiry {expires:?} before sent + lease");
    assert!(
        expires <= returned - DELAY + LEASE,
        "the lease is dated {:?} after the reply arrived; it must be dated from the request (at the latest \
         reply - delay)",
        (expires + DELAY).duration_since(returned + LEASE).unwrap_or_default()
    );
    assert!(guard.release().await.expect_err("released a lock whose lease ran out").is_lost());
    taken.release().await.expect("the other client's release");
    drop(relay);
}

/// Item: a release whose first attempt breaks with the connection is sent
/// again; if the lock is then no longer ours and nothing shows that our first
/// attempt released it, the loss must be reported — not `Ok`. Here the grant
/// vanished without a word (as in a failover to a replica that never saw it)
/// and another client holds the lock; the release is stalled in the relay
/// and its connection cut, so the first attempt never reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_release_reports_a_lock_lost_before_it() {
    let Some(server) = RedisServer::start() else { return };
    let (relay, holder_options) = relayed(&server).await;
    let holder = manager(holder_options).await;
    let other = manager(options(&server)).await;
    let guard = holder.acquire("r", AcquireOptions::new().lease(Duration::from_secs(30))).await.expect("acquire");
    wait_for_subscribers(&server, 2).await;
    assert_eq!(server.command(&["DEL", &lock_key("r")]).expect("DEL"), "1");
    let taken = other.acquire("r", AcquireOptions::new().timeout(BOUND)).await.expect("the other client acquires");

    relay.stall(Direction::ToServer);
    let releasing = tokio::spawn(async move { guard.release().await });
    tokio::time::timeout(BOUND, relay.wait_in_flight(Direction::ToServer, 1)).await.expect("the release never left");
    let accepted = relay.accepted();
    relay.cut();
    relay.resume(Direction::ToServer);
    let released = tokio::time::timeout(BOUND, releasing).await.expect("release hung").expect("task");
    assert!(relay.accepted() > accepted, "the holder never reconnected, so the release was not retried");
    assert!(
        matches!(&released, Err(LockError::Lost { .. })),
        "a retried release of a lock another client holds answered {released:?}; it must report the loss"
    );
    let said = released.expect_err("lost").to_string();
    assert!(said.contains("retried after the connection dropped"), "not the retry's report: {said}");
    let state = other.state("r").await.expect("state");
    assert!(
        matches!(&state, LockState::Held(info) if info.fencing_token == taken.fencing_token()),
        "the retried release disturbed the other client's lock: {state:?}"
    );
    taken.release().await.expect("the other client's release");
}

/// As above, but the lock was broken (`force_release`) and nobody took it
/// since, and the holder never heard of the break (its subscriber's message
/// is stalled and cut with the release): the retry must still report the
/// loss — the break moved the fence on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_release_reports_a_lock_broken_before_it() {
    let Some(server) = RedisServer::start() else { return };
    let (relay, holder_options) = relayed(&server).await;
    let holder = manager(holder_options).await;
    let admin = manager(options(&server)).await;
    let guard = holder.acquire("r", AcquireOptions::new().lease(Duration::from_secs(30))).await.expect("acquire");
    wait_for_subscribers(&server, 2).await;

    relay.stall(Direction::ToClient);
    admin.force_release("r", "operator").await.expect("force release").expect("it was held");
    relay.stall(Direction::ToServer);
    let releasing = tokio::spawn(async move { guard.release().await });
    tokio::time::timeout(BOUND, relay.wait_in_flight(Direction::ToServer, 1)).await.expect("the release never left");
    relay.cut();
    relay.resume(Direction::ToServer);
    relay.resume(Direction::ToClient);
    let released = tokio::time::timeout(BOUND, releasing).await.expect("release hung").expect("task");
    let said = match &released {
        Err(LockError::Lost { .. }) => released.expect_err("lost").to_string(),
        other => panic!("a retried release of a lock broken before it answered {other:?}; it must report the loss"),
    };
    assert!(said.contains("retried after the connection dropped"), "not the retry's report: {said}");
}

/// A release whose reply is lost with its connection, after Redis ran it:
/// the retry must see that the first attempt released the lock (`Ok`, and
/// the lock is free), not report a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_release_after_the_first_attempt_ran_is_ok() {
    let Some(server) = RedisServer::start() else { return };
    let (relay, holder_options) = relayed(&server).await;
    let holder = manager(holder_options).await;
    warm_up(&*holder).await;
    let guard = holder.acquire("r", AcquireOptions::new().lease(Duration::from_secs(30))).await.expect("acquire");
    wait_for_subscribers(&server, 1).await;

    relay.stall(Direction::ToClient);
    let releasing = tokio::spawn(async move { guard.release().await });
    // Wait for its effect, not for bytes in the relay: a subscriber's late
    // reply could be the bytes held.
    poll_until("the release to run", || (lock_field(&server, "r", "holder") == "(nil)").then_some(())).await;
    relay.cut();
    relay.resume(Direction::ToClient);
    let released = tokio::time::timeout(BOUND, releasing).await.expect("release hung").expect("task");
    released.expect("a release that ran, whose reply was lost, is a release");
    let again = holder.try_acquire("r", AcquireOptions::new()).await.expect("try_acquire");
    assert!(again.is_some(), "the lock is still held after the release");
}

/// As above, with a waiter on another manager: the first attempt handed the
/// lock to it (a direct handoff), so the retry finds the waiter holding —
/// and must still see that our release did that (`Ok`), not report a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_release_after_the_first_attempt_handed_the_lock_over_is_ok() {
    let Some(server) = RedisServer::start() else { return };
    let (relay, holder_options) = relayed(&server).await;
    let holder = manager(holder_options).await;
    let waiter = manager(options(&server).response_timeout(BOUND)).await;
    warm_up(&*holder).await;
    let guard = holder.acquire("r", AcquireOptions::new().lease(Duration::from_secs(30))).await.expect("acquire");
    wait_for_subscribers(&server, 2).await;
    let waiting = tokio::spawn(async move { waiter.acquire("r", AcquireOptions::new().timeout(BOUND)).await });
    server.until_queued("r", 1).await;
    let ours = lock_field(&server, "r", "holder");

    relay.stall(Direction::ToClient);
    let releasing = tokio::spawn(async move { guard.release().await });
    poll_until("the release to hand the lock over", || (lock_field(&server, "r", "holder") != ours).then_some(()))
        .await;
    relay.cut();
    relay.resume(Direction::ToClient);
    let released = tokio::time::timeout(BOUND, releasing).await.expect("release hung").expect("task");
    released.expect("a release that ran and handed the lock over, whose reply was lost, is a release");
    let next = tokio::time::timeout(BOUND, waiting).await.expect("the waiter hung").expect("task");
    next.expect("the waiter was handed the lock").release().await.expect("the waiter's release");
}

/// One holder id used by two managers (as two processes given the same id)
/// shares one grant as two holds. A release of one hold whose reply is lost
/// and which is then retried must release that one hold only — not the other
/// manager's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_release_of_a_shared_hold_releases_it_once() {
    let Some(server) = RedisServer::start() else { return };
    let (relay, first_options) = relayed(&server).await;
    let first = manager(first_options).await;
    let second = manager(options(&server).response_timeout(BOUND)).await;
    warm_up(&*first).await;
    let shared = || AcquireOptions::new().shared_holder("shared").lease(Duration::from_secs(30));
    let a = first.acquire("r", shared()).await.expect("first manager acquires");
    let b = second.acquire("r", shared()).await.expect("second manager re-enters");
    assert_eq!(a.fencing_token(), b.fencing_token());
    assert_eq!(lock_field(&server, "r", "count"), "2");
    wait_for_subscribers(&server, 2).await;

    relay.stall(Direction::ToClient);
    let releasing = tokio::spawn(async move { a.release().await });
    poll_until("the release to run", || (lock_field(&server, "r", "count") == "1").then_some(())).await;
    relay.cut();
    relay.resume(Direction::ToClient);
    let released = tokio::time::timeout(BOUND, releasing).await.expect("release hung").expect("task");
    released.expect("the first manager's release");
    assert_eq!(
        lock_field(&server, "r", "count"),
        "1",
        "the retried release took the second manager's hold too (the lock is gone or changed)"
    );
    assert!(!b.is_lost());
    b.release().await.expect("the second manager's release");
    assert_eq!(lock_field(&server, "r", "holder"), "(nil)");
}

/// Two managers sharing one holder id: the second's re-entry with a short
/// lease must not shorten the lease the first relies on — else a third
/// client takes the lock while the first still believes it holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_holder_reentry_never_shortens_the_lease() {
    let Some(server) = RedisServer::start() else { return };
    let first = manager(options(&server)).await;
    let second = manager(options(&server)).await;
    let third = manager(options(&server)).await;
    let long = first
        .acquire("r", AcquireOptions::new().shared_holder("shared").lease(Duration::from_secs(10)))
        .await
        .expect("first manager acquires");
    let short = second
        .acquire("r", AcquireOptions::new().shared_holder("shared").lease(Duration::from_millis(200)))
        .await
        .expect("second manager re-enters");
    let pttl: u64 = server.command(&["PTTL", &lock_key("r")]).expect("PTTL").parse().expect("a number");
    assert!(pttl > 5_000, "the second manager's 200 ms re-entry cut the first's 10 s lease to {pttl} ms");
    let short_expiry = short.info().lease_expires_at.expect("expiry");
    let long_expiry = long.info().lease_expires_at.expect("expiry");
    assert!(
        short_expiry + Duration::from_secs(1) > long_expiry,
        "the re-entered guard believes in {short_expiry:?}, the lock lives until about {long_expiry:?}"
    );
    // Nor may a renewal of the shared grant shorten it.
    short.extend(Duration::from_millis(200)).await.expect("extend the re-entered guard");
    let pttl: u64 = server.command(&["PTTL", &lock_key("r")]).expect("PTTL").parse().expect("a number");
    assert!(pttl > 5_000, "the second manager's 200 ms renewal cut the first's 10 s lease to {pttl} ms");
    assert!(short.info().lease_expires_at.expect("expiry") + Duration::from_secs(1) > long_expiry);
    let err = third
        .acquire("r", AcquireOptions::new().timeout(Duration::from_millis(500)))
        .await
        .expect_err("a third client took the lock while the first manager's 10 s lease ran");
    assert!(err.is_timeout(), "{err}");
    assert!(!long.is_lost());
    short.release().await.expect("second manager's release");
    long.release().await.expect("first manager's release");
    assert_eq!(lock_field(&server, "r", "holder"), "(nil)");
}

/// The undo of an acquire whose answer never came must undo that attempt
/// only. Two managers share one holder id; the first holds the lock. The
/// second's acquire is stalled in a relay and its connection cut, so it
/// never reaches Redis; the second then undoes its attempt (in the
/// background, seen with `MONITOR`). The first manager's grant must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undoing_an_unanswered_acquire_keeps_a_shared_holders_grant() {
    let Some(server) = RedisServer::start() else { return };
    let first = manager(options(&server).response_timeout(BOUND)).await;
    let (relay, second_options) = relayed(&server).await;
    let second = manager(second_options).await;
    let shared = || AcquireOptions::new().shared_holder("shared").lease(Duration::from_secs(30)).timeout(BOUND);
    let held = first.acquire("r", shared()).await.expect("first manager acquires");
    wait_for_subscribers(&server, 2).await;
    let mut monitor = server.monitor().expect("MONITOR");

    relay.stall(Direction::ToServer);
    let acquiring = tokio::spawn({
        let second = second.clone();
        async move { second.acquire("r", shared()).await.map(|guard| guard.info()) }
    });
    tokio::time::timeout(BOUND, relay.wait_in_flight(Direction::ToServer, 1)).await.expect("the acquire never left");
    relay.cut();
    relay.resume(Direction::ToServer);
    let attempt = tokio::time::timeout(BOUND, acquiring).await.expect("acquire hung").expect("task");
    assert!(attempt.is_err(), "the cut acquire reached Redis after all: {attempt:?}");
    // The undo runs a script on the lock; a MONITOR line for it arrives once it has finished.
    let key = lock_key("r");
    tokio::task::spawn_blocking(move || {
        monitor.wait_for(BOUND, |line| line.contains(" lua] ") && line.contains(&format!("\"{key}\"")))
    })
    .await
    .expect("monitor task")
    .expect("the second manager never undid its attempt");

    let state = first.state("r").await.expect("state");
    assert!(
        matches!(&state, LockState::Held(info) if info.fencing_token == held.fencing_token()),
        "undoing the second manager's unanswered acquire removed the first manager's grant: {state:?}"
    );
    assert!(!held.is_lost());
    held.release().await.expect("first manager's release");
}

/// The undo of an acquire that re-entered a shared grant, whose reply was
/// lost with its connection, takes back that one hold: the grant goes back
/// to one hold (the first manager's), so the lock is free as soon as the
/// first manager releases it — not only when the lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undoing_an_unanswered_reentry_takes_back_only_its_hold() {
    let Some(server) = RedisServer::start() else { return };
    let first = manager(options(&server).response_timeout(BOUND)).await;
    let (relay, second_options) = relayed(&server).await;
    let second = manager(second_options).await;
    let other = manager(options(&server).response_timeout(BOUND)).await;
    let shared = || AcquireOptions::new().shared_holder("shared").lease(Duration::from_secs(30)).timeout(BOUND);
    let held = first.acquire("r", shared()).await.expect("first manager acquires");
    wait_for_subscribers(&server, 3).await;
    let mut monitor = server.monitor().expect("MONITOR");

    relay.stall(Direction::ToClient);
    let acquiring = tokio::spawn({
        let second = second.clone();
        async move { second.acquire("r", shared()).await.map(|guard| guard.info()) }
    });
    poll_until("the re-entry to run", || (lock_field(&server, "r", "count") == "2").then_some(())).await;
    relay.cut();
    relay.resume(Direction::ToClient);
    let attempt = tokio::time::timeout(BOUND, acquiring).await.expect("acquire hung").expect("task");
    assert!(attempt.is_err(), "the reply came through the cut: {attempt:?}");
    // The undo's first command on the lock (this version's, or the one before).
    let key = format!("\"{}\"", lock_key("r"));
    tokio::task::spawn_blocking(move || {
        monitor.wait_for(BOUND, |line| {
            line.contains(" lua] ")
                && line.contains(&key)
                && (line.contains("\"HDEL\"") || line.ends_with("\"holder\" \"count\""))
        })
    })
    .await
    .expect("monitor task")
    .expect("the second manager never undid its attempt");

    assert_eq!(lock_field(&server, "r", "count"), "1", "the undo did not take back the re-entry's hold");
    held.release().await.expect("first manager's release");
    let next = other.try_acquire("r", AcquireOptions::new()).await.expect("try_acquire");
    assert!(next.is_some(), "the lock stayed held after its only live hold was released");
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

/// A forged `forced:` message — anyone who can `PUBLISH` can send one — does
/// not make a holder believe it lost a lock the key still names it for; a
/// real break that follows it is still noticed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_force_release_message_does_not_lose_the_lock() {
    let Some(server) = RedisServer::start() else { return };
    let holder = manager(options(&server).default_lease(Duration::from_secs(30))).await;
    let admin = manager(options(&server)).await;
    wait_for_subscribers(&server, 2).await;
    let guard = holder.acquire("r", AcquireOptions::new().purpose("job")).await.expect("acquire");
    let witness = holder.acquire("witness", AcquireOptions::new()).await.expect("acquire the witness");
    server.command(&["PUBLISH", "lockman:{r}:released", "forced:attacker"]).expect("publish the forged message");
    // The subscriber handles messages in order: once the real break of the
    // witness is heard, the forged message before it has been handled too.
    admin.force_release("witness", "real").await.expect("force release").expect("witness held");
    let reason = tokio::time::timeout(BOUND, witness.lost()).await.expect("the real break was not noticed");
    assert_eq!(reason, LostReason::ForceReleased { reason: "real".to_owned() });
    assert!(!guard.is_lost(), "a forged message made the holder give up a lock it still holds");
    assert!(!server.command(&["HGET", &lock_key("r"), "holder"]).expect("hget").is_empty(), "the lock key is gone");
    guard.release().await.expect("the lock the forged message named is still ours");
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
