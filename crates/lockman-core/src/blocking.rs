//! The lock API for plain threads, without an async runtime in the caller.
//!
//! Calls run on a small runtime owned by lockman. Unlike the async API, the
//! default holder is the calling thread ([`HolderId::current_thread`]), so a
//! thread that takes a lock it already holds re-enters it, like
//! `parking_lot::ReentrantMutex`.
//!
//! ```
//! # fn demo(locks: std::sync::Arc<dyn lockman_core::LockManager>) -> Result<(), lockman_core::LockError> {
//! use lockman_core::{AcquireOptions, blocking::BlockingLockManager};
//!
//! let locks = BlockingLockManager::new(locks);
//! let outer = locks.lock("inverter_read")?;
//! let inner = locks.lock("inverter_read")?; // same thread: re-enters
//! drop(inner);
//! outer.release()?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    AcquireOptions, FencingToken, FlagInfo, FlagOptions, HolderId, LockError, LockGuard, LockInfo, LockManager,
    LockManagerExt, LockState, MultiLockGuard, StatusManager,
};

/// A [`LockManager`] for threads that do not run async code.
#[derive(Clone, Debug)]
pub struct BlockingLockManager {
    inner: Arc<dyn LockManager>,
}

impl BlockingLockManager {
    /// Wraps an async manager.
    pub fn new(inner: Arc<dyn LockManager>) -> Self {
        BlockingLockManager { inner }
    }

    /// The async manager underneath.
    pub fn inner(&self) -> &Arc<dyn LockManager> {
        &self.inner
    }

    /// Acquires `resource`; the holder defaults to the calling thread.
    ///
    /// # Errors
    ///
    /// As [`LockManager::acquire`], and [`LockError::Config`] when called
    /// from inside an async runtime (use the async API there).
    pub fn acquire(&self, resource: &str, options: AcquireOptions) -> Result<BlockingLockGuard, LockError> {
        let options = with_thread_holder(options);
        let guard = block_on(self.inner.acquire(resource, options))??;
        Ok(BlockingLockGuard { guard: Some(guard) })
    }

    /// Acquires every one of `resources` or none, in name order, within one
    /// overall wait; the holder defaults to the calling thread. See
    /// [`LockManagerExt::acquire_all`].
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), for the first resource that could not
    /// be taken; nothing is held then.
    pub fn acquire_all<I, S>(&self, resources: I, options: AcquireOptions) -> Result<BlockingMultiLockGuard, LockError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let options = with_thread_holder(options);
        let resources: Vec<String> = resources.into_iter().map(|name| name.as_ref().to_owned()).collect();
        let guards = block_on(self.inner.acquire_all(resources, options))??;
        Ok(BlockingMultiLockGuard { guards: Some(guards) })
    }

    /// Acquires `resource` with the default options: wait forever, unless
    /// the manager carries a default wait (`LOCKMAN_DEFAULT_WAIT`).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    pub fn lock(&self, resource: &str) -> Result<BlockingLockGuard, LockError> {
        self.acquire(resource, AcquireOptions::new())
    }

    /// Acquires `resource` if it is free right now, with the default options.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub fn try_lock(&self, resource: &str) -> Result<Option<BlockingLockGuard>, LockError> {
        self.try_acquire(resource, AcquireOptions::new())
    }

    /// Runs `work` on the calling thread while holding `resource`, then
    /// releases it.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use lockman_core::{AcquireOptions, LockError, blocking::BlockingLockManager};
    /// # fn save(locks: &BlockingLockManager) -> Result<(), LockError> {
    /// let written = locks.with_lock("regcache", AcquireOptions::new().purpose("save cache"), || {
    ///     // ... write the cache file ...
    ///     42
    /// })?;
    /// # assert_eq!(written, 42);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Acquisition errors, and [`LockError::Lost`] if the lock was lost while
    /// `work` ran — its result is then discarded, because it was not produced
    /// under exclusion.
    pub fn with_lock<T>(
        &self,
        resource: &str,
        options: AcquireOptions,
        work: impl FnOnce() -> T,
    ) -> Result<T, LockError> {
        let guard = self.acquire(resource, options)?;
        let output = work();
        guard.release()?;
        Ok(output)
    }

    /// Acquires `resource` if that is possible without waiting.
    ///
    /// # Errors
    ///
    /// As [`LockManager::try_acquire`].
    pub fn try_acquire(&self, resource: &str, options: AcquireOptions) -> Result<Option<BlockingLockGuard>, LockError> {
        let options = with_thread_holder(options);
        let guard = block_on(self.inner.try_acquire(resource, options))??;
        Ok(guard.map(|guard| BlockingLockGuard { guard: Some(guard) }))
    }

    /// See [`LockManager::state`].
    ///
    /// # Errors
    ///
    /// As [`LockManager::state`].
    pub fn state(&self, resource: &str) -> Result<LockState, LockError> {
        block_on(self.inner.state(resource))?
    }

    /// See [`LockManager::list`].
    ///
    /// # Errors
    ///
    /// As [`LockManager::list`].
    pub fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        block_on(self.inner.list())?
    }

    /// See [`LockManager::force_release`].
    ///
    /// # Errors
    ///
    /// As [`LockManager::force_release`].
    pub fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        block_on(self.inner.force_release(resource, reason))?
    }

    /// See [`LockManager::cleanup_stale`].
    ///
    /// # Errors
    ///
    /// As [`LockManager::cleanup_stale`].
    pub fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        block_on(self.inner.cleanup_stale())?
    }
}

/// A held lock for blocking callers; released on drop.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct BlockingLockGuard {
    guard: Option<LockGuard>,
}

impl BlockingLockGuard {
    fn guard(&self) -> &LockGuard {
        self.guard.as_ref().unwrap_or_else(|| unreachable!("guard used after release"))
    }

