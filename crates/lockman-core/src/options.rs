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
/// A manager may carry defaults of its own ([`Locks::with_defaults`](crate::Locks::with_defaults),
/// installed by `lockman::connect` from `LOCKMAN_DEFAULT_WAIT` and
/// `LOCKMAN_LEASE`): they apply to every option the caller left unset, so
/// library code that only sees an `Arc<dyn LockManager>` still follows the
/// operator's settings. A wait chosen with a setter always wins.
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
    /// Whether a manager's defaults were already applied: a wrapping manager
    /// (the legacy bridge) applies its defaults once, and the managers it
    /// wraps must neither apply theirs again nor take the defaulted wait for
    /// the caller's choice.
    defaults_applied: bool,
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
        self.wait_chosen || (!self.defaults_applied && self.wait != Wait::Forever)
    }

    /// These options with a manager's `defaults` filled in where the caller
    /// left them unset: the wait (unless one was chosen), and the purpose
    /// (the default purpose prefixes the caller's: `"daemon: poll"`). The
    /// default lease is not copied here: it stays a default lease, renewed
    /// while the guard lives, which [`Locks`](crate::Locks) applies itself.
    /// Applied at most once, by the outermost manager.
    pub(crate) fn with_defaults(mut self, defaults: &AcquireOptions) -> Self {
        if self.defaults_applied {
            return self;
        }
        if self.wait_is_explicit() {
            // Remember a wait set through the public field as the caller's.
            self.wait_chosen = true;
        } else if defaults.wait_is_explicit() {
            self.wait = defaults.wait;
        }
        if let Some(prefix) = &defaults.purpose {
            self.purpose = Some(match self.purpose.take() {
                Some(purpose) => format!("{prefix}: {purpose}"),
                None => prefix.clone(),
            });
        }
        self.defaults_applied = true;
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
