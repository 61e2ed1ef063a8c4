//! The conformance suite against each file flavour, each harness over its
//! own temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lockman_core::{LockBackend, LockManager, StatusManager};
use lockman_file::{
    FileBackend, FileOptions, FileStatusManager, FlagDirOptions, LeaseFileBackend, LegacyFileBackend, LegacyOptions,
};
use lockman_testkit::Harness;

/// One flavour over a private temporary directory.
struct Files {
    dir: tempfile::TempDir,
    open: fn(&Path) -> Arc<dyn LockManager>,
    locks: Arc<dyn LockManager>,
    status: Arc<dyn StatusManager>,
}

impl Files {
    fn new(open: fn(&Path) -> Arc<dyn LockManager>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let locks = open(dir.path());
        let status = Arc::new(FileStatusManager::open(FlagDirOptions::new(dir.path().join("flags"))).expect("flags"));
        Files { dir, open, locks, status }
    }
}

impl Harness for Files {
    fn locks(&self) -> Arc<dyn LockManager> {
        self.locks.clone()
    }

    fn second_locks(&self) -> Option<Arc<dyn LockManager>> {
        Some((self.open)(self.dir.path()))
    }

    fn status(&self) -> Arc<dyn StatusManager> {
        self.status.clone()
    }
}

fn kernel(dir: &Path) -> Arc<dyn LockManager> {
    Arc::new(FileBackend::open(FileOptions::new(dir)).expect("open").into_manager())
}

/// Lease files with a short default lease, so the renewal check can outlive it.
fn lease(dir: &Path) -> Arc<dyn LockManager> {
    let options = FileOptions::new(dir).default_lease(Duration::from_millis(600));
    Arc::new(LeaseFileBackend::open(options).expect("open").into_manager())
}

/// Legacy lockfiles with GivTCP's names for inverter 1 (the suite's own
/// resource names are unmapped, so they exercise the default naming).
fn legacy(dir: &Path) -> Arc<dyn LockManager> {
    Arc::new(LegacyFileBackend::open(LegacyOptions::givtcp(dir, 1)).expect("open").into_manager())
}

mod kernel {
    use super::*;
    lockman_testkit::conformance_suite!(Files::new(kernel));
}

mod lease {
    use super::*;
    lockman_testkit::conformance_suite!(Files::new(super::lease));
}

mod legacy {
    use super::*;
    lockman_testkit::conformance_suite!(Files::new(super::legacy));
}
