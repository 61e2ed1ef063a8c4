//! Checks that a manager is not tied to the runtime that connected it: it
//! works from another runtime while the first idles or after it is dropped,
//! from threads with no runtime (the blocking API), and keeps its lease
//! while the holder's current-thread runtime is blocked in synchronous work.
//!
//! Unlike the conformance checks these are plain functions (they build
//! runtimes of their own, so they cannot run inside `#[tokio::test]`): call
//! them from `#[test]`s with a function that connects a new manager.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use lockman_core::LockManager;
//! # async fn connect() -> Arc<dyn LockManager> { unimplemented!() }
//! lockman_testkit::runtimes::works_after_the_connecting_runtime_is_dropped(|| Box::pin(connect()));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lockman_core::blocking::BlockingLockManager;
use lockman_core::{AcquireOptions, LockManager};

/// Connects a new manager (on whatever runtime polls the future).
pub trait Connect: Fn() -> Pin<Box<dyn Future<Output = Arc<dyn LockManager>>>> {}
impl<F: Fn() -> Pin<Box<dyn Future<Output = Arc<dyn LockManager>>>>> Connect for F {}

/// A current-thread runtime.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A multi-thread runtime with one worker.
pub fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

/// Connects a manager on `runtime`.
pub fn connect_on(runtime: &tokio::runtime::Runtime, connect: &impl Connect) -> Arc<dyn LockManager> {
    runtime.block_on(connect())
}

/// One acquire and release of `resource` on `runtime`, bounded in time.
pub fn cycle_on(runtime: &tokio::runtime::Runtime, locks: &Arc<dyn LockManager>, resource: &str) {
    runtime.block_on(async {
        let options = AcquireOptions::new().timeout(Duration::from_secs(3));
        let guard = tokio::time::timeout(Duration::from_secs(5), locks.acquire(resource, options))
            .await
            .expect("acquire hung")
            .expect("acquire from another runtime");
        guard.release().await.expect("release from another runtime");
    });
}

/// Connected on a current-thread runtime that then sits idle (nobody
/// drives it), used from another runtime — also by a waiter that must be
/// woken by a release.
pub fn works_from_another_runtime_while_the_connecting_one_is_idle(connect: impl Connect) {
    let connecting = current_thread();
    let locks = connect_on(&connecting, &connect);
    let other = current_thread();
    cycle_on(&other, &locks, "idle-connector");
    other.block_on(async {
        let first = locks.acquire("idle-connector", AcquireOptions::new()).await.expect("first");
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                locks.acquire("idle-connector", AcquireOptions::new().timeout(Duration::from_secs(3))).await
            })
        };
        tokio::task::yield_now().await;
        first.release().await.expect("release");
        let second = waiter.await.expect("join").expect("the waiter is woken");
        second.release().await.expect("release");
    });
    drop(connecting);
}

/// Runs `work` on a thread of its own, which sends the outcome of one
/// cycle through the sender it is given; panics, naming `what`, if that
/// outcome is an error or does not come within 5 s (the thread is left
/// hanging then).
fn cycle_completes_in_time(
    what: &str,
    work: impl FnOnce(std::sync::mpsc::Sender<Result<(), lockman_core::LockError>>) + Send + 'static,
) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || work(done_tx));
    match done_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(cycled) => cycled.unwrap_or_else(|e| panic!("acquire and release {what}: {e}")),
        Err(_) => panic!("a cycle {what} hung: it waits on a runtime that runs nothing meanwhile"),
    }
    worker.join().expect("worker");
}

/// One acquire and release of `resource`, reporting the outcome.
async fn cycle(locks: &Arc<dyn LockManager>, resource: &str) -> Result<(), lockman_core::LockError> {
    locks.acquire(resource, AcquireOptions::new()).await?.release().await
}

/// Used through `Handle::block_on` on a current-thread runtime from a
/// thread that does not drive it (its tasks, IO and timers stand still
/// meanwhile), after that runtime's own thread used the manager: the cycle
/// completes within 5 s, so nothing it waits for may need that runtime's
/// tasks to run.
pub fn works_under_handle_block_on_from_a_thread_that_does_not_drive_the_runtime(connect: impl Connect) {
    let runtime = current_thread();
    let locks = connect_on(&runtime, &connect);
    cycle_on(&runtime, &locks, "foreign-block-on");
    let handle = runtime.handle().clone();
    let foreign = locks.clone();
    cycle_completes_in_time("under Handle::block_on from a foreign thread", move |done| {
        let _ = done.send(handle.block_on(cycle(&foreign, "foreign-block-on")));
    });
    // The runtime's own thread still works afterwards.
    cycle_on(&runtime, &locks, "foreign-block-on");
}

