//! The backend-facing side: the raw operations a backend implements.
//!
//! Like `lock_api::RawMutex` under `lock_api::Mutex`, a backend supplies only
//! the raw operations — grant, release, renew, inspect — and
//! [`Locks`](crate::Locks) adds everything else once: guards, reentrancy,
//! lease renewal, lost-lock detection, events, metrics and tracing.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::{Capabilities, FencingToken, HolderId, LockError, LockInfo, LockState, LossSignal};

pub use crate::queue::{LocalQueue, Turn};

/// When a waiting acquisition must give up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// Do not wait at all.
    Now,
    /// Give up at this instant.
    At(Instant),
    /// Never give up.
    Never,
}

impl Deadline {
    /// The instant to give up at, if any (`Now` is "already").
    pub fn instant(self) -> Option<Instant> {
        match self {
            Deadline::Now => Some(Instant::now()),
            Deadline::At(at) => Some(at),
            Deadline::Never => None,
        }
    }

    /// Whether the deadline has passed.
    pub fn has_passed(self) -> bool {
        match self {
            Deadline::Now => true,
            Deadline::At(at) => Instant::now() >= at,
            Deadline::Never => false,
        }
    }
}

/// One request for a new grant, as the backend sees it.
///
/// Re-entries by a holder that already holds the resource in this manager are
/// handled by core and never reach the backend.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GrantRequest {
    /// The (validated) resource name.
    pub resource: Arc<str>,
    /// Who asks.
    pub holder: HolderId,
    /// How the grant shares the resource. Core only passes a shared or
    /// permits mode to a backend whose capabilities declare it, with a
    /// permit count of at least 1; the backend refuses a mode that disagrees
    /// with the resource's live grants or queued requests
    /// ([`LockMode::agrees_with`](crate::LockMode::agrees_with)).
    pub mode: crate::LockMode,
    /// Why.
    pub purpose: Option<Arc<str>>,
    /// The lease to set, if any (the caller's, or the backend default).
    pub lease: Option<Duration>,
    /// Whether core renews the lease while the grant is held (the caller
    /// gave no lease of its own). Core renews within a third of what the
    /// backend granted, so a backend may grant such a request a shorter
    /// lease than `lease` at first (say, a lock handed to a waiter that
    /// must show it is alive), and the first renewal sets the whole lease.
    pub renewed: bool,
    /// When to stop waiting.
    pub deadline: Deadline,
    /// When core asked the backend, on tokio's clock (as `deadline`): the
    /// call's start, or, for a same-holder call that first waited for the
    /// holder's earlier acquisition, when it went on. A backend that grants
    /// at once may date the grant from it rather than read the clock again.
    pub asked_at: tokio::time::Instant,
    /// Whether the caller chose the wait (a wait setter on its
    /// [`AcquireOptions`](crate::AcquireOptions), or `try_acquire`); `false`
    /// when it left the default (wait forever). A backend with its own
    /// per-resource default for a busy resource (legacy-file's skip policy)
    /// applies it only then, and reports it with [`Acquired::Skipped`].
    pub explicit_wait: bool,
    /// Report here if the grant is later lost (lease expired and handed on,
    /// force-released, stolen). Keep a clone with the grant.
    pub loss: LossSignal,
}

/// The outcome of [`LockBackend::acquire`].
#[derive(Debug)]
pub enum Acquired<G> {
    /// The lock is ours.
    Granted(Granted<G>),
    /// The deadline passed while someone else held it.
    Busy {
        /// Who held it, if the backend can tell.
        holder: Option<LockInfo>,
    },
    /// Someone else held it and the backend gave up without waiting, by
    /// its own policy for the resource (only when the caller chose no wait:
    /// [`GrantRequest::explicit_wait`] is false). Reported to the caller as
    /// a [`LockError::Timeout`] whose `skipped` says why.
    Skipped {
        /// Who held it, if the backend can tell.
        holder: Option<LockInfo>,
        /// What happened and what to do, e.g. "an old (legacy) process
        /// holds /app/.lockfile and the resource's legacy policy is skip".
        reason: String,
    },
}

/// A fresh grant.
#[derive(Debug)]
#[non_exhaustive]
pub struct Granted<G> {
    /// Backend state that lives as long as the grant (a locked file, a token).
    pub grant: G,
    /// The grant's fencing token.
    pub fencing_token: FencingToken,
    /// When the lease runs out, if there is one.
    pub lease_expires_at: Option<SystemTime>,
    /// When the grant was made, if the backend recorded it (core reads the
    /// clock otherwise).
    pub acquired_at: Option<SystemTime>,
    /// Whether the caller had to wait for another holder (for metrics).
    pub contended: bool,
}

impl<G> Granted<G> {
    /// A grant with `fencing_token`, expiring at `lease_expires_at`.
    pub fn new(grant: G, fencing_token: FencingToken, lease_expires_at: Option<SystemTime>) -> Self {
        Granted { grant, fencing_token, lease_expires_at, acquired_at: None, contended: false }
    }

    /// Records when the backend made the grant.
    pub fn acquired_at(mut self, at: SystemTime) -> Self {
        self.acquired_at = Some(at);
        self
    }

    /// Marks the grant as one the caller had to wait for.
    pub fn after_waiting(mut self, waited: bool) -> Self {
        self.contended = waited;
        self
    }
}

