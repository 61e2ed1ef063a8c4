//! Taking and probing a kernel lock on a file, shared by the kernel-lock
//! backend and the legacy backend's sidecar lock.

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use lockman_core::backend::{Deadline, GrantRequest, LocalQueue, Turn};
use lockman_core::{Capabilities, LockError, LockInfo, LockState, WakeMechanism};

use crate::fsutil::{self, Access, FileId, io_error, unix_micros};
use crate::kernel::queue::Line;
use crate::kernel_wait::{KernelWaits, Opened, Waited, Want};
use crate::record::{self, FileRecord, Record, RecordState};
use crate::watch::{FileWaiter, notifications_supported};

/// The longest a waiter goes without re-checking (change notifications
/// usually wake it long before).
pub(crate) const POLL_MAX: Duration = Duration::from_millis(if cfg!(target_os = "linux") { 250 } else { 50 });

/// What a backend built on [`lock`] guarantees: cross-process exclusion,
/// crash safety by the kernel, fencing, lost-lock detection by the sentinel,
/// arrival order within a manager (processes race for the kernel lock), and
/// inotify wake-ups where the platform has them.
pub(crate) fn capabilities() -> Capabilities {
    let wake = if notifications_supported() {
        WakeMechanism::Notification
    } else {
        WakeMechanism::Poll { min: Duration::from_millis(1), max: POLL_MAX }
    };
    Capabilities::default()
        .with_cross_process(true)
        .with_lost_detection(true)
        .with_fencing(true)
        .with_fifo(true)
        .with_wake(wake)
}

/// A file we hold the kernel lock of.
pub(crate) struct Locked {
    pub(crate) file: Arc<File>,
    /// Whether we had to wait for another holder.
    pub(crate) waited: bool,
    /// Our turn in this manager's queue for the resource; end it (drop it)
    /// right after unlocking, so the next local waiter goes at once.
    pub(crate) turn: Turn,
}

/// A grant's turn in this manager's [`LocalQueue`], shared with the
/// [`Sentinel`](crate::sentinel::Sentinel) so a lost grant gives up its turn
/// at once: waiters in this process then go for the (new) lock file without
/// waiting for the lost guard to drop.
pub(crate) type SharedTurn = Arc<Mutex<Option<Turn>>>;

/// What [`lock`] got.
pub(crate) enum LockAttempt {
    /// The kernel lock, on the file the path still names.
    Locked(Locked),
    /// The deadline passed first; the holder, if its record is readable.
    Busy(Option<LockInfo>),
}

/// Takes the kernel lock on the file `path` names (creating it), waiting
/// until `deadline`.
///
/// Cancel-safe: the only await is the wait, and the lock is taken only by the
/// synchronous `try_lock` right before returning.
pub(crate) async fn lock(
    backend: &'static str,
    queue: &LocalQueue,
    resource: &Arc<str>,
    path: &Path,
    deadline: Deadline,
) -> Result<LockAttempt, LockError> {
    let turn = queue.enter(resource, deadline).await;
    if !turn.is_ours() {
        // Another task of this manager holds it (or is ahead of us).
        let holder = fsutil::open_no_follow(path, Access::Read).ok().and_then(|file| holder_of(&file, backend));
        return Ok(LockAttempt::Busy(holder));
    }
    let opening = Opening { name: "lock file", cached: None, waits: None, queue: None, on_open: &|_| {} };
    match lock_until(backend, resource, path, deadline, opening).await? {
        Some((opened, waited)) => {
            Ok(LockAttempt::Locked(Locked { file: opened.file, waited: waited || turn.waited(), turn }))
        }
        None => {
            let holder = fsutil::open_no_follow(path, Access::Read).ok().and_then(|file| holder_of(&file, backend));
            Ok(LockAttempt::Busy(holder))
        }
    }
}

/// How [`lock_until`] opens the file and waits for it.
pub(crate) struct Opening<'a> {
    /// What the file is, for errors ("lock file", "gate").
    pub(crate) name: &'static str,
    /// The file as an earlier grant kept it open, to try first.
    pub(crate) cached: Option<Opened>,
    /// Wait blocked in the kernel with these; else (or when no helper can be
    /// had) by change notification and bounded backoff.
    pub(crate) waits: Option<&'a KernelWaits>,
    /// Before waiting, wait for our turn in this arrival queue (once).
    pub(crate) queue: Option<&'a mut Line>,
    /// Called on every newly opened file (to set its permissions).
    pub(crate) on_open: &'a (dyn Fn(&File) + Sync),
}

