//! [`BridgedLockManager`]: one lock manager made of two, for rolling a new
//! backend out beside processes that still use an old one.
//!
//! A new backend alone does not exclude processes still on the old lock
//! protocol — switching to it without a bridge lets old and new processes
//! into the same critical section (the bug of the earlier `USE_NEW_LOCKS`
//! refactor). The bridge takes the new backend's lock first and then the old
//! one, and releases them in reverse, so every stage of a rollout stays
//! exclusive: bridged processes exclude each other through the new backend
//! and old processes through the old lock.
//!
//! Like object_store's wrapper stores, the bridge is a [`LockManager`]
//! itself, over any two managers; backends know nothing of it.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::guard::GrantHandle;
use crate::{
    AcquireOptions, Capabilities, EventSink, LockError, LockEventKind, LockEvents, LockGuard, LockInfo, LockManager,
    LockState, LossSignal, LostReason, Wait,
};

/// Holds a resource in `primary` (the new backend) and then in `legacy` (the
/// old protocol, e.g. `legacy-file://`), releasing in reverse order.
///
/// * The guard's fencing token, lease and reentrancy are the primary's; the
///   legacy lock is taken with the same options and the time left.
/// * A grant's token is never lower than one handed out before it: if the
///   primary is lost while the bridge waits for the legacy lock (Redis came
///   back empty, say, and another process took the new lock with a higher
///   token), the bridge lets the legacy lock go and queues for the primary
///   again, within the caller's wait.
/// * The guard is lost as soon as either lock is lost (for example, an old
///   process stole the legacy file).
/// * `extend` extends the primary's lease, then the legacy side's (if it has
///   leases). It is cancel-safe: a dropped `extend` future may leave one side
///   extended and not the other, but never lets go of either lock; two
///   `extend`s at once both reach both sides.
/// * `state`, `list`, `force_release` and `cleanup_stale` look at both:
///   a resource is held if either side holds it.
/// * The bridge is one manager to its callers: its name is
///   `<primary>+<legacy>` (e.g. `redis+legacy-file`), and it reports its own
///   events (locked when both locks are held, released, timed out, lost,
///   force-released) and stamps its name on errors and lock details. Which
///   side a holder or failure was on stays visible in the holder's details;
///   each side's own events remain on [`primary`](Self::primary) and
///   [`legacy`](Self::legacy).
///
/// ```
/// use std::sync::Arc;
/// use lockman_core::{AcquireOptions, BridgedLockManager, LockError, LockManager};
///
/// async fn poll(new_backend: Arc<dyn LockManager>, legacy: Arc<dyn LockManager>) -> Result<(), LockError> {
///     let locks = BridgedLockManager::new(new_backend, legacy);
///     let guard = locks.acquire("inverter_read", AcquireOptions::new()).await?;
///     // ... old and new daemons are both kept out ...
///     guard.release().await // the legacy lock first, then the new one
/// }
/// ```
pub struct BridgedLockManager {
    primary: Arc<dyn LockManager>,
    legacy: Arc<dyn LockManager>,
    name: String,
    events: EventSink,
    /// Applied once here, so both sides share one default wait.
    defaults: AcquireOptions,
}

impl BridgedLockManager {
    /// Locks in `primary`, then in `legacy`.
    pub fn new(primary: Arc<dyn LockManager>, legacy: Arc<dyn LockManager>) -> Self {
        let name = format!("{}+{}", primary.name(), legacy.name());
        let events = EventSink::new(&name);
        BridgedLockManager { primary, legacy, name, events, defaults: AcquireOptions::new() }
    }

    /// The bridge with a default wait and purpose for acquisitions that left
    /// them unset, as [`Locks::with_defaults`](crate::Locks::with_defaults).
    /// They are applied once, here: the legacy side then waits only for
    /// what is left of the default wait, and the sides' own default waits do
    /// not add up. Default leases stay each side's own (give them to the
    /// managers wrapped).
    pub fn with_defaults(mut self, defaults: AcquireOptions) -> Self {
        self.defaults = defaults;
        self
    }

    /// The new backend.
    pub fn primary(&self) -> &Arc<dyn LockManager> {
        &self.primary
    }

    /// The old protocol's manager.
    pub fn legacy(&self) -> &Arc<dyn LockManager> {
        &self.legacy
    }

