//! Waiting for a kernel lock inside the kernel: a helper thread blocks in
//! `flock` (`LockFileEx` on Windows), so a release in any process wakes the
//! waiter directly, the way a raw `flock` waiter is woken — no change
//! notification, no re-check loop, and no need for the releaser to close
//! its descriptor (the kernel-lock backend keeps descriptors open between
//! grants, which inotify would not see).
//!
//! A blocked `flock` cannot be cancelled, so a wait that times out (or whose
//! future is dropped) leaves its helper blocked. Such a wait stays
//! *pending*: the next wait of the same backend for the same file and mode
//! adopts it instead of starting another, and if the helper gets the lock
//! while nobody waits for it, it lets go at once (closing its descriptor).
//! So helpers are bounded by the files being waited on, and a lock is never
//! kept by a wait nobody wants. Past [`MAX_HELPERS`] blocked helpers in the
//! process, callers fall back to waiting by change notification and backoff.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use lockman_core::backend::Deadline;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::fsutil::{self, Access, FileId, Snapshot};

/// The most helpers blocked in the kernel at once, process-wide; past it,
/// waits fall back to change notification and backoff.
pub(crate) const MAX_HELPERS: usize = 256;

/// The longest a kernel wait goes without checking that the path still
/// names the file it waits on.
const RECHECK_MAX: Duration = Duration::from_millis(50);

/// How long an idle helper thread stays for the next wait.
const IDLE_KEEP: Duration = Duration::from_secs(10);

/// Helpers blocked in the kernel now, process-wide.
static BLOCKED: AtomicUsize = AtomicUsize::new(0);

/// Idle helper threads, each waiting for its next job, by id.
static IDLE: Mutex<Vec<(u64, mpsc::Sender<Job>)>> = Mutex::new(Vec::new());

/// The next helper thread's id.
static NEXT_HELPER: AtomicU64 = AtomicU64::new(0);

/// Work for a helper thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Counts a helper about to block in the kernel; `false` (counting
/// nothing) if [`MAX_HELPERS`] already are. Pair with [`release_helper`].
pub(crate) fn reserve_helper() -> bool {
    if BLOCKED.fetch_add(1, Ordering::AcqRel) >= MAX_HELPERS {
        BLOCKED.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
}

/// Uncounts a helper that [`reserve_helper`] counted.
pub(crate) fn release_helper() {
    BLOCKED.fetch_sub(1, Ordering::AcqRel);
}

/// A file and what it looked like when opened (its identity).
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    pub(crate) file: Arc<File>,
    pub(crate) snapshot: Snapshot,
}

impl Opened {
    /// Opens (creating) the file at `path`, noting its identity.
    pub(crate) fn create(path: &Path) -> io::Result<Opened> {
        let (file, meta) = fsutil::open_no_follow_with_meta(path, Access::Create)?;
        Ok(Opened { file: Arc::new(file), snapshot: Snapshot::of(&meta) })
    }
}

/// The lock a wait asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Want {
    Exclusive,
    Shared,
}

/// What [`KernelWaits::wait`] ended with.
#[derive(Debug)]
pub(crate) enum Waited {
    /// The lock is ours, on this file (which the caller checks the path
    /// still names: an adopted wait may be on an older file).
    Locked(Opened),
    /// The deadline came first.
    TimedOut,
    /// The path no longer names the file waited on (deleted or replaced):
    /// open the new one.
    Replaced,
    /// No helper could be had: wait another way.
    Unavailable,
}

/// One backend's pending kernel waits, by file and mode.
#[derive(Debug, Default)]
pub(crate) struct KernelWaits {
    pending: Arc<Mutex<PendingWaits>>,
}

/// Helpers blocked now, by the file path and mode they wait for.
type PendingWaits = HashMap<(PathBuf, Want), Arc<Pending>>;

/// A helper blocked in the kernel, and who (if anyone) wants its lock.
#[derive(Debug)]
struct Pending {
    /// The file the helper waits on: only a wait for the same file adopts it.
    file: FileId,
    waiter: Mutex<Option<oneshot::Sender<io::Result<Opened>>>>,
}

impl KernelWaits {
    /// Waits until `want` is granted on `path` (whose open file is `opened`)
    /// or `deadline` passes. Cancel-safe: dropping the future leaves the
    /// helper pending (see the module docs).
    pub(crate) async fn wait(&self, path: &Path, want: Want, opened: Opened, deadline: Deadline) -> io::Result<Waited> {
        if deadline.has_passed() {
            return Ok(Waited::TimedOut);
        }
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let key = (path.to_owned(), want);
        let file = opened.snapshot.id;
        if let Some(pending) = self.pending.lock().get(&key).filter(|p| p.file == file) {
            let mut waiter = pending.waiter.lock();
            // One waiter at a time; a dropped one's sender is closed.
            if waiter.as_ref().is_none_or(oneshot::Sender::is_closed) {
                *waiter = tx.take();
            }
        }
        // Not adopted: start a helper of our own (an adopted wait's `opened`
        // is not needed: the helper has a file of its own).
        if let Some(tx) = tx
            && !self.start(key, opened, tx)
        {
            return Ok(Waited::Unavailable);
        }
        Self::receive(rx, path, file, deadline).await
    }

