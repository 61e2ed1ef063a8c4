//! Faults on a private three-member etcd cluster (`lockman_testkit::etcd_cluster`):
//! the leader killed while locks are held and waited for, the whole cluster
//! stopped and restarted with its data, and a member paused (`SIGSTOP`)
//! under a client that talks to it alone.
//!
//! Every grant is checked as it happens ([`History`]): when a lock is
//! granted, every earlier holder of the resource whose section is still
//! open must already have been told it lost the lock, and its token must
//! be above every earlier grant's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use lockman_core::{AcquireOptions, LockBackend, LockError, LockGuard, LockManager, LostReason};
use lockman_etcd::{EtcdBackend, EtcdOptions};
use lockman_testkit::etcd_cluster::EtcdCluster;
use parking_lot::Mutex;
use tokio::time::Instant;

/// The default lease of every manager here (and so its etcd lease's TTL).
const LEASE: Duration = Duration::from_secs(2);
/// How long one request may take.
const RESPONSE: Duration = Duration::from_secs(1);
/// A bound on every wait in these tests.
const BOUND: Duration = Duration::from_secs(20);

async fn manager(endpoints: &[String]) -> Arc<dyn LockManager> {
    let options = EtcdOptions::new(endpoints.iter().cloned()).default_lease(LEASE).response_timeout(RESPONSE);
    Arc::new(EtcdBackend::connect(options).await.expect("connect").into_manager())
}

/// `endpoints` rotated by `by`, so managers start on different members.
fn rotated(endpoints: &[String], by: usize) -> Vec<String> {
    let mut endpoints = endpoints.to_vec();
    let len = endpoints.len();
    endpoints.rotate_left(by % len);
    endpoints
}

async fn start() -> Option<EtcdCluster> {
    tokio::task::spawn_blocking(EtcdCluster::start).await.expect("start the etcd cluster")
}

/// Runs a blocking fixture call (they poll members over HTTP) off the async threads.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

/// Every grant of the test, checked as it is made.
#[derive(Default)]
struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Grants whose holder has not yet stopped (released, or seen the loss).
    open: Vec<Open>,
    /// `(resource, who, token)` of every grant, in grant order.
    grants: Vec<(String, String, u64)>,
    last_token: HashMap<String, u64>,
    violations: Vec<String>,
}

struct Open {
    id: u64,
    resource: String,
    who: String,
    token: u64,
    lost: Pin<Box<dyn Future<Output = LostReason> + Send>>,
}

/// How a held section ended.
enum Ended {
    Released,
    Lost(String),
    /// `release()` failed for another reason than a loss (the cluster could
    /// not be reached).
    ReleaseFailed(String),
}

impl Ended {
    fn describe(&self) -> String {
        match self {
            Ended::Released => "released".to_owned(),
            Ended::Lost(reason) => format!("lost ({reason})"),
            Ended::ReleaseFailed(error) => format!("release failed ({error})"),
        }
    }
}

impl History {
    /// Records a grant and checks it against every open one. Returns its id.
    fn granted(&self, resource: &str, who: &str, guard: &LockGuard) -> u64 {
        let token = guard.fencing_token().get();
        let mut inner = self.inner.lock();
        let mut problems = Vec::new();
        let mut context = Context::from_waker(Waker::noop());
        for open in inner.open.iter_mut().filter(|open| open.resource == resource) {
            // Ready at once if the holder has been told it lost the lock.
            if open.lost.as_mut().poll(&mut context).is_pending() {
                problems.push(format!(
                    "DOUBLE GRANT: {who} got {resource:?} (token {token}) while {} held it (token {}) untold of any loss",
                    open.who, open.token
                ));
            }
        }
        if let Some(last) = inner.last_token.get(resource).copied()
            && token <= last
        {
            problems.push(format!("TOKEN WENT BACK: {who} got {resource:?} with token {token} after token {last}"));
        }
        inner.violations.extend(problems);
        inner.last_token.insert(resource.to_owned(), token);
        inner.grants.push((resource.to_owned(), who.to_owned(), token));
        inner.next += 1;
        let id = inner.next;
        inner.open.push(Open {
            id,
            resource: resource.to_owned(),
            who: who.to_owned(),
            token,
            lost: Box::pin(guard.lost()),
        });
        id
    }