/// The same on the thread that drove the runtime before (by
/// `Runtime::block_on`, for a while, so that anything a backend keeps for
/// that runtime is in place) and now calls `Handle::block_on`, which does
/// not drive it.
pub fn works_under_handle_block_on_on_the_thread_that_drove_the_runtime(connect: impl Connect + Send + 'static) {
    cycle_completes_in_time("under Handle::block_on on the runtime's own thread", move |done| {
        let runtime = current_thread();
        let locks = connect_on(&runtime, &connect);
        for _ in 0..20 {
            cycle_on(&runtime, &locks, "same-thread-block-on");
        }
        let _ = done.send(runtime.handle().block_on(cycle(&locks, "same-thread-block-on")));
        // Driven again afterwards, it still works.
        cycle_on(&runtime, &locks, "same-thread-block-on");
    });
}

/// A guard (on the manager's default lease, which core renews) dropped on
/// a current-thread runtime that is dropped before the release task that
/// the guard's drop spawned there could run: nobody holds the lock, so it
/// is released elsewhere at once — another runtime gets it within half the
/// default lease, before a lease that was renewed could have run out (and
/// long before a key bound to the manager's own lease would go).
pub fn a_guard_dropped_as_its_runtime_shuts_down_is_released(connect: impl Connect, default_lease: Duration) {
    let runtime = current_thread();
    let locks = connect_on(&runtime, &connect);
    runtime.block_on(async {
        let guard = locks.acquire("orphaned", AcquireOptions::new()).await.expect("acquire");
        // Its release is spawned on this runtime, which returns from
        // `block_on` before running it, and is dropped next.
        drop(guard);
    });
    drop(runtime);
    let other = current_thread();
    other.block_on(async {
        let options = AcquireOptions::new().timeout(default_lease / 2);
        let guard = locks
            .acquire("orphaned", options)
            .await
            .expect("the dropped guard's lock was not released when its runtime shut down");
        guard.release().await.expect("release");
    });
}

/// Runs `future` to completion on the calling thread, parking it between
/// polls: an executor that blocks, as `futures::executor::block_on` does.
fn block_in_place_of_the_runtime<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// Used from an executor that blocks inside a current-thread runtime (the
/// runtime's thread is stuck in it, so the runtime runs nothing meanwhile),
/// after that thread drove the runtime for a while: the cycle completes
/// within 5 s.
pub fn works_from_an_executor_blocking_inside_the_runtime(connect: impl Connect + Send + 'static) {
    cycle_completes_in_time("in an executor blocking inside the runtime", move |done| {
        let runtime = current_thread();
        let locks = connect_on(&runtime, &connect);
        for _ in 0..20 {
            cycle_on(&runtime, &locks, "blocking-executor");
        }
        let cycled = runtime.block_on(async { block_in_place_of_the_runtime(cycle(&locks, "blocking-executor")) });
        let _ = done.send(cycled);
    });
}

/// Connected on a current-thread runtime that is then dropped.
pub fn works_after_the_connecting_runtime_is_dropped(connect: impl Connect) {
    let connecting = current_thread();
    let locks = connect_on(&connecting, &connect);
    drop(connecting);
    cycle_on(&current_thread(), &locks, "dropped-connector");
}

/// Connected on a runtime that is then dropped, used through the blocking API.
pub fn works_from_a_thread_without_a_runtime(connect: impl Connect) {
    let connecting = current_thread();
    let locks = connect_on(&connecting, &connect);
    drop(connecting);
    let blocking = BlockingLockManager::new(locks);
    let guard = blocking.acquire("no-runtime", AcquireOptions::new().timeout(Duration::from_secs(3))).expect("acquire");
    guard.release().expect("release");
}

/// A guard taken on a current-thread runtime keeps its lease while that
/// runtime is stuck in synchronous work inside the critical section for
/// `blocked` (make it longer than the manager's default lease).
pub fn the_lease_is_kept_while_the_callers_runtime_is_blocked(connect: impl Connect, blocked: Duration) {
    let runtime = current_thread();
    let locks = connect_on(&runtime, &connect);
    runtime.block_on(async {
        let guard = locks.acquire("blocked-holder", AcquireOptions::new()).await.expect("acquire");
        // Synchronous work in the critical section, blocking this runtime's only thread.
        std::thread::sleep(blocked);
        assert!(!guard.is_lost(), "the lease ran out while the holder's runtime was blocked");
        let other = locks.try_acquire("blocked-holder", AcquireOptions::new()).await.expect("try_acquire");
        assert!(other.is_none(), "another holder got the lock while the first still held it");
        guard.release().await.expect("release");
    });
}
