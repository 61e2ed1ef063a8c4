//! Shared (reader-writer) and permit (semaphore) grants on Redis, across two
//! managers on one private `redis-server`: who may hold together, FIFO
//! across modes (a stream of readers does not starve a writer), modes that
//! disagree, fencing tokens across modes, per-holder leases, force-release
//! of every holder, and what a cancelled or timed-out waiter leaves behind
//! (nothing). Crashed and paused processes are in `mode_processes.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockman_core::{AcquireOptions, LockBackend, LockError, LockGuard, LockManager, LockMode, LostReason};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;

/// Bound on steps that should take moments.
const BOUND: Duration = Duration::from_secs(5);

async fn manager(server: &RedisServer) -> Arc<dyn LockManager> {
    let options = RedisOptions::new(server.url()).default_lease(Duration::from_millis(600));
    Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager())
}

async fn two_managers() -> Option<(RedisServer, Arc<dyn LockManager>, Arc<dyn LockManager>)> {
    let server = RedisServer::start()?;
    let (a, b) = (manager(&server).await, manager(&server).await);
    Some((server, a, b))
}

fn shared() -> AcquireOptions {
    AcquireOptions::new().shared().timeout(BOUND).purpose("reader")
}

fn exclusive() -> AcquireOptions {
    AcquireOptions::new().timeout(BOUND).purpose("writer")
}

fn permits(n: u32) -> AcquireOptions {
    AcquireOptions::new().permits(n).timeout(BOUND).purpose("worker")
}

/// The number of live waiters in `resource`'s queue (default prefix).
fn queued(server: &RedisServer, resource: &str) -> usize {
    server.command(&["ZCARD", &format!("lockman:{{{resource}}}:queue")]).expect("ZCARD").parse().unwrap_or(0)
}

