//! Several locks taken all-or-nothing: [`MultiLockGuard`], returned by
//! [`LockManagerExt::acquire_all`](crate::LockManagerExt::acquire_all).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::{AcquireOptions, FencingToken, LockError, LockGuard, LockManager, LostReason, Wait};

/// The guards of several resources taken together, in name order.
///
/// Released together, in reverse order, by [`release`](Self::release) or
/// on drop; [`lost`](Self::lost) completes when any of them is lost.
///
/// ```
/// use lockman_core::{AcquireOptions, LockError, LockManager, LockManagerExt};
///
/// async fn transfer(locks: &dyn LockManager) -> Result<(), LockError> {
///     // Another task taking ["b", "a"] at the same time cannot deadlock with
///     // this one: both take "a" first.
///     let both = locks.acquire_all(["b", "a"], AcquireOptions::new()).await?;
///     assert_eq!(both.resources().collect::<Vec<_>>(), ["a", "b"]);
///     both.release().await
/// }
/// ```
#[must_use = "the locks are released as soon as the guard is dropped"]
pub struct MultiLockGuard {
    /// In acquisition (name) order.
    guards: Vec<LockGuard>,
}

impl MultiLockGuard {
    /// The resources held, in name (acquisition) order.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.guards.iter().map(LockGuard::resource)
    }

    /// The guards, in name (acquisition) order.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// The guard of `resource`, if it is one of them.
    pub fn guard(&self, resource: &str) -> Option<&LockGuard> {
        self.guards.iter().find(|guard| guard.resource() == resource)
    }

    /// Each resource's fencing token, in name order.
    pub fn fencing_tokens(&self) -> impl Iterator<Item = (&str, FencingToken)> {
        self.guards.iter().map(|guard| (guard.resource(), guard.fencing_token()))
    }

    /// Whether any of the locks is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.guards.iter().any(LockGuard::is_lost)
    }

    /// Completes when any of the locks is lost, with its resource and the
    /// reason. Does not borrow the guard.
    pub fn lost(&self) -> impl Future<Output = (String, LostReason)> + Send + 'static {
        type Watch = Pin<Box<dyn Future<Output = (String, LostReason)> + Send>>;
        let mut watches: Vec<Watch> = self
            .guards
            .iter()
            .map(|guard| {
                let resource = guard.resource().to_owned();
                let lost = guard.lost();
                Box::pin(async move { (resource, lost.await) }) as Watch
            })
            .collect();
        std::future::poll_fn(move |cx| {
            for watch in &mut watches {
                if let Poll::Ready(lost) = watch.as_mut().poll(cx) {
                    return Poll::Ready(lost);
                }
            }
            Poll::Pending
        })
    }

    /// Extends every lock's lease to `lease` from now (see
    /// [`LockGuard::extend`]).
    ///
    /// # Errors
    ///
    /// The first error, after trying them all.
    pub async fn extend(&self, lease: Duration) -> Result<(), LockError> {
        let mut first_error = None;
        for guard in &self.guards {
            if let Err(e) = guard.extend(lease).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Releases every lock, in reverse name order.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if any of them was lost (the others are released
    /// all the same), or the first other release error.
    pub async fn release(mut self) -> Result<(), LockError> {
        release_in_reverse(std::mem::take(&mut self.guards)).await
    }
}

impl Drop for MultiLockGuard {
    fn drop(&mut self) {
        // Reverse order, as `release` does.
        while let Some(guard) = self.guards.pop() {
            drop(guard);
        }
    }
}

impl fmt::Debug for MultiLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiLockGuard").field("guards", &self.guards).finish()
    }
}

/// Releases `guards` last first; the first loss, else the first error.
async fn release_in_reverse(mut guards: Vec<LockGuard>) -> Result<(), LockError> {
    let mut lost = None;
    let mut other = None;
    while let Some(guard) = guards.pop() {
        match guard.release().await {
            Ok(()) => {}
            Err(e @ LockError::Lost { .. }) => {
                lost.get_or_insert(e);
            }
            Err(e) => {
                other.get_or_insert(e);
            }
        }
    }
    lost.or(other).map_or(Ok(()), Err)
}

/// Takes every resource in name order within one overall wait; see
/// [`LockManagerExt::acquire_all`](crate::LockManagerExt::acquire_all).
pub(crate) async fn acquire_all<M: LockManager + ?Sized>(
    locks: &M,
    mut resources: Vec<String>,
    options: AcquireOptions,
) -> Result<MultiLockGuard, LockError> {
    resources.sort();
    resources.dedup();
    let started = Instant::now();
    // One deadline for the whole set: each resource may wait what is left.
    let deadline = match options.wait {
        Wait::Timeout(timeout) if options.wait_is_explicit() => started.checked_add(timeout),
        _ => None,
    };
    let mut guards = Vec::with_capacity(resources.len());
    for resource in &resources {
        let mut part = options.clone();
        if let Some(deadline) = deadline {
            part = part.timeout(deadline.saturating_duration_since(Instant::now()));
        }
        match locks.acquire(resource, part).await {
            Ok(guard) => guards.push(guard),
            Err(e) => {
                let error = match e {
                    // The whole wait, not the last part's.
                    LockError::Timeout { resource, backend, holder, skipped, .. } => {
                        LockError::Timeout { resource, backend, waited: started.elapsed(), holder, skipped }
                    }
                    e => e,
                };
                // All or nothing: give back what was taken, last first.
                if let Err(release_error) = release_in_reverse(guards).await {
                    tracing::warn!(error = %release_error, "releasing the locks taken before acquire_all failed");
                }
                return Err(error);
            }
        }
    }
    Ok(MultiLockGuard { guards })
}
