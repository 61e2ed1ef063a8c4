//! The conformance suite against a bridged manager (a new backend — lock
//! files, or Redis on a private server — plus the legacy lockfiles, as
//! during a rollout), built through `connect_with` from a configuration with
//! a legacy bridge.

use std::sync::Arc;

use lockman::{Config, LockManager, StatusManager};
use lockman_testkit::Harness;
use lockman_testkit::redis_server::RedisServer;

/// A kernel-locked file backend bridged with legacy lockfiles, both in a
/// private temporary directory.
struct Bridged {
    _dir: tempfile::TempDir,
    _redis: Option<RedisServer>,
    locks: Arc<dyn LockManager>,
    status: Arc<dyn StatusManager>,
    second: Arc<dyn LockManager>,
}

impl Bridged {
    /// `new_backend` with `DIR` standing for the temporary directory.
    async fn new(new_backend: &str) -> Self {
        Self::with_server(new_backend, None).await
    }

    /// Redis bridged with legacy lockfiles; `None` if redis-server is missing.
    async fn redis() -> Option<Self> {
        let server = RedisServer::start()?;
        // A short default lease, so the renewal check can outlive it.
        let url = format!("{}?lease=600ms", server.url());
        Some(Self::with_server(&url, Some(server)).await)
    }

    async fn with_server(new_backend: &str, redis: Option<RedisServer>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().display().to_string();
        let mut config = Config::for_url(new_backend.replace("DIR", &root));
        config.legacy_bridge = Some(format!("legacy-file://{root}/legacy?givtcp=1"));
        let first = lockman::connect_with(&config).await.expect("connect");
        let second = lockman::connect_with(&config).await.expect("connect again").locks;
        Bridged { _dir: dir, _redis: redis, locks: first.locks, status: first.status, second }
    }
}

impl Harness for Bridged {
    fn locks(&self) -> Arc<dyn LockManager> {
        self.locks.clone()
    }

    fn second_locks(&self) -> Option<Arc<dyn LockManager>> {
        Some(self.second.clone())
    }

    fn status(&self) -> Arc<dyn StatusManager> {
        self.status.clone()
    }
}

mod file_bridged_with_legacy {
    use super::*;
    lockman_testkit::conformance_suite!(Bridged::new("file://DIR/new").await);
}

mod redis_bridged_with_legacy {
    use super::*;
    lockman_testkit::conformance_suite!(match Bridged::redis().await {
        Some(bridged) => bridged,
        None => return,
    });
}

/// The bridged guard's `extend` under cancellation and concurrency, over two
/// in-process managers whose legacy side renews slowly.
mod extend {
    use std::time::{Duration, SystemTime};

    use lockman::backend::{Acquired, GrantRequest};
    use lockman::memory::{MemoryBackend, MemoryGrant};
    use lockman::{
        AcquireOptions, BridgedLockManager, Capabilities, LockBackend, LockError, LockInfo, LockState, Locks,
    };
    use parking_lot::Mutex;
    use tokio::sync::Notify;

    use super::*;

    /// How the wrapped backend's `renew` behaves.
    #[derive(Clone, Copy, Debug)]
    enum Renew {
        AtOnce,
        /// Takes this long (a slow disk or link).
        Slow(Duration),
        /// Never answers (a hung legacy share): the caller has to give up.
        Stalled,
    }

    /// A real memory backend whose `renew` can be made slow or hang, to
    /// stand for a legacy store that is slow to renew. Everything else is
    /// the memory backend's.
    #[derive(Debug)]
    struct SlowRenew {
        inner: MemoryBackend,
        renew: Mutex<Renew>,
        /// Told when a renewal starts.
        renewing: Notify,
    }

    impl SlowRenew {
        fn manager() -> Arc<Locks<SlowRenew>> {
            let backend =
                SlowRenew { inner: MemoryBackend::new(), renew: Mutex::new(Renew::AtOnce), renewing: Notify::new() };
            Arc::new(Locks::new(backend))
        }

        fn set(&self, renew: Renew) {
            *self.renew.lock() = renew;
        }
    }