/// The raw operations of a lock backend.
///
/// Implement this and wrap it in [`Locks`](crate::Locks) to get a complete
/// [`LockManager`](crate::LockManager). The conformance suite in
/// `lockman-testkit` checks the result.
///
/// # Contract
///
/// * `acquire` grants only if no *other* grant of the resource is live, honours
///   the deadline, and is cancel-safe: if its future is dropped it must not
///   leave a grant behind.
/// * Fencing tokens strictly increase per grant of a resource.
/// * `release` and `renew` return [`LockError::Lost`] when the grant is no
///   longer the live one (core then reports it lost).
pub trait LockBackend: Debug + Send + Sync + 'static {
    /// What the backend keeps for a live grant.
    type Grant: Send + Sync + 'static;

    /// Short name used in errors, events and metrics (`"memory"`, `"redis"`).
    fn name(&self) -> &'static str;

    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Backend-specific name rules, checked after core's (non-empty, at most
    /// [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes, no NUL).
    fn validate_name(&self, resource: &str) -> Result<(), LockError> {
        let _ = resource;
        Ok(())
    }

    /// Why the backend lacks the modes its [`capabilities`](Self::capabilities)
    /// leave out, added to the error core returns for them (e.g. "the legacy
    /// lockfile protocol has one holder per lock file"). `None`: no reason
    /// beyond the capabilities.
    fn modes_unsupported_because(&self) -> Option<&'static str> {
        None
    }

    /// Whether the backend's leases run on the caller's tokio clock, as the
    /// in-process backend's do (a paused test clock runs them out in
    /// virtual time): core then renews and watches them on the caller's
    /// runtime. A backend whose leases live in a store outside the process
    /// keeps the default, `false`: core renews them where they keep going
    /// while the caller's task is blocked in synchronous work (see
    /// [`spawn_detached`](crate::spawn_detached)).
    fn leases_follow_callers_clock(&self) -> bool {
        false
    }

    /// Grants `request`, waiting until its deadline.
    fn acquire(&self, request: &GrantRequest) -> impl Future<Output = Result<Acquired<Self::Grant>, LockError>> + Send;

    /// Decides `request` without awaiting, if the backend can: `Some` with
    /// what [`acquire`](Self::acquire) would return without waiting (a
    /// grant; or, when the deadline is [`Deadline::Now`], busy), `None` when
    /// the caller would have to wait. Returning `None` must leave no trace
    /// (nothing queued): core then calls `acquire`, which decides afresh.
    ///
    /// An in-process backend implements it so an uncontended grant costs no
    /// future of its own; the default, `None`, always takes `acquire`. Core
    /// may call it with its own locks held: it must not call back into the
    /// manager.
    fn acquire_now(&self, request: &GrantRequest) -> Option<Result<Acquired<Self::Grant>, LockError>> {
        let _ = request;
        None
    }

    /// Releases a grant.
    ///
    /// A backend whose release never blocks implements only
    /// [`release_now`](Self::release_now): this default runs it. A backend
    /// that must await (a network round trip) implements this.
    fn release(&self, grant: &Self::Grant) -> impl Future<Output = Result<(), LockError>> + Send {
        let released = self.release_now(grant).unwrap_or_else(|| {
            Err(LockError::backend(
                self.name(),
                "releasing",
                None,
                "this backend implements neither `release` nor `release_now` (a bug in the backend)",
            ))
        });
        std::future::ready(released)
    }

    /// Releases without awaiting, if the backend can do so without blocking
    /// (used when a guard is dropped). `None` makes core run
    /// [`release`](Self::release) on a task instead.
    fn release_now(&self, grant: &Self::Grant) -> Option<Result<(), LockError>> {
        let _ = grant;
        None
    }

    /// The descriptor that carries the grant's kernel lock, if its lock is one
    /// (Unix; `None` by default, and for leases, Redis and in-process locks).
    ///
    /// A child process that inherits a descriptor of the same open file
    /// description shares the lock (`flock` locks belong to the description,
    /// not the process): the kernel then keeps the lock until every process
    /// holding the description has closed it, so a child that outlives this
    /// process stays under the lock, as with `flock(1)`. An explicit release
    /// (unlock) still ends the lock for every sharer. See
    /// [`LockGuard::lock_fd`](crate::LockGuard::lock_fd).
    #[cfg(unix)]
    fn lock_fd<'g>(&self, grant: &'g Self::Grant) -> Option<std::os::fd::BorrowedFd<'g>> {
        let _ = grant;
        None
    }

    /// Sets the grant's lease to `lease` from now; returns the new expiry.
    fn renew(&self, grant: &Self::Grant, lease: Duration)
    -> impl Future<Output = Result<SystemTime, LockError>> + Send;

    /// The state of one resource, without taking it.
    fn inspect(&self, resource: &str) -> impl Future<Output = Result<LockState, LockError>> + Send;

    /// Every held (or stale) lock.
    fn list(&self) -> impl Future<Output = Result<Vec<LockInfo>, LockError>> + Send;

    /// Breaks the lock on `resource` whoever holds it, telling the holder's
    /// guard (where the backend can) that it was lost for `reason`.
    fn force_release(
        &self,
        resource: &str,
        reason: &str,
    ) -> impl Future<Output = Result<Option<LockInfo>, LockError>> + Send;

    /// Removes stale locks; returns what was removed.
    fn cleanup_stale(&self) -> impl Future<Output = Result<Vec<LockInfo>, LockError>> + Send;

    /// Wraps the backend in [`Locks`](crate::Locks), making it a full
    /// [`LockManager`](crate::LockManager).
    fn into_manager(self) -> crate::Locks<Self>
    where
        Self: Sized,
    {
        crate::Locks::new(self)
    }
}
