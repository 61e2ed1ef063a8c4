//! The guard a caller holds while it owns a lock.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{FencingToken, LockError, LockInfo, LossSignal, LostReason};

/// Proof of holding a lock; the lock is released when the last guard of a
/// grant goes away.
///
/// * Dropping the guard releases the lock without blocking the async runtime
///   (backends that need I/O release on a background task).
/// * [`release`](Self::release) releases and tells you whether the lock was
///   still yours: a lost lock (lease expired, force-released, backend gone) is
///   an error, because the work done under it may not have been exclusive.
/// * [`lost`](Self::lost) completes as soon as the lock is known lost, so
///   long-running work can stop early:
///
/// ```
/// use lockman_core::{AcquireOptions, LockError, LockManager};
///
/// async fn poll(locks: &dyn LockManager) -> Result<(), LockError> {
///
///     let guard = locks.acquire("inverter_read", AcquireOptions::new()).await?;
///     tokio::select! {
///         _ = async { /* talk to the device */ } => {}
///         reason = guard.lost() => eprintln!("stopping: lock lost because {reason}"),
///     }
///     guard.release().await
/// }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    grant: Option<Arc<dyn GrantHandle>>,
    token: FencingToken,
    loss: LossSignal,
}

/// What a guard needs from the grant it shares with its reentrant siblings.
#[async_trait]
pub(crate) trait GrantHandle: Send + Sync {
    fn info(&self) -> LockInfo;
    fn is_lost(&self) -> bool;
    fn lost_error(&self, reason: LostReason) -> LockError;
    /// Ends what keeps the grant alive (renewal, expiry watch): for a
    /// release that will not finish, so the store's lease runs out.
    fn end_keeping(&self) {}
    /// One guard leaves; the last one releases the grant if that needs no
    /// awaiting. `None`: it was the last, and the release must be finished
    /// with [`release_later`](Self::release_later).
    fn release_now(&self) -> Option<Result<(), LockError>>;
    /// Finishes a release that [`release_now`](Self::release_now) could not.
    async fn release_later(self: Arc<Self>) -> Result<(), LockError>;
    async fn extend(&self, lease: Duration) -> Result<(), LockError>;
    /// The descriptor carrying the grant's kernel lock, if it has one.
    #[cfg(unix)]
    fn lock_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

impl LockGuard {
    pub(crate) fn new(grant: Arc<dyn GrantHandle>, token: FencingToken, loss: LossSignal) -> Self {
        LockGuard { grant: Some(grant), token, loss }
    }

    fn grant(&self) -> &Arc<dyn GrantHandle> {
        // `grant` is only taken by `release(self)`, after which the guard is gone.
        self.grant.as_ref().unwrap_or_else(|| unreachable!("guard used after release"))
    }

    /// The resource this guard holds.
    pub fn resource(&self) -> &str {
        self.loss.resource()
    }

    /// The fencing token of this grant (shared by reentrant guards).
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }

    /// The lock's current details: holder, lease, hold count and so on.
    pub fn info(&self) -> LockInfo {
        self.grant().info()
    }

