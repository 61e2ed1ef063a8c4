//! The backend's clock: tokio's, so leases and flag TTLs follow a paused
//! test clock (`tokio::time::pause()`, `#[tokio::test(start_paused = true)]`)
//! exactly as acquire timeouts do. Outside a runtime, and in a runtime whose
//! clock is not paused, tokio's clock is the monotonic system clock.
//!
//! Wall-clock times shown to people ([`LockInfo`](lockman_core::LockInfo),
//! [`FlagInfo`](lockman_core::FlagInfo)) are derived when they are read: the
//! system time now, moved by how far the instant is from tokio's now. So a
//! lock taken 5 virtual seconds ago reads as acquired 5 s ago, and the
//! "held for" in a timeout message is the virtual time it was held.

use std::time::SystemTime;

pub(crate) use tokio::time::Instant;

/// Tokio's now.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Reads monotonic instants as wall-clock times, against one reading of both
/// clocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wall {
    now: Instant,
    wall_now: SystemTime,
}

impl Wall {
    /// Both clocks, now.
    pub(crate) fn now() -> Self {
        Wall { now: now(), wall_now: SystemTime::now() }
    }

    /// The monotonic reading this was taken with.
    pub(crate) fn instant(&self) -> Instant {
        self.now
    }

    /// The wall-clock time of `at`. A time too far to represent reads as
    /// the current time (it is only shown, never decided on).
    pub(crate) fn of(&self, at: Instant) -> SystemTime {
        let moved = if at >= self.now {
            self.wall_now.checked_add(at - self.now)
        } else {
            self.wall_now.checked_sub(self.now - at)
        };
        moved.unwrap_or(self.wall_now)
    }
}
