//! The stream of lock events every manager publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::metrics::Meters;
use crate::{FencingToken, HolderId, LostReason};

/// What happened to a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LockEventKind {
    /// A new grant (re-entries do not emit).
    Locked,
    /// The last guard of a grant released it.
    Released,
    /// An `acquire` gave up waiting.
    TimedOut,
    /// A guard's lock was lost (see [`LockEvent::reason`]).
    Lost,
    /// Someone broke a lock with `force_release`.
    ForceReleased,
    /// A stale lock (dead holder, expired lease) was broken.
    StaleBroken,
}

impl LockEventKind {
    /// A stable lowercase name (`locked`, `released`, `timed_out`, `lost`,
    /// `force_released`, `stale_broken`), the same as its serde name: for
    /// logs, metrics labels and machine-readable output.
    pub const fn as_str(self) -> &'static str {
        match self {
            LockEventKind::Locked => "locked",
            LockEventKind::Released => "released",
            LockEventKind::TimedOut => "timed_out",
            LockEventKind::Lost => "lost",
            LockEventKind::ForceReleased => "force_released",
            LockEventKind::StaleBroken => "stale_broken",
        }
    }
}

impl std::fmt::Display for LockEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event in a manager's [`events`](crate::LockManager::events) stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockEvent {
    /// What happened.
    pub kind: LockEventKind,
    /// The resource.
    pub resource: String,
    /// The backend.
    pub backend: String,
    /// The holder concerned (the new holder for `Locked`, the old one otherwise).
    pub holder: Option<HolderId>,
    /// The grant's fencing token, when known.
    pub fencing_token: Option<FencingToken>,
    /// How long the caller waited (`Locked`, `TimedOut`).
    pub waited: Option<Duration>,
    /// How long the lock was held (`Released`, `Lost`).
    pub held: Option<Duration>,
    /// Why (`Lost`, `ForceReleased`, `StaleBroken`).
    pub reason: Option<String>,
    /// When it happened.
    pub at: SystemTime,
}

impl LockEvent {
    /// An event of `kind` on `resource`, now, with no details.
    pub fn new(kind: LockEventKind, resource: impl Into<String>, backend: impl Into<String>) -> Self {
        LockEvent {
            kind,
            resource: resource.into(),
            backend: backend.into(),
            holder: None,
            fencing_token: None,
            waited: None,
            held: None,
            reason: None,
            at: SystemTime::now(),
        }
    }

    /// Sets the holder.
    pub fn with_holder(mut self, holder: HolderId) -> Self {
        self.holder = Some(holder);
        self
    }

    /// Sets the fencing token.
    pub fn with_token(mut self, token: FencingToken) -> Self {
        self.fencing_token = Some(token);
        self
    }

    /// Sets the reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Receives a manager's [`LockEvent`]s: with [`recv`](Self::recv), or as a
/// [`Stream`](futures_core::Stream) of events.
///
/// Locking is never slowed down by a slow listener: a receiver that falls
/// more than [`EventSink::CAPACITY`] events behind skips ahead, and
/// [`recv`](Self::recv) says how many it missed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockman_core::LockError> {
/// use lockman_core::{EventSink, LockEvent, LockEventKind};
///
/// let sink = EventSink::new("memory");
/// let mut events = sink.subscribe();
/// sink.send(LockEvent::new(LockEventKind::Locked, "inverter_read", "memory"));
/// let event = events.recv().await.expect("an event");
/// assert_eq!(event.kind.as_str(), "locked");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LockEvents {
    stream: tokio_stream::wrappers::BroadcastStream<LockEvent>,
    /// Counts this receiver in its sink while it lives.
    _counted: Subscribed,
}

/// One live receiver, counted in [`SinkInner::receivers`]: asking the
/// broadcast channel itself takes its lock, twice per lock cycle.
#[derive(Debug)]
struct Subscribed(Arc<AtomicUsize>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Why [`LockEvents::recv`] returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// This receiver fell behind and `0` events were skipped; the next
    /// `recv` goes on with the oldest event still kept.
    #[error("fell behind: {0} lock events were skipped")]
    Lagged(u64),
    /// The manager and every guard are gone: no event will come.
    #[error("the lock event stream is closed")]
    Closed,
}

impl LockEvents {
    /// The next event, waiting for one.
    ///
    /// # Errors
    ///
    /// [`EventsError::Lagged`] once after events were skipped,
    /// [`EventsError::Closed`] when none can come any more.
    pub async fn recv(&mut self) -> Result<LockEvent, EventsError> {
        use tokio_stream::StreamExt as _;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        match self.stream.next().await {
            Some(Ok(event)) => Ok(event),
            Some(Err(BroadcastStreamRecvError::Lagged(missed))) => Err(EventsError::Lagged(missed)),
            None => Err(EventsError::Closed),
        }
    }

