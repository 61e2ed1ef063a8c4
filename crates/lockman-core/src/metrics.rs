//! Metric names and the calls that record them, through the `metrics` facade.
//!
//! Nothing is recorded unless the application installs a recorder (for
//! example `metrics-exporter-prometheus`). Every series carries a `backend`
//! label. Keys are built once per manager and looked up in the recorder per
//! event, so a recorder installed after the manager was created still sees
//! everything, and nothing is allocated per lock operation.

use std::time::Duration;

use metrics::{Key, Label, Level, Metadata};

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

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// One manager's metric keys.
#[derive(Debug)]
pub(crate) struct Meters {
    acquired: Key,
    contended: Key,
    timed_out: Key,
    released: Key,
    lost: Key,
    wait: Key,
    hold: Key,
    active: Key,
}

impl Meters {
    pub(crate) fn new(backend: &str) -> Self {
        let key = |name: &'static str| Key::from_parts(name, vec![Label::new("backend", backend.to_owned())]);
        Meters {
            acquired: key(ACQUIRED),
            contended: key(CONTENDED),
            timed_out: key(TIMED_OUT),
            released: key(RELEASED),
            lost: key(LOST),
            wait: key(WAIT_SECONDS),
            hold: key(HOLD_SECONDS),
            active: key(ACTIVE_LOCKS),
        }
    }

    fn count(key: &Key) {
        metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(1));
    }

    fn record(key: &Key, value: Duration) {
        metrics::with_recorder(|recorder| recorder.register_histogram(key, &METADATA).record(value.as_secs_f64()));
    }

    fn shift(key: &Key, delta: f64) {
        metrics::with_recorder(|recorder| recorder.register_gauge(key, &METADATA).increment(delta));
    }

    pub(crate) fn acquired(&self, waited: Duration, contended: bool) {
        Self::count(&self.acquired);
        if contended {
            Self::count(&self.contended);
        }
        Self::record(&self.wait, waited);
        Self::shift(&self.active, 1.0);
    }

    pub(crate) fn timed_out(&self, waited: Duration) {
        Self::count(&self.contended);
        Self::count(&self.timed_out);
        Self::record(&self.wait, waited);
    }

    pub(crate) fn contended(&self) {
        Self::count(&self.contended);
    }

    pub(crate) fn ended(&self, held: Duration, released: bool) {
        if released {
            Self::count(&self.released);
        }
        Self::record(&self.hold, held);
        Self::shift(&self.active, -1.0);
    }

    pub(crate) fn lost(&self) {
        Self::count(&self.lost);
    }
}
