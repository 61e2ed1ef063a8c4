//! Lock modes: shared (reader-writer) holds, semaphores of n permits, and
//! what a backend without them must say.
//!
//! Each check runs across two managers where the harness has a second one
//! (another process's view of the store), else within one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use lockman_core::{AcquireOptions, LockError, LockManager, LockMode, LockState, LostReason};
use tokio::sync::{Barrier, mpsc};

use crate::exclusion::patient;
use crate::release::LOSS_NOTICE;
use crate::{Harness, require};

/// The second manager if the harness has one, else the first again.
pub(crate) fn other(h: &dyn Harness) -> Arc<dyn LockManager> {
    h.second_locks().unwrap_or_else(|| h.locks())
}

fn has_shared(locks: &dyn LockManager) -> bool {
    let caps = locks.capabilities();
    require(&caps, "shared_mode", caps.shared_mode)
}

fn has_permits(locks: &dyn LockManager) -> bool {
    let caps = locks.capabilities();
    require(&caps, "permits", caps.permits)
}

fn expect_config(result: Result<impl std::fmt::Debug, LockError>, what: &str, mentions: &[&str]) {
    match result {
        Err(LockError::Config(message)) => {
            for needle in mentions {
                assert!(message.contains(needle), "{what}: the error should mention {needle:?}: {message}");
            }
        }
        other => panic!("{what}: expected a configuration error, got {other:?}"),
    }
}

/// A backend without a mode refuses it with a configuration error that
/// names the backend (and never grants it as something else).
pub async fn unsupported_modes_are_refused(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    let name = locks.name().to_owned();
    if !caps.shared_mode {
        expect_config(locks.acquire("r", patient().shared()).await, "shared on a backend without it", &[&name]);
        expect_config(locks.try_acquire("r", AcquireOptions::new().shared()).await, "try shared", &[&name]);
    }
    if !caps.permits {
        expect_config(locks.acquire("r", patient().permits(3)).await, "permits on a backend without them", &[&name]);
    }
    if caps.permits {
        expect_config(locks.acquire("r", patient().permits(0)).await, "0 permits", &["0 permits"]);
    }
    assert_eq!(locks.state("r").await.expect("state"), LockState::Available, "a refused mode left a grant");
}

/// Shared holders hold together, in one manager and across two.
pub async fn shared_holders_hold_together(h: &dyn Harness) {
    let locks = h.locks();
    if !has_shared(&*locks) {
        return;
    }
    let other = other(h);
    let first = locks.acquire("rw", patient().shared()).await.expect("first shared");
    let second = locks
        .try_acquire("rw", AcquireOptions::new().shared())
        .await
        .expect("try")
        .expect("a second shared hold in the same manager was refused while only shared holders held the resource");
    let third = other
        .try_acquire("rw", AcquireOptions::new().shared())
        .await
        .expect("try")
        .expect("a shared hold in the second manager was refused while only shared holders held the resource");
    assert_eq!(first.info().mode, LockMode::Shared);
    for guard in [first, second, third] {
        guard.release().await.expect("release");
    }
    assert_eq!(locks.state("rw").await.expect("state"), LockState::Available);
}

/// An exclusive holder keeps shared ones out, and shared holders keep an
/// exclusive one out.
pub async fn exclusive_and_shared_exclude_each_other(h: &dyn Harness) {
    let locks = h.locks();
    if !has_shared(&*locks) {
        return;
    }
    let other = other(h);
    let writer = locks.acquire("rw", patient()).await.expect("exclusive");
    assert!(
        other.try_acquire("rw", AcquireOptions::new().shared()).await.expect("try").is_none(),
        "a shared hold was granted beside an exclusive one"
    );
    writer.release().await.expect("release");
    let reader = locks.acquire("rw", patient().shared()).await.expect("shared");
    assert!(
        other.try_acquire("rw", AcquireOptions::new()).await.expect("try").is_none(),
        "an exclusive hold was granted beside a shared one"
    );
    let err = other
        .acquire("rw", AcquireOptions::new().timeout(Duration::from_millis(100)))
        .await
        .expect_err("an exclusive hold was granted beside a shared one");
    assert!(err.is_timeout(), "{err}");
    reader.release().await.expect("release");
    let writer = other.acquire("rw", patient().timeout(Duration::from_secs(5))).await.expect("free again");
    writer.release().await.expect("release");
}

