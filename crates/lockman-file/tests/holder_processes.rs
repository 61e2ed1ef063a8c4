//! Two OS processes using one holder id on one lock directory, for the
//! kernel-lock and lease-file flavours: they exclude each other whether the
//! id is scoped (the default) or shared (these backends do not declare
//! `shared_holders`, so a shared id gets no grant another process holds).
//!
//! The child is this test binary re-run with `LOCKMAN_HOLDER_CHILD` set
//! (`flavour<TAB>dir<TAB>resource<TAB>scoped|shared`): it acquires, says
//! `held <token>`, and holds until its stdin closes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_file::{FileBackend, FileOptions, LeaseFileBackend};
use lockman_testkit::processes::{HoldingChild, say_held_and_wait_for_stdin};

const CHILD_ENV: &str = "LOCKMAN_HOLDER_CHILD";
const BOUND: Duration = Duration::from_secs(20);

fn open(flavour: &str, dir: &Path) -> Arc<dyn LockManager> {
    match flavour {
        "file" => Arc::new(FileBackend::open(FileOptions::new(dir)).expect("open").into_manager()),
        "lease" => Arc::new(LeaseFileBackend::open(FileOptions::new(dir)).expect("open").into_manager()),
        other => panic!("unknown flavour {other}"),
    }
}

fn options(kind: &str) -> AcquireOptions {
    let options = AcquireOptions::new().timeout(BOUND).purpose("holder id test");
    match kind {
        "shared" => options.shared_holder("force-charge"),
        _ => options.holder("force-charge"),
    }
}

#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let [flavour, dir, resource, kind] = spec.split('\t').collect::<Vec<_>>()[..] else { panic!("bad spec {spec}") };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let locks = open(flavour, Path::new(dir));
        let guard = locks.acquire(resource, options(kind)).await.expect("child acquire");
        say_held_and_wait_for_stdin(guard.fencing_token());
        guard.release().await.expect("child release");
    });
    std::process::exit(0);
}

async fn two_processes_exclude(flavour: &str, kind: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = format!("{flavour}\t{}\tr\t{kind}", dir.path().display());
    let child = HoldingChild::spawn("child", CHILD_ENV, &spec, BOUND);
    let locks = open(flavour, dir.path());
    let here = locks.try_acquire("r", options(kind)).await.expect("try_acquire");
    if let Some(here) = here {
        panic!(
            "{flavour}: two processes using {kind} holder id \"force-charge\" both hold the lock (child token {}, \
             ours {} as {})",
            child.token(),
            here.fencing_token(),
            here.info().holder
        );
    }
    child.finish(BOUND);
    let mine = locks.acquire("r", options(kind)).await.expect("free once the child released");
    mine.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_two_processes_with_one_holder_name_exclude_each_other() {
    two_processes_exclude("file", "scoped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_two_processes_with_one_holder_name_exclude_each_other() {
    two_processes_exclude("lease", "scoped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_two_processes_with_one_shared_holder_exclude_each_other() {
    two_processes_exclude("file", "shared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_two_processes_with_one_shared_holder_exclude_each_other() {
    two_processes_exclude("lease", "shared").await;
}