/// Whether `task` is still waiting after a moment (it must be, for a test
/// that checks it was not let in).
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    tokio::time::sleep(Duration::from_millis(150)).await;
    !task.is_finished()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_hold_together_but_never_beside_a_writer() {
    let Some((_server, a, b)) = two_managers().await else { return };
    let r1 = a.acquire("r", shared()).await.expect("first reader");
    let r2 = b.acquire("r", shared()).await.expect("a second reader, in another manager, joins");
    assert_eq!(r1.info().mode, LockMode::Shared);
    assert!(b.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "a writer got in beside readers");

    let state = a.state("r").await.expect("state");
    let info = state.info().expect("held");
    assert_eq!(info.mode, LockMode::Shared);
    let tokens: Vec<_> = info.all_holders().map(|h| h.fencing_token).collect();
    assert_eq!(tokens, vec![r1.fencing_token(), r2.fencing_token()], "inspect shows every reader, oldest first");
    assert!(info.all_holders().all(|h| h.purpose.as_deref() == Some("reader") && h.pid == std::process::id()));
    let listed = b.list().await.expect("list");
    assert_eq!(listed.len(), 1, "one record per resource: {listed:?}");
    assert_eq!(listed[0].all_holders().count(), 2);

    let err = b
        .acquire("r", AcquireOptions::new().timeout(Duration::from_millis(200)))
        .await
        .expect_err("a writer got in beside readers");
    let LockError::Timeout { holder: Some(holder), .. } = &err else { panic!("{err:?}") };
    assert_eq!(holder.all_holders().count(), 2, "the timeout names both readers: {err}");

    r1.release().await.expect("release");
    assert!(b.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "one reader still holds");
    let last_reader = r2.fencing_token();
    r2.release().await.expect("release");
    let w = b.acquire("r", exclusive()).await.expect("the writer gets in once the readers left");
    assert!(
        a.try_acquire("r", AcquireOptions::new().shared()).await.expect("try").is_none(),
        "a reader beside a writer"
    );
    assert!(w.fencing_token() > last_reader);
    w.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_admits_its_permits_and_no_more() {
    let Some((_server, a, b)) = two_managers().await else { return };
    let mut held = Vec::new();
    for i in 0..3 {
        let locks = if i % 2 == 0 { &a } else { &b };
        held.push(locks.acquire("pool", permits(3)).await.expect("a permit"));
    }
    assert!(a.try_acquire("pool", permits(3)).await.expect("try").is_none(), "a fourth permit of three");
    let info = b.state("pool").await.expect("state").info().cloned().expect("held");
    assert_eq!(info.mode, LockMode::Permits(3));
    assert_eq!(info.all_holders().count(), 3);
    assert!(info.to_string().contains("3 of 3 permits"), "{info}");

    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire("pool", permits(3)).await })
    };
    assert!(still_waiting(&waiter).await, "a fourth permit holder got in");
    held.pop().expect("held").release().await.expect("release");
    let fourth = tokio::time::timeout(BOUND, waiter).await.expect("not let in").expect("join").expect("permit");
    assert_eq!(b.state("pool").await.expect("state").info().expect("held").all_holders().count(), 3);
    fourth.release().await.expect("release");
    for guard in held {
        guard.release().await.expect("release");
    }
    assert!(!a.state("pool").await.expect("state").is_held());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_that_disagree_are_refused_naming_both() {
    let Some((server, a, b)) = two_managers().await else { return };
    let sem = a.acquire("api", permits(3)).await.expect("permit");
    let err = b.acquire("api", permits(5)).await.expect_err("a semaphore of 5 met one of 3");
    assert!(matches!(err, LockError::Config(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("3 permits") && text.contains("5 permits") && text.contains("api"), "{text}");
    for options in [exclusive(), shared()] {
        let err = b.acquire("api", options).await.expect_err("a lock met a semaphore");
        assert!(matches!(err, LockError::Config(_)) && err.to_string().contains("semaphore of 3"), "{err}");
    }
    assert_eq!(queued(&server, "api"), 0, "a refused request stayed queued");
    sem.release().await.expect("release");

    let lock = a.acquire("plain", exclusive()).await.expect("lock");
    let err = b.acquire("plain", permits(2)).await.expect_err("a semaphore met a lock");
    assert!(err.to_string().contains("a lock (exclusive)") && err.to_string().contains("2 permits"), "{err}");
    // A queued reader makes the resource a reader-writer lock even when no
    // reader holds it.
    let reader = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire("plain", shared()).await })
    };
    server.until_queued("plain", 1).await;
    lock.release().await.expect("release");
    let reader = tokio::time::timeout(BOUND, reader).await.expect("reader").expect("join").expect("reader");
    reader.release().await.expect("release");
    // Once nobody holds or waits, the resource may be used another way.
    a.acquire("plain", permits(2)).await.expect("free again").release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_modes() {
    let Some((_server, a, b)) = two_managers().await else { return };
    let mut tokens = Vec::new();
    let mut record = |guard: &LockGuard| tokens.push(guard.fencing_token());
    let w = a.acquire("r", exclusive()).await.expect("x");
    record(&w);
    w.release().await.expect("release");
    let r1 = a.acquire("r", shared()).await.expect("s");
    record(&r1);
    let r2 = b.acquire("r", shared()).await.expect("s");
    record(&r2);
    r1.release().await.expect("release");
    let r3 = a.acquire("r", shared()).await.expect("s");
    record(&r3);
    r2.release().await.expect("release");
    r3.release().await.expect("release");
    let w = b.acquire("r", exclusive()).await.expect("x");
    record(&w);
    w.release().await.expect("release");
    let p1 = a.acquire("r", permits(2)).await.expect("p");
    record(&p1);
    let p2 = b.acquire("r", permits(2)).await.expect("p");
    record(&p2);
    p1.release().await.expect("release");
    p2.release().await.expect("release");
    let w = a.acquire("r", exclusive()).await.expect("x");
    record(&w);
    w.release().await.expect("release");
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens did not strictly increase: {tokens:?}");
}

