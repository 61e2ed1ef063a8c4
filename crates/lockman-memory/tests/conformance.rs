//! The conformance suite against the memory backend.

use std::sync::Arc;

use lockman_core::{LockManager, StatusManager};
use lockman_memory::{MemoryLockManager, MemoryStatusManager};
use lockman_testkit::Harness;

struct Memory {
    locks: Arc<MemoryLockManager>,
    status: Arc<MemoryStatusManager>,
}

impl Memory {
    fn new() -> Self {
        Memory { locks: Arc::new(MemoryLockManager::default()), status: Arc::new(MemoryStatusManager::default()) }
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
