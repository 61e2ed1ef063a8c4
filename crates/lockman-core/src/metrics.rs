//! Metric names and the calls that record them, through the `metrics` facade.
//!
//! Nothing is recorded unless the application installs a recorder (for
//! example `metrics-exporter-prometheus`). Every series carries a `backend`
//! label.

use std::time::Duration;

/// Counter: new grants.
pub const ACQUIRED: &str = "lockman_acquired_total";
/// Counter: acquisitions that found the resource held and had to wait or fail.
pub const CONTENDED: &str = "lockman_contended_total";
/// Counter: acquisitions that gave up waiting.
pub const TIMED_OUT: &str = "lockman_timed_out_total";
/// Counter: grants released by their holder.
pub const RELEASED: &str = "lockman_released_total";
/// Counter: grants lost before release.
pub const LOST: &str = "lockman_lost_total";
/// Histogram (seconds): how long acquisitions waited.
pub const WAIT_SECONDS: &str = "lockman_wait_seconds";
/// Histogram (seconds): how long grants were held.
pub const HOLD_SECONDS: &str = "lockman_hold_seconds";
/// Gauge: grants currently held through this process.
pub const ACTIVE_LOCKS: &str = "lockman_active_locks";

pub(crate) fn acquired(backend: &'static str, waited: Duration, contended: bool) {
    metrics::counter!(ACQUIRED, "backend" => backend).increment(1);
    if contended {
        metrics::counter!(CONTENDED, "backend" => backend).increment(1);
    }
    metrics::histogram!(WAIT_SECONDS, "backend" => backend).record(waited.as_secs_f64());
    metrics::gauge!(ACTIVE_LOCKS, "backend" => backend).increment(1.0);
}

pub(crate) fn timed_out(backend: &'static str, waited: Duration) {
    metrics::counter!(CONTENDED, "backend" => backend).increment(1);
    metrics::counter!(TIMED_OUT, "backend" => backend).increment(1);
    metrics::histogram!(WAIT_SECONDS, "backend" => backend).record(waited.as_secs_f64());
}

pub(crate) fn contended(backend: &'static str) {
    metrics::counter!(CONTENDED, "backend" => backend).increment(1);
}

pub(crate) fn ended(backend: &'static str, held: Duration, released: bool) {
    if released {
        metrics::counter!(RELEASED, "backend" => backend).increment(1);
    }
    metrics::histogram!(HOLD_SECONDS, "backend" => backend).record(held.as_secs_f64());
    metrics::gauge!(ACTIVE_LOCKS, "backend" => backend).decrement(1.0);
}

pub(crate) fn lost(backend: &str) {
    metrics::counter!(LOST, "backend" => backend.to_owned()).increment(1);
}