/// FIFO across modes: a writer waiting for readers holds back the readers
/// that come after it (even a `try_acquire` that fits beside the holders),
/// and they get in — together — once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_queue_behind_a_waiting_writer_and_then_get_in_together() {
    let Some((server, a, b)) = two_managers().await else { return };
    let first = a.acquire("r", shared()).await.expect("reader");
    let writer = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire("r", exclusive()).await })
    };
    server.until_queued("r", 1).await;
    assert!(
        a.try_acquire("r", AcquireOptions::new().shared()).await.expect("try").is_none(),
        "a reader overtook the waiting writer"
    );
    let mut readers = Vec::new();
    for locks in [&a, &b, &a] {
        let locks = locks.clone();
        readers.push(tokio::spawn(async move { locks.acquire("r", shared()).await }));
    }
    // `a`'s first reader is queued in Redis behind the writer; `a`'s second
    // waits for its turn in `a`, and `b`'s reader for its turn in `b`, where
    // the writer has it (each manager lets one waiter per resource contend).
    server.until_queued("r", 2).await;
    first.release().await.expect("release");
    let writer = tokio::time::timeout(BOUND, writer).await.expect("writer starved").expect("join").expect("writer");
    for reader in &readers {
        assert!(still_waiting(reader).await, "a reader got in beside the writer");
    }
    writer.release().await.expect("release");
    let mut guards = Vec::new();
    for reader in readers {
        guards.push(tokio::time::timeout(BOUND, reader).await.expect("reader").expect("join").expect("reader"));
    }
    let info = a.state("r").await.expect("state").info().cloned().expect("held");
    assert_eq!(info.all_holders().count(), 3, "the queued readers do not hold together: {info}");
    for guard in guards {
        guard.release().await.expect("release");
    }
}

/// A stream of overlapping readers from two managers never leaves the
/// resource free, yet a writer in a third position gets in after the
/// readers that were there before it, and no reader that asked after it
/// gets in before it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_readers_does_not_starve_a_writer() {
    let Some((server, a, b)) = two_managers().await else { return };
    let stop = Arc::new(AtomicBool::new(false));
    let (log_tx, mut log_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Instant)>();
    let mut streams = Vec::new();
    for locks in [a.clone(), b.clone(), a.clone(), b.clone()] {
        let (stop, log_tx) = (stop.clone(), log_tx.clone());
        streams.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let asked = Instant::now();
                let guard = locks.acquire("r", shared().timeout(Duration::from_secs(10))).await.expect("reader");
                let _ = log_tx.send((asked, Instant::now()));
                tokio::time::sleep(Duration::from_millis(60)).await;
                guard.release().await.expect("release");
            }
        }));
    }
    drop(log_tx);
    // Let the stream get going, so readers always hold.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            let guard = b.acquire("r", AcquireOptions::new().timeout(Duration::from_secs(3))).await;
            (Instant::now(), guard)
        })
    };
    // Readers are only queued behind a queued writer: the first entry is it.
    let deadline = Instant::now() + BOUND;
    while queued(&server, "r") == 0 {
        assert!(Instant::now() < deadline, "the writer never queued");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let writer_queued = Instant::now();
    let (granted, writer) = tokio::time::timeout(BOUND, writer).await.expect("writer stuck").expect("join");
    let writer = writer.expect("writer starved");
    assert!(
        granted - asked < Duration::from_secs(1),
        "the writer waited {:?} for readers holding 60 ms each",
        granted - asked
    );
    let readers_now = a.state("r").await.expect("state").info().map(|i| i.mode);
    assert_eq!(readers_now, Some(LockMode::Exclusive), "a reader held beside the writer");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    writer.release().await.expect("release");
    stop.store(true, Ordering::Release);
    for stream in streams {
        tokio::time::timeout(BOUND, stream).await.expect("reader stream stuck").expect("reader stream failed");
    }
    let mut overtook = Vec::new();
    let mut total = 0;
    while let Some((reader_asked, reader_granted)) = log_rx.recv().await {
        total += 1;
        // A reader that asked once the writer was queued must not be let in
        // while the writer waits or holds.
        if reader_asked > writer_queued && reader_granted < released {
            overtook.push(reader_granted - writer_queued);
        }
    }
    assert!(total > 8, "the reader stream hardly ran ({total} grants)");
    assert!(overtook.is_empty(), "readers that came after the writer got in before it: {overtook:?}");
    assert_eq!(queued(&server, "r"), 0);
}

