//! The conformance suite against etcd: each test starts its own single-node
//! `etcd` on free loopback ports (see `lockman_testkit::etcd_server`), so
//! tests never share data and never touch an etcd already running here.

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{LockBackend, LockManager, StatusManager};
use lockman_etcd::{EtcdBackend, EtcdOptions, EtcdStatusManager};
use lockman_testkit::Harness;
use lockman_testkit::etcd_server::EtcdServer;

struct Etcd {
    _server: EtcdServer,
    locks: Arc<dyn LockManager>,
    second: Arc<dyn LockManager>,
    status: Arc<dyn StatusManager>,
}

impl Etcd {
    /// `None` (after a loud SKIPPED line) when etcd is not installed.
    async fn start() -> Option<Self> {
        let server = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start etcd")?;
        // A short default lease (etcd leases are whole seconds), so the
        // renewal checks can outlive it.
        let options = EtcdOptions::new([server.endpoint()]).default_lease(Duration::from_secs(2));
        let backend = EtcdBackend::connect(options.clone()).await.expect("connect");
        let status = Arc::new(EtcdStatusManager::new(&backend));
        let second = Arc::new(EtcdBackend::connect(options).await.expect("connect").into_manager());
        Some(Etcd { _server: server, locks: Arc::new(backend.into_manager()), second, status })
    }
}

impl Harness for Etcd {
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

lockman_testkit::conformance_suite!(match Etcd::start().await {
    Some(etcd) => etcd,
    None => return,
});