    impl LockBackend for SlowRenew {
        type Grant = MemoryGrant;

        fn name(&self) -> &'static str {
            "slow-renew-memory"
        }

        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }

        async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<MemoryGrant>, LockError> {
            self.inner.acquire(request).await
        }

        async fn release(&self, grant: &MemoryGrant) -> Result<(), LockError> {
            self.inner.release(grant).await
        }

        fn release_now(&self, grant: &MemoryGrant) -> Option<Result<(), LockError>> {
            self.inner.release_now(grant)
        }

        async fn renew(&self, grant: &MemoryGrant, lease: Duration) -> Result<SystemTime, LockError> {
            self.renewing.notify_one();
            let renew = *self.renew.lock();
            match renew {
                Renew::AtOnce => {}
                Renew::Slow(delay) => tokio::time::sleep(delay).await,
                Renew::Stalled => std::future::pending().await,
            }
            self.inner.renew(grant, lease).await
        }

        async fn inspect(&self, resource: &str) -> Result<LockState, LockError> {
            self.inner.inspect(resource).await
        }

        async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
            self.inner.list().await
        }

        async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
            self.inner.force_release(resource, reason).await
        }

        async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
            self.inner.cleanup_stale().await
        }
    }

    fn bridge() -> (BridgedLockManager, Arc<lockman::MemoryLockManager>, Arc<Locks<SlowRenew>>) {
        let primary = Arc::new(lockman::MemoryLockManager::default());
        let legacy = SlowRenew::manager();
        (BridgedLockManager::new(primary.clone(), legacy.clone()), primary, legacy)
    }

    fn expiry(state: LockState) -> SystemTime {
        state.info().and_then(|info| info.lease_expires_at).expect("held, with a lease")
    }

    /// An `extend` dropped while the legacy side is renewing (a timeout, a
    /// `select!`) leaves both locks held: the legacy lock is not released
    /// behind the bridged guard's back, and `release` then frees both.
    #[tokio::test]
    async fn cancelled_extend_keeps_the_legacy_lock() {
        let (bridge, primary, legacy) = bridge();
        let guard = bridge.acquire("r", AcquireOptions::new().lease(Duration::from_secs(30))).await.expect("acquire");
        let ours = legacy.state("r").await.expect("state");
        legacy.backend().set(Renew::Stalled);
        tokio::select! {
            extended = guard.extend(Duration::from_secs(60)) => panic!("extend finished through a hung renew: {extended:?}"),
            // The legacy renewal is under way: give up on the extend now.
            () = legacy.backend().renewing.notified() => {}
        }
        let intruder = legacy.try_acquire("r", AcquireOptions::new()).await.expect("try_acquire");
        assert!(intruder.is_none(), "the cancelled extend released the legacy lock while the bridged guard holds it");
        let state = legacy.state("r").await.expect("state");
        assert_eq!(state, ours, "the legacy lock is no longer the bridged guard's grant");
        assert!(!guard.is_lost());

        // The guard still works: extend (renewing again) and release both.
        legacy.backend().set(Renew::AtOnce);
        guard.extend(Duration::from_secs(60)).await.expect("extend after a cancelled one");
        let later = SystemTime::now() + Duration::from_secs(50);
        assert!(expiry(legacy.state("r").await.expect("state")) > later, "the legacy lease was not extended");
        guard.release().await.expect("release");
        assert_eq!(legacy.state("r").await.expect("state"), LockState::Available);
        assert_eq!(primary.state("r").await.expect("state"), LockState::Available);
    }

    /// Two `extend`s at once both reach the legacy side, in order: the
    /// second does not skip it while the first is renewing there.
    #[tokio::test]
    async fn concurrent_extends_both_extend_the_legacy_lock() {
        let (bridge, primary, legacy) = bridge();
        let guard = bridge.acquire("r", AcquireOptions::new().lease(Duration::from_secs(30))).await.expect("acquire");
        legacy.backend().set(Renew::Slow(Duration::from_millis(20)));
        let (short, long) = tokio::join!(guard.extend(Duration::from_secs(2)), guard.extend(Duration::from_secs(60)));
        short.expect("the first extend");
        long.expect("the second extend");
        let later = SystemTime::now() + Duration::from_secs(50);
        assert!(
            expiry(primary.state("r").await.expect("state")) > later,
            "the primary lease is not the last extension"
        );
        assert!(
            expiry(legacy.state("r").await.expect("state")) > later,
            "the second extend skipped the legacy lock: it ends with the first extension"
        );
        assert!(!guard.is_lost());
        guard.release().await.expect("release");
        assert_eq!(legacy.state("r").await.expect("state"), LockState::Available);
    }
}

