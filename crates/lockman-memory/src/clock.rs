//! The backend's clock: tokio's, so leases and flag TTLs follow a paused
//! test clock (`tokio::time::pause()`, `#[tokio::test(start_paused = true)]`)
//! exactly as acquire timeouts do. Outside a runtime, and in a runtime whose
//! clock is not paused, tokio's clock is the monotonic system clock.
//!
//! Wall-clock times shown to people ([`LockInfo`](lockman_core::LockInfo),
//! [`FlagInfo`](lockman_core::FlagInfo)) are derived when they are read,
//! against a pairing of tokio's clock with the system clock that is renewed
//! when the two move apart: so a lock taken 5 virtual seconds ago reads as
//! acquired 5 s ago, and the "held for" in a timeout message is the virtual
//! time it was held, while two reads of the same lock agree.

use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

pub(crate) use tokio::time::Instant;

/// Tokio's now.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// How far the two clocks may move apart before [`Clock`] reads instants
/// against a new pairing of them. Below it, the same instant always reads as
/// the same wall-clock time (two inspections of a lock agree); above it (a
/// paused clock moved on, the system clock was set), shown times follow.
const DRIFT: Duration = Duration::from_millis(10);

/// One map's pairing of tokio's clock with the system clock.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    anchor: Mutex<Option<Anchor>>,
}

#[derive(Clone, Copy, Debug)]
struct Anchor {
    pair: (Instant, SystemTime),
    /// When (on tokio's clock) the pairing was last checked against the
    /// system clock.
    checked: Instant,
}

impl Clock {
    /// Both clocks, now, paired as this map last paired them unless they
    /// have moved apart by more than [`DRIFT`].
    ///
    /// The pairing is checked against the system clock once per [`DRIFT`]
    /// of tokio's clock, not on every call: a grant reads one clock, not
    /// two. A step of the system clock shows within [`DRIFT`]; a paused
    /// clock that is advanced is checked as soon as it moved that far.
    pub(crate) fn wall(&self) -> Wall {
        self.wall_at(now())
    }

    /// [`wall`](Self::wall) with `at`, read a moment ago, as its now. A new
    /// pairing is made with fresh readings of both clocks, never with `at`.
    pub(crate) fn wall_at(&self, at: Instant) -> Wall {
        let mut anchor = self.anchor.lock();
        if let Some(kept) = *anchor
            && at >= kept.checked
            && at - kept.checked < DRIFT
        {
            return Wall { now: at, anchor: kept.pair };
        }
        let (now, wall_now) = (now(), SystemTime::now());
        let kept = anchor.map(|kept| kept.pair).filter(|&pair| {
            let mapped = Wall { now, anchor: pair }.of(now);
            let apart = match mapped.duration_since(wall_now) {
                Ok(ahead) => ahead,
                Err(behind) => behind.duration(),
            };
            apart <= DRIFT
        });
        let pair = kept.unwrap_or((now, wall_now));
        *anchor = Some(Anchor { pair, checked: now });
        Wall { now: at, anchor: pair }
    }
}

/// Reads monotonic instants as wall-clock times.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wall {
    now: Instant,
    anchor: (Instant, SystemTime),
}

impl Wall {
    /// The monotonic reading this was taken with.
    pub(crate) fn instant(&self) -> Instant {
        self.now
    }

    /// The wall-clock time of `at`. A time too far to represent reads as
    /// the anchor's (it is only shown, never decided on).
    pub(crate) fn of(&self, at: Instant) -> SystemTime {
        let (base, wall) = self.anchor;
        let moved = if at >= base { wall.checked_add(at - base) } else { wall.checked_sub(base - at) };
        moved.unwrap_or(wall)
    }
}
