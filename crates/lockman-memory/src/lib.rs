//! lockman's in-process backend: a per-resource reentrant lock map.
//!
//! For one process — a service on a single box, or unit tests that need a
//! real [`LockManager`](lockman_core::LockManager) without a server. It is a full backend, not a mock:
//!
//! * **FIFO handoff.** A release hands the lock straight to the first waiter
//!   and wakes it; nobody polls and nobody starves.
//! * **Timeouts, try-acquire and waiting forever**; a waiter that times out or
//!   is cancelled never ends up holding the lock.
//! * **Reentrancy per holder id** (handled by core's [`Locks`]).
//! * **Optional leases.** A holder that outlives its lease loses the lock to
//!   the next waiter at the lease's end (the first waiter's timer follows
//!   whoever holds the lock and their current lease), and its guard reports
//!   it lost. [`MemoryBackend::with_default_lease`] gives every grant a lease
//!   that core renews, like the Redis and lease-file backends.
//! * **Fencing tokens** strictly increase per grant.
//! * **Bounded memory.** A resource's entry exists only while it is held or
//!   waited for.
//! * **One map per name in the process.** [`MemoryBackend::named`] (and
//!   `lockman::connect("memory://NAME")`; plain `memory://` is the map named
//!   `""`) gives every caller in the process that uses the same name the same
//!   locks and flags, so two parts of a program that each open `memory://`
//!   exclude each other. [`MemoryBackend::new`] and `MemoryLockManager::default()`
//!   are private maps, for tests that must not see each other. A named map
//!   is dropped when its last user goes.
//! * **Tokio's clock.** Leases, renewals and flag TTLs run on
//!   [`tokio::time::Instant`], like acquire timeouts, so a test with a paused
//!   clock (`#[tokio::test(start_paused = true)]`, tokio's `test-util`
//!   feature) sees a 10 s lease run out in no real time. Wall-clock times in
//!   [`LockInfo`] and [`FlagInfo`](lockman_core::FlagInfo) are derived from it
//!   when read.
//!
//! ## By URL
//!
//! [`MemoryBackend::from_url`] (feature `url`, which `lockman::connect`
//! uses) reads `memory://` (the map named `""`), `memory://NAME`, and
//! `memory://?private=1` (a private map); [`MemoryConfigKey`] lists the
//! options.
//!
//! ```
//! use lockman_core::{AcquireOptions, LockManager};
//! use lockman_memory::MemoryLockManager;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockman_core::LockError> {
//! let locks = MemoryLockManager::default();
//! let guard = locks.acquire("inverter_read", AcquireOptions::new().purpose("poll")).await?;
//! assert!(locks.try_acquire("inverter_read", AcquireOptions::new()).await?.is_none());
//! guard.release().await?;
//! # Ok(()) }
//! ```

mod clock;
mod status;
mod store;
mod sync;
mod table;
#[cfg(feature = "url")]
mod url_options;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lockman_core::backend::{Acquired, Deadline, GrantRequest, Granted, LockBackend};
use lockman_core::{
    Capabilities, FencingToken, LockError, LockInfo, LockState, Locks, LossSignal, LostReason, WakeMechanism,
};
use store::Store;

pub use status::MemoryStatusManager;
use table::{Aftermath, Attempt, IfBusy, LockTable, NotCurrent, Request, Slot, SlotRef, Wakeup};
#[cfg(feature = "url")]
pub use url_options::MemoryConfigKey;

/// The backend name in errors, events and metrics.
pub const BACKEND: &str = "memory";

/// The in-process lock manager.
///
/// ```
/// use std::sync::Arc;
/// use lockman_core::LockManager;
/// use lockman_memory::MemoryLockManager;
///
/// let locks: Arc<dyn LockManager> = Arc::new(MemoryLockManager::default());
/// assert_eq!(locks.name(), "memory");
/// ```
pub type MemoryLockManager = Locks<MemoryBackend>;

/// The raw in-process backend; use it through [`MemoryLockManager`].
///
/// [`MemoryBackend::new`] (and `default()`) is a private map;
/// [`MemoryBackend::named`] the process-wide map of that name.
#[derive(Debug)]
pub struct MemoryBackend {
    store: Arc<Store>,
    default_lease: Option<Duration>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend { store: Store::private(), default_lease: None }
    }
}

/// A live grant of the memory backend.
#[derive(Debug)]
pub struct MemoryGrant {
    resource: Arc<str>,
    token: u64,
}