/// When a bridged lock is granted: the date it shows, and its token's
/// place in the order of grants.
mod grant_time {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use lockman::{AcquireOptions, BridgedLockManager, LockManager, LockState};

    /// A bridged lock that took the new lock at once but then waited for an
    /// old daemon's legacy file is dated from when it got the legacy file
    /// too: before then it did not hold the resource (the old daemon did),
    /// and an `acquired_at` from the first part would claim that time.
    /// A memory lock bridged with legacy lockfiles in a temporary directory
    /// (resource `r`, a waiting policy), and the legacy manager itself.
    struct Setup {
        dir: tempfile::TempDir,
        legacy_file: std::path::PathBuf,
        legacy: Arc<dyn LockManager>,
        primary: Arc<dyn LockManager>,
        bridge: Arc<BridgedLockManager>,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let legacy_file = dir.path().join(".regcache_lockfile_1");
        let legacy_url = format!("legacy-file://{}?lock.r=.regcache_lockfile_1&policy.r=wait", dir.path().display());
        let legacy = lockman::connect(&legacy_url).await.expect("connect legacy").locks;
        let primary: Arc<dyn LockManager> = Arc::new(lockman::MemoryLockManager::default());
        let bridge = Arc::new(BridgedLockManager::new(primary.clone(), legacy.clone()));
        // An old daemon holds the legacy file (protocol B: the time, no marker).
        std::fs::write(&legacy_file, "2026-12-03T12:00:00.000000+00:00").expect("old daemon's file");
        Setup { dir, legacy_file, legacy, primary, bridge }
    }

    #[tokio::test]
    async fn a_bridged_lock_is_dated_from_its_later_part() {
        let Setup { dir: _dir, legacy_file, primary, bridge, .. } = setup().await;
        let waiting = tokio::spawn({
            let bridge = bridge.clone();
            async move { bridge.acquire("r", AcquireOptions::new().timeout(Duration::from_secs(10))).await }
        });
        // The bridge has the new lock and now waits for the legacy file.
        while primary.state("r").await.expect("state") == LockState::Available {
            tokio::task::yield_now().await;
        }
        let primary_since = primary.state("r").await.expect("state").info().expect("held").acquired_at;
        tokio::time::sleep(Duration::from_millis(50)).await; // the old daemon's section goes on
        let old_daemon_done = SystemTime::now();
        std::fs::remove_file(&legacy_file).expect("the old daemon releases");

        let guard = waiting.await.expect("join").expect("acquire once the old daemon is done");
        let acquired_at = guard.info().acquired_at;
        assert!(
            acquired_at >= old_daemon_done,
            "the bridged lock claims to be held since {acquired_at:?} (the new lock's grant, {primary_since:?}), \
             while the old daemon held the legacy file until {old_daemon_done:?}"
        );
        guard.release().await.expect("release");
    }