    /// The holder of grant `id` has stopped working under the lock.
    fn stopped(&self, id: u64) {
        self.inner.lock().open.retain(|open| open.id != id);
    }

    /// How many grants of `resource` there have been.
    fn grants_of(&self, resource: &str) -> usize {
        self.inner.lock().grants.iter().filter(|(r, _, _)| r == resource).count()
    }

    /// The highest token granted for `resource` so far.
    fn last_token(&self, resource: &str) -> u64 {
        self.inner.lock().last_token.get(resource).copied().unwrap_or(0)
    }

    fn assert_clean(&self) {
        let inner = self.inner.lock();
        assert!(inner.violations.is_empty(), "{}", inner.violations.join("\n"));
    }

    /// Holds `guard` until `until` completes or the lock is lost, then
    /// releases it; checks that a lost lock does not release cleanly.
    async fn hold(&self, who: &str, guard: LockGuard, until: impl Future<Output = ()>) -> Ended {
        let resource = guard.resource().to_owned();
        let id = self.granted(&resource, who, &guard);
        let lost = tokio::select! {
            () = until => None,
            reason = guard.lost() => Some(reason.to_string()),
        };
        self.stopped(id);
        match (lost, guard.release().await) {
            (Some(reason), Ok(())) => panic!("{who}: {resource:?} was reported lost ({reason}) but released cleanly"),
            (Some(reason), Err(e)) => {
                assert!(e.is_lost(), "{who}: release of a lost lock failed otherwise: {e}");
                Ended::Lost(reason)
            }
            (None, Ok(())) => Ended::Released,
            (None, Err(e)) if e.is_lost() => Ended::Lost(e.to_string()),
            (None, Err(e)) => Ended::ReleaseFailed(e.to_string()),
        }
    }
}