    /// The caller's options, waiting only for what is left of its time.
    fn time_left(options: &AcquireOptions, started: Instant) -> AcquireOptions {
        let mut rest = options.clone();
        if let Wait::Timeout(timeout) = options.wait {
            rest.wait = match timeout.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => Wait::Timeout(left),
                _ => Wait::NoWait,
            };
        }
        rest
    }

    /// Both sides' grants as one guard.
    fn bridge(&self, primary: LockGuard, legacy: LockGuard, started: Instant) -> LockGuard {
        let token = primary.fencing_token();
        let holder = primary.info().holder;
        // The bridged lock is held once both parts are: dating it from the
        // primary's grant would claim the time spent waiting for an old
        // daemon's legacy file as held (the torture checker judges old
        // daemons' sections against it).
        let acquired_at = primary.info().acquired_at.max(legacy.info().acquired_at);
        let loss = LossSignal::new(Arc::from(primary.resource()), holder.clone(), self.events.clone());
        loss.granted(token, std::time::Instant::now());
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let legacy_lost = legacy.lost();
        let legacy = Arc::new(Mutex::new(Some(Arc::new(legacy))));
        let watch = {
            let (loss, primary_lost, legacy) = (loss.clone(), primary.lost(), legacy.clone());
            async move {
                let reason = tokio::select! {
                    reason = primary_lost => reason,
                    reason = legacy_lost => reason,
                    _ = ended_rx => return,
                };
                loss.mark_lost(reason);
                // The grant is gone (say the primary's lease ran out and a
                // waiter has it now): let go of the legacy lock too, or that
                // waiter would wait for it behind a holder that lost. (An
                // `extend` still renewing there lets go when it finishes.)
                let held = legacy.lock().take();
                drop(held);
            }
        };
        crate::runtime::spawn(watch);
        self.events.emit(LockEventKind::Locked, primary.resource(), |mut event| {
            event.waited = Some(started.elapsed());
            event.with_holder(holder).with_token(token)
        });
        let grant = Arc::new(BridgedGrant {
            legacy,
            primary,
            _ended: ended_tx,
            loss: loss.clone(),
            name: self.name.clone(),
            events: self.events.clone(),
            since: std::time::Instant::now(),
            acquired_at,
            legacy_extends: self.legacy.capabilities().renewal,
        });
        LockGuard::new(grant, token, loss)
    }

    /// Whether `primary` still holds `resource` on the primary side, asked
    /// of the backend (its own loss signal may not have fired yet).
    async fn still_holds(&self, resource: &str, primary: &LockGuard) -> Result<bool, LockError> {
        if primary.is_lost() {
            return Ok(false);
        }
        Ok(match self.primary.state(resource).await? {
            LockState::Held(info) => {
                info.fencing_token == primary.fencing_token() && info.holder == primary.info().holder
            }
            LockState::Available | LockState::Stale(_) => false,
        })
    }

    /// Refuses shared and permits modes up front (before the primary is
    /// taken), unless both sides could hold them.
    fn check_mode(&self, resource: &str, options: &AcquireOptions) -> Result<(), LockError> {
        if self.capabilities().supports(options.mode) {
            return Ok(());
        }
        Err(LockError::Config(format!(
            "{} cannot take {resource:?} in {} mode: the legacy lock file it takes beside the new lock has one \
             holder, and old daemons know no other mode, so shared holds and semaphores would let old and new \
             processes in together; take it exclusively until the rollout has ended (USE_NEW_LOCKS=true without \
             the bridge)",
            self.name,
            options.mode.as_str()
        )))
    }

    /// The error as this manager's: a timeout or loss names the bridge (the
    /// holder's details still say which side it was on).
    fn own_error(&self, error: LockError) -> LockError {
        match error {
            LockError::Timeout { resource, waited, holder, skipped, .. } => {
                LockError::Timeout { resource, backend: self.name.clone(), waited, holder, skipped }
            }
            LockError::Lost { resource, reason, .. } => {
                LockError::Lost { resource, backend: self.name.clone(), reason }
            }
            other => other,
        }
    }

    fn own_info(&self, mut info: LockInfo) -> LockInfo {
        info.backend = self.name.clone();
        info
    }
}

impl fmt::Debug for BridgedLockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgedLockManager")
            .field("primary", &self.primary)
            .field("legacy", &self.legacy)
            .field("defaults", &self.defaults)
            .finish()
    }
}

#[async_trait]
impl LockManager for BridgedLockManager {
    fn name(&self) -> &str {
        &self.name
    }

