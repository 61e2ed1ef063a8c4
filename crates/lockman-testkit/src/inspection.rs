//! Looking at locks without taking them: state, list, capabilities.

use std::time::{Duration, SystemTime};

use lockman_core::{AcquireOptions, LockState};

use crate::Harness;
use crate::exclusion::patient;

/// A resource nobody holds is `Available`.
pub async fn state_of_free_resource_is_available(h: &dyn Harness) {
    let locks = h.locks();
    assert_eq!(locks.state("free").await.expect("state"), LockState::Available);
}

/// `state` reports holder, host, pid, purpose, times, lease, token, hold
/// count and backend accurately — the same as the guard's own `info`.
pub async fn state_reports_holder_details(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    let before = SystemTime::now() - Duration::from_millis(5);
    let mut options = patient().holder("poller").purpose("read all registers");
    if caps.leases {
        options = options.lease(Duration::from_secs(60));
    }
    let guard = locks.acquire("inverter_read", options).await.expect("acquire");
    let after = SystemTime::now() + Duration::from_millis(5);
    let LockState::Held(info) = locks.state("inverter_read").await.expect("state") else {
        panic!("a held lock is not reported held");
    };
    assert_eq!(info.resource, "inverter_read");
    assert_eq!(info.holder.name(), "poller", "the name given is not readable in {}", info.holder);
    assert!(info.holder.scope().is_some(), "a holder id given by name is stored unscoped: {}", info.holder);
    assert_eq!(info.hostname, lockman_core::hostname());
    assert_eq!(info.pid, std::process::id());
    assert_eq!(info.purpose.as_deref(), Some("read all registers"));
    assert_eq!(info.fencing_token, guard.fencing_token());
    assert_eq!(info.hold_count, 1);
    assert_eq!(info.backend, locks.name());
    assert!(info.acquired_at >= before && info.acquired_at <= after, "acquired_at {:?} is off", info.acquired_at);
    if caps.leases {
        let expiry = info.lease_expires_at.expect("a leased lock shows its expiry");
        assert!(expiry > after + Duration::from_secs(50) && expiry < after + Duration::from_secs(70));
    }
    let own = guard.info();
    assert_eq!((own.holder, own.fencing_token, own.purpose), (info.holder, info.fencing_token, info.purpose));
    guard.release().await.expect("release");
}

/// `list` shows every held lock, and nothing released.
pub async fn list_shows_every_held_lock(h: &dyn Harness) {
    let locks = h.locks();
    let a = locks.acquire("list-a", patient().purpose("a")).await.expect("acquire a");
    let b = locks.acquire("list-b", patient().purpose("b")).await.expect("acquire b");
    let c = locks.acquire("list-c", patient()).await.expect("acquire c");
    c.release().await.expect("release c");
    let mut listed: Vec<(String, Option<String>)> =
        locks.list().await.expect("list").into_iter().map(|info| (info.resource, info.purpose)).collect();
    listed.sort();
    assert_eq!(listed, vec![("list-a".to_owned(), Some("a".to_owned())), ("list-b".to_owned(), Some("b".to_owned())),]);
    a.release().await.expect("release a");
    b.release().await.expect("release b");
    assert!(locks.list().await.expect("list").is_empty());
}

/// Declared capabilities hang together, and the ones every backend must
/// have are there.
pub async fn capabilities_are_consistent(h: &dyn Harness) {
    let locks = h.locks();
    let caps = locks.capabilities();
    assert!(caps.fencing, "every lockman backend must hand out fencing tokens");
    assert!(!caps.renewal || caps.leases, "renewal without leases: {caps:?}");
    assert!(caps.default_lease.is_none() || caps.leases, "a default lease without leases: {caps:?}");
    assert!(!caps.cross_host || caps.cross_process, "cross-host but not cross-process: {caps:?}");
    if caps.leases {
        let guard = locks
            .acquire("r", AcquireOptions::new().lease(Duration::from_secs(30)))
            .await
            .expect("acquire with a lease");
        assert!(guard.info().lease_expires_at.is_some(), "declares leases but sets none");
    }
}