    /// A bridged acquisition whose new lock is lost while it waits for an old
    /// daemon's legacy file (Redis restarted empty, say; here the new lock is
    /// force-released) does not come back with that lost lock's token: someone
    /// else may have taken the new lock meanwhile, with a higher token, and a
    /// grant after theirs with a lower token would break the order fencing
    /// relies on. It lets the legacy file go and queues for the new lock again.
    #[tokio::test]
    async fn a_new_lock_lost_while_waiting_for_the_legacy_lock_is_taken_again() {
        use lockman::LockEventKind;

        let Setup { dir: _dir, legacy_file, legacy, primary, bridge } = setup().await;
        let mut legacy_events = legacy.events();
        let mut waiting = tokio::spawn({
            let bridge = bridge.clone();
            async move { bridge.acquire("r", AcquireOptions::new().timeout(Duration::from_secs(20))).await }
        });
        // The bridge has the new lock and now waits for the legacy file.
        let lost_token = loop {
            if let LockState::Held(info) = primary.state("r").await.expect("state") {
                break info.fencing_token;
            }
            tokio::task::yield_now().await;
        };
        primary.force_release("r", "the store restarted empty").await.expect("force release");
        let intruder = primary.acquire("r", AcquireOptions::new()).await.expect("the new lock, free again");
        assert!(intruder.fencing_token() > lost_token);
        std::fs::remove_file(&legacy_file).expect("the old daemon releases");

        // The bridge takes the legacy file, finds its new lock gone and lets the
        // legacy file go again.
        let released = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match legacy_events.recv().await {
                    Ok(event) if event.kind == LockEventKind::Released => break,
                    Ok(_) | Err(lockman::EventsError::Lagged(_)) => {}
                    Err(e) => panic!("legacy events: {e}"),
                }
            }
        })
        .await;
        assert!(
            released.is_ok(),
            "the bridge kept the legacy file after its new lock was lost: {:?}",
            tokio::time::timeout(Duration::from_millis(1), &mut waiting).await
        );
        assert!(!waiting.is_finished(), "the bridged acquisition returned while the new lock is someone else's");

        let intruders_token = intruder.fencing_token();
        intruder.release().await.expect("release");
        let guard = waiting.await.expect("join").expect("acquire once the new lock is free");
        assert!(
            guard.fencing_token() > intruders_token,
            "the bridged grant has token {}, after a grant with token {intruders_token}",
            guard.fencing_token()
        );
        guard.release().await.expect("release");
    }
}

/// Stage 4a of the migration guide: an instance switched to etcd, bridged to
/// Redis, and an unswitched instance on Redis alone exclude each other both
/// ways; the switched one's flags are Redis's (where unswitched instances
/// read them), and its locks are also visible in etcd.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_bridged_to_redis_excludes_instances_still_on_redis() {
    use lockman::{AcquireOptions, FlagOptions, LockState};
    use lockman_testkit::etcd_server::EtcdServer;

    let Some(redis) = tokio::task::spawn_blocking(RedisServer::start).await.expect("start") else { return };
    let Some(etcd) = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start") else { return };
    let mut config = Config::for_url(etcd.url());
    config.legacy_bridge = Some(redis.url());
    let switched = lockman::connect_with(&config).await.expect("connect the switched instance");
    assert_eq!(switched.locks.name(), "etcd+redis");
    let unswitched = lockman::connect(&redis.url()).await.expect("connect the unswitched instance");
    let etcd_alone = lockman::connect(&etcd.url()).await.expect("connect to etcd");

    let guard = switched.locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire switched");
    assert!(unswitched.locks.try_acquire("inverter_read", AcquireOptions::new()).await.expect("try").is_none());
    assert!(matches!(etcd_alone.locks.state("inverter_read").await.expect("state"), LockState::Held(_)));
    guard.release().await.expect("release");

    let guard = unswitched.locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire unswitched");
    assert!(switched.locks.try_acquire("inverter_read", AcquireOptions::new()).await.expect("try").is_none());
    assert!(
        matches!(etcd_alone.locks.state("inverter_read").await.expect("state"), LockState::Available),
        "a failed bridged try left its etcd lock behind"
    );
    guard.release().await.expect("release");
    switched
        .locks
        .acquire("inverter_read", AcquireOptions::new())
        .await
        .expect("acquire")
        .release()
        .await
        .expect("release");

    switched.status.set(".FCRunning1", FlagOptions::new()).await.expect("set");
    assert!(unswitched.status.is_set(".FCRunning1").await.expect("read on Redis"));
    assert!(!etcd_alone.status.is_set(".FCRunning1").await.expect("read on etcd"));
}
