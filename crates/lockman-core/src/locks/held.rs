//! One grant as core keeps it: its guards' hold count, the lease and the
//! tasks that keep it (the watchdog renews it, the expiry timer reports its
//! end), release on drop or on request, and `extend`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Reentry, ReentryKey, Shared, check_lease, watch};
use crate::backend::{GrantRequest, LockBackend};
use crate::guard::GrantHandle;
use crate::{FencingToken, LockError, LockEventKind, LockInfo, LossSignal, LostReason};

/// One grant, shared by the guards of a holder that re-entered it.
pub(super) struct Held<B: LockBackend> {
    pub(super) shared: Arc<Shared<B>>,
    pub(super) grant: B::Grant,
    pub(super) request: GrantRequest,
    pub(super) token: FencingToken,
    pub(super) acquired_at: SystemTime,
    pub(super) acquired: Instant,
    pub(super) lease: Mutex<LeaseState>,
    /// The watchdog renews the lease every third of it.
    pub(super) auto_renew: bool,
    /// A watchdog or expiry timer task watches this grant.
    pub(super) watched: bool,
    /// Live guards; changed under the reentry table lock when `reentrant`.
    pub(super) count: AtomicU32,
    pub(super) reentrant: bool,
    /// Whether the grant ended, and where its watcher waits to start.
    pub(super) keeping: Keeping,
    /// Held while renewing, so a release never races a renewal.
    pub(super) renew_gate: tokio::sync::Mutex<()>,
    /// Told (one permit) when `extend` changed the lease, so the watchdog or
    /// expiry timer re-arms for the new length instead of the old one.
    pub(super) lease_changed: Notify,
    /// Set by [`conclude`](Held::conclude); a grant dropped without it (its
    /// release cancelled or never run) still counts as ended in the metrics.
    pub(super) concluded: AtomicBool,
}

impl<B: LockBackend> Drop for Held<B> {
    fn drop(&mut self) {
        if !self.concluded.load(Ordering::Acquire) {
            tracing::debug!(
                resource = %self.request.resource,
                backend = self.shared.name,
                "a grant was dropped without its release finishing"
            );
            self.shared.events.meters().ended(self.acquired.elapsed(), false);
        }
    }
}

/// Whether a grant has ended, told to its watchdog or expiry timer, and
/// where that waits to start (see `watch`). A dropped guard's release task
/// ends it if the task is dropped part-way (its runtime shut down): the
/// store's lease then runs out instead of being renewed forever for a guard
/// nobody holds. Inside the grant, not beside it: most grants (in-process,
/// kernel locks) have no watcher, and a separate allocation per grant cost
/// them for nothing.
#[derive(Default)]
pub(super) struct Keeping {
    ended: AtomicBool,
    ended_notify: Notify,
    pub(super) deferred_watch: Mutex<Option<watch::Key>>,
}

impl Keeping {
    pub(super) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Ends it: a running watcher returns, a deferred one never starts.
    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ended_notify.notify_waiters();
        let deferred = self.deferred_watch.lock().take();
        // Dropped here, unstarted, outside the scheduler's lock.
        drop(deferred.and_then(watch::cancel));
    }
}

pub(super) struct LeaseState {
    pub(super) length: Option<Duration>,
    /// The backend's expiry, as shown in [`LockInfo`].
    pub(super) expires_at: Option<SystemTime>,
    /// The same expiry on tokio's clock, which every decision and timer
    /// uses: a paused test clock runs leases out as it runs timeouts out,
    /// and a wall-clock step does not move them.
    pub(super) deadline: Option<Instant>,
    pub(super) last_heartbeat: Option<SystemTime>,
}

