//! How a waiter learns that a lock file changed: inotify on Linux (the
//! releaser's unlock-then-close, a deletion or a rename wakes it at once),
//! with a bounded-backoff re-check as the fallback everywhere — for other
//! platforms, for network file systems whose remote changes inotify cannot
//! see, and for a holder that died (the kernel drops its lock only after the
//! close event is sent).

use std::time::Duration;

use lockman_core::backend::Deadline;
use tokio::time::Instant;

/// A waiter for one lock file: its change watch and its backoff — the
/// "watch, look again, then wait" step every file backend's acquire loop takes.
#[derive(Debug)]
pub(crate) struct FileWaiter {
    watch: Option<ChangeWatch>,
    backoff: Backoff,
}

impl FileWaiter {
    /// Backoff from `min` to `max` between re-checks when no change is seen.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        FileWaiter { watch: None, backoff: Backoff::new(min, max) }
    }

    /// Starts watching `path` unless a watch is already in place. Returns
    /// `true` when it just started one: the caller looks at the file again
    /// before waiting, so a release between its last look and the watch is
    /// not missed.
    pub(crate) fn watch_first(&mut self, path: &std::path::Path) -> bool {
        self.watch_first_all(&[path])
    }

    /// [`watch_first`](Self::watch_first) for a change to any of `paths`
    /// (a semaphore's permit files), on one inotify instance.
    pub(crate) fn watch_first_all(&mut self, paths: &[&std::path::Path]) -> bool {
        if self.watch.is_some() || !notifications_supported() {
            return false;
        }
        self.watch = ChangeWatch::new_all(paths);
        self.watch.is_some()
    }

    /// Drops the watch (the file was replaced: a new one must watch the new file).
    pub(crate) fn forget(&mut self) {
        self.watch = None;
    }

    /// [`wait_for_change`] with this waiter's watch and backoff.
    pub(crate) async fn wait(&mut self, deadline: Deadline, wake_by: Option<Instant>) -> bool {
        wait_for_change(self.watch.as_ref(), &mut self.backoff, deadline, wake_by).await
    }
}

/// Retry intervals that double from `min` to `max`, and start over from `min`
/// after every change notification.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff { next: min, min, max }
    }

    fn take(&mut self) -> Duration {
        let nap = self.next;
        self.next = (self.next * 2).min(self.max);
        nap
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Waits until `watch` reports a change, the next backoff interval passes, or
/// `deadline` (or `wake_by`, e.g. when a lease runs out) comes. Returns
/// `false` when the deadline has passed.
async fn wait_for_change(
    watch: Option<&ChangeWatch>,
    backoff: &mut Backoff,
    deadline: Deadline,
    wake_by: Option<Instant>,
) -> bool {
    if deadline.has_passed() {
        return false;
    }
    let mut until = Instant::now() + backoff.take();
    for limit in [deadline.instant(), wake_by].into_iter().flatten() {
        until = until.min(limit);
    }
    match watch {
        Some(watch) => {
            tokio::select! {
                () = watch.changed() => backoff.reset(),
                () = tokio::time::sleep_until(until) => {}
            }
        }
        None => tokio::time::sleep_until(until).await,
    }
    !deadline.has_passed() || deadline == Deadline::Never
}

pub(crate) use imp::ChangeWatch;

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::OwnedFd;
    use std::path::Path;
    use std::sync::Arc;

    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::sync::{Notify, oneshot};

    /// An inotify watch on one file, read by a task on lockman's background
    /// runtime (so the caller's runtime needs no I/O driver). Dropping it
    /// stops the task and closes the inotify descriptor.
    #[derive(Debug)]
    pub(crate) struct ChangeWatch {
        changed: Arc<Notify>,
        _stop: oneshot::Sender<()>,
    }

    impl ChangeWatch {
        /// Watches `paths` for closes, deletion, renames and attribute
        /// changes (an unlink changes the link count). `None` if inotify is
        /// unavailable; callers then rely on backoff alone.
        pub(crate) fn new_all(paths: &[&Path]) -> Option<ChangeWatch> {
            let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).ok()?;
            let flags = WatchFlags::CLOSE_WRITE
                | WatchFlags::CLOSE_NOWRITE
                | WatchFlags::ATTRIB
                | WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF;
            for path in paths {
                if let Err(e) = inotify::add_watch(&fd, *path, flags) {
                    tracing::debug!(path = %path.display(), error = %e, "no inotify watch; waiting by backoff");
                    return None;
                }
            }
            let changed = Arc::new(Notify::new());
            let (stop, stopped) = oneshot::channel();
            let notify = changed.clone();
            lockman_core::spawn_background(relay(fd, notify, stopped)).ok()?;
            Some(ChangeWatch { changed, _stop: stop })
        }

        /// Completes at the next change (at once if one came since the last call).
        pub(crate) async fn changed(&self) {
            self.changed.notified().await;
        }
    }

    async fn relay(fd: OwnedFd, changed: Arc<Notify>, mut stopped: oneshot::Receiver<()>) {
        // SAFETY: an `OwnedFd` stays open and returns the same descriptor
        // until it is dropped, which happens only when the `AsyncFd` is.
        let fd = match unsafe { AsyncFd::register(fd) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(error = %e, "cannot poll inotify; waiting by backoff");
                return;
            }
        };
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                ready = fd.readable() => {
                    let Ok(mut ready) = ready else { break };
                    // Drain: any event at all means "look again".
                    while rustix::io::read(fd.get_ref(), &mut buf).is_ok_and(|n| n > 0) {}
                    ready.clear_ready();
                    changed.notify_one();
                }
                _ = &mut stopped => break,
            }
        }
        // Closing an inotify instance waits for the kernel to retire its
        // marks (milliseconds); doing it here would stall every other
        // waiter's wake-up on this one-thread runtime.
        let fd = fd.into_inner();
        drop(tokio::task::spawn_blocking(move || drop(fd)));
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::path::Path;

    /// No change notification on this platform: waiters use backoff alone.
    #[derive(Debug)]
    pub(crate) struct ChangeWatch(());

    impl ChangeWatch {
        pub(crate) fn new_all(_paths: &[&Path]) -> Option<ChangeWatch> {
            None
        }

        pub(crate) async fn changed(&self) {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether this platform wakes waiters by change notification.
pub(crate) fn notifications_supported() -> bool {
    cfg!(target_os = "linux")
}
