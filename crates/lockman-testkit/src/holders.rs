//! How far a holder id reaches: a name given with `holder` is scoped to its
//! manager (two managers or processes using it exclude each other, on every
//! backend); one given with `shared_holder` is the same holder everywhere.

use std::time::Duration;

use lockman_core::{AcquireOptions, LockState};

use crate::Harness;
use crate::exclusion::patient;

/// Two managers over one store, both acquiring with the same holder name
/// (the quickstart's `.holder("force-charge")` copied into two daemons):
/// the second is excluded while the first holds, and gets in once it is
/// released.
pub async fn same_holder_in_two_managers_excludes(h: &dyn Harness) {
    let Some(second) = h.second_locks() else {
        eprintln!("SKIPPED: the harness has no second manager over the same store");
        return;
    };
    let first = h.locks();
    let held = first.acquire("r", patient().holder("force-charge")).await.expect("first manager acquires");
    let intruder = second
        .try_acquire("r", AcquireOptions::new().holder("force-charge"))
        .await
        .expect("second manager's try_acquire");
    if let Some(intruder) = intruder {
        let (a, b) = (held.info(), intruder.info());
        panic!(
            "two managers using holder id \"force-charge\" both hold the lock: {} (token {}, hold count {}) and {} \
             (token {}, hold count {})",
            a.holder, a.fencing_token, a.hold_count, b.holder, b.fencing_token, b.hold_count
        );
    }
    let err = second
        .acquire("r", AcquireOptions::new().holder("force-charge").timeout(Duration::from_millis(50)))
        .await
        .expect_err("second manager's acquire with the first's holder id got in");
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    // Both managers still re-enter their own grants only: the first one can.
    let nested =
        first.acquire("r", AcquireOptions::new().no_wait().holder("force-charge")).await.expect("first re-enters");
    assert_eq!(nested.info().hold_count, 2);
    nested.release().await.expect("release nested");
    held.release().await.expect("release");
    let taken = second
        .acquire("r", patient().holder("force-charge"))
        .await
        .expect("the second manager gets the lock once the first released it");
    assert_eq!(taken.info().hold_count, 1, "the second manager re-entered a grant instead of taking its own");
    taken.release().await.expect("release");
}

/// A holder name is stored with its manager's scope, and two managers'
/// scopes differ: `lockctl list` can tell their holds apart, and the name
/// given stays readable.
pub async fn holder_name_is_scoped_to_its_manager(h: &dyn Harness) {
    let locks = h.locks();
    let guard = locks.acquire("r", patient().holder("poller")).await.expect("acquire");
    let holder = guard.info().holder;
    assert_eq!(holder.name(), "poller");
    let scope = holder.scope().expect("a holder given by name carries its manager's scope").to_owned();
    assert!(!holder.is_shared());
    match locks.state("r").await.expect("state") {
        LockState::Held(info) => assert_eq!(info.holder, holder, "state shows another holder than the guard"),
        other => panic!("expected held, got {other:?}"),
    }
    guard.release().await.expect("release");
    if let Some(second) = h.second_locks() {
        let other = second.acquire("r", patient().holder("poller")).await.expect("second acquires");
        assert_ne!(other.info().holder.scope(), Some(&*scope), "two managers got one scope");
        other.release().await.expect("release");
    }
}

/// The opt-in: two managers acquiring with one *shared* holder id are one
/// holder. On a backend declaring `shared_holders` both get in, sharing one
/// grant (same token) that is free once both released; on the others they
/// exclude each other like any two holders.
pub async fn shared_holder_in_two_managers_follows_capability(h: &dyn Harness) {
    let Some(second) = h.second_locks() else {
        eprintln!("SKIPPED: the harness has no second manager over the same store");
        return;
    };
    let first = h.locks();
    let caps = first.capabilities();
    let a = first.acquire("r", patient().shared_holder("backup-job")).await.expect("first manager acquires");
    assert!(a.info().holder.is_shared());
    assert_eq!(a.info().holder.as_str(), "backup-job", "a shared holder id is stored as given");
    let b = second.try_acquire("r", AcquireOptions::new().shared_holder("backup-job")).await.expect("try_acquire");
    if !caps.shared_holders {
        assert!(b.is_none(), "the backend does not declare shared_holders, yet a second manager shared the grant");
        a.release().await.expect("release");
        return;
    }
    let b = b.expect("a backend declaring shared_holders excluded the same shared holder in a second manager");
    assert_eq!(a.fencing_token(), b.fencing_token(), "a shared holder got two grants");
    // Anyone else is still excluded.
    let other = second.try_acquire("r", AcquireOptions::new().holder("backup-job")).await.expect("try");
    assert!(other.is_none(), "a scoped holder of the same name got into a shared holder's grant");
    a.release().await.expect("release first hold");
    assert!(first.state("r").await.expect("state").is_held(), "freed while the second hold lives");
    b.release().await.expect("release second hold");
    assert_eq!(first.state("r").await.expect("state"), LockState::Available);
}