    /// The primary's guarantees (it orders bridged processes); exclusion
    /// across processes needs both sides to provide it.
    fn capabilities(&self) -> Capabilities {
        let mut caps = self.primary.capabilities();
        let legacy = self.legacy.capabilities();
        caps.cross_process &= legacy.cross_process;
        caps.lost_detection |= legacy.lost_detection;
        // A shared holder gets into a bridged lock only if both sides let it.
        caps.shared_holders &= legacy.shared_holders;
        // So do several shared holders or permits: the legacy lock has one holder.
        caps.shared_mode &= legacy.shared_mode;
        caps.permits &= legacy.permits;
        caps
    }

    fn events(&self) -> LockEvents {
        self.events.subscribe()
    }

    async fn acquire(&self, resource: &str, options: AcquireOptions) -> Result<LockGuard, LockError> {
        let options = options.with_defaults(&self.defaults);
        self.check_mode(resource, &options)?;
        let started = Instant::now();
        let acquired = async {
            loop {
                let primary = self.primary.acquire(resource, Self::time_left(&options, started)).await?;
                // On error the primary guard drops here and is released.
                if let Some(legacy) = self.legacy.try_acquire(resource, options.clone().no_wait()).await? {
                    return Ok::<_, LockError>((primary, legacy));
                }
                let legacy = self.legacy.acquire(resource, Self::time_left(&options, started)).await?;
                if self.still_holds(resource, &primary).await? {
                    return Ok((primary, legacy));
                }
                // The primary was lost while we waited for the legacy lock
                // (say Redis restarted empty), and someone may have taken it
                // since, with a higher token, and got in before us. Granting
                // now would hand out a lower token after theirs: let go of
                // both and queue for the primary again.
                tracing::warn!(
                    backend = %self.name,
                    resource,
                    token = %primary.fencing_token(),
                    "the new lock was lost while waiting for the legacy lock; taking both again"
                );
                drop(legacy);
                drop(primary);
            }
        };
        match acquired.await {
            Ok((primary, legacy)) => Ok(self.bridge(primary, legacy, started)),
            Err(e) => {
                if e.is_timeout() {
                    self.events.emit(LockEventKind::TimedOut, resource, |mut event| {
                        event.waited = Some(started.elapsed());
                        event
                    });
                }
                Err(self.own_error(e))
            }
        }
    }

    async fn try_acquire(&self, resource: &str, options: AcquireOptions) -> Result<Option<LockGuard>, LockError> {
        let options = options.with_defaults(&self.defaults);
        self.check_mode(resource, &options)?;
        let started = Instant::now();
        let Some(primary) = self.primary.try_acquire(resource, options.clone()).await.map_err(|e| self.own_error(e))?
        else {
            return Ok(None);
        };
        match self.legacy.try_acquire(resource, options).await.map_err(|e| self.own_error(e))? {
            Some(legacy) => Ok(Some(self.bridge(primary, legacy, started))),
            None => {
                primary.release().await.map_err(|e| self.own_error(e))?;
                Ok(None)
            }
        }
    }

    /// The primary's state if it is held there, else the legacy side's (an
    /// old process may hold the legacy lock alone).
    async fn state(&self, resource: &str) -> Result<LockState, LockError> {
        let state = match self.primary.state(resource).await? {
            LockState::Available => self.legacy.state(resource).await?,
            held => held,
        };
        Ok(match state {
            LockState::Held(info) => LockState::Held(self.own_info(info)),
            LockState::Stale(info) => LockState::Stale(self.own_info(info)),
            available => available,
        })
    }

    /// Every primary lock, and every legacy lock of a resource the primary
    /// does not list (held by an old process).
    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut locks = self.primary.list().await?;
        let held: HashSet<String> = locks.iter().map(|info| info.resource.clone()).collect();
        locks.extend(self.legacy.list().await?.into_iter().filter(|info| !held.contains(&info.resource)));
        let mut locks: Vec<LockInfo> = locks.into_iter().map(|info| self.own_info(info)).collect();
        locks.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(locks)
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let legacy = self.legacy.force_release(resource, reason).await?;
        let primary = self.primary.force_release(resource, reason).await?;
        let broken = primary.or(legacy).map(|info| self.own_info(info));
        if let Some(info) = &broken {
            self.events.emit(LockEventKind::ForceReleased, resource, |event| {
                event.with_holder(info.holder.clone()).with_token(info.fencing_token).with_reason(reason)
            });
        }
        Ok(broken)
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut broken = self.primary.cleanup_stale().await?;
        broken.extend(self.legacy.cleanup_stale().await?);
        Ok(broken.into_iter().map(|info| self.own_info(info)).collect())
    }
}

