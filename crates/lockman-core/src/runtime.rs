//! Where core runs work that cannot happen on the caller's thread.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

use crate::LockError;

/// A small runtime owned by lockman, used by the blocking API and to finish
/// releases of guards dropped outside any runtime.
pub(crate) fn background() -> Result<&'static Runtime, LockError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("lockman-background")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            LockError::backend(
                "core",
                "starting the background runtime",
                None,
                format!("{e}; lockman needs one thread for blocking callers"),
            )
        })
}

/// Spawns `task` on the caller's runtime, or on the background one.
pub(crate) fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match Handle::try_current() {
        Ok(handle) => {
            handle.spawn(task);
        }
        Err(_) => match background() {
            Ok(runtime) => {
                runtime.spawn(task);
            }
            Err(e) => tracing::error!(error = %e, "cannot run a lock release or renewal"),
        },
    }
}

/// Where [`spawn_detached`](crate::spawn_detached) runs a task: the
/// caller's runtime if it is a multi-thread one (its other workers run it,
/// without a wake-up of the background thread), else — a current-thread
/// runtime, which a blocked caller stops entirely, or none — the background
/// runtime. (Core's own lease watchers wait unstarted until their work is
/// due, then run there: see `locks/watch.rs`; those of backends whose
/// leases follow the caller's clock run on the caller's runtime.)
pub(crate) fn detached_home() -> Result<Handle, LockError> {
    match Handle::try_current() {
        Ok(caller) if caller.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => Ok(caller),
        _ => Ok(background()?.handle().clone()),
    }
}

/// [`spawn_detached`](crate::spawn_detached), falling back to the caller's
/// runtime if the background one cannot start. For renewing a lease and
/// watching it run out.
pub(crate) fn spawn_detached<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match detached_home() {
        Ok(home) => {
            home.spawn(task);
        }
        Err(e) => {
            tracing::warn!(error = %e, "renewing on the caller's runtime");
            spawn(task);
        }
    }
}

/// A future polled inside lockman's background runtime context: whatever it
/// spawns (a connection's driver task, a reconnect) and whatever it
/// registers (sockets, timers) lives on a runtime that is always driven,
/// not on the caller's — which may sit idle, or be dropped, while the
/// connection is still in use from another runtime or a blocking thread.
/// The future itself is still polled by the caller, so a reply costs one
/// wake-up from the background thread, as with any multiplexed connection.
///
/// Made by [`in_background`](crate::in_background).
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct InBackground<F> {
    handle: Handle,
    future: F,
}

impl<F: Future + Unpin> Future for InBackground<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = &mut *self;
        let _context = this.handle.enter();
        std::pin::Pin::new(&mut this.future).poll(cx)
    }
}

impl<F> InBackground<F> {
    /// `future`, polled in the context of `handle` (see
    /// [`background_handle`](crate::background_handle)).
    pub fn new(handle: Handle, future: F) -> Self {
        InBackground { handle, future }
    }
}
