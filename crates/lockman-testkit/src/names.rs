//! Names: hostile ones are distinct resources or refused, never confused.

use lockman_core::{AcquireOptions, LockError, LockGuard};

use crate::Harness;
use crate::exclusion::patient;

/// The names PRODUCT.md calls out, plus near-collisions of each other.
pub fn hostile_names() -> Vec<String> {
    vec![
        "../../etc/passwd".to_owned(),
        "..".to_owned(),
        ".".to_owned(),
        "/".to_owned(),
        "a/b".to_owned(),
        "a_b".to_owned(),
        "a%2Fb".to_owned(),
        "a\\b".to_owned(),
        "inverter read".to_owned(),
        "zürich-🔒".to_owned(),
        "Zürich-🔒".to_owned(),
        ".lockfile".to_owned(),
        "con".to_owned(),
        "x".repeat(300),
        "x".repeat(301),
        "tab\there".to_owned(),
        "line\nbreak".to_owned(),
        "*".to_owned(),
        "{braces}".to_owned(),
    ]
}

/// Every hostile name is either refused with `InvalidName` or works as a
/// resource of its own: holding all the accepted ones at once succeeds, and
/// each shows up under its own name.
pub async fn hostile_names_are_distinct_or_invalid(h: &dyn Harness) {
    let locks = h.locks();
    let mut held: Vec<(String, LockGuard)> = Vec::new();
    for name in hostile_names() {
        match locks.try_acquire(&name, AcquireOptions::new()).await {
            Ok(Some(guard)) => held.push((name, guard)),
            Ok(None) => panic!("{name:?} collides with a name acquired before it"),
            Err(LockError::InvalidName { .. }) => {}
            Err(e) => panic!("{name:?}: expected a grant or InvalidName, got {e}"),
        }
    }
    for (name, guard) in &held {
        assert_eq!(guard.resource(), name);
        let state = locks.state(name).await.expect("state");
        assert_eq!(state.info().map(|i| i.fencing_token), Some(guard.fencing_token()), "{name:?} reads back wrong");
    }
    let mut listed: Vec<String> = locks.list().await.expect("list").into_iter().map(|i| i.resource).collect();
    listed.sort();
    let mut expected: Vec<String> = held.iter().map(|(name, _)| name.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected, "list does not give back the names as acquired");
}

/// `Lock` and `lock` are two resources, even on case-insensitive storage.
pub async fn names_differing_in_case_are_distinct(h: &dyn Harness) {
    let locks = h.locks();
    let _upper = locks.acquire("Inverter_Read", patient()).await.expect("acquire");
    let lower = locks.try_acquire("inverter_read", AcquireOptions::new()).await.expect("try");
    assert!(lower.is_some(), "names differing only in case share a lock");
}

/// Empty names and names with NUL bytes are refused everywhere, with a
/// message that says why.
pub async fn empty_and_nul_names_are_invalid(h: &dyn Harness) {
    let locks = h.locks();
    for name in ["", "a\0b", &"y".repeat(lockman_core::MAX_NAME_LEN + 1)] {
        let err = locks.acquire(name, AcquireOptions::new().no_wait()).await.expect_err("a bad name was accepted");
        assert!(matches!(err, LockError::InvalidName { .. }), "{name:?}: expected InvalidName, got {err}");
        assert!(matches!(locks.state(name).await, Err(LockError::InvalidName { .. })));
        assert!(!err.to_string().is_empty());
    }
}
