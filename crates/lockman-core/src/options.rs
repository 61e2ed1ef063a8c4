//! How an acquisition behaves: how long to wait, the lease, who asks and why.

use std::time::Duration;

use crate::HolderId;

/// How long [`LockManager::acquire`](crate::LockManager::acquire) waits for a
/// held resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wait {
    /// Fail with [`LockError::Timeout`](crate::LockError::Timeout) at once if
    /// the resource is held by someone else.
    NoWait,
    /// Wait at most this long.
    Timeout(Duration),
    /// Wait until the lock is granted (or the backend fails).
    #[default]
    Forever,
}

/// Options for one acquisition, built fluently.
///
/// The defaults: wait forever, the backend's default lease (kept alive
/// automatically while the guard lives), no purpose, and a fresh anonymous
/// holder (so the acquisition is not reentrant).
///
/// ```
/// use std::time::Duration;
/// use lockman_core::{AcquireOptions, Wait};
///
/// let opts = AcquireOptions::new()
///     .timeout(Duration::from_secs(2))
///     .purpose("read all registers")
///     .holder("poller");
/// assert_eq!(opts.wait, Wait::Timeout(Duration::from_secs(2)));
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct AcquireOptions {
    /// How long to wait for a held resource. Left at the default (no wait
    /// setter called), a backend may apply its own per-resource default
    /// instead: legacy-file gives up at once on a resource whose legacy
    /// policy is skip-if-busy when an old process holds it. A wait chosen
    /// with a setter (even [`wait_forever`](Self::wait_forever)) is honoured.
    pub wait: Wait,
    /// Lease length. `None` means the backend's default lease, renewed
    /// automatically while the guard lives. An explicit lease is *not* renewed:
    /// a holder that outlives it loses the lock (extend it with
    /// [`LockGuard::extend`](crate::LockGuard::extend)). Backends without
    /// leases (`capabilities().leases == false`, e.g. kernel file locks that
    /// vanish with the process) ignore it.
    pub lease: Option<Duration>,
    /// Why the lock is taken; shown to whoever has to wait or inspect it.
    pub purpose: Option<String>,
    /// Who is acquiring. Acquisitions with the same holder re-enter.
    pub holder: Option<HolderId>,
    /// Whether a wait was chosen with [`no_wait`](Self::no_wait),
    /// [`timeout`](Self::timeout), [`wait_forever`](Self::wait_forever) or
    /// [`wait`](Self::wait), rather than left at the default.
    wait_chosen: bool,
}

impl AcquireOptions {
    /// The defaults: wait forever, backend lease, no purpose, anonymous holder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fail at once if the resource is held.
    pub fn no_wait(mut self) -> Self {
        self.wait = Wait::NoWait;
        self.wait_chosen = true;
        self
    }

    /// Wait at most `timeout` for the resource.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.wait = Wait::Timeout(timeout);
        self.wait_chosen = true;
        self
    }

    /// Wait as long as it takes.
    pub fn wait_forever(mut self) -> Self {
        self.wait = Wait::Forever;
        self.wait_chosen = true;
        self
    }

    /// Sets the wait policy directly.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self.wait_chosen = true;
        self
    }

    /// Whether the caller chose how long to wait: any of the wait setters
    /// was called, or [`wait`](Self::wait) was set to something other than
    /// the default [`Wait::Forever`]. Backends with their own default for a
    /// busy resource (legacy-file's skip policy) apply it only when not.
    pub(crate) fn wait_is_explicit(&self) -> bool {
        self.wait_chosen || self.wait != Wait::Forever
    }

    /// Holds the lock for at most `lease` unless extended.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Records why the lock is taken.
    pub fn purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = Some(purpose.into());
        self
    }

    /// Acquires on behalf of `holder`; the same holder may re-enter.
    pub fn holder(mut self, holder: impl Into<HolderId>) -> Self {
        self.holder = Some(holder.into());
        self
    }
}