impl MemoryBackend {
    /// A private lock map: nobody else in the process can reach it, so tests
    /// that run in parallel in one process do not see each other's locks.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide lock map called `name`: every backend opened with
    /// the same name in this process (and `lockman::connect("memory://NAME")`;
    /// `memory://` is the name `""`) holds the same locks, so they exclude
    /// each other. [`MemoryStatusManager::named`] with the same name (or
    /// [`MemoryStatusManager::beside`]) reaches the same map's flags. The map
    /// is dropped when the last backend and status manager using it are.
    ///
    /// ```
    /// use lockman_core::{AcquireOptions, LockBackend, LockManager};
    /// use lockman_memory::MemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockman_core::LockError> {
    /// let poller = MemoryBackend::named("docs-backend").into_manager();
    /// let charger = MemoryBackend::named("docs-backend").into_manager();
    /// let guard = poller.acquire("inverter_read", AcquireOptions::new()).await?;
    /// assert!(charger.try_acquire("inverter_read", AcquireOptions::new()).await?.is_none());
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn named(name: &str) -> Self {
        MemoryBackend { store: Store::named(name), default_lease: None }
    }

    /// The map's name, `None` for a private map.
    pub fn map_name(&self) -> Option<&str> {
        self.store.name()
    }

    /// Gives every grant `lease` unless the caller sets one, as
    /// [`MemoryBackend::with_default_lease`] does for a private map.
    pub fn default_lease(mut self, lease: Duration) -> Self {
        self.default_lease = Some(lease);
        self
    }

    /// How many named maps are alive in this process (each held by at least
    /// one backend or status manager). A map nobody uses is dropped.
    pub fn named_maps() -> usize {
        store::named_maps()
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn table(&self) -> &LockTable<LossSignal> {
        &self.store.table
    }

    /// An empty lock map whose grants get `lease` unless the caller sets
    /// one; core's watchdog renews it while the guard lives, as on the
    /// Redis and lease-file backends. In one process a lease guards against
    /// nothing a guard's drop does not; this is for testing code meant for a
    /// leased backend (extend, renewal, loss) without one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockman_core::{LockBackend, LockManager};
    /// use lockman_memory::MemoryBackend;
    ///
    /// let locks = MemoryBackend::with_default_lease(Duration::from_secs(2)).into_manager();
    /// assert_eq!(locks.capabilities().default_lease, Some(Duration::from_secs(2)));
    /// ```
    pub fn with_default_lease(lease: Duration) -> Self {
        Self::default().default_lease(lease)
    }

    /// How many resources the map tracks right now (held, or waited for).
    /// Zero whenever no lock is held.
    pub fn tracked_resources(&self) -> usize {
        self.table().len()
    }

    /// How many acquirers are waiting, over all resources.
    pub fn waiting(&self) -> usize {
        self.table().waiters()
    }

    fn lost(&self, resource: &str) -> LockError {
        LockError::stolen(BACKEND, resource, "the grant is no longer the live one (lease expired or force-released)")
    }

    /// Waits on `slot` until the lock is handed over or the deadline passes,
    /// evicting a holder whose lease runs out first.
    ///
    /// The wake-up is the earlier of the deadline and the *current* holder's
    /// lease end; the table tells the first waiter to compute it again
    /// whenever the holder or its lease changes, so a lease that runs out
    /// hands the lock on at its end even if nobody else touches the resource.
    async fn wait(&self, resource: &Arc<str>, slot: SlotRef<LossSignal>, deadline: Deadline) -> Acquired<MemoryGrant> {
        let mut queued = Queued { table: self.table(), resource, slot: Some(slot) };
        loop {
            let lease_expiry = self.table().lease_expiry(resource);
            let wake_at = match (deadline.instant(), lease_expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let granted = queued.slot().granted();
            let outcome = match wake_at {
                Some(at) => tokio::time::timeout_at(at, granted).await.ok(),
                None => Some(granted.await),
            };
            match outcome {
                Some(Wakeup::Granted(grant)) => {
                    queued.slot = None;
                    return self.granted(resource, grant, true);
                }
                Some(Wakeup::Rearm) => continue,
                None => {}
            }
            settle(self.table().expire(resource), LostReason::LeaseExpired);
            if deadline.has_passed() {
                let slot = queued.slot.take().unwrap_or_else(|| unreachable!("slot is held until we return"));
                let (grant, after) = self.table().cancel(resource, &slot);
                wake(after);
                if let Some(grant) = grant {
                    return self.granted(resource, grant, true);
                }
                let holder = self.table().inspect(resource).map(|(info, _)| info);
                return Acquired::Busy { holder };
            }
        }
    }

    fn granted(&self, resource: &Arc<str>, grant: table::Grant, waited: bool) -> Acquired<MemoryGrant> {
        Acquired::Granted(
            Granted::new(
                MemoryGrant { resource: resource.clone(), token: grant.token },
                FencingToken::new(grant.token),
                grant.lease_expires_at,
            )
            .acquired_at(grant.acquired_at)
            .after_waiting(waited),
        )
    }

    fn release_sync(&self, grant: &MemoryGrant) -> Result<(), LockError> {
        let (released, after) = self.table().release(&grant.resource, grant.token);
        wake(after);
        released.map_err(|NotCurrent| self.lost(&grant.resource))
    }
}

/// The table's view of a request; the loss signal travels with the grant.
fn table_request(request: &GrantRequest) -> Request<LossSignal> {
    Request {
        holder: request.holder.clone(),
        mode: request.mode,
        purpose: request.purpose.clone(),
        lease: request.lease,
        tag: request.loss.clone(),
    }
}

/// Wakes the new holder (and the waiter to re-arm) and tells evicted holders
/// why they lost the lock.
fn settle(after: Aftermath<LossSignal>, reason: LostReason) {
    for evicted in after.wake() {
        evicted.mark_lost(reason.clone());
    }
}

/// Wakes the new holder (and the waiter to re-arm) after a release or a
/// waiter leaving; neither evicts anyone.
fn wake(after: Aftermath<LossSignal>) {
    let evicted = after.wake();
    debug_assert!(evicted.is_empty(), "a release evicted a holder");
}

/// A place in a resource's queue, given up when dropped (timeout or
/// cancellation) — releasing the lock if it was handed over meanwhile.
struct Queued<'a> {
    table: &'a LockTable<LossSignal>,
    resource: &'a Arc<str>,
    slot: Option<SlotRef<LossSignal>>,
}

impl Queued<'_> {
    fn slot(&self) -> &Slot<LossSignal> {
        self.slot.as_deref().unwrap_or_else(|| unreachable!("slot is held until we return"))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let (grant, after) = self.table.cancel(self.resource, &slot);
            wake(after);
            if let Some(grant) = grant {
                let (_, after) = self.table.release(self.resource, grant.token);
                wake(after);
            }
        }
    }
}