/// Each shared holder has its own lease: one whose (unrenewed) lease runs
/// out is reported lost and stops counting, while the other, kept alive by
/// its watchdog, still holds and still keeps a writer out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reader_has_its_own_lease() {
    let Some((_server, a, b)) = two_managers().await else { return };
    let short = a.acquire("r", shared().lease(Duration::from_millis(300))).await.expect("short reader");
    let renewed = b.acquire("r", shared()).await.expect("renewed reader (600 ms, watchdog)");
    let reason = tokio::time::timeout(BOUND, short.lost()).await.expect("the short lease was never reported lost");
    assert_eq!(reason, LostReason::LeaseExpired);
    tokio::time::sleep(Duration::from_millis(900)).await; // past the renewed reader's first lease
    assert!(!renewed.is_lost(), "the watchdog did not keep the reader's own lease");
    let info = a.state("r").await.expect("state").info().cloned().expect("held");
    assert_eq!(info.all_holders().map(|h| h.fencing_token).collect::<Vec<_>>(), vec![renewed.fencing_token()]);
    assert!(a.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "a writer beside a reader");
    assert!(short.release().await.expect_err("released an expired hold").is_lost());
    renewed.release().await.expect("release");
    a.acquire("r", exclusive()).await.expect("free").release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_breaks_every_holder() {
    let Some((_server, a, b)) = two_managers().await else { return };
    let r1 = a.acquire("r", permits(4)).await.expect("permit");
    let r2 = b.acquire("r", permits(4)).await.expect("permit");
    let broken = a.force_release("r", "operator").await.expect("force").expect("was held");
    assert_eq!(broken.all_holders().count(), 2, "{broken:?}");
    for guard in [&r1, &r2] {
        let reason = tokio::time::timeout(BOUND, guard.lost()).await.expect("a holder was not told");
        assert_eq!(reason, LostReason::ForceReleased { reason: "operator".to_owned() });
    }
    let next = b.acquire("r", permits(4)).await.expect("free after the break");
    assert!(next.fencing_token() > r2.fencing_token());
    assert!(r2.release().await.expect_err("released a broken grant").is_lost());
    assert!(r1.release().await.expect_err("released a broken grant").is_lost());
    next.release().await.expect("release");
}