/// Takes the exclusive kernel lock on the file `path` names (creating it,
/// or starting from `opening.cached`), waiting until `deadline`; `None` if
/// the deadline came first, else the file and whether we waited. Follows
/// the path to a new file if the one it named was deleted or replaced
/// meanwhile.
///
/// Cancel-safe: the awaits are the waits, and a kernel wait dropped
/// meanwhile stays pending for the next (see [`crate::kernel_wait`]).
pub(crate) async fn lock_until(
    backend: &'static str,
    resource: &str,
    path: &Path,
    deadline: Deadline,
    opening: Opening<'_>,
) -> Result<Option<(Opened, bool)>, LockError> {
    let Opening { name, mut cached, waits, mut queue, on_open } = opening;
    let io = |action: &str, e: io::Error| io_error(backend, &format!("{action} the {name}"), Some(resource), path, e);
    let still_ours = |id| matches!(FileId::at(path), Ok(Some(now)) if now == id);
    let mut waited = false;
    let mut in_kernel = waits.is_some();
    let mut waiter = FileWaiter::new(Duration::from_millis(1), POLL_MAX);
    'reopen: loop {
        let opened = match cached.take() {
            Some(opened) => opened,
            None => {
                let opened = Opened::create(path).map_err(|e| io("opening", e))?;
                on_open(&opened.file);
                opened
            }
        };
        loop {
            match opened.file.try_lock() {
                // Someone may have deleted (cleanup) or replaced the file
                // while we opened or waited: then our lock is on an orphan.
                Ok(()) if still_ours(opened.snapshot.id) => return Ok(Some((opened, waited))),
                Ok(()) => {
                    waiter.forget();
                    continue 'reopen;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(io("locking", e)),
            }
            if deadline.has_passed() {
                return Ok(None);
            }
            waited = true;
            if let Some(line) = queue.as_deref_mut().filter(|line| !line.queued()) {
                if !line.wait_turn(deadline).await {
                    return Ok(None);
                }
                continue; // our turn: try again before blocking
            }
            if let Some(waits) = waits.filter(|_| in_kernel) {
                let result = waits.wait(path, Want::Exclusive, opened, deadline).await;
                match result.map_err(|e| io("waiting for", e))? {
                    Waited::Locked(locked) if still_ours(locked.snapshot.id) => return Ok(Some((locked, true))),
                    Waited::Locked(_) | Waited::Replaced => continue 'reopen,
                    Waited::TimedOut => return Ok(None),
                    Waited::Unavailable => {
                        in_kernel = false;
                        continue 'reopen;
                    }
                }
            }
            if waiter.watch_first(path) {
                continue;
            }
            if !waiter.wait(deadline, None).await {
                return Ok(None);
            }
            if !still_ours(opened.snapshot.id) {
                waiter.forget();
                continue 'reopen;
            }
        }
    }
}

/// The record for a new grant in a freshly locked `file` (at `path`). The
/// file's last token (if readable) and the clock both floor the new token, so
/// tokens keep increasing even if the file was deleted and recreated.
///
/// # Errors
///
/// [`LockError::Backend`] if the file's last token is `u64::MAX`: no larger
/// one exists, and a token that does not increase is never issued.
pub(crate) fn next_record(
    backend: &'static str,
    path: &Path,
    file: &File,
    request: &GrantRequest,
) -> Result<(Record, SystemTime), LockError> {
    // The token only: a record whose times are implausible still carries the
    // token it was granted with, which the next one must be above.
    let previous = match record::read_token_from(file) {
        Ok(Some(token)) => token,
        _ => 0,
    };
    let now = SystemTime::now();
    let token = fsutil::next_token(backend, &request.resource, path, previous, unix_micros(now))?;
    Ok((Record::new(request, token, now), now))
}

/// Whether anyone holds `file`'s kernel lock, probed with a shared try-lock
/// that is dropped at once, with the holder's record if it is held.
///
/// The probe holds a shared lock for two system calls; a `try_acquire` in
/// another process at that very instant sees the lock busy.
pub(crate) fn probe(file: &File, resource: &str, backend: &str) -> io::Result<LockState> {
    match file.try_lock_shared() {
        Ok(()) => {
            file.unlock()?;
            Ok(LockState::Available)
        }
        Err(TryLockError::WouldBlock) => {
            Ok(LockState::Held(holder_of(file, backend).unwrap_or_else(|| record::unknown_holder(resource, backend))))
        }
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The holder named by the record in `file`, if it holds a readable one.
pub(crate) fn holder_of(file: &File, backend: &str) -> Option<LockInfo> {
    match record::read_from(file) {
        Ok(FileRecord::Found(record, RecordState::Held)) => Some(record.to_info(backend)),
        Ok(FileRecord::Corrupt(corrupt)) => {
            tracing::warn!(error = %corrupt, "unreadable lock record");
            None
        }
        _ => None,
    }
}
