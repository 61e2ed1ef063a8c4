//! The conformance suite against Redis: each test starts its own
//! `redis-server` on a free loopback port (see
//! `lockman_testkit::redis_server`), so tests never share data and never
//! touch a Redis already running on this machine.

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{LockBackend, LockManager, StatusManager};
use lockman_redis::{RedisBackend, RedisOptions, RedisStatusManager};
use lockman_testkit::Harness;
use lockman_testkit::redis_server::RedisServer;

struct Redis {
    _server: RedisServer,
    locks: Arc<dyn LockManager>,
    second: Arc<dyn LockManager>,
    status: Arc<dyn StatusManager>,
}

impl Redis {
    /// `None` (after a loud SKIPPED line) when redis-server is not installed.
    async fn start() -> Option<Self> {
        let server = RedisServer::start()?;
        // A short default lease, so the renewal check can outlive it.
        let options = RedisOptions::new(server.url()).default_lease(Duration::from_millis(600));
        let backend = RedisBackend::connect(options.clone()).await.expect("connect");
        let status = Arc::new(RedisStatusManager::new(&backend));
        let second = Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager());
        Some(Redis { _server: server, locks: Arc::new(backend.into_manager()), second, status })
    }
}

impl Harness for Redis {
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

lockman_testkit::conformance_suite!(match Redis::start().await {
    Some(redis) => redis,
    None => return,
});
