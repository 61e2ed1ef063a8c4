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
    /// How long to wait for a held resource.
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
}

impl AcquireOptions {
    /// The defaults: wait forever, backend lease, no purpose, anonymous holder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fail at once if the resource is held.
    pub fn no_wait(mut self) -> Self {
        self.wait = Wait::NoWait;
        self
    }

    /// Wait at most `timeout` for the resource.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.wait = Wait::Timeout(timeout);
        self
    }

    /// Wait as long as it takes.
    pub fn wait_forever(mut self) -> Self {
        self.wait = Wait::Forever;
        self
    }

    /// Sets the wait policy directly.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
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
