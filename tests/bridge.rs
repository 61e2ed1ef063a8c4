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