    /// Whether the lock is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.grant().is_lost()
    }

    /// Completes when the lock is lost, with the reason. Never completes for
    /// a lock that is released normally. The future does not borrow the
    /// guard, so it can be moved into a task.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let loss = self.loss.clone();
        async move { loss.lost().await }
    }

    /// Extends the lease to `lease` from now.
    ///
    /// * A guard with an explicit lease ([`AcquireOptions::lease`](crate::AcquireOptions::lease))
    ///   is not renewed: its lease now ends `lease` from now, and the lock is
    ///   lost then unless extended again.
    /// * A guard the watchdog keeps alive (acquired without a lease on a
    ///   backend with a default lease) keeps being renewed, and `lease`
    ///   becomes the length it is renewed with for the rest of the grant: the
    ///   store's lease never ends sooner than `lease` after the last renewal,
    ///   so the lock survives a pause of the process (or a partition) of up
    ///   to `lease`. A `lease` shorter than the default is allowed and
    ///   renewed as often as it needs.
    ///
    /// Either way [`lost`](Self::lost) completes when the lease in force
    /// ends without a renewal, not later.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if the lock was lost, [`LockError::Backend`] if the
    /// backend could not be reached.
    pub async fn extend(&self, lease: Duration) -> Result<(), LockError> {
        self.grant().extend(lease).await
    }

    /// The descriptor whose open file description holds this lock's kernel
    /// lock (`flock`), for handing the lock to a child process; `None` where
    /// the lock is not a descriptor (leases, Redis, in-process). Unix only.
    ///
    /// Let a child inherit it (clear `FD_CLOEXEC` in the child, between fork
    /// and exec) and the child *shares* the lock: if this process dies, the
    /// kernel keeps the lock until every process holding the description —
    /// the child, and whatever it passed the descriptor on to — has exited or
    /// closed it, as `flock(1)` does for its command. This is what
    /// `lockctl run` does. Closing an inherited copy gives up only that
    /// copy's share; unlocking it (`flock -u`) ends the lock for everyone, and
    /// so does this guard's release — so release only after the child exits.
    /// Do not read or write through it: on the file backends it is the lock
    /// file, holding the holder record.
    ///
    /// On a [`BridgedLockManager`](crate::BridgedLockManager) guard it is the
    /// primary side's descriptor.
    ///
    /// ```no_run
    /// # async fn demo(locks: &dyn lockman_core::LockManager) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    ///
    /// let guard = locks.acquire("nightly", lockman_core::AcquireOptions::new()).await?;
    /// if let Some(fd) = guard.lock_fd() {
    ///     println!("the kernel lock is on descriptor {}", fd.as_raw_fd());
    /// }
    /// # Ok(()) }
    /// ```
    #[cfg(unix)]
    pub fn lock_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.grant().lock_fd()
    }

    /// Releases this guard. The lock itself is released when the last
    /// reentrant guard of the grant is released.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if the lock had been lost before this call;
    /// [`LockError::Backend`] if the backend failed to release it (a lease,
    /// if any, still ends it).
    pub async fn release(self) -> Result<(), LockError> {
        match self.release_now() {
            Ok(released) => released,
            Err(later) => later.release_later().await,
        }
    }

    /// Releases without awaiting if the backend can; otherwise the grant
    /// whose [`release_later`](GrantHandle::release_later) finishes it
    /// (the blocking API runs that on its runtime, and only that).
    pub(crate) fn release_now(mut self) -> Result<Result<(), LockError>, Arc<dyn GrantHandle>> {
        let Some(grant) = self.grant.take() else { return Ok(Ok(())) };
        match grant.release_now() {
            Some(released) => Ok(released),
            None => Err(grant),
        }
    }

    /// The reason for `lost` as a [`LockError::Lost`], for callers that want to
    /// bail out with `?`.
    pub fn check(&self) -> Result<(), LockError> {
        if self.is_lost()
            && let Some(reason) = self.loss.reason()
        {
            return Err(self.grant().lost_error(reason.clone()));
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            match grant.release_now() {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "releasing a dropped guard"),
                None => crate::runtime::spawn(DroppedRelease(Some(grant)).run()),
            }
        }
    }
}

/// A dropped guard's release, spawned on the caller's runtime (where the
/// backend's connection for it may live). If that task is dropped before it
/// first runs — its runtime shut down first — the release runs on the
/// background runtime instead, so the lock is free at once rather than when
/// its lease runs out (or, on a backend whose keys live as long as the
/// manager, never).
struct DroppedRelease(Option<Arc<dyn GrantHandle>>);

impl DroppedRelease {
    async fn run(mut self) {
        let Some(grant) = self.0.take() else { return };
        release_dropped(grant).await;
    }
}

impl Drop for DroppedRelease {
    fn drop(&mut self) {
        let Some(grant) = self.0.take() else { return };
        match crate::runtime::background() {
            Ok(runtime) => {
                runtime.spawn(release_dropped(grant));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot release a dropped guard; its lease runs out instead");
                grant.end_keeping();
            }
        }
    }
}

/// A release dropped part-way (its runtime shuts down mid-release) has
/// already ended the grant's renewal in its first step, so the lease runs
/// out.
async fn release_dropped(grant: Arc<dyn GrantHandle>) {
    if let Err(e) = grant.release_later().await {
        tracing::warn!(error = %e, "releasing a dropped guard");
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("resource", &self.resource())
            .field("holder", self.loss.holder())
            .field("fencing_token", &self.token)
            .field("lost", &self.loss.is_lost())
            .finish()
    }
}