    /// The fencing token of this grant.
    pub fn fencing_token(&self) -> FencingToken {
        self.guard().fencing_token()
    }

    /// The lock's current details.
    pub fn info(&self) -> LockInfo {
        self.guard().info()
    }

    /// Whether the lock is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.guard().is_lost()
    }

    /// Extends the lease to `lease` from now.
    ///
    /// # Errors
    ///
    /// As [`LockGuard::extend`].
    pub fn extend(&self, lease: Duration) -> Result<(), LockError> {
        block_on(self.guard().extend(lease))?
    }

    /// Releases the lock, reporting a lost one.
    ///
    /// # Errors
    ///
    /// As [`LockGuard::release`].
    pub fn release(mut self) -> Result<(), LockError> {
        let Some(guard) = self.guard.take() else { return Ok(()) };
        // A backend that releases without awaiting (in-process) needs no
        // trip through the runtime.
        match guard.release_now() {
            Ok(released) => released,
            Err(later) => {
                // Weak: the release must own the only strong reference (the
                // legacy bridge's takes the grant apart).
                let grant = std::sync::Arc::downgrade(&later);
                block_on(later.release_later()).inspect_err(|_| {
                    // Refused (called inside a runtime): the release never
                    // ran. End the renewal, so the lease runs out.
                    if let Some(grant) = grant.upgrade() {
                        grant.end_keeping();
                    }
                })?
            }
        }
    }
}

/// Several locks held by a blocking caller
/// ([`BlockingLockManager::acquire_all`]); released together, in reverse
/// name order, on drop.
#[derive(Debug)]
#[must_use = "the locks are released as soon as the guard is dropped"]
pub struct BlockingMultiLockGuard {
    guards: Option<MultiLockGuard>,
}

impl BlockingMultiLockGuard {
    fn guards(&self) -> &MultiLockGuard {
        self.guards.as_ref().unwrap_or_else(|| unreachable!("guard used after release"))
    }

    /// The resources held, in name order.
    pub fn resources(&self) -> Vec<&str> {
        self.guards().resources().collect()
    }

    /// Each resource's fencing token, in name order.
    pub fn fencing_tokens(&self) -> Vec<(&str, FencingToken)> {
        self.guards().fencing_tokens().collect()
    }

    /// Whether any of the locks is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.guards().is_lost()
    }

    /// Releases every lock, in reverse name order.
    ///
    /// # Errors
    ///
    /// As [`MultiLockGuard::release`].
    pub fn release(mut self) -> Result<(), LockError> {
        match self.guards.take() {
            Some(guards) => block_on(guards.release())?,
            None => Ok(()),
        }
    }
}

/// A [`StatusManager`] for threads that do not run async code.
#[derive(Clone, Debug)]
pub struct BlockingStatusManager {
    inner: Arc<dyn StatusManager>,
}

impl BlockingStatusManager {
    /// Wraps an async status manager.
    pub fn new(inner: Arc<dyn StatusManager>) -> Self {
        BlockingStatusManager { inner }
    }

    /// See [`StatusManager::set`].
    ///
    /// # Errors
    ///
    /// As [`StatusManager::set`].
    pub fn set(&self, flag: &str, options: FlagOptions) -> Result<(), LockError> {
        block_on(self.inner.set(flag, options))?
    }

    /// See [`StatusManager::clear`].
    ///
    /// # Errors
    ///
    /// As [`StatusManager::clear`].
    pub fn clear(&self, flag: &str) -> Result<bool, LockError> {
        block_on(self.inner.clear(flag))?
    }

    /// See [`StatusManager::is_set`].
    ///
    /// # Errors
    ///
    /// As [`StatusManager::is_set`].
    pub fn is_set(&self, flag: &str) -> Result<bool, LockError> {
        block_on(self.inner.is_set(flag))?
    }

    /// See [`StatusManager::get`].
    ///
    /// # Errors
    ///
    /// As [`StatusManager::get`].
    pub fn get(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        block_on(self.inner.get(flag))?
    }

    /// See [`StatusManager::take`].
    ///
    /// # Errors
    ///
    /// As [`StatusManager::take`].
    pub fn take(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        block_on(self.inner.take(flag))?
    }

    /// See [`StatusManager::list`].
    ///
    /// # Errors
    ///
    /// As [`StatusManager::list`].
    pub fn list(&self) -> Result<Vec<FlagInfo>, LockError> {
        block_on(self.inner.list())?
    }
}

fn with_thread_holder(mut options: AcquireOptions) -> AcquireOptions {
    if options.holder.is_none() {
        options.holder = Some(HolderId::current_thread());
    }
    options
}

/// Runs `future` to completion on lockman's background runtime, from a
/// plain thread; tasks it spawns (a Redis connection's, say) live on that
/// runtime. Used to build blocking front ends such as `lockman::blocking::connect`.
///
/// # Errors
///
/// [`LockError::Config`] when called from inside an async runtime, where
/// blocking would stall it; [`LockError::Backend`] if the background runtime
/// cannot start.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, LockError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(LockError::Config(
            "the blocking lock API was called from inside an async runtime, where blocking would stall it; \
             use the async LockManager there, or call it from a plain thread (std::thread::spawn)"
                .to_owned(),
        ));
    }
    let runtime = crate::runtime::background()?;
    // One poll in the runtime's context first: a future that completes at
    // once (an uncontended in-process lock) skips `block_on`'s set-up of a
    // blocking region and parker. `block_on` polls it again, with its own
    // waker, if it did not.
    let mut future = std::pin::pin!(future);
    {
        let _context = runtime.enter();
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return Ok(output);
        }
    }
    Ok(runtime.block_on(future))
}