/// Readers and writers from 16 tasks: a writer is never inside with anyone,
/// and readers do overlap each other.
pub async fn readers_overlap_and_writers_are_alone(h: &dyn Harness) {
    const TASKS: usize = 16;
    const ROUNDS: usize = 6;
    let locks = h.locks();
    if !has_shared(&*locks) {
        return;
    }
    let managers = [locks.clone(), other(h)];
    let readers_inside = Arc::new(AtomicU32::new(0));
    let writers_inside = Arc::new(AtomicU32::new(0));
    let most_readers = Arc::new(AtomicU32::new(0));
    let violations = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let locks = managers[task % 2].clone();
            let (readers, writers, most, violations, start) = (
                readers_inside.clone(),
                writers_inside.clone(),
                most_readers.clone(),
                violations.clone(),
                start.clone(),
            );
            tokio::spawn(async move {
                start.wait().await;
                for round in 0..ROUNDS {
                    // One writer in four.
                    let write = (task + round) % 4 == 0;
                    let options = if write { patient() } else { patient().shared() };
                    let guard = locks.acquire("rw", options).await.expect("acquire");
                    if write {
                        if writers.fetch_add(1, Ordering::SeqCst) != 0 || readers.load(Ordering::SeqCst) != 0 {
                            violations.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        writers.fetch_sub(1, Ordering::SeqCst);
                    } else {
                        let now = readers.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        if writers.load(Ordering::SeqCst) != 0 {
                            violations.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        readers.fetch_sub(1, Ordering::SeqCst);
                    }
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task panicked");
    }
    assert_eq!(violations.load(Ordering::SeqCst), 0, "a writer was inside together with someone");
    assert!(most_readers.load(Ordering::SeqCst) >= 2, "readers never overlapped: shared holds were serialised");
}

/// A semaphore of 3 shared by 16 tasks: never more than 3 inside, and 3 at
/// some point.
pub async fn permits_limit_concurrent_holders(h: &dyn Harness) {
    const TASKS: usize = 16;
    const ROUNDS: usize = 5;
    const PERMITS: u32 = 3;
    let locks = h.locks();
    if !has_permits(&*locks) {
        return;
    }
    let managers = [locks.clone(), other(h)];
    let inside = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let locks = managers[task % 2].clone();
            let (inside, most, start) = (inside.clone(), most.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                for _ in 0..ROUNDS {
                    let guard = locks.acquire("jobs", patient().permits(PERMITS)).await.expect("acquire a permit");
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task panicked");
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= PERMITS, "{most} holders of a semaphore of {PERMITS} were inside at once");
    assert_eq!(most, PERMITS, "16 tasks never filled the semaphore of {PERMITS}: permits were withheld");
    assert_eq!(locks.state("jobs").await.expect("state"), LockState::Available);
}

/// Parties that disagree on how a resource is used get a configuration
/// error naming both ways, from either manager, and nothing is granted.
pub async fn mode_mismatch_is_a_config_error(h: &dyn Harness) {
    let locks = h.locks();
    let other = other(h);
    if has_permits(&*locks) {
        let held = locks.acquire("sem", patient().permits(3)).await.expect("permit");
        let quick = AcquireOptions::new().timeout(Duration::from_millis(200));
        expect_config(
            other.acquire("sem", quick.clone().permits(5)).await,
            "a semaphore of 5 meeting one of 3",
            &["3 permits", "5 permits"],
        );
        expect_config(
            other.acquire("sem", quick.clone()).await,
            "an exclusive hold meeting a semaphore",
            &["3 permits", "exclusive"],
        );
        expect_config(
            other.try_acquire("sem", AcquireOptions::new().permits(2)).await,
            "try_acquire with another permit count",
            &["3 permits", "2 permits"],
        );
        held.release().await.expect("release");
        // Once nobody holds it, the resource may be used another way.
        let plain = other.acquire("sem", patient()).await.expect("a free resource takes any mode");
        plain.release().await.expect("release");
    }
    if has_shared(&*locks) && locks.capabilities().permits {
        let reader = locks.acquire("rw", patient().shared()).await.expect("shared");
        expect_config(
            other.acquire("rw", AcquireOptions::new().timeout(Duration::from_millis(200)).permits(2)).await,
            "a semaphore meeting a reader-writer lock",
            &["shared", "2 permits"],
        );
        reader.release().await.expect("release");
    }
}

/// A stream of overlapping readers never leaves the resource free, yet a
/// writer that queues gets in (readers that came after it wait), and the
/// readers queued behind the writer then get in together.
pub async fn writer_is_not_starved_by_readers(h: &dyn Harness) {
    const READERS: usize = 3;
    let locks = h.locks();
    if !has_shared(&*locks) || !require(&locks.capabilities(), "fifo", locks.capabilities().fifo) {
        return;
    }
    let readers_locks = other(h);
    let stop = Arc::new(AtomicBool::new(false));
    let (first_grants, mut first_granted) = mpsc::channel(READERS);
    // When each reader asked and was let in.
    let asks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let (locks, stop, first_grants, asks) =
                (readers_locks.clone(), stop.clone(), first_grants.clone(), asks.clone());
            tokio::spawn(async move {
                // Staggered holds: some reader always holds the resource.
                tokio::time::sleep(Duration::from_millis(7 * reader as u64)).await;
                let mut first = true;
                while !stop.load(Ordering::SeqCst) {
                    let asked = tokio::time::Instant::now();
                    let guard = locks.acquire("rw", patient().shared()).await.expect("reader acquire");
                    asks.lock().expect("reader log").push((asked, tokio::time::Instant::now()));
                    if std::mem::take(&mut first) {
                        first_grants.send(()).await.expect("test gone");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    guard.release().await.expect("reader release");
                }
            })
        })
        .collect();
    for _ in 0..READERS {
        first_granted.recv().await.expect("a reader never got in");
    }
    let writer_asked = tokio::time::Instant::now();
    let writer = locks
        .acquire("rw", AcquireOptions::new().timeout(Duration::from_secs(5)).purpose("writer"))
        .await
        .expect("the writer was starved by a stream of readers");
    let writer_granted = tokio::time::Instant::now();
    assert!(
        readers_locks.try_acquire("rw", AcquireOptions::new().shared()).await.expect("try").is_none(),
        "a reader got in beside the writer"
    );
    stop.store(true, Ordering::SeqCst);
    // First come, first served: a reader that asked well after the writer
    // queued (the margin covers the writer's own trip to the queue) must
    // not have been let in before it.
    let margin = Duration::from_millis(50);
    let jumped: Vec<_> = asks
        .lock()
        .expect("reader log")
        .iter()
        .filter(|(asked, granted)| *asked > writer_asked + margin && *granted < writer_granted)
        .map(|(asked, granted)| (*asked - writer_asked, writer_granted - *granted))
        .collect();
    assert!(
        jumped.is_empty(),
        "readers that asked after the writer queued got in before it (asked after, granted before): {jumped:?}"
    );
    // Readers queued behind the writer get in together once it is done.
    let together = Arc::new(Barrier::new(READERS));
    let queued: Vec<_> = (0..READERS)
        .map(|_| {
            let (locks, together) = (readers_locks.clone(), together.clone());
            tokio::spawn(async move {
                let guard = locks.acquire("rw", patient().shared()).await.expect("queued reader");
                // Completes only if every queued reader holds at once.
                tokio::time::timeout(Duration::from_secs(5), together.wait())
                    .await
                    .expect("the readers queued behind the writer did not get in together");
                guard.release().await.expect("release");
            })
        })
        .collect();
    writer.release().await.expect("writer release");
    for reader in readers.into_iter().chain(queued) {
        reader.await.expect("reader panicked");
    }
}

/// Every grant in every mode gets a larger fencing token than the grants
/// before it.
pub async fn fencing_tokens_increase_across_modes(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    if !require(&caps, "fencing", caps.fencing) || !has_shared(&*locks) {
        return;
    }
    let other = other(h);
    let first = locks.acquire("rw", patient().shared()).await.expect("shared");
    let second = other.acquire("rw", patient().shared()).await.expect("shared");
    assert!(second.fencing_token() > first.fencing_token(), "a second shared grant did not get a larger token");
    let last_shared = second.fencing_token();
    first.release().await.expect("release");
    second.release().await.expect("release");
    let writer = other.acquire("rw", patient()).await.expect("exclusive");
    assert!(writer.fencing_token() > last_shared, "an exclusive grant after shared ones reused a token");
    writer.release().await.expect("release");
    if caps.permits {
        let a = locks.acquire("sem", patient().permits(2)).await.expect("permit");
        let b = other.acquire("sem", patient().permits(2)).await.expect("permit");
        assert!(b.fencing_token() > a.fencing_token(), "permit tokens did not increase");
        a.release().await.expect("release");
        let c = locks.acquire("sem", patient().permits(2)).await.expect("permit");
        assert!(c.fencing_token() > b.fencing_token(), "a permit reused a token");
        b.release().await.expect("release");
        c.release().await.expect("release");
    }
}

/// `state`, `list` and the timeout error show every holder of a shared
/// resource or semaphore, with the mode.
pub async fn every_holder_is_shown(h: &dyn Harness) {
    let locks = h.locks();
    if !has_shared(&*locks) {
        return;
    }
    let other = other(h);
    let first = locks.acquire("rw", patient().shared().purpose("reader one")).await.expect("shared");
    let second = other.acquire("rw", patient().shared().purpose("reader two")).await.expect("shared");
    let state = locks.state("rw").await.expect("state");
    let info = state.info().expect("held").clone();
    assert!(state.is_held(), "{state:?}");
    assert_eq!(info.mode, LockMode::Shared);
    let purposes: Vec<_> = info.all_holders().filter_map(|holder| holder.purpose.clone()).collect();
    assert_eq!(info.all_holders().count(), 2, "state shows {} holders: {info:?}", info.all_holders().count());
    for purpose in ["reader one", "reader two"] {
        assert!(purposes.iter().any(|shown| shown.contains(purpose)), "{purpose:?} missing from {purposes:?}");
    }
    let tokens: Vec<_> = info.all_holders().map(|holder| holder.fencing_token).collect();
    assert!(tokens.contains(&first.fencing_token()) && tokens.contains(&second.fencing_token()), "{tokens:?}");
    let listed: Vec<_> = locks.list().await.expect("list").into_iter().filter(|info| info.resource == "rw").collect();
    assert_eq!(listed.len(), 1, "list shows a resource once, with its holders: {listed:?}");
    assert_eq!(listed[0].all_holders().count(), 2, "{listed:?}");
    let err = locks.acquire("rw", AcquireOptions::new().no_wait()).await.expect_err("exclusive beside shared");
    match &err {
        LockError::Timeout { holder: Some(holder), .. } => {
            assert_eq!(holder.all_holders().count(), 2, "the timeout names one holder of two: {err}")
        }
        other => panic!("expected a timeout naming the holders, got {other}"),
    }
    first.release().await.expect("release");
    second.release().await.expect("release");
    if locks.capabilities().permits {
        let a = locks.acquire("sem", patient().permits(3)).await.expect("permit");
        let b = other.acquire("sem", patient().permits(3)).await.expect("permit");
        let state = other.state("sem").await.expect("state");
        let info = state.info().expect("held");
        assert_eq!(info.mode, LockMode::Permits(3), "{info:?}");
        assert_eq!(info.all_holders().count(), 2, "{info:?}");
        assert!(info.all_holders().all(|holder| holder.mode == LockMode::Permits(3)), "{info:?}");
        a.release().await.expect("release");
        b.release().await.expect("release");
    }
}

/// Re-entry by holder id within a mode: shared re-enters shared, exclusive
/// may re-enter as shared, a permit holder re-enters its one permit, and an
/// upgrade from shared to exclusive is refused.
pub async fn reentry_per_mode(h: &dyn Harness) {
    let locks = h.locks();
    if !has_shared(&*locks) {
        return;
    }
    let reader = locks.acquire("rw", patient().shared().holder("reader")).await.expect("shared");
    let again = locks.acquire("rw", patient().shared().holder("reader")).await.expect("shared re-entry");
    assert_eq!(again.fencing_token(), reader.fencing_token(), "a re-entry is the same grant");
    assert_eq!(again.info().hold_count, 2);
    let upgrade = locks.acquire("rw", AcquireOptions::new().timeout(Duration::from_millis(200)).holder("reader")).await;
    expect_config(upgrade, "an upgrade from shared to exclusive", &["upgrad"]);
    drop(again);
    reader.release().await.expect("release");

    let writer = locks.acquire("rw", patient().holder("writer")).await.expect("exclusive");
    let inner = locks.acquire("rw", patient().shared().holder("writer")).await.expect("shared inside exclusive");
    assert_eq!(inner.fencing_token(), writer.fencing_token());
    assert!(
        locks.try_acquire("rw", AcquireOptions::new().shared()).await.expect("try").is_none(),
        "another reader got in while the writer held the resource"
    );
    inner.release().await.expect("release");
    writer.release().await.expect("release");

    if locks.capabilities().permits {
        let mine = locks.acquire("sem", patient().permits(2).holder("p")).await.expect("permit");
        let again = locks.acquire("sem", patient().permits(2).holder("p")).await.expect("permit re-entry");
        assert_eq!(again.fencing_token(), mine.fencing_token(), "a re-entry took a second permit");
        let someone = locks.try_acquire("sem", AcquireOptions::new().permits(2)).await.expect("try");
        assert!(someone.is_some(), "the re-entry used up the second permit");
        assert!(
            locks.try_acquire("sem", AcquireOptions::new().permits(2)).await.expect("try").is_none(),
            "a third holder got into a semaphore of 2"
        );
        for guard in [again, mine, someone.expect("checked")] {
            guard.release().await.expect("release");
        }
    }
}

/// A shared holder or permit with a lease loses it when the lease runs out;
/// the others keep theirs; force-releasing the resource breaks every holder.
pub async fn leases_and_loss_per_mode(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    if !has_shared(&*locks)
        || !require(&caps, "leases", caps.leases)
        || !require(&caps, "lost_detection", caps.lost_detection)
    {
        return;
    }
    let other = other(h);
    let short = locks.acquire("rw", patient().shared().lease(Duration::from_millis(200))).await.expect("shared");
    let long = other.acquire("rw", patient().shared()).await.expect("shared");
    let reason = tokio::time::timeout(LOSS_NOTICE, short.lost()).await.expect("the leased reader never lost it");
    assert!(matches!(reason, LostReason::LeaseExpired | LostReason::Stolen { .. }), "{reason}");
    assert!(!long.is_lost(), "the other reader lost its hold with the first one's lease");
    let state = locks.state("rw").await.expect("state");
    let holders: Vec<_> =
        state.info().map(|info| info.all_holders().map(|h| h.fencing_token).collect()).unwrap_or_default();
    assert_eq!(holders, [long.fencing_token()], "the expired reader is still shown: {state:?}");
    assert!(short.release().await.expect_err("released an expired hold").is_lost());

    let other_reader = locks.acquire("rw", patient().shared()).await.expect("shared");
    let broken = other.force_release("rw", "operator").await.expect("force").expect("held");
    assert_eq!(broken.mode, LockMode::Shared);
    for guard in [&long, &other_reader] {
        tokio::time::timeout(LOSS_NOTICE, guard.lost()).await.expect("a force-released reader never learned it");
    }
    assert_eq!(locks.state("rw").await.expect("state"), LockState::Available, "force_release left holders");
    drop((long, other_reader));

    if caps.permits {
        // A semaphore of 2: the expired permit is freed while the other
        // holder keeps its own (the waiter gets the freed one, not a third).
        let short = locks.acquire("sem", patient().permits(2).lease(Duration::from_millis(200))).await.expect("permit");
        let steady = locks.acquire("sem", patient().permits(2)).await.expect("permit");
        let waiter = other
            .acquire("sem", AcquireOptions::new().timeout(Duration::from_secs(5)).permits(2))
            .await
            .expect("the expired permit was never handed on while the other holder kept its own");
        assert!(waiter.fencing_token() > short.fencing_token());
        assert!(!steady.is_lost(), "the steady permit holder lost its permit with the expired one");
        tokio::time::timeout(LOSS_NOTICE, short.lost()).await.expect("the expired permit holder never learned it");
        assert!(
            other.try_acquire("sem", AcquireOptions::new().permits(2)).await.expect("try").is_none(),
            "a third holder got into a semaphore of 2"
        );
        steady.release().await.expect("release");
        waiter.release().await.expect("release");
    }
}
