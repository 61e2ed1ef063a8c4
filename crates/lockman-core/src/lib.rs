//! The lockman contract, and the machinery every backend shares.
//!
//! lockman gives programs one lock API with swappable backends. This crate
//! holds what every backend has in common:
//!
//! * **The caller's API**: [`LockManager`] (plus [`LockManagerExt`]),
//!   [`LockGuard`], [`AcquireOptions`], [`LockInfo`]/[`LockState`],
//!   [`LockError`], and [`StatusManager`] for named flags. The [`blocking`]
//!   module offers the same for threads without an async runtime.
//! * **The backend's API**: [`LockBackend`], a small trait of raw operations
//!   (grant, release, renew, inspect). Wrapping a backend in [`Locks`] yields a
//!   full [`LockManager`]: guards that release on drop, reentrancy by
//!   [`HolderId`], lease renewal and expiry, lost-lock detection, events,
//!   metrics and tracing are written here once, not in every backend.
//!
//! ## A lock's life
//!
//! [`LockManager::acquire`] waits (or not, see [`Wait`]) until the backend
//! grants the resource, and returns a [`LockGuard`]. Each grant carries a
//! [`FencingToken`] that increases with every new grant. A lock may be given a
//! lease; without one the backend's default lease (if it has one) is renewed
//! automatically while the guard lives. If the lease runs out, the lock is
//! force-released or the backend loses it, the guard reports it *lost*:
//! [`LockGuard::lost`] completes, [`LockGuard::release`] returns
//! [`LockError::Lost`], and a [`LockEventKind::Lost`] event is published.
//!
//! ## Observability
//!
//! Every acquisition runs in a `lockman.acquire` tracing span (resource,
//! backend, waited_ms, outcome); counters and histograms named in [`metrics`]
//! go through the `metrics` facade; [`LockManager::events`] streams
//! [`LockEvent`]s.
//!
//! ## Untrusted records
//!
//! What a backend reads back (holder, host, user, purpose, flag values,
//! times) was written by whoever could write the store. The `Display` of
//! [`LockInfo`], [`LockError`] and [`LostReason`] escapes control and bidi
//! characters in such text and never fails on an out-of-range time; see
//! [`display`] for the functions, which programs printing these fields
//! themselves should use too.

pub mod backend;
pub mod blocking;
pub mod bridge;
pub mod display;
mod error;
mod event;
pub mod fencing;
mod guard;
mod ids;
mod info;
mod locks;
mod loss;
mod manager;
pub mod metrics;
mod mode;
mod multi;
mod name;
mod options;
mod queue;
mod redact;
mod runtime;
pub use runtime::InBackground;
mod status;
pub mod url_options;

pub use backend::LockBackend;
pub use bridge::BridgedLockManager;
pub use error::{LockError, LostReason};
pub use event::{EventSink, EventsError, LockEvent, LockEventKind, LockEvents};
pub use guard::LockGuard;
pub use ids::{FencingToken, HolderId};
pub use info::{Capabilities, LockInfo, LockState, LockStateKind, WakeMechanism};
pub use locks::Locks;
pub use loss::LossSignal;
pub use manager::{LockManager, LockManagerExt};
pub use mode::LockMode;
pub use multi::MultiLockGuard;
pub use name::{MAX_NAME_LEN, validate_name};
pub use options::{AcquireOptions, Wait};
pub use redact::redact_url;
pub use status::{FlagInfo, FlagOptions, StatusManager};

/// The operating-system user running this process (`$USER`, or `$USERNAME`
/// on Windows), looked up once.
pub fn username() -> Option<&'static str> {
    static USERNAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    USERNAME
        .get_or_init(|| std::env::var("USER").or_else(|_| std::env::var("USERNAME")).ok().filter(|u| !u.is_empty()))
        .as_deref()
}

/// Runs `task` on lockman's own background runtime (one thread, I/O and
/// timers enabled), whatever runtime — if any — the caller is on. Backends
/// use it for work that needs an I/O driver the caller's runtime may lack.
pub fn spawn_background<F>(task: F) -> Result<(), LockError>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    runtime::background()?.spawn(task);
    Ok(())
}

/// Polls `future` in lockman's background runtime context, so that what it
/// spawns or registers (a Redis or gRPC connection's driver task, its
/// reconnects, sockets and timers) lives on a runtime that is always
/// driven. Backends wrap connection set-up and commands in it, so a manager
/// made on one runtime keeps working from another runtime while the first
/// is idle or gone, and from blocking threads.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockman_core::LockError> {
/// let spawned_on_background = lockman_core::in_background(Box::pin(async {
///     tokio::spawn(async { std::thread::current().name().map(str::to_owned) }).await
/// }))?
/// .await
/// .expect("join");
/// assert_eq!(spawned_on_background.as_deref(), Some("lockman-background"));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`LockError::Backend`] if the background runtime cannot be started.
pub fn in_background<F: std::future::Future + Unpin>(future: F) -> Result<InBackground<F>, LockError> {
    Ok(InBackground::new(background_handle()?, future))
}

/// Runs `task` where it keeps going while the caller's task is busy in
/// synchronous code: on the caller's runtime if it is a multi-thread one
/// (its other workers run it, without a hop to another thread), else — a
/// current-thread runtime, which a blocked caller stops entirely, or no
/// runtime — on lockman's background runtime. For keep-alives and watches
/// a grant depends on.
///
/// # Errors
///
/// [`LockError::Backend`] if the background runtime is needed and cannot
/// be started.
pub fn spawn_detached<F>(task: F) -> Result<(), LockError>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    runtime::detached_home()?.spawn(task);
    Ok(())
}

/// Whether the caller is on a multi-thread runtime, whose workers keep
/// running tasks while one caller blocks (see [`spawn_detached`]).
pub fn callers_runtime_keeps_running() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// A handle to lockman's background runtime (one thread, I/O and timers
/// enabled), for backends that keep it beside a connection and wrap each
/// command in [`InBackground::new`].
///
/// # Errors
///
/// [`LockError::Backend`] if the background runtime cannot be started.
pub fn background_handle() -> Result<tokio::runtime::Handle, LockError> {
    Ok(runtime::background()?.handle().clone())
}

/// This host's name, looked up once.
pub fn hostname() -> &'static str {
    static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOSTNAME.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
}
