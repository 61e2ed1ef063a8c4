//! One map per name in the process: named maps are shared (locks and
//! flags), private ones are not, and a named map nobody uses is dropped.

use lockman_core::{AcquireOptions, FlagOptions, LockBackend, LockManager, StatusManager};
use lockman_memory::{MemoryBackend, MemoryLockManager, MemoryStatusManager};

#[tokio::test]
async fn the_same_name_is_one_map_of_locks_and_flags() {
    let first = MemoryBackend::named("shared-maps-one").into_manager();
    let second = MemoryBackend::named("shared-maps-one").into_manager();
    let guard = first.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
    assert!(
        second.try_acquire("inverter_read", AcquireOptions::new()).await.expect("try").is_none(),
        "two managers on the same named map both hold the lock"
    );
    guard.release().await.expect("release");
    assert!(second.try_acquire("inverter_read", AcquireOptions::new()).await.expect("try").is_some());

    let writer = MemoryStatusManager::named("shared-maps-one");
    writer.set(".FCRunning", FlagOptions::new().value("job-1")).await.expect("set");
    let reader = MemoryStatusManager::beside(second.backend());
    let flag = reader.get(".FCRunning").await.expect("get").expect("the flag set through the other manager");
    assert_eq!(flag.value.as_deref(), Some("job-1"));
}

#[tokio::test]
async fn other_names_and_private_maps_are_separate() {
    let a = MemoryBackend::named("shared-maps-a").into_manager();
    let b = MemoryBackend::named("shared-maps-b").into_manager();
    let private = MemoryLockManager::default();
    let also_private = MemoryBackend::new().into_manager();
    let _held = a.acquire("r", AcquireOptions::new()).await.expect("acquire");
    for other in [&b, &private, &also_private] {
        assert!(other.try_acquire("r", AcquireOptions::new()).await.expect("try").is_some(), "maps are shared");
    }
    let private_flags = MemoryStatusManager::beside(private.backend());
    private_flags.set(".F", FlagOptions::new()).await.expect("set");
    assert!(!MemoryStatusManager::new().is_set(".F").await.expect("get"));
    assert!(!MemoryStatusManager::named("shared-maps-a").is_set(".F").await.expect("get"));
    assert_eq!(private.backend().map_name(), None);
    assert_eq!(a.backend().map_name(), Some("shared-maps-a"));
}

#[tokio::test]
async fn a_named_map_nobody_uses_is_dropped() {
    {
        let status = MemoryStatusManager::named("shared-maps-dropped");
        status.set(".F", FlagOptions::new()).await.expect("set");
        let locks = MemoryBackend::named("shared-maps-dropped").into_manager();
        for _ in 0..3 {
            locks.acquire("r", AcquireOptions::new()).await.expect("acquire").release().await.expect("release");
        }
    }
    // Both users are gone: the name starts afresh (fencing tokens count per
    // map, so a new map's first grant is token 1).
    let locks = MemoryBackend::named("shared-maps-dropped").into_manager();
    let guard = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
    assert_eq!(guard.fencing_token().get(), 1, "the old map lives on");
    assert!(!MemoryStatusManager::named("shared-maps-dropped").is_set(".F").await.expect("get"));

    for i in 0..10_000 {
        let name = format!("shared-maps-many-{i}");
        let status = MemoryStatusManager::named(&name);
        status.set(".F", FlagOptions::new()).await.expect("set");
    }
    // Other tests of this binary hold a few maps at the same time.
    assert!(MemoryBackend::named_maps() < 20, "{} named maps kept", MemoryBackend::named_maps());
}
