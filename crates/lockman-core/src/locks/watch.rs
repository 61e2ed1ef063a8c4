//! Deferred lease watching.
//!
//! A grant with a lease needs a task that renews it (the watchdog) or
//! reports its end (the expiry timer), running where the caller's blocking
//! cannot stop it (`runtime::spawn_detached`). Spawning that task for
//! every grant, and waking it again at the release, cost the background
//! thread two or three wake-ups per lock cycle — most of a short critical
//! section's overhead — though most grants are released long before their
//! first renewal is due.
//!
//! So a grant's task waits here, unstarted, until then: one scheduler task
//! on the background runtime sleeps until the earliest due time and spawns
//! the tasks that are due, each where it would have run at once. A grant
//! released first takes its task back out ([`cancel`]), and nothing ever
//! ran. Registering wakes the scheduler only
//! when the new due time is earlier than the one it sleeps until — with
//! one lease length, about twice per renewal period, not once per grant.
//! `extend` starts the task at once ([`start_now`]), as the new lease may be
//! shorter than the scheduler's plan for it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::runtime;

/// A grant's watchdog or expiry timer, not yet started.
pub(super) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a deferred task is filed: its due time, and a number that makes
/// the key unique.
pub(super) type Key = (Instant, u64);

struct Deferred {
    /// Each task with the runtime it is to run on.
    tasks: BTreeMap<Key, (Task, Handle)>,
    next_number: u64,
    /// When the scheduler looks next (`None`: when told).
    looks_at: Option<Instant>,
    scheduler_started: bool,
}

static DEFERRED: LazyLock<(Mutex<Deferred>, Notify)> = LazyLock::new(|| {
    let deferred = Deferred { tasks: BTreeMap::new(), next_number: 0, looks_at: None, scheduler_started: false };
    (Mutex::new(deferred), Notify::new())
});

/// Files `task` to start at `due` where [`runtime::spawn_detached`] would
/// run it now (the caller's multi-thread runtime, else the background one);
/// the key takes it back. `None` if it was started at once instead (the
/// background runtime, which runs the scheduler, cannot start).
pub(super) fn defer(due: Instant, task: Task) -> Option<Key> {
    let (background, home) = match (runtime::background(), runtime::detached_home()) {
        (Ok(background), Ok(home)) => (background, home),
        _ => {
            runtime::spawn_detached(task);
            return None;
        }
    };
    let (deferred, changed) = &*DEFERRED;
    let mut state = deferred.lock();
    let key = (due, state.next_number);
    state.next_number += 1;
    state.tasks.insert(key, (task, home));
    let mut tell = state.looks_at.is_none_or(|at| due < at);
    if !state.scheduler_started {
        state.scheduler_started = true;
        background.spawn(schedule());
        tell = false; // it looks first thing
    }
    if tell {
        state.looks_at = Some(due);
    }
    drop(state);
    if tell {
        changed.notify_one();
    }
    Some(key)
}

/// Takes the task filed under `key` back, unstarted, if it is still here.
pub(super) fn cancel(key: Key) -> Option<Task> {
    DEFERRED.0.lock().tasks.remove(&key).map(|(task, _)| task)
}

/// Starts the task filed under `key` now, if it has not started yet.
pub(super) fn start_now(key: Key) {
    let filed = DEFERRED.0.lock().tasks.remove(&key);
    if let Some((task, home)) = filed {
        home.spawn(task);
    }
}

/// The scheduler: starts tasks as they come due.
async fn schedule() {
    let (deferred, changed) = &*DEFERRED;
    loop {
        let (due, looks_at) = {
            let mut state = deferred.lock();
            let later = state.tasks.split_off(&(Instant::now(), u64::MAX));
            let due = std::mem::replace(&mut state.tasks, later);
            state.looks_at = state.tasks.keys().next().map(|(at, _)| *at);
            (due, state.looks_at)
        };
        for (task, home) in due.into_values() {
            // On a runtime that has shut down meanwhile it is dropped, as it
            // would have been had it started there at once.
            home.spawn(task);
        }
        // A permit is stored if a registration told us before we wait.
        match looks_at {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed.notified() => {}
                }
            }
            None => changed.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// A task that says when it ran, and a receiver for that.
    fn reporting_task() -> (Task, tokio::sync::oneshot::Receiver<Instant>) {
        let (ran, ran_rx) = tokio::sync::oneshot::channel();
        (
            Box::pin(async move {
                let _ = ran.send(Instant::now());
            }),
            ran_rx,
        )
    }

    #[tokio::test]
    async fn a_task_starts_when_due_not_before() {
        let filed = Instant::now();
        let (task, ran) = reporting_task();
        defer(filed + Duration::from_millis(50), task).expect("filed");
        let ran_at = tokio::time::timeout(Duration::from_secs(5), ran).await.expect("never started").expect("dropped");
        assert!(
            ran_at >= filed + Duration::from_millis(50),
            "started {:?} early",
            filed + Duration::from_millis(50) - ran_at
        );
    }

    #[tokio::test]
    async fn an_earlier_task_wakes_the_scheduler_sleeping_for_a_later_one() {
        let (late, _late_ran) = reporting_task();
        let late_key = defer(Instant::now() + Duration::from_secs(3600), late).expect("filed");
        // Let the scheduler settle into its hour-long sleep.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (early, early_ran) = reporting_task();
        defer(Instant::now() + Duration::from_millis(20), early).expect("filed");
        tokio::time::timeout(Duration::from_secs(5), early_ran)
            .await
            .expect("the earlier task waited behind the later one")
            .expect("dropped");
        assert!(cancel(late_key).is_some(), "the later task started early");
    }

    #[tokio::test]
    async fn a_cancelled_task_never_starts_and_lets_go_of_what_it_holds() {
        let held = Arc::new(());
        let (ran, mut ran_rx) = tokio::sync::oneshot::channel::<()>();
        let task: Task = {
            let held = held.clone();
            Box::pin(async move {
                let _held = held;
                let _ = ran.send(());
            })
        };
        let key = defer(Instant::now() + Duration::from_millis(100), task).expect("filed");
        drop(cancel(key).expect("still filed"));
        assert_eq!(Arc::strong_count(&held), 1, "the cancelled task still holds its grant");
        assert!(cancel(key).is_none(), "cancelled twice");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(ran_rx.try_recv().is_err(), "a cancelled task ran");
    }

    #[tokio::test]
    async fn start_now_starts_a_filed_task_at_once() {
        let (task, ran) = reporting_task();
        let key = defer(Instant::now() + Duration::from_secs(3600), task).expect("filed");
        start_now(key);
        tokio::time::timeout(Duration::from_secs(5), ran).await.expect("never started").expect("dropped");
    }
}