    /// Waits for the helper's answer, re-checking meanwhile (with backoff)
    /// that `path` still names `file`: a kernel lock on a deleted or
    /// replaced file is nobody's lock, and its holder may never let go.
    /// Dropping `rx` (on any return but the answer) tells the helper
    /// nobody wants the lock now.
    async fn receive(
        mut rx: oneshot::Receiver<io::Result<Opened>>,
        path: &Path,
        file: FileId,
        deadline: Deadline,
    ) -> io::Result<Waited> {
        let mut recheck = Duration::from_millis(1);
        let received = loop {
            let mut until = tokio::time::Instant::now() + recheck;
            if let Some(at) = deadline.instant() {
                until = until.min(at);
            }
            tokio::select! {
                received = &mut rx => break received,
                () = tokio::time::sleep_until(until) => {}
            }
            if deadline.has_passed() {
                return Ok(Waited::TimedOut);
            }
            if !matches!(FileId::at(path), Ok(Some(now)) if now == file) {
                return Ok(Waited::Replaced);
            }
            recheck = (recheck * 2).min(RECHECK_MAX);
        };
        match received {
            Ok(Ok(opened)) => Ok(Waited::Locked(opened)),
            Ok(Err(e)) => Err(e),
            // The helper ended without a lock to give (its thread died).
            Err(_) => Ok(Waited::Unavailable),
        }
    }

    /// Starts a helper blocking on `opened` for the lock `key` names,
    /// registered under `key` so later waits adopt it; `false` if none can
    /// be had.
    fn start(&self, key: (PathBuf, Want), opened: Opened, tx: oneshot::Sender<io::Result<Opened>>) -> bool {
        if !reserve_helper() {
            tracing::debug!(path = %key.0.display(), "all kernel-wait helpers busy; waiting by notification");
            return false;
        }
        let pending = Arc::new(Pending { file: opened.snapshot.id, waiter: Mutex::new(Some(tx)) });
        self.pending.lock().insert(key.clone(), pending.clone());
        let registry = self.pending.clone();
        let (path, want) = key.clone();
        let job: Job = Box::new(move || {
            let locked = match want {
                Want::Exclusive => opened.file.lock(),
                Want::Shared => opened.file.lock_shared(),
            };
            release_helper();
            // Unregister first, so no later wait adopts a helper that is done.
            {
                let mut registry = registry.lock();
                if registry.get(&key).is_some_and(|p| Arc::ptr_eq(p, &pending)) {
                    registry.remove(&key);
                }
            }
            let waiter = pending.waiter.lock().take();
            let result = locked.map(|()| opened);
            match waiter {
                Some(waiter) => {
                    if let Err(Ok(unwanted)) = waiter.send(result) {
                        let_go(unwanted, &key.0);
                    }
                }
                None => {
                    if let Ok(unwanted) = result {
                        let_go(unwanted, &key.0);
                    }
                }
            }
        });
        if let Err(e) = run_on_helper(job) {
            release_helper();
            self.pending.lock().remove(&(path.clone(), want));
            tracing::debug!(path = %path.display(), error = %e, "cannot start a kernel-wait helper; waiting by notification");
            return false;
        }
        true
    }
}

/// Lets go of a lock nobody wanted any more (unlock before close, so a
/// waiter woken by either finds it free).
fn let_go(unwanted: Opened, path: &Path) {
    if let Err(e) = unwanted.file.unlock() {
        tracing::debug!(path = %path.display(), error = %e, "cannot unlock an unwanted lock (closing it will)");
    }
}

/// Runs `job` on an idle helper thread, or a new one.
pub(crate) fn run_on_helper(job: Job) -> io::Result<()> {
    // A popped helper is no longer listed and waits for exactly this send.
    if let Some((_, helper)) = IDLE.lock().pop() {
        return helper.send(job).map_err(|_| io::Error::other("a kernel-wait helper thread ended"));
    }
    let id = NEXT_HELPER.fetch_add(1, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("lockman-flock".to_owned())
        // Room for a tracing subscriber formatting the helper's debug events.
        .stack_size(256 * 1024)
        .spawn(move || helper_loop(id, job))
        .map(drop)
}

fn helper_loop(id: u64, first: Job) {
    first();
    let (tx, rx) = mpsc::channel::<Job>();
    loop {
        IDLE.lock().push((id, tx.clone()));
        let job = match rx.recv_timeout(IDLE_KEEP) {
            Ok(job) => job,
            Err(_) => {
                let mut idle = IDLE.lock();
                let listed = idle.iter().position(|(listed, _)| *listed == id);
                if let Some(at) = listed {
                    idle.swap_remove(at);
                    return;
                }
                drop(idle);
                // Someone took us off the list just now: its job is on the way.
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
        job();
    }
}