impl LockBackend for MemoryBackend {
    type Grant = MemoryGrant;

    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
            .with_leases(self.default_lease)
            .with_lost_detection(true)
            .with_fencing(true)
            .with_fifo(true)
            .with_wake(WakeMechanism::DirectHandoff)
            .with_modes(true, true)
    }

    /// Leases here are tokio timers: renew them on the caller's runtime, so
    /// a paused test clock runs them (and their renewals) in virtual time.
    fn leases_follow_callers_clock(&self) -> bool {
        true
    }

    async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<MemoryGrant>, LockError> {
        let busy = if request.deadline == Deadline::Now { IfBusy::Report } else { IfBusy::Queue };
        let (attempt, after) =
            self.table().attempt_or(&request.resource, table_request(request), busy, request.asked_at);
        settle(after, LostReason::LeaseExpired);
        Ok(match attempt {
            Attempt::Granted(grant) => self.granted(&request.resource, grant, false),
            Attempt::Busy(holder) => Acquired::Busy { holder: Some(holder) },
            Attempt::Refused(refused) => return Err(refused),
            // Boxed: keeps the uncontended path's future small.
            Attempt::Queued(slot) => Box::pin(self.wait(&request.resource, slot, request.deadline)).await,
            Attempt::WouldWait => unreachable!("the table declines only when asked to"),
        })
    }

    /// The uncontended grant (and a busy `try_acquire`) decided under the
    /// table lock; a request that would queue goes to `acquire`, which
    /// queues it (or grants it, if the holder left meanwhile).
    fn acquire_now(&self, request: &GrantRequest) -> Option<Result<Acquired<MemoryGrant>, LockError>> {
        let busy = if request.deadline == Deadline::Now { IfBusy::Report } else { IfBusy::Decline };
        let (attempt, after) =
            self.table().attempt_or(&request.resource, table_request(request), busy, request.asked_at);
        settle(after, LostReason::LeaseExpired);
        match attempt {
            Attempt::Granted(grant) => Some(Ok(self.granted(&request.resource, grant, false))),
            Attempt::Busy(holder) => Some(Ok(Acquired::Busy { holder: Some(holder) })),
            Attempt::Refused(refused) => Some(Err(refused)),
            Attempt::WouldWait => None,
            Attempt::Queued(_) => unreachable!("the table queues only when asked to"),
        }
    }

    fn release_now(&self, grant: &MemoryGrant) -> Option<Result<(), LockError>> {
        Some(self.release_sync(grant))
    }

    async fn renew(&self, grant: &MemoryGrant, lease: Duration) -> Result<SystemTime, LockError> {
        let (renewed, after) = self.table().renew(&grant.resource, grant.token, lease);
        settle(after, LostReason::LeaseExpired);
        renewed.map_err(|NotCurrent| self.lost(&grant.resource))
    }

    async fn inspect(&self, resource: &str) -> Result<LockState, LockError> {
        Ok(match self.table().inspect(resource) {
            None => LockState::Available,
            Some((info, false)) => LockState::Held(info),
            Some((info, true)) => LockState::Stale(info),
        })
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut held: Vec<LockInfo> = self.table().list().into_iter().map(|(info, _)| info).collect();
        held.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(held)
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let (broken, after) = self.table().force_release(resource);
        settle(after, LostReason::ForceReleased { reason: reason.to_owned() });
        Ok(broken)
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        let (broken, afters) = self.table().cleanup_stale();
        for after in afters {
            settle(after, LostReason::LeaseExpired);
        }
        Ok(broken)
    }
}