/// `expiry` (a backend's wall-clock lease end) on tokio's clock: as far
/// from tokio's now as it is from the system time now.
pub(super) fn deadline_of(expiry: SystemTime) -> Instant {
    let now = Instant::now();
    let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    // Leases are checked to fit the clocks (`check_lease`); this is a
    // backend's own overlong lease, which then never runs out here.
    now.checked_add(left).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

impl<B: LockBackend> Held<B> {
    pub(super) fn loss(&self) -> &LossSignal {
        &self.request.loss
    }

    pub(super) fn is_lost(&self) -> bool {
        if self.loss().is_lost() {
            return true;
        }
        // A lease is over when the clock says so, even if no timer has fired
        // yet (or there is no runtime to run one), and even if the watchdog
        // is still waiting for an answer to its renewal.
        if !self.keeping.has_ended() {
            let expired = self.lease.lock().deadline.is_some_and(|at| at <= Instant::now());
            if expired {
                self.loss().mark_lost(LostReason::LeaseExpired);
                return true;
            }
        }
        false
    }

    /// One guard leaves; true if it was the last.
    pub(super) fn leave(&self) -> bool {
        if !self.reentrant {
            return true;
        }
        let mut table = self.shared.reentry.lock();
        if self.count.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        let key: ReentryKey = (self.request.resource.clone(), self.request.holder.clone());
        if matches!(table.get(&key), Some(Reentry::Held(held)) if std::ptr::eq(Arc::as_ptr(held), self)) {
            table.remove(&key);
        }
        true
    }

    pub(super) fn begin_end(&self) {
        self.is_lost(); // a lease that ran out is reported before we release
        if self.watched {
            self.keeping.end();
        } else {
            self.keeping.ended.store(true, Ordering::Release); // nobody waits to be told
        }
    }

    /// When the watchdog first renews: a third into the lease, or into what
    /// the backend granted if that is less than asked (see
    /// `GrantRequest::renewed`).
    pub(super) fn first_renewal(&self) -> Instant {
        let due = self.acquired + self.lease_length() / 3;
        match self.lease.lock().deadline {
            Some(deadline) => due.min(self.acquired + deadline.saturating_duration_since(self.acquired) / 3),
            None => due,
        }
    }

    /// When the watcher must run: the first renewal, or the lease's end.
    pub(super) fn watch_from(&self) -> Instant {
        if self.auto_renew {
            return self.first_renewal();
        }
        self.lease.lock().deadline.unwrap_or_else(Instant::now)
    }

    /// Turns the backend's release result into the caller's, with events and metrics.
    pub(super) fn conclude(&self, released: Result<(), LockError>) -> Result<(), LockError> {
        self.concluded.store(true, Ordering::Release);
        let held_for = self.acquired.elapsed();
        let result = match (released, self.loss().reason().cloned()) {
            (_, Some(reason)) => Err(self.lost_error(reason)),
            (Ok(()), None) => {
                self.loss().mark_released();
                self.shared.events.emit(LockEventKind::Released, &self.request.resource, |mut event| {
                    event.held = Some(held_for);
                    event.with_holder(self.request.holder.clone()).with_token(self.token)
                });
                Ok(())
            }
            (Err(LockError::Lost { reason, .. }), None) => {
                self.loss().mark_lost(reason.clone());
                Err(self.lost_error(reason))
            }
            (Err(e), None) => Err(e),
        };
        self.shared.events.meters().ended(held_for, result.is_ok());
        result
    }

    pub(super) async fn release_grant(&self) -> Result<(), LockError> {
        self.begin_end();
        let _gate = self.renew_gate.lock().await;
        self.conclude(self.shared.backend.release(&self.grant).await)
    }

    /// Renews the lease every third of it until the grant ends.
    ///
    /// The length renewed with is read when renewing, under the renew gate:
    /// an `extend` sets a new length, and renewing with the one read before
    /// it would shrink the store's lease back behind the caller's back.
    pub(super) async fn keep_alive(held: Arc<Self>) {
        let mut due = held.first_renewal();
        loop {
            match held.sleep_until(due).await {
                Wake::Ended => return,
                // Extended: the store's lease was just set, renew a third
                // of the new length from now (sooner, if it got shorter).
                Wake::LeaseChanged => {
                    due = Instant::now() + held.lease_length() / 3;
                    continue;
                }
                Wake::Due => {}
            }
            let _gate = held.renew_gate.lock().await;
            if held.keeping.has_ended() || held.is_lost() {
                return;
            }
            let (length, deadline) = {
                let lease = held.lease.lock();
                (lease.length.unwrap_or(DEFAULT_RENEWED_LEASE), lease.deadline)
            };
            // A renewal answered after the lease ran out is too late: the
            // store may have granted the lock to someone else meanwhile.
            let renewal = held.shared.backend.renew(&held.grant, length);
            let renewed = match deadline.map(|at| (at, at > Instant::now())) {
                None => renewal.await,
                Some((at, true)) => match tokio::time::timeout_at(at, renewal).await {
                    Ok(renewed) => renewed,
                    Err(_) => {
                        held.loss().mark_lost(LostReason::BackendUnreachable {
                            detail: format!("no answer to the lease renewal before the {length:?} lease ran out"),
                        });
                        return;
                    }
                },
                Some((_, false)) => {
                    held.loss().mark_lost(LostReason::LeaseExpired);
                    return;
                }
            };
            due = Instant::now() + length / 3;
            match renewed {
                Ok(expiry) => {
                    let mut lease = held.lease.lock();
                    lease.expires_at = Some(expiry);
                    lease.deadline = Some(deadline_of(expiry));
                    lease.last_heartbeat = Some(SystemTime::now());
                }
                Err(LockError::Lost { reason, .. }) => {
                    held.loss().mark_lost(reason);
                    return;
                }
                Err(e) => {
                    if deadline.is_none_or(|at| at <= Instant::now() + length / 3) {
                        held.loss().mark_lost(LostReason::BackendUnreachable { detail: e.to_string() });
                        return;
                    }
                    tracing::warn!(resource = %held.request.resource, backend = held.shared.name, error = %e, "lease renewal failed; retrying");
                }
            }
        }
    }

    /// Reports the grant lost when a lease nobody renews runs out.
    pub(super) async fn watch_lease_expiry(held: Arc<Self>) {
        loop {
            let Some(deadline) = held.lease.lock().deadline else {
                return;
            };
            // An extend (longer or shorter) wakes us to look at the new expiry.
            if held.sleep_until(deadline).await == Wake::Ended {
                return;
            }
            if held.is_lost() {
                return;
            }
        }
    }

    /// The lease length in force (the default, or the last extension).
    pub(super) fn lease_length(&self) -> Duration {
        self.lease.lock().length.unwrap_or(DEFAULT_RENEWED_LEASE)
    }

    /// Sleeps until `at`, or until the grant ends or its lease is extended,
    /// or until the lease runs out if that comes first (so a loss is reported
    /// at the lease's end, never later).
    async fn sleep_until(&self, at: Instant) -> Wake {
        let ended = self.keeping.ended_notify.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if self.keeping.has_ended() {
            return Wake::Ended;
        }
        let lease_end = self.lease.lock().deadline;
        let at = lease_end.map_or(at, |end| end.min(at));
        tokio::select! {
            _ = ended => Wake::Ended,
            // A permit is stored if the extension came before we got here.
            _ = self.lease_changed.notified() => {
                if self.keeping.has_ended() { Wake::Ended } else { Wake::LeaseChanged }
            }
            _ = tokio::time::sleep_until(at) => {
                if self.keeping.has_ended() { Wake::Ended } else { Wake::Due }
            }
        }
    }
}

/// Why [`Held::sleep_until`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Ended,
    LeaseChanged,
    Due,
}

