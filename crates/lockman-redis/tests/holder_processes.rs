//! Two OS processes using one holder id on one Redis: a name given with
//! `holder` is scoped to its manager, so they exclude each other; only the
//! explicit `shared_holder` opt-in lets them share a grant.
//!
//! The child is this test binary re-run with `LOCKMAN_HOLDER_CHILD` set
//! (`url<TAB>resource<TAB>scoped|shared`): it acquires, says `held <token>`,
//! and holds until its stdin closes.

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::processes::{HoldingChild, say_held_and_wait_for_stdin};
use lockman_testkit::redis_server::RedisServer;

const CHILD_ENV: &str = "LOCKMAN_HOLDER_CHILD";
const BOUND: Duration = Duration::from_secs(20);

async fn manager(url: &str) -> Arc<dyn LockManager> {
    Arc::new(RedisBackend::connect(RedisOptions::new(url)).await.expect("connect").into_manager())
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
    let [url, resource, kind] = spec.split('\t').collect::<Vec<_>>()[..] else { panic!("bad spec {spec}") };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let locks = manager(url).await;
        let guard = locks.acquire(resource, options(kind)).await.expect("child acquire");
        say_held_and_wait_for_stdin(guard.fencing_token());
        guard.release().await.expect("child release");
    });
    std::process::exit(0);
}

/// The issue's report: the quickstart's `.holder("force-charge")` in two
/// processes on Redis gave both the lock (one token, hold count 1 each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_holder_name_exclude_each_other() {
    let Some(server) = RedisServer::start() else { return };
    let url = server.url();
    let child = HoldingChild::spawn("child", CHILD_ENV, &format!("{url}\tr\tscoped"), BOUND);
    let locks = manager(&url).await;
    let here = locks.try_acquire("r", AcquireOptions::new().holder("force-charge")).await.expect("try_acquire");
    if let Some(here) = here {
        panic!(
            "two processes using holder id \"force-charge\" both hold the lock (child token {}, ours {} as {}, hold \
             count {})",
            child.token(),
            here.fencing_token(),
            here.info().holder,
            here.info().hold_count
        );
    }
    let held = locks.state("r").await.expect("state");
    let info = held.info().expect("held by the child");
    assert_eq!(info.holder.name(), "force-charge");
    assert_ne!(info.pid, std::process::id());
    child.finish(BOUND);
    let mine = locks.acquire("r", options("scoped")).await.expect("free once the child released");
    mine.release().await.expect("release");
}

/// The opt-in: with `shared_holder` the two processes are one holder and
/// share the grant (same token), as the Redis backend documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_shared_holder_share_the_grant() {
    let Some(server) = RedisServer::start() else { return };
    let url = server.url();
    let child = HoldingChild::spawn("child", CHILD_ENV, &format!("{url}\tr\tshared"), BOUND);
    let locks = manager(&url).await;
    let here = locks
        .try_acquire("r", AcquireOptions::new().shared_holder("force-charge"))
        .await
        .expect("try_acquire")
        .expect("a shared holder id was excluded by the same shared holder in another process");
    assert_eq!(here.fencing_token().to_string(), child.token(), "one shared holder got two grants");
    let other = locks.try_acquire("r", AcquireOptions::new().holder("force-charge")).await.expect("try");
    assert!(other.is_none(), "a scoped holder of the same name got into the shared grant");
    child.finish(BOUND);
    assert!(locks.state("r").await.expect("state").is_held(), "our hold was released with the child's");
    here.release().await.expect("release");
    assert!(!locks.state("r").await.expect("state").is_held());
}