/// A waiter that gives up (timeout) or is cancelled (its future dropped)
/// leaves the queue at once: the writer behind it is not held up, and no
/// grant is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_give_up_or_are_cancelled_leave_the_queue() {
    let Some((server, a, b)) = two_managers().await else { return };
    let writer = a.acquire("r", exclusive()).await.expect("writer");
    let err = b.acquire("r", shared().timeout(Duration::from_millis(200))).await.expect_err("got in beside a writer");
    assert!(err.is_timeout(), "{err}");
    let cancelled = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire("r", shared().wait_forever()).await })
    };
    server.until_queued("r", 1).await;
    cancelled.abort();
    let deadline = Instant::now() + Duration::from_secs(1);
    while queued(&server, "r") != 0 {
        assert!(Instant::now() < deadline, "a timed-out or cancelled waiter stayed queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.release().await.expect("release");
    let started = Instant::now();
    let next = a.acquire("r", exclusive()).await.expect("free");
    assert!(started.elapsed() < Duration::from_millis(200), "held up by a waiter that left");
    assert_eq!(a.state("r").await.expect("state").info().expect("held").all_holders().count(), 1);
    next.release().await.expect("release");
}

/// A writer that began waiting on a plain exclusive lock, before any reader
/// came, keeps its place: it queued when it found the lock busy, and no
/// reader gets in before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_before_readers_came_keeps_its_place() {
    let Some((server, a, b)) = two_managers().await else { return };
    let c = manager(&server).await;
    // A long lease, so that the waiting writer does not look again by itself
    // (it would at the lease's end) before the release.
    let first = a.acquire("r", exclusive().lease(Duration::from_secs(30))).await.expect("first writer");
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            let guard = b.acquire("r", exclusive()).await;
            (Instant::now(), guard)
        })
    };
    assert!(still_waiting(&writer).await, "the second writer got in beside the first");
    server.until_queued("r", 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (log_tx, mut log_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut streams = Vec::new();
    for locks in [a.clone(), c.clone(), c.clone()] {
        let (stop, log_tx) = (stop.clone(), log_tx.clone());
        streams.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let guard = locks.acquire("r", shared().timeout(Duration::from_secs(10))).await.expect("reader");
                let _ = log_tx.send(Instant::now());
                tokio::time::sleep(Duration::from_millis(40)).await;
                guard.release().await.expect("release");
            }
        }));
    }
    drop(log_tx);
    // The writer joins the queue ahead of `a`'s and `c`'s first readers.
    server.until_queued("r", 3).await;
    first.release().await.expect("release");
    let (granted, guard) = tokio::time::timeout(BOUND, writer).await.expect("writer starved").expect("join");
    let guard = guard.expect("writer");
    assert_eq!(a.state("r").await.expect("state").info().map(|i| i.mode), Some(LockMode::Exclusive));
    stop.store(true, Ordering::Release);
    guard.release().await.expect("release");
    for stream in streams {
        tokio::time::timeout(BOUND, stream).await.expect("reader stream stuck").expect("reader stream failed");
    }
    let mut readers = 0;
    while let Some(reader_granted) = log_rx.recv().await {
        readers += 1;
        assert!(reader_granted > granted, "a reader that came after the waiting writer got in before it");
    }
    assert!(readers >= 3, "the readers never got in after the writer");
}

/// A permit whose holder stopped renewing (crashed) comes back when its own
/// lease ends, while another permit holder with a long lease keeps its own;
/// and a writer is kept out by an expired reader no longer than that
/// reader's lease, however long the other reader's lease is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_holder_stops_counting_while_others_hold_on() {
    let Some((_server, a, b)) = two_managers().await else { return };
    let long = Duration::from_secs(20);
    let crashed = a.acquire("pool", permits(2).lease(Duration::from_millis(300))).await.expect("permit");
    let staying = b.acquire("pool", permits(2).lease(long)).await.expect("permit");
    let started = Instant::now();
    let next = b
        .acquire("pool", permits(2).timeout(Duration::from_secs(3)))
        .await
        .expect("the expired permit never came back");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(!staying.is_lost());
    let tokens: Vec<_> =
        a.state("pool").await.expect("state").info().expect("held").all_holders().map(|h| h.fencing_token).collect();
    assert_eq!(tokens, [staying.fencing_token(), next.fencing_token()]);
    for guard in [next, staying] {
        guard.release().await.expect("release");
    }
    drop(crashed);

    let crashed = a.acquire("rw", shared().lease(Duration::from_millis(300))).await.expect("reader");
    let staying = b.acquire("rw", shared().lease(long)).await.expect("reader");
    tokio::time::timeout(BOUND, crashed.lost()).await.expect("the short lease was never reported lost");
    staying.release().await.expect("release");
    let started = Instant::now();
    let writer = a
        .acquire("rw", exclusive().timeout(Duration::from_secs(3)))
        .await
        .expect("a writer was kept out by an expired reader");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    writer.release().await.expect("release");
}

