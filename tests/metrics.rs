//! Every acquisition is counted: the metrics facade sees grants, timeouts,
//! releases and losses, labelled with the backend.
//!
//! (The tracing test lives in its own binary: tracing caches callsite
//! interest process-wide, and a test running without a subscriber at the
//! same time would hide the spans.)

use std::collections::HashMap;

mod common;

use common::scenario;
use lockman::{MemoryLockManager, metrics as names};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn metrics_count_grants_timeouts_releases_and_losses() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(scenario(&MemoryLockManager::default()));
    });
    let mut counters = HashMap::new();
    let mut histograms = HashMap::new();
    let mut gauges = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<_> = key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
        assert_eq!(labels, [("backend".to_owned(), "memory".to_owned())], "{key:?}");
        let name = key.key().name().to_owned();
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(samples) => {
                histograms.insert(name, samples.len());
            }
            DebugValue::Gauge(g) => {
                gauges.insert(name, g.into_inner());
            }
        }
    }
    assert_eq!(counters.get(names::ACQUIRED), Some(&2));
    assert_eq!(counters.get(names::TIMED_OUT), Some(&1));
    assert_eq!(counters.get(names::CONTENDED), Some(&1));
    assert_eq!(counters.get(names::RELEASED), Some(&1));
    assert_eq!(counters.get(names::LOST), Some(&1));
    assert_eq!(histograms.get(names::WAIT_SECONDS), Some(&3), "two grants and one timeout waited");
    assert_eq!(histograms.get(names::HOLD_SECONDS), Some(&2));
    assert_eq!(gauges.get(names::ACTIVE_LOCKS), Some(&0.0), "the active-locks gauge leaks");
}

/// A grant whose release never runs (here a blocking release refused inside
/// a runtime, as a `release()` future cancelled by a timeout would be) still
/// leaves the active-locks gauge when it is dropped.
#[test]
fn a_grant_dropped_unreleased_leaves_the_active_gauge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}?mode=lease", dir.path().display());
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let locks = lockman::blocking::connect(&url).expect("connect").locks;
        let guard = locks.lock("unreleased").expect("lock");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            guard.release().expect_err("a blocking release inside a runtime is refused, so it never runs");
        });
    });
    let active = snapshotter.snapshot().into_vec().into_iter().find_map(|(key, _, _, value)| match value {
        DebugValue::Gauge(g) if key.key().name() == names::ACTIVE_LOCKS => Some(g.into_inner()),
        _ => None,
    });
    assert_eq!(active, Some(0.0), "the active-locks gauge kept a grant whose release never ran");
}