    /// The next event if one is already waiting (skipping past any that
    /// were missed), without waiting.
    pub fn try_recv(&mut self) -> Option<LockEvent> {
        use futures_core::Stream as _;
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        loop {
            match std::pin::Pin::new(&mut self.stream).poll_next(&mut context) {
                std::task::Poll::Ready(Some(Ok(event))) => return Some(event),
                std::task::Poll::Ready(Some(Err(_lagged))) => continue,
                std::task::Poll::Ready(None) | std::task::Poll::Pending => return None,
            }
        }
    }
}

/// Every event in order; events a slow reader missed are skipped (and
/// logged at debug level).
impl futures_core::Stream for LockEvents {
    type Item = LockEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<LockEvent>> {
        loop {
            match std::pin::Pin::new(&mut self.stream).poll_next(context) {
                std::task::Poll::Ready(Some(Err(lagged))) => {
                    tracing::debug!(error = %lagged, "a lock event stream fell behind; events were skipped");
                }
                std::task::Poll::Ready(Some(Ok(event))) => return std::task::Poll::Ready(Some(event)),
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }
}

/// The sending side of a manager's event stream, shared by the manager, its
/// guards and its backend (which reports events it alone can see, such as a
/// stale lock it broke). Also carries the manager's metric keys.
#[derive(Clone, Debug)]
pub struct EventSink {
    inner: Arc<SinkInner>,
}

#[derive(Debug)]
struct SinkInner {
    sender: broadcast::Sender<LockEvent>,
    /// Live [`LockEvents`]; an `Arc` of its own, so receivers do not keep
    /// the sender (and so their stream) alive.
    receivers: Arc<AtomicUsize>,
    backend: Arc<str>,
    meters: Meters,
}

impl EventSink {
    /// Capacity of the broadcast channel.
    pub const CAPACITY: usize = 1024;

    /// A new sink for `backend`.
    pub fn new(backend: &str) -> Self {
        let (sender, _) = broadcast::channel(Self::CAPACITY);
        EventSink {
            inner: Arc::new(SinkInner {
                sender,
                receivers: Arc::new(AtomicUsize::new(0)),
                backend: backend.into(),
                meters: Meters::new(backend),
            }),
        }
    }

    /// A new receiver of every event sent from now on.
    pub fn subscribe(&self) -> LockEvents {
        self.inner.receivers.fetch_add(1, Ordering::AcqRel);
        let counted = Subscribed(self.inner.receivers.clone());
        LockEvents {
            stream: tokio_stream::wrappers::BroadcastStream::new(self.inner.sender.subscribe()),
            _counted: counted,
        }
    }

    /// Whether an event would reach anyone (a receiver, or a debug log).
    pub fn is_observed(&self) -> bool {
        self.inner.receivers.load(Ordering::Acquire) > 0 || tracing::enabled!(tracing::Level::DEBUG)
    }

    /// Publishes `event` to every receiver (none is fine) and logs it.
    pub fn send(&self, event: LockEvent) {
        tracing::debug!(
            kind = event.kind.as_str(),
            resource = %event.resource,
            backend = %event.backend,
            holder = event.holder.as_ref().map(HolderId::as_str),
            reason = event.reason.as_deref(),
            "lock event"
        );
        let _ = self.inner.sender.send(event);
    }

    /// Builds and sends an event of `kind` on `resource` — only if someone
    /// observes events, so unobserved lock operations pay nothing for them.
    pub fn emit(&self, kind: LockEventKind, resource: &str, details: impl FnOnce(LockEvent) -> LockEvent) {
        if self.is_observed() {
            self.send(details(self.event(kind, resource)));
        }
    }

    /// An event of `kind` on `resource` for this sink's backend.
    pub fn event(&self, kind: LockEventKind, resource: &str) -> LockEvent {
        LockEvent::new(kind, resource, &*self.inner.backend)
    }

    /// The backend name events are stamped with.
    pub fn backend(&self) -> &str {
        &self.inner.backend
    }

    pub(crate) fn meters(&self) -> &Meters {
        &self.inner.meters
    }

    /// Emits a `Lost` event.
    pub(crate) fn lost(
        &self,
        resource: &str,
        holder: &HolderId,
        token: FencingToken,
        held: Duration,
        reason: &LostReason,
    ) {
        self.emit(LockEventKind::Lost, resource, |mut event| {
            event.held = Some(held);
            event.with_holder(holder.clone()).with_token(token).with_reason(reason.to_string())
        });
    }
}
