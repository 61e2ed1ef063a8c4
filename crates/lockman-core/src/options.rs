//! How an acquisition behaves: how long to wait, the lease, who asks and why.

use std::time::Duration;

use crate::{HolderId, LockMode};

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
/// holder (so the acquisition is not reentrant). A holder set with
/// [`holder`](Self::holder) is a reentrancy key scoped to the manager; see
/// [`shared_holder`](Self::shared_holder) for one shared between processes.
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
    /// Who is acquiring. Acquisitions through one manager with the same
    /// holder re-enter; see [`HolderId`] for how far an id reaches.
    pub holder: Option<HolderId>,
    /// How the grant shares the resource: exclusive (the default), shared
    /// ([`shared`](Self::shared)) or one of n permits
    /// ([`permits`](Self::permits)).
    pub mode: LockMode,
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

    /// Takes a **shared** (read) hold: any number of shared holders hold the
    /// resource together, never beside an exclusive holder.
    ///
    /// Waiters are served in arrival order across modes, so a writer waiting
    /// for readers to leave holds back the readers that came after it (a
    /// stream of readers cannot starve it), and the readers queued behind a
    /// writer are let in together when it is done. Backends that cannot hold
    /// shared locks ([`Capabilities::shared_mode`](crate::Capabilities::shared_mode)
    /// is false: legacy-file) refuse with [`LockError::Config`](crate::LockError::Config).
    ///
    /// A holder that re-enters may take a shared hold of a resource it holds
    /// exclusively (it already excludes everyone); taking an exclusive hold
    /// of one it holds shared (an *upgrade*) is refused, because two readers
    /// upgrading at once would each wait for the other forever.
    ///
    /// ```
    /// use lockman_core::{AcquireOptions, LockMode};
    /// assert_eq!(AcquireOptions::new().shared().mode, LockMode::Shared);
    /// ```
    pub fn shared(mut self) -> Self {
        self.mode = LockMode::Shared;
        self
    }

    /// Takes an exclusive hold (the default).
    pub fn exclusive(mut self) -> Self {
        self.mode = LockMode::Exclusive;
        self
    }

    /// Treats the resource as a **semaphore** of `permits` and takes one
    /// permit: at most `permits` holders hold it at once.
    ///
    /// Every party on the resource must give the same count: one that asks
    /// for another count, or for an exclusive or shared hold, while the
    /// semaphore is in use gets [`LockError::Config`](crate::LockError::Config)
    /// naming both. A count of 0 is refused the same way. Waiters are served
    /// in arrival order. Backends without semaphores
    /// ([`Capabilities::permits`](crate::Capabilities::permits) is false)
    /// refuse.
    ///
    /// ```
    /// use lockman_core::{AcquireOptions, LockMode};
    /// assert_eq!(AcquireOptions::new().permits(3).mode, LockMode::Permits(3));
    /// ```
    pub fn permits(mut self, permits: u32) -> Self {
        self.mode = LockMode::Permits(permits);
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

    /// Acquires on behalf of `holder`: a **reentrancy key**, not a name.
    ///
    /// Every acquisition through this manager with the same holder id gets
    /// in while one of them holds the lock — two tasks of a daemon using one
    /// constant id (`.holder("force-charge")`) both hold it at once. Give a
    /// holder id only to code that may re-enter a lock it already holds (a
    /// command calling a helper that locks the same resource), and a distinct
    /// id, or none, to parties that must exclude each other. Without a holder
    /// every acquisition is its own party.
    ///
    /// A string here is [scoped to the manager](HolderId#scope): other
    /// managers and processes using the same text are other holders and are
    /// excluded, on every backend. To make several managers or processes one
    /// holder on purpose, use [`shared_holder`](Self::shared_holder). Shown
    /// in [`LockInfo::holder`](crate::LockInfo::holder) and `lockctl list` as
    /// `NAME@SCOPE`, e.g. `force-charge@3f2a9c1b0d4e.1`.
    pub fn holder(mut self, holder: impl Into<HolderId>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// Acquires on behalf of a holder id **shared by every manager and
    /// process** that uses it ([`HolderId::shared`]): an explicit opt-in to
    /// cross-process identity.
    ///
    /// On a backend declaring
    /// [`Capabilities::shared_holders`](crate::Capabilities::shared_holders)
    /// (Redis), two processes acquiring with the same shared holder *both*
    /// hold the lock: they share one grant as two holds, with one fencing
    /// token, and it is free once both released. Other backends exclude them
    /// like any two holders. Use it only when the processes really act as one
    /// (e.g. a job handed over between processes that must keep its grant).
    ///
    /// ```
    /// use lockman_core::AcquireOptions;
    /// let opts = AcquireOptions::new().shared_holder("nightly-backup");
    /// assert!(opts.holder.is_some_and(|h| h.is_shared()));
    /// ```
    pub fn shared_holder(mut self, holder: impl Into<std::sync::Arc<str>>) -> Self {
        self.holder = Some(HolderId::shared(holder));
        self
    }
}
