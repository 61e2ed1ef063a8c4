//! The lock API callers use: [`LockManager`] and its conveniences.

use std::fmt::Debug;
use std::future::Future;

use async_trait::async_trait;

use crate::{AcquireOptions, Capabilities, LockError, LockEvents, LockGuard, LockInfo, LockState, MultiLockGuard};

/// One lock API over every backend.
///
/// Object safe and `Send + Sync`: hold it as `Arc<dyn LockManager>` and let
/// configuration pick the backend. Backends usually implement it through
/// [`Locks`](crate::Locks), which supplies guards, reentrancy, leases, events
/// and metrics on top of a backend's raw operations.
///
/// ```
/// use lockman_core::{AcquireOptions, LockError, LockManager};
/// use std::time::Duration;
///
/// async fn read_registers(locks: &dyn LockManager) -> Result<(), LockError> {
///     let guard = locks
///         .acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(5)).purpose("poll"))
///         .await?;
///     // ... one transaction on the bus ...
///     guard.release().await
/// }
/// ```
///
/// # Reading the signatures
///
/// The trait is written with [`async_trait`](https://docs.rs/async-trait) so
/// that it stays object safe, and rustdoc shows the methods as it expands
/// them:
///
/// ```text
/// fn acquire<'life0, 'life1, 'async_trait>(&'life0 self, resource: &'life1 str, options: AcquireOptions)
///     -> Pin<Box<dyn Future<Output = Result<LockGuard, LockError>> + Send + 'async_trait>>
/// ```
///
/// Read that as `async fn acquire(&self, resource: &str, options: AcquireOptions) -> Result<LockGuard, LockError>`:
/// the `'life…` lifetimes are the borrows of `self` and the arguments, which
/// the returned future holds until it completes, and the boxed future is
/// `Send`, so it can be spawned. Call the methods with `.await`, as above.
/// Implementing the trait takes `#[async_trait]` on the `impl` block too
/// (backends usually implement [`LockBackend`](crate::LockBackend) and wrap
/// it in [`Locks`](crate::Locks) instead).
#[async_trait]
pub trait LockManager: Debug + Send + Sync {
    /// The backend's short name (`"memory"`, `"file"`, `"redis"`, ...).
    fn name(&self) -> &str;

    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// A stream of this manager's [`LockEvent`](crate::LockEvent)s from now on.
    fn events(&self) -> LockEvents;

    /// Acquires `resource`, waiting as `options.wait` says.
    ///
    /// # Errors
    ///
    /// * [`LockError::Timeout`] when the wait ran out; it names the holder.
    /// * [`LockError::InvalidName`] for a name the backend cannot store.
    /// * [`LockError::Backend`] when the backend failed; never a false grant.
    async fn acquire(&self, resource: &str, options: AcquireOptions) -> Result<LockGuard, LockError>;

    /// Acquires `resource` only if that is possible without waiting
    /// (`options.wait` is ignored); `Ok(None)` when someone else holds it.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), except that a held lock is `Ok(None)`.
    async fn try_acquire(&self, resource: &str, options: AcquireOptions) -> Result<Option<LockGuard>, LockError>;

    /// Who holds `resource`, without taking it.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::Backend`].
    async fn state(&self, resource: &str) -> Result<LockState, LockError>;

    /// Every lock currently held (or stale) in this backend.
    ///
    /// # Errors
    ///
    /// [`LockError::Backend`].
    async fn list(&self) -> Result<Vec<LockInfo>, LockError>;

    /// Breaks the lock on `resource` whoever holds it; returns what was
    /// broken. The holder's guard reports the lock lost (where the backend
    /// can reach it) and a `ForceReleased` event carries `reason`.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::Backend`].
    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError>;

    /// Removes locks whose holder is gone or whose lease ran out; returns them.
    ///
    /// # Errors
    ///
    /// [`LockError::Backend`].
    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError>;
}

/// Conveniences for every [`LockManager`], including `dyn LockManager`.
///
/// ```
/// use lockman_core::{AcquireOptions, LockError, LockManager, LockManagerExt};
///
/// async fn save(locks: &dyn LockManager) -> Result<u32, LockError> {
///     locks
///         .with_lock("regcache", AcquireOptions::new().purpose("save cache"), || async {
///             // ... write the cache file ...
///             42
///         })
///         .await
/// }
/// ```
pub trait LockManagerExt: LockManager {
    /// Acquires `resource` with the default options: wait forever, unless the
    /// manager carries a default wait (see [`Locks::with_defaults`](crate::Locks::with_defaults)).
    fn lock<'a>(&'a self, resource: &'a str) -> impl Future<Output = Result<LockGuard, LockError>> + Send + 'a {
        self.acquire(resource, AcquireOptions::new())
    }

