//! The conformance suite against the memory backend.

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{LockBackend, LockManager, StatusManager};
use lockman_memory::{MemoryBackend, MemoryLockManager, MemoryStatusManager};
use lockman_testkit::Harness;

struct Memory {
    locks: Arc<MemoryLockManager>,
    status: Arc<MemoryStatusManager>,
}

impl Memory {
    fn new() -> Self {
        Memory { locks: Arc::new(MemoryLockManager::default()), status: Arc::new(MemoryStatusManager::default()) }
    }

    /// With a short default lease, so the watchdog checks run in-process.
    fn leased() -> Self {
        let locks = MemoryBackend::with_default_lease(Duration::from_millis(600)).into_manager();
        Memory { locks: Arc::new(locks), status: Arc::new(MemoryStatusManager::default()) }
    }
}

impl Harness for Memory {
    fn locks(&self) -> Arc<dyn LockManager> {
        self.locks.clone()
    }

    fn status(&self) -> Arc<dyn StatusManager> {
        self.status.clone()
    }
}

lockman_testkit::conformance_suite!(Memory::new());

/// The whole suite again with a default lease, which core renews.
mod leased {
    use super::*;
    lockman_testkit::conformance_suite!(Memory::leased());
}
