//! The conformance suite against the memory backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockman_core::{LockBackend, LockManager, StatusManager};
use lockman_memory::{MemoryBackend, MemoryLockManager, MemoryStatusManager};
use lockman_testkit::Harness;

struct Memory {
    locks: Arc<MemoryLockManager>,
    status: Arc<MemoryStatusManager>,
    /// Another manager on the same named map, for the suite's two-party checks.
    second: Option<Arc<MemoryLockManager>>,
}

impl Memory {
    fn new() -> Self {
        Memory {
            locks: Arc::new(MemoryLockManager::default()),
            status: Arc::new(MemoryStatusManager::default()),
            second: None,
        }
    }

    /// Two managers on one process-wide named map (its own name per test,
    /// as the tests of one binary run in one process at the same time).
    fn shared() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("conformance-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        Memory {
            locks: Arc::new(MemoryBackend::named(&name).into_manager()),
            status: Arc::new(MemoryStatusManager::named(&name)),
            second: Some(Arc::new(MemoryBackend::named(&name).into_manager())),
        }
    }

    /// With a short default lease, so the watchdog checks run in-process.
    fn leased() -> Self {
        let locks = MemoryBackend::with_default_lease(Duration::from_millis(600)).into_manager();
        Memory { locks: Arc::new(locks), status: Arc::new(MemoryStatusManager::default()), second: None }
    }
}

impl Harness for Memory {
    fn locks(&self) -> Arc<dyn LockManager> {
        self.locks.clone()
    }

    fn second_locks(&self) -> Option<Arc<dyn LockManager>> {
        self.second.clone().map(|second| second as Arc<dyn LockManager>)
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

/// The whole suite again on a named map shared by two managers, as two
/// `lockman::connect("memory://NAME")` in one process are.
mod shared {
    use super::*;
    lockman_testkit::conformance_suite!(Memory::shared());
}
