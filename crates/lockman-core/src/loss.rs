//! The signal by which a grant is reported lost, from the backend or core.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::{EventSink, FencingToken, HolderId, LostReason};

/// Shared between a guard, core's renewal task and the backend: whoever first
/// sees that a grant is gone calls [`mark_lost`](Self::mark_lost); the guard's
/// [`lost`](crate::LockGuard::lost) future completes and one `Lost` event is
/// emitted.
#[derive(Clone, Debug)]
pub struct LossSignal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    reason: OnceLock<LostReason>,
    notify: Notify,
    /// Set once the holder released the grant: a loss after that is not one.
    released: AtomicBool,
    token: AtomicU64,
    resource: Arc<str>,
    holder: HolderId,
    /// When the grant was made (set once granted). A mutex, not a
    /// `OnceLock`: it is set on every grant's fast path, where a fresh
    /// `OnceLock`'s initialisation is the slower of the two.
    since: Mutex<Option<Instant>>,
    events: EventSink,
}

impl LossSignal {
    /// A signal for a grant of `resource` to `holder`, reporting to `events`.
    pub fn new(resource: Arc<str>, holder: HolderId, events: EventSink) -> Self {
        LossSignal {
            inner: Arc::new(Inner {
                reason: OnceLock::new(),
                notify: Notify::new(),
                released: AtomicBool::new(false),
                token: AtomicU64::new(0),
                resource,
                holder,
                since: Mutex::new(None),
                events,
            }),
        }
    }

    /// Reports the grant lost. Only the first report counts; returns whether
    /// this was it. A grant already released cannot be lost.
    pub fn mark_lost(&self, reason: LostReason) -> bool {
        if self.inner.released.load(Ordering::Acquire) {
            return false;
        }
        if self.inner.reason.set(reason.clone()).is_err() {
            return false;
        }
        tracing::warn!(
            resource = %self.inner.resource,
            holder = %self.inner.holder,
            backend = self.inner.events.backend(),
            %reason,
            "lock lost"
        );
        self.inner.events.meters().lost();
        self.inner.events.lost(
            &self.inner.resource,
            &self.inner.holder,
            self.token(),
            self.inner.since.lock().map(|since| since.elapsed()).unwrap_or_default(),
            &reason,
        );
        self.inner.notify.notify_waiters();
        true
    }

    /// Whether the grant was reported lost.
    pub fn is_lost(&self) -> bool {
        self.inner.reason.get().is_some()
    }

    /// Why the grant was lost, if it was.
    pub fn reason(&self) -> Option<&LostReason> {
        self.inner.reason.get()
    }

    /// Completes when the grant is reported lost.
    pub async fn lost(&self) -> LostReason {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.inner.reason.get() {
                return reason.clone();
            }
            notified.await;
        }
    }

    /// The resource.
    pub fn resource(&self) -> &Arc<str> {
        &self.inner.resource
    }

    /// The holder.
    pub fn holder(&self) -> &HolderId {
        &self.inner.holder
    }

    pub(crate) fn granted(&self, token: FencingToken, at: Instant) {
        self.inner.token.store(token.get(), Ordering::Relaxed);
        *self.inner.since.lock() = Some(at);
    }

    fn token(&self) -> FencingToken {
        FencingToken::new(self.inner.token.load(Ordering::Relaxed))
    }

    /// Marks the grant released by its holder; later loss reports are ignored.
    pub(crate) fn mark_released(&self) {
        self.inner.released.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_lost_event_reports_how_long_the_grant_was_held() {
        let events = EventSink::new("test");
        let mut seen = events.subscribe();
        let signal = LossSignal::new(Arc::from("r"), HolderId::new("h"), events);
        let granted_at = Instant::now() - Duration::from_secs(5);
        signal.granted(FencingToken::new(7), granted_at);
        assert!(signal.mark_lost(LostReason::LeaseExpired));
        let event = seen.try_recv().expect("a Lost event");
        let held = event.held.expect("a held time");
        assert!(held >= Duration::from_secs(5) && held < Duration::from_secs(60), "held {held:?}");
        assert_eq!(event.fencing_token, Some(FencingToken::new(7)));
    }

    #[test]
    fn a_signal_lost_before_its_grant_reports_no_held_time() {
        let events = EventSink::new("test");
        let mut seen = events.subscribe();
        let signal = LossSignal::new(Arc::from("r"), HolderId::new("h"), events);
        assert!(signal.mark_lost(LostReason::LeaseExpired));
        assert_eq!(seen.try_recv().expect("a Lost event").held, Some(Duration::ZERO));
    }
}
