//! Flags: set, clear, values, TTLs, listing and one-shot consumption.

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{FlagOptions, LockError};

use crate::Harness;

/// A flag reads as set after `set` and as clear after `clear`.
pub async fn flag_set_get_clear(h: &dyn Harness) {
    let status = h.status();
    assert!(!status.is_set(".FCRunning").await.expect("is_set"));
    assert!(status.get(".FCRunning").await.expect("get").is_none());
    status.set(".FCRunning", FlagOptions::new()).await.expect("set");
    assert!(status.is_set(".FCRunning").await.expect("is_set"));
    let info = status.get(".FCRunning").await.expect("get").expect("a set flag reads as clear");
    assert_eq!(info.name, ".FCRunning");
    assert_eq!(info.value, None);
    assert_eq!(info.expires_at, None, "a flag set without a TTL shows an expiry");
    assert_eq!(info.backend, status.name());
    assert!(status.clear(".FCRunning").await.expect("clear"), "clear did not find a set flag");
    assert!(!status.clear(".FCRunning").await.expect("clear"), "clear found a cleared flag");
    assert!(!status.is_set(".FCRunning").await.expect("is_set"));
}

/// Values come back byte for byte, including the v3 two-line form with no
/// trailing newline; setting again replaces the value.
pub async fn flag_value_round_trips(h: &dyn Harness) {
    let status = h.status();
    for value in ["job-42\n14:30", "", "ünïcode ✓", "trailing\n"] {
        status.set(".FCRunning1", FlagOptions::new().value(value)).await.expect("set");
        let info = status.get(".FCRunning1").await.expect("get").expect("set flag");
        assert_eq!(info.value.as_deref(), Some(value));
    }
    status.set(".FCRunning1", FlagOptions::new()).await.expect("set without value");
    let info = status.get(".FCRunning1").await.expect("get").expect("set flag");
    assert_eq!(info.value, None, "setting without a value kept the old one");
}

/// A flag with a TTL clears itself; one without stays.
pub async fn flag_ttl_expires(h: &dyn Harness) {
    let status = h.status();
    status.set("short", FlagOptions::new().ttl(Duration::from_millis(80))).await.expect("set");
    status.set("long", FlagOptions::new().ttl(Duration::from_secs(60))).await.expect("set");
    status.set("forever", FlagOptions::new()).await.expect("set");
    let short = status.get("short").await.expect("get").expect("set flag");
    assert!(short.expires_at.is_some());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!status.is_set("short").await.expect("is_set"), "the TTL did not expire");
    assert!(status.is_set("long").await.expect("is_set"));
    assert!(status.is_set("forever").await.expect("is_set"));
    let names: Vec<String> = status.list().await.expect("list").into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["forever", "long"], "an expired flag is listed");
}

/// `list` returns every set flag, sorted by name.
pub async fn flag_list_is_sorted_and_complete(h: &dyn Harness) {
    let status = h.status();
    for name in [".tpdRunning_2", ".FERunning1", ".fullrefresh", ".FCRunning1"] {
        status.set(name, FlagOptions::new().value(name)).await.expect("set");
    }
    status.clear(".fullrefresh").await.expect("clear");
    let listed = status.list().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [".FCRunning1", ".FERunning1", ".tpdRunning_2"]);
    assert!(listed.iter().all(|f| f.value.as_deref() == Some(f.name.as_str())));
}

/// Of many callers racing to consume a one-shot flag, exactly one gets it.
pub async fn flag_take_is_exactly_once(h: &dyn Harness) {
    let status = h.status();
    for _ in 0..10 {
        status.set(".fullrefresh", FlagOptions::new()).await.expect("set");
        let takers: Vec<_> = (0..8)
            .map(|_| {
                let status = Arc::clone(&status);
                tokio::spawn(async move { status.take(".fullrefresh").await })
            })
            .collect();
        let mut winners = 0;
        for taker in takers {
            if taker.await.expect("taker panicked").expect("take").is_some() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "a one-shot flag was consumed {winners} times");
        assert!(!status.is_set(".fullrefresh").await.expect("is_set"));
    }
}

/// Flag names follow the resource name rules.
pub async fn flag_names_are_validated(h: &dyn Harness) {
    let status = h.status();
    for name in ["", "a\0b"] {
        let err = status.set(name, FlagOptions::new()).await.expect_err("a bad flag name was accepted");
        assert!(matches!(err, LockError::InvalidName { .. }), "{name:?}: got {err}");
    }
    match status.set("../../etc/passwd", FlagOptions::new().value("x")).await {
        Err(LockError::InvalidName { .. }) => {}
        Err(e) => panic!("expected success or InvalidName, got {e}"),
        Ok(()) => {
            let listed = status.list().await.expect("list");
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].name, "../../etc/passwd", "the name does not read back as written");
        }
    }
}