/// The two guards of one bridged grant. Only the bridged [`LockGuard`]
/// holds it, so its release owns it; the loss watch shares only the legacy
/// guard's cell.
///
/// The legacy guard never leaves its cell while the grant is held: `extend`
/// works through a shared handle on it, so dropping an `extend` future (a
/// timeout, a `select!`) cannot drop — and so release — the legacy lock, and
/// concurrent `extend`s all reach it (the legacy manager orders them).
struct BridgedGrant {
    /// Taken out early when the grant is lost, and by `release`.
    legacy: Arc<Mutex<Option<Arc<LockGuard>>>>,
    primary: LockGuard,
    /// Dropped with the grant, which stops the loss watch.
    _ended: tokio::sync::oneshot::Sender<()>,
    loss: LossSignal,
    name: String,
    events: EventSink,
    since: std::time::Instant,
    /// When the later of the two parts was granted.
    acquired_at: std::time::SystemTime,
    /// Whether the legacy side has leases to extend (legacy lockfiles do not).
    legacy_extends: bool,
}

#[async_trait]
impl GrantHandle for BridgedGrant {
    fn info(&self) -> LockInfo {
        let mut info = self.primary.info();
        info.backend = self.name.clone();
        info.acquired_at = self.acquired_at;
        info
    }

    fn is_lost(&self) -> bool {
        self.loss.is_lost() || self.primary.is_lost() || self.legacy.lock().as_ref().is_some_and(|g| g.is_lost())
    }

    fn lost_error(&self, reason: LostReason) -> LockError {
        LockError::lost(&*self.name, &**self.loss.resource(), reason)
    }

    /// Both sides release by awaiting (in order): always later.
    fn release_now(&self) -> Option<Result<(), LockError>> {
        None
    }

    /// Releases the legacy lock, then the primary one (in the background
    /// for a dropped guard).
    async fn release_later(self: Arc<Self>) -> Result<(), LockError> {
        let Some(grant) = Arc::into_inner(self) else {
            unreachable!("a bridged grant has exactly one guard");
        };
        let token = grant.primary.fencing_token();
        let BridgedGrant { legacy, primary, loss, name, events, since, .. } = grant;
        let held = legacy.lock().take();
        let legacy = match held.map(Arc::try_unwrap) {
            Some(Ok(guard)) => guard.release().await,
            // Only an `extend` shares the guard, and it borrows the bridged
            // guard that `release` consumes: none can be running now.
            Some(Err(shared)) => {
                tracing::warn!(resource = %loss.resource(), backend = %name, "the legacy guard was still shared at release; it is released when the last user lets go");
                drop(shared);
                Ok(())
            }
            None => Ok(()), // let go when the grant was lost
        };
        let primary = primary.release().await;
        let released = match (primary, legacy) {
            // A lost side matters most: the work may not have been exclusive.
            (Err(e), _) | (_, Err(e)) if e.is_lost() => Err(e),
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        };
        let lost =
            |reason: LostReason| LockError::Lost { resource: loss.resource().to_string(), backend: name, reason };
        match (released, loss.reason().cloned()) {
            (_, Some(reason)) => Err(lost(reason)),
            (Ok(()), None) => {
                loss.mark_released();
                events.emit(LockEventKind::Released, loss.resource(), |mut event| {
                    event.held = Some(since.elapsed());
                    event.with_holder(loss.holder().clone()).with_token(token)
                });
                Ok(())
            }
            (Err(LockError::Lost { reason, .. }), None) => {
                loss.mark_lost(reason.clone());
                Err(lost(reason))
            }
            (Err(e), None) => Err(e),
        }
    }

    /// The primary's: it is the lock bridged processes exclude each other by.
    #[cfg(unix)]
    fn lock_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.primary.lock_fd()
    }

    /// Extends the primary's lease, and the legacy side's if it has one.
    ///
    /// Cancel-safe: dropped midway, one side may be extended and the other
    /// not, but both locks stay held (extend again to even them out).
    async fn extend(&self, lease: Duration) -> Result<(), LockError> {
        if let Some(reason) = self.loss.reason() {
            return Err(self.lost_error(reason.clone()));
        }
        self.primary.extend(lease).await?;
        if !self.legacy_extends {
            return Ok(());
        }
        // A handle, not the guard: the guard stays in its cell across the await.
        let shared = self.legacy.lock().clone();
        match shared {
            Some(guard) => guard.extend(lease).await,
            // Taken out because the grant was lost.
            None => Err(self.lost_error(self.loss.reason().cloned().unwrap_or(LostReason::Stolen {
                detail: "the legacy lock was let go after the grant was lost".to_owned(),
            }))),
        }
    }
}