/// The number of `EVALSHA` calls the server ran since the last `CONFIG RESETSTAT`.
fn evalsha_calls(server: &RedisServer) -> u64 {
    let stats = server.command(&["INFO", "commandstats"]).expect("INFO");
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Like the plain mutex, an uncontended shared or permit acquire is one
/// script and its release another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_shared_or_permit_cycle_is_one_round_trip_each_way() {
    let Some((server, a, _b)) = two_managers().await else { return };
    for options in [shared(), permits(3), exclusive()] {
        a.acquire("warm-up", options.clone()).await.expect("warm up").release().await.expect("release");
        server.command(&["CONFIG", "RESETSTAT"]).expect("reset stats");
        let guard = a.acquire("r", options.clone()).await.expect("acquire");
        guard.release().await.expect("release");
        assert_eq!(evalsha_calls(&server), 2, "{:?}: not one script each way", options.mode);
    }
}

/// One holder id shared by two managers (`shared_holder`) shares an
/// exclusive grant — and a shared acquire joins it, as a re-entry would —
/// but each shared acquisition is its own grant, with its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_holder_id_shares_exclusive_grants_only() {
    let Some((_server, a, b)) = two_managers().await else { return };
    let id = || AcquireOptions::new().timeout(BOUND).shared_holder("daemon");
    let writer = a.acquire("x", id()).await.expect("exclusive");
    let joined = b.acquire("x", id().shared()).await.expect("a shared acquire joins its own holder's grant");
    assert_eq!(joined.fencing_token(), writer.fencing_token());
    assert!(b.try_acquire("x", AcquireOptions::new().shared()).await.expect("try").is_none());
    joined.release().await.expect("release");
    writer.release().await.expect("release");

    let first = a.acquire("s", id().shared()).await.expect("shared");
    let second = b.acquire("s", id().shared()).await.expect("shared");
    assert!(second.fencing_token() > first.fencing_token(), "two shared acquisitions are two grants");
    assert_eq!(a.state("s").await.expect("state").info().expect("held").all_holders().count(), 2);
    first.release().await.expect("release");
    assert!(a.state("s").await.expect("state").is_held(), "one release freed both grants");
    second.release().await.expect("release");
}

/// Shared and permit grants take their tokens from the same restart-proof
/// counter as exclusive ones: after a crash and a restart from an older
/// snapshot (which brings the counter back), every new token in any mode
/// still exceeds every token issued before the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_increase_across_modes_after_a_restart_from_an_older_snapshot() {
    let Some(mut server) = RedisServer::start() else { return };
    let locks = manager(&server).await;
    let rounds = [shared(), exclusive(), shared(), permits(2), shared(), exclusive()];
    let mut issued = Vec::new();
    for (round, options) in rounds.iter().enumerate() {
        if round == 3 {
            server.save().expect("SAVE");
        }
        let guard = locks.acquire("r", options.clone()).await.expect("acquire");
        issued.push(guard.fencing_token());
        guard.release().await.expect("release");
    }
    let fence = server.command(&["GET", "lockman:{r}:fence"]).expect("GET the fence");
    server.kill();
    server.restart();
    let restored = server.command(&["GET", "lockman:{r}:fence"]).expect("GET the fence");
    assert_ne!(restored, fence, "the restart did not bring back an older fence; the fault was not injected");
    let highest = *issued.iter().max().expect("six grants");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = Vec::new();
    for options in [permits(2), shared(), exclusive()] {
        loop {
            match locks.acquire("r", options.clone().timeout(Duration::from_millis(300))).await {
                Ok(guard) => {
                    after.push(guard.fencing_token());
                    guard.release().await.expect("release");
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "never recovered after the restart: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    assert!(
        after.iter().all(|token| *token > highest) && after.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens before the crash {issued:?}, after the restart {after:?}: a token was issued twice"
    );
}
