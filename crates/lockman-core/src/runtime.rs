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