    /// Acquires `resource` if it is free right now.
    fn try_lock<'a>(
        &'a self,
        resource: &'a str,
    ) -> impl Future<Output = Result<Option<LockGuard>, LockError>> + Send + 'a {
        self.try_acquire(resource, AcquireOptions::new())
    }

    /// Takes every one of `resources` or none, within one overall wait.
    ///
    /// The resources are taken one at a time in **name order** (sorted,
    /// duplicates dropped), whatever order they are given in, so two callers
    /// with overlapping sets never wait for each other in a cycle
    /// (deadlock). `options` apply to each resource (mode, lease, purpose,
    /// holder); a timeout is the wait for the whole set: each resource may
    /// wait what is left of it. If any resource cannot be taken in time (or
    /// fails), those already taken are released, last first, and the error
    /// is returned — a [`LockError::Timeout`] names the resource that was
    /// busy and its holder, and its `waited` is the whole wait.
    ///
    /// The guard releases every lock in reverse order, and reports a loss of
    /// any of them. Works on every backend and across wrappers (the legacy
    /// bridge), because it only uses [`acquire`](LockManager::acquire).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockman_core::{AcquireOptions, LockError, LockManager, LockManagerExt};
    ///
    /// async fn rebalance(locks: &dyn LockManager) -> Result<(), LockError> {
    ///     let opts = AcquireOptions::new().timeout(Duration::from_secs(2)).purpose("rebalance");
    ///     let held = locks.acquire_all(["battery", "inverter_write"], opts).await?;
    ///     // ... both are held ...
    ///     held.release().await
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockManager::acquire), for the first resource that
    /// could not be taken; nothing is held then.
    fn acquire_all<'a, I, S>(
        &'a self,
        resources: I,
        options: AcquireOptions,
    ) -> impl Future<Output = Result<MultiLockGuard, LockError>> + Send + 'a
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let resources: Vec<String> = resources.into_iter().map(|name| name.as_ref().to_owned()).collect();
        crate::multi::acquire_all(self, resources, options)
    }

    /// Runs `work` while holding `resource`, then releases it.
    ///
    /// # Errors
    ///
    /// Acquisition errors, and [`LockError::Lost`] if the lock was lost while
    /// `work` ran — its result is then discarded, because it was not produced
    /// under exclusion.
    fn with_lock<'a, F, Fut, T>(
        &'a self,
        resource: &'a str,
        options: AcquireOptions,
        work: F,
    ) -> impl Future<Output = Result<T, LockError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'a,
        Fut: Future<Output = T> + Send + 'a,
        T: Send + 'a,
    {
        self.with_lock_guard(resource, options, |_| work())
    }

    /// Like [`with_lock`](Self::with_lock), but `work` gets the guard, so it
    /// can hand [`LockGuard::fencing_token`] to a store that checks it (see
    /// `lockman::fencing`), or stop early on [`LockGuard::lost`].
    ///
    /// `work` sees the guard before its future starts: take what the future
    /// needs from it there (the token, `guard.lost()`, which does not borrow
    /// the guard). The future cannot borrow the guard itself — it is
    /// released when the future is done — but can borrow anything else that
    /// outlives the call. The guard is released when `work`'s future is done.
    ///
    /// ```
    /// use lockman_core::{AcquireOptions, FencingToken, LockError, LockManager, LockManagerExt};
    ///
    /// async fn save(locks: &dyn LockManager, store: &Vec<FencingToken>) -> Result<u64, LockError> {
    ///     locks
    ///         .with_lock_guard("regcache", AcquireOptions::new().purpose("save cache"), |guard| {
    ///             let token = guard.fencing_token();
    ///             async move {
    ///                 // ... write the cache to a store that refuses tokens below the last it saw ...
    ///                 store.len() as u64 + token.get()
    ///             }
    ///         })
    ///         .await
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`with_lock`](Self::with_lock): acquisition errors, and
    /// [`LockError::Lost`] (discarding `work`'s result) if the lock was lost
    /// while `work` ran.
    fn with_lock_guard<'a, F, Fut, T>(
        &'a self,
        resource: &'a str,
        options: AcquireOptions,
        work: F,
    ) -> impl Future<Output = Result<T, LockError>> + Send + 'a
    where
        F: FnOnce(&LockGuard) -> Fut + Send + 'a,
        Fut: Future<Output = T> + Send + 'a,
        T: Send + 'a,
    {
        async move {
            let guard = self.acquire(resource, options).await?;
            let output = work(&guard).await;
            guard.release().await?;
            Ok(output)
        }
    }
}

impl<M: LockManager + ?Sized> LockManagerExt for M {}