/// A worker that takes `resource` over and over (holding it 20 ms) until
/// `stop`; returns how its sections ended and the acquire errors it met.
async fn churn(
    history: Arc<History>,
    locks: Arc<dyn LockManager>,
    who: String,
    resource: &'static str,
    stop: Arc<AtomicBool>,
) -> (Vec<Ended>, Vec<String>) {
    let (mut ended, mut errors) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Acquire) {
        match locks.acquire(resource, AcquireOptions::new().timeout(Duration::from_secs(5))).await {
            Ok(guard) => {
                ended.push(history.hold(&who, guard, tokio::time::sleep(Duration::from_millis(20))).await);
            }
            Err(e) => {
                errors.push(e.to_string());
                // Bounded backoff before asking again (not a synchronisation).
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    (ended, errors)
}

/// Waits (polling every 20 ms, at most `BOUND`) until `done` holds;
/// whether it did.
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + BOUND;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Waits until `count` keys (holder and waiters) are queued for `resource`.
async fn wait_queued(raw: &mut Client, resource: &str, count: i64) {
    let deadline = Instant::now() + BOUND;
    loop {
        let prefix = format!("lockman/lock/{resource}/");
        let response = raw.get(prefix, Some(GetOptions::new().with_prefix().with_count_only())).await;
        if response.is_ok_and(|r| r.count() >= count) {
            return;
        }
        assert!(Instant::now() < deadline, "{count} keys never queued for {resource:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints a resource's keys (for a failure's diagnosis).
async fn dump(raw: &mut Client, resource: &str) {
    let prefix = format!("lockman/lock/{resource}/");
    match raw.get(prefix, Some(GetOptions::new().with_prefix())).await {
        Ok(response) => {
            for kv in response.kvs() {
                let ttl = raw.lease_time_to_live(kv.lease(), None).await.map(|l| l.ttl());
                println!(
                    "  key {} created at {} lease {:x} (ttl {ttl:?}): {}",
                    kv.key_str().unwrap_or("?"),
                    kv.create_revision(),
                    kv.lease(),
                    kv.value_str().unwrap_or("?")
                );
            }
        }
        Err(e) => println!("  cannot read the keys of {resource:?}: {e}"),
    }
}

/// A signal to stop holding.
fn release_signal() -> (tokio::sync::oneshot::Sender<()>, impl Future<Output = ()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// The leader is killed while a lock is held, a waiter is queued behind it
/// and three managers (each given all three members) keep taking another
/// lock. A new leader is elected; nobody is granted a lock whose holder was
/// not told it lost it; tokens keep rising; the holder keeps its lock or is
/// told it lost it; the waiter and the workers go on being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_locks_are_held_and_awaited() {
    let test = Instant::now();
    let Some(mut cluster) = start().await else { return };
    let endpoints = cluster.endpoints();
    let mut managers = Vec::new();
    for index in 0..3 {
        managers.push(manager(&rotated(&endpoints, index)).await);
    }
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = managers
        .iter()
        .enumerate()
        .map(|(index, locks)| {
            tokio::spawn(churn(history.clone(), locks.clone(), format!("worker{index}"), "churn", stop.clone()))
        })
        .collect();
    assert!(wait_until(|| history.grants_of("churn") >= 6).await, "the workers were not served at first");

    // A lock held across the election, and a waiter queued behind it.
    let guard = managers[0].acquire("held", AcquireOptions::new()).await.expect("acquire held");
    let held_token = guard.fencing_token().get();
    let (release_holder, until_released) = release_signal();
    let holder = tokio::spawn({
        let history = history.clone();
        async move { history.hold("holder", guard, until_released).await }
    });
    let waiter = tokio::spawn({
        let (history, locks) = (history.clone(), managers[1].clone());
        async move {
            let guard = locks.acquire("held", AcquireOptions::new().timeout(BOUND)).await?;
            let token = guard.fencing_token().get();
            let ended = history.hold("waiter", guard, std::future::ready(())).await;
            Ok::<_, LockError>((token, ended))
        }
    });
    let mut raw = Client::connect(&endpoints, None).await.expect("raw client");
    wait_queued(&mut raw, "held", 2).await;

    let old = blocking(|| cluster.wait_for_leader(None, BOUND));
    let old_term = blocking(|| cluster.raft_term());
    let churn_before = history.last_token("churn");
    blocking(|| cluster.kill(old));
    let killed = Instant::now();
    let new = blocking(|| cluster.wait_for_leader(Some(old), BOUND));
    let elected = killed.elapsed();
    // A member reports the term of what it has applied: the new leader's
    // first entry shows the new term a moment after the election.
    let new_term = blocking(|| cluster.wait_for_term_above(old_term, BOUND));
    say(&format!(
        "LEADER CHANGED: {} (term {old_term}) killed while \"held\" was held (token {held_token}) with a waiter \
         queued; {} leads (term {new_term}) {elected:?} later",
        cluster.name(old),
        cluster.name(new),
    ));
    assert_ne!(old, new);

    // The workers are served again by the new leader, with higher tokens.
    let grants_at_election = history.grants_of("churn");
    if !wait_until(|| history.grants_of("churn") >= grants_at_election + 6).await {
        dump(&mut raw, "churn").await;
        println!("grants: {:?}", history.inner.lock().grants);
        stop.store(true, Ordering::Release);
        for worker in workers {
            match tokio::time::timeout(Duration::from_secs(6), worker).await {
                Ok(Ok((ended, errors))) => {
                    let ended: Vec<String> = ended.iter().map(Ended::describe).collect();
                    println!("worker sections {ended:?}\n errors {errors:?}");
                }
                Ok(Err(e)) => println!("worker panicked: {e}"),
                Err(_) => println!("worker hung"),
            }
        }
        panic!("the workers were not served after the election");
    }
    assert!(history.last_token("churn") > churn_before);

    // The holder kept its lock or was told it lost it; then the waiter gets it.
    let still_held = !holder.is_finished();
    let _ = release_holder.send(());
    let held_ended = tokio::time::timeout(BOUND, holder).await.expect("the holder never ended").expect("holder");
    let (waiter_token, waiter_ended) = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("the waiter was never served")
        .expect("waiter task")
        .expect("the waiter was refused the lock after the election");
    println!("holder (token {held_token}; still holding after the election: {still_held}): {}", held_ended.describe());
    println!("waiter got \"held\" with token {waiter_token}: {}", waiter_ended.describe());
    assert!(waiter_token > held_token);
    assert!(!matches!(held_ended, Ended::ReleaseFailed(_)), "{}", held_ended.describe());

    stop.store(true, Ordering::Release);
    let (mut sections, mut errors, mut failed_releases) = (0, Vec::new(), Vec::new());
    for worker in workers {
        let (ended, worker_errors) = tokio::time::timeout(BOUND, worker).await.expect("a worker hung").expect("worker");
        sections += ended.len();
        failed_releases.extend(ended.iter().filter(|e| matches!(e, Ended::ReleaseFailed(_))).map(Ended::describe));
        errors.extend(worker_errors);
    }
    println!(
        "{sections} worker sections; {} acquire errors around the election {errors:?}; releases that failed (their \
         keys deleted in the background) {failed_releases:?}",
        errors.len()
    );
    history.assert_clean();
    // Requests that meet the election are sent again within the callers'
    // 5 s timeouts: no acquire fails because of it.
    assert!(errors.is_empty(), "acquires failed around the election: {errors:?}");
    println!("leader kill test took {:?}", test.elapsed());
}

/// Every member is stopped and started again with its data: tokens granted
/// afterwards are above every token granted before, and a lock held across
/// the restart is kept or reported lost, never granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_tokens_rising() {
    let test = Instant::now();
    let Some(mut cluster) = start().await else { return };
    let endpoints = cluster.endpoints();
    let (first, second) = (manager(&endpoints).await, manager(&rotated(&endpoints, 1)).await);
    let history = Arc::new(History::default());
    let resources = ["a", "b", "c"];
    for round in 0..3 {
        for (index, resource) in resources.into_iter().enumerate() {
            let locks = if (round + index) % 2 == 0 { &first } else { &second };
            let guard = locks.acquire(resource, AcquireOptions::new()).await.expect("acquire before");
            let ended = history.hold("before", guard, std::future::ready(())).await;
            assert!(matches!(ended, Ended::Released), "{}", ended.describe());
        }
    }
    let before = resources.iter().map(|r| history.last_token(r)).max().expect("tokens");
    // One lock held across the restart.
    let guard = first.acquire("a", AcquireOptions::new()).await.expect("acquire a");
    let held_token = guard.fencing_token().get();
    let (release_holder, until_released) = release_signal();
    let holder = tokio::spawn({
        let history = history.clone();
        async move { history.hold("holder", guard, until_released).await }
    });
    // And a waiter queued behind it, whose watch the restart breaks.
    let waiter = tokio::spawn({
        let (history, locks) = (history.clone(), second.clone());
        async move {
            let guard = locks.acquire("a", AcquireOptions::new().timeout(BOUND)).await?;
            let token = guard.fencing_token().get();
            history.hold("waiter", guard, std::future::ready(())).await;
            Ok::<_, LockError>(token)
        }
    });
    let mut raw = Client::connect(&endpoints, None).await.expect("raw client");
    wait_queued(&mut raw, "a", 2).await;

    let old = blocking(|| cluster.wait_for_leader(None, BOUND));
    let stopped = Instant::now();
    blocking(|| cluster.restart_all());
    let new = blocking(|| cluster.wait_for_leader(None, BOUND));
    println!(
        "WHOLE CLUSTER RESTARTED in {:?}: leader {} before, {} after; highest token before {before}, \"a\" held with \
         token {held_token}",
        stopped.elapsed(),
        cluster.name(old),
        cluster.name(new)
    );

    let _ = release_holder.send(());
    let held_ended = tokio::time::timeout(BOUND, holder).await.expect("the holder never ended").expect("holder");
    println!("holder across the restart: {} ({:?} after the restart began)", held_ended.describe(), stopped.elapsed());
    assert!(!matches!(held_ended, Ended::ReleaseFailed(_)), "{}", held_ended.describe());
    let waiter_token = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("the waiter was never served")
        .expect("waiter task")
        .expect("the waiter queued across the restart was refused the lock");
    println!(
        "the waiter queued across the restart got \"a\" with token {waiter_token}, {:?} after the restart began",
        stopped.elapsed()
    );
    assert!(waiter_token > held_token);
    for resource in resources {
        let asked = Instant::now();
        let guard = second
            .acquire(resource, AcquireOptions::new().timeout(BOUND))
            .await
            .unwrap_or_else(|e| panic!("{resource:?} after the restart: {e}"));
        let token = guard.fencing_token().get();
        assert!(token > before, "{resource:?}: token {token} after the restart, {before} before");
        assert!(token > held_token);
        println!("after the restart {resource:?} was granted with token {token} in {:?}", asked.elapsed());
        history.hold("after", guard, std::future::ready(())).await;
    }
    history.assert_clean();
    println!("whole-cluster restart test took {:?}", test.elapsed());
}

/// A client that talks only to one member, a follower, which is then
/// paused (`SIGSTOP`) — partitioned away from it: its holder is told it
/// lost the lock within about one lease, and a manager on the healthy
/// members then gets the lock with a higher token; once the member
/// resumes, the partitioned client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_of_a_partitioned_follower_loses_its_lock_in_time() {
    partitioned_member(false).await;
}

/// The same with the leader paused: the healthy members elect another,
/// and the healthy manager is served through that election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_of_a_partitioned_leader_loses_its_lock_in_time() {
    partitioned_member(true).await;
}

async fn partitioned_member(pause_the_leader: bool) {
    let test = Instant::now();
    let Some(cluster) = start().await else { return };
    let leader = blocking(|| cluster.wait_for_leader(None, BOUND));
    let isolated = if pause_the_leader {
        leader
    } else {
        (0..cluster.len()).find(|member| *member != leader).expect("a follower")
    };
    let healthy: Vec<String> = (0..cluster.len()).filter(|m| *m != isolated).map(|m| cluster.endpoint(m)).collect();
    let partitioned = manager(&[cluster.endpoint(isolated)]).await;
    let others = manager(&healthy).await;
    let history = Arc::new(History::default());

    let guard = partitioned.acquire("r", AcquireOptions::new()).await.expect("acquire on the isolated member");
    let held_token = guard.fencing_token().get();
    let id = history.granted("r", "partitioned", &guard);
    let waiter = tokio::spawn({
        let (history, locks) = (history.clone(), others.clone());
        async move {
            let guard = locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await?;
            let waited = Instant::now();
            let token = guard.fencing_token().get();
            history.hold("healthy", guard, std::future::ready(())).await;
            Ok::<_, LockError>((token, waited))
        }
    });
    let mut raw = Client::connect(&healthy, None).await.expect("raw client");
    wait_queued(&mut raw, "r", 2).await;

    blocking(|| cluster.pause(isolated));
    let paused = Instant::now();
    println!(
        "PAUSED {} (the leader was {}) under a client holding \"r\" (token {held_token})",
        cluster.name(isolated),
        cluster.name(leader)
    );
    let told = tokio::time::timeout(BOUND, guard.lost()).await;
    let told_after = paused.elapsed();
    let (token, granted_at) = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("the healthy manager was never served")
        .expect("waiter task")
        .expect("the healthy manager was refused the lock");
    let granted_after = granted_at - paused;
    if pause_the_leader {
        let new = blocking(|| cluster.wait_for_leader(Some(leader), BOUND));
        say(&format!("LEADER CHANGED: {} leads while {} is paused", cluster.name(new), cluster.name(leader)));
    }
    blocking(|| cluster.resume(isolated));
    let reason = told.expect("the partitioned holder was never told it lost the lock");
    history.stopped(id);
    println!(
        "partitioned holder told after {told_after:?} ({reason}); healthy manager granted after {granted_after:?} \
         with token {token}"
    );
    // Its lease, plus etcd's whole-second lease rounding and one response timeout.
    assert!(told_after <= LEASE + Duration::from_secs(2), "told only after {told_after:?}");
    assert!(guard.is_lost());
    assert!(guard.release().await.expect_err("released a lock lost in a partition").is_lost());
    assert!(token > held_token);

    // Healed: the partitioned client is served again, after the others.
    let again = partitioned
        .acquire("r", AcquireOptions::new().timeout(BOUND))
        .await
        .expect("the partitioned client was not served once its member resumed");
    assert!(again.fencing_token().get() > token);
    history.hold("healed", again, std::future::ready(())).await;
    history.assert_clean();
    println!("partition test took {:?}", test.elapsed());
}

/// Writes `line` to the real stderr: the test harness captures `println!`
/// and `eprintln!`, and CI's log must show that the leader changed.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
