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

    /// One recorder lookup per lock event, however many series it touches.
    fn with(record: impl FnOnce(&dyn metrics::Recorder)) {
        metrics::with_recorder(record);
    }

    pub(crate) fn acquired(&self, waited: Duration, contended: bool) {
        Self::with(|r| {
            r.register_counter(&self.acquired, &METADATA).increment(1);
            if contended {
                r.register_counter(&self.contended, &METADATA).increment(1);
            }
            r.register_histogram(&self.wait, &METADATA).record(waited.as_secs_f64());
            r.register_gauge(&self.active, &METADATA).increment(1.0);
        });
    }

    pub(crate) fn timed_out(&self, waited: Duration) {
        Self::with(|r| {
            r.register_counter(&self.contended, &METADATA).increment(1);
            r.register_counter(&self.timed_out, &METADATA).increment(1);
            r.register_histogram(&self.wait, &METADATA).record(waited.as_secs_f64());
        });
    }

    pub(crate) fn contended(&self) {
        Self::with(|r| r.register_counter(&self.contended, &METADATA).increment(1));
    }

    pub(crate) fn ended(&self, held: Duration, released: bool) {
        Self::with(|r| {
            if released {
                r.register_counter(&self.released, &METADATA).increment(1);
            }
            r.register_histogram(&self.hold, &METADATA).record(held.as_secs_f64());
            r.register_gauge(&self.active, &METADATA).decrement(1.0);
        });
    }

    pub(crate) fn lost(&self) {
        Self::with(|r| r.register_counter(&self.lost, &METADATA).increment(1));
    }
}