/// The watchdog's lease when a renewed grant somehow has no length (it
/// always has one: auto-renewal needs a default lease).
const DEFAULT_RENEWED_LEASE: Duration = Duration::from_secs(30);

#[async_trait]
impl<B: LockBackend> GrantHandle for Held<B> {
    fn info(&self) -> LockInfo {
        let lease = self.lease.lock();
        let mut info =
            LockInfo::local(&*self.request.resource, self.request.holder.clone(), self.token, self.shared.name);
        info.acquired_at = self.acquired_at;
        info.purpose = self.request.purpose.as_deref().map(str::to_owned);
        info.lease_expires_at = lease.expires_at;
        info.last_heartbeat = lease.last_heartbeat;
        info.hold_count = self.count.load(Ordering::Acquire);
        info.mode = self.request.mode;
        info
    }

    fn is_lost(&self) -> bool {
        Held::is_lost(self)
    }

    fn end_keeping(&self) {
        if self.watched {
            self.keeping.end();
        }
    }

    fn lost_error(&self, reason: LostReason) -> LockError {
        LockError::lost(self.shared.name, &*self.request.resource, reason)
    }

    fn release_now(&self) -> Option<Result<(), LockError>> {
        if !self.leave() {
            return Some(match self.loss().reason() {
                Some(reason) => Err(self.lost_error(reason.clone())),
                None => Ok(()),
            });
        }
        // Without a watchdog nothing renews, so there is no renewal to wait
        // for behind the renew gate (`extend` needs a guard, and this was
        // the last): a backend that releases without awaiting does it here.
        if !self.auto_renew
            && let Some(released) = self.shared.backend.release_now(&self.grant)
        {
            self.begin_end();
            return Some(self.conclude(released));
        }
        None
    }

    async fn release_later(self: Arc<Self>) -> Result<(), LockError> {
        self.release_grant().await
    }

    async fn extend(&self, lease: Duration) -> Result<(), LockError> {
        if let Some(reason) = self.is_lost().then(|| self.loss().reason().cloned()).flatten() {
            return Err(self.lost_error(reason));
        }
        if !self.shared.caps.renewal {
            return Err(LockError::Config(format!(
                "the {} backend cannot extend leases (capabilities().renewal is false)",
                self.shared.name
            )));
        }
        check_lease(lease, &self.request.resource, self.shared.name)?;
        let _gate = self.renew_gate.lock().await;
        match self.shared.backend.renew(&self.grant, lease).await {
            Ok(expiry) => {
                let mut state = self.lease.lock();
                state.length = Some(lease);
                state.expires_at = Some(expiry);
                state.deadline = Some(deadline_of(expiry));
                state.last_heartbeat = Some(SystemTime::now());
                drop(state);
                self.lease_changed.notify_one();
                // The new lease may end before the deferred watcher would start.
                if let Some(key) = self.keeping.deferred_watch.lock().take() {
                    watch::start_now(key);
                }
                Ok(())
            }
            Err(LockError::Lost { reason, .. }) => {
                self.loss().mark_lost(reason.clone());
                Err(self.lost_error(reason))
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(unix)]
    fn lock_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.shared.backend.lock_fd(&self.grant)
    }
}

/// Boxes a future so tasks of different bodies share one type.
pub(super) trait BoxedTask: std::future::Future<Output = ()> + Send + Sized + 'static {
    fn boxed(self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(self)
    }
}

impl<F: std::future::Future<Output = ()> + Send + 'static> BoxedTask for F {}
