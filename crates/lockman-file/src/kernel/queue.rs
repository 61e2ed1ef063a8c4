//! First come, first served across processes: the `<stem>.queue` file of
//! kernel-lock mode (the design and its argument are in
//! `docs/design-file-fifo.md`).
//!
//! An acquisition that has to wait takes a *ticket*: it appends one byte to
//! the queue file — the append's offset is its number, unique without any
//! lock — and write-locks that byte with an open-file-description lock
//! (`F_OFD_SETLK`: per descriptor, so managers of one process queue
//! apart, and dropped by the kernel when the descriptor closes or the
//! process dies). It then asks, blocking on a helper thread, for a read
//! lock on every byte below its own. The kernel grants that only once no
//! earlier ticket's byte is locked: everyone who came earlier has been
//! granted, has given up, or has died. Only then does the waiter go for the
//! gate; once granted it lets go of its byte, which wakes the next.
//!
//! Exclusion never rests on the queue, only on the gate and the lock file.
//! A queue deleted, damaged, or ignored by an older lockman costs fairness
//! only, so every error here is logged and the acquisition goes on
//! unqueued.
//!
//! A blocked lock request cannot be cancelled: a wait that times out (or
//! is dropped) leaves its helper blocked, and the next wait of the same
//! backend on the same queue adopts it, as [`crate::kernel_wait`] does for
//! the gate. The helper lets go of each range as soon as it is granted, so
//! a wait nobody wants holds nothing back.
//!
//! Only on Linux (open-file-description locks); elsewhere the queue is
//! never used and processes race for the gate as before.

use std::fs::File;
use std::sync::Arc;

use lockman_core::backend::Deadline;

use super::family::Family;

/// One acquisition's place in a resource's queue, if it took one.
///
/// Dropping it leaves the queue (its byte is unlocked as its descriptor
/// closes), so every early return of an acquisition gives up its place.
#[derive(Debug)]
pub(crate) struct Line {
    waits: TurnWaits,
    family: Arc<Family>,
    /// The permissions a new queue file gets ([`crate::FileOptions::file_mode`]).
    file_mode: Option<u32>,
    /// The queue file as kept open for the resource's next grant, to see
    /// whether anyone is queued without opening it.
    kept: Option<File>,
    #[cfg(target_os = "linux")]
    ticket: Option<linux::Ticket>,
    /// Whether this acquisition already took its turn (once is enough).
    queued: bool,
}

impl Line {
    /// Not queued yet; `kept` is the queue file an earlier grant kept open.
    pub(super) fn new(waits: &TurnWaits, family: Arc<Family>, file_mode: Option<u32>, kept: Option<File>) -> Line {
        Line {
            waits: waits.clone(),
            family,
            file_mode,
            kept,
            #[cfg(target_os = "linux")]
            ticket: None,
            queued: false,
        }
    }

    /// Whether this acquisition has already waited for its turn.
    pub(crate) fn queued(&self) -> bool {
        self.queued
    }

    /// Whether anyone holds a ticket in the queue now (one `F_OFD_GETLK`
    /// on the kept descriptor, or on the file opened — created if missing,
    /// so that an exclusive grant keeps it open for the next — for the look).
    pub(crate) fn anyone_waiting(&mut self) -> bool {
        #[cfg(target_os = "linux")]
        {
            let (path, mode) = (&self.family.queue, self.file_mode);
            linux::anyone_waiting(&mut self.kept, path, &|file| adopt(file, path, mode))
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Takes a ticket and waits until every earlier one has left the queue;
    /// `false` if `deadline` came first. A queue that cannot be used (see
    /// the module docs) ends the wait at once: the caller goes on unqueued.
    ///
    /// Cancel-safe: the ticket is kept in `self`, so dropping the future
    /// and then `self` leaves the queue.
    pub(crate) async fn wait_turn(&mut self, deadline: Deadline) -> bool {
        self.queued = true;
        #[cfg(target_os = "linux")]
        {
            let (path, mode) = (&self.family.queue, self.file_mode);
            let ticket = match linux::Ticket::take(path, &|file| adopt(file, path, mode)) {
                Ok(Some(ticket)) => self.ticket.insert(ticket),
                Ok(None) => return true,
                Err(e) => {
                    tracing::debug!(path = %self.family.queue.display(), error = %e, "cannot join the queue; waiting unqueued");
                    return true;
                }
            };
            match self.waits.wait(&self.family.queue, &self.family.gate, ticket, deadline).await {
                Ok(linux::Turned::Reached | linux::Turned::Unavailable) => true,
                Ok(linux::Turned::TimedOut) => false,
                Err(e) => {
                    tracing::debug!(path = %self.family.queue.display(), error = %e, "cannot wait in the queue; waiting unqueued");
                    true
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (deadline, &self.waits, self.file_mode);
            true
        }
    }

    /// Leaves the queue (waking the next ticket), returning the queue file
    /// to keep open for the resource's next grant.
    pub(crate) fn leave(mut self) -> Option<File> {
        #[cfg(target_os = "linux")]
        if let Some(ticket) = self.ticket.take()
            && let Some(file) = ticket.leave()
        {
            // The ticket's descriptor names the queue as it is now.
            self.kept = Some(file);
        }
        self.kept.take()
    }
}

/// Gives a queue file we opened the configured permissions (`file_mode`).
#[cfg(target_os = "linux")]
fn adopt(file: &File, path: &std::path::Path, mode: Option<u32>) {
    if let Err(e) = crate::fsutil::set_mode(file, mode) {
        tracing::warn!(path = %path.display(), error = %e, "cannot set the queue file's permissions (file_mode)");
    }
}

/// One backend's helpers blocked waiting for a turn, by queue file (see
/// the module docs). Cheap to clone: clones share the helpers.
#[derive(Debug, Default, Clone)]
pub(crate) struct TurnWaits {
    #[cfg(target_os = "linux")]
    pending: Arc<parking_lot::Mutex<linux::PendingTurns>>,
}

/// Whether a queue file is in use by anyone (a ticket held, or a turn being
/// granted): `cleanup_stale` leaves such a file alone.
pub(crate) fn in_use(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        linux::ofd::conflicts(file, linux::ofd::Kind::Write, 0, 0).unwrap_or(true)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::{self, Seek, Write};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use lockman_core::backend::Deadline;
    use parking_lot::Mutex;
    use tokio::sync::oneshot;

    use super::TurnWaits;
    use crate::fsutil::{self, Access, FileId};
    use crate::kernel_wait;

    /// How long a wait for a turn goes before it starts looking whether the
    /// queue ahead of it is stuck.
    const STUCK_AFTER: Duration = Duration::from_secs(1);

    /// How often it looks, from then on.
    const STUCK_LOOK: Duration = Duration::from_millis(250);

    /// Past this ticket number, a leaving ticket that finds the queue unused
    /// empties the file, so it stays small (one byte per contended
    /// acquisition otherwise).
    const EMPTY_PAST: u64 = 64 * 1024;

    /// Helpers blocked now, by queue file.
    pub(super) type PendingTurns = HashMap<PathBuf, Arc<PendingTurn>>;

    /// A helper blocked until every ticket below `before` has left.
    #[derive(Debug)]
    pub(super) struct PendingTurn {
        /// The queue file the helper waits on: only a wait on the same file adopts it.
        file: FileId,
        state: Mutex<TurnState>,
    }

    #[derive(Debug)]
    struct TurnState {
        /// Wait until no ticket below this one is held.
        before: u64,
        waiter: Option<oneshot::Sender<io::Result<()>>>,
    }

    /// What a wait for a turn ended with.
    pub(super) enum Turned {
        /// Every earlier ticket has left.
        Reached,
        /// The deadline came first.
        TimedOut,
        /// No helper could be had, or the queue file changed: go on unqueued.
        Unavailable,
    }

    /// A place in the queue: the write lock on byte `number` of the queue
    /// file, held on a descriptor of its own.
    #[derive(Debug)]
    pub(super) struct Ticket {
        file: File,
        number: u64,
    }

    impl Ticket {
        /// Appends to the queue at `path` (creating it) and locks the byte
        /// appended; `None` if no byte could be had (a queue emptied or
        /// damaged under us twice running).
        pub(super) fn take(path: &Path, on_open: &(dyn Fn(&File) + Sync)) -> io::Result<Option<Ticket>> {
            let file = fsutil::open_no_follow(path, Access::Append)?;
            on_open(&file);
            for _ in 0..2 {
                (&file).write_all(b"\n")?;
                let Some(number) = (&file).stream_position()?.checked_sub(1) else { continue };
                // Already locked: the file was emptied and refilled past this
                // offset by others meanwhile. Take the next byte.
                if !ofd::set(&file, ofd::Kind::Write, number, 1, false)? {
                    continue;
                }
                // Emptied between our append and our lock: numbering restarted
                // below us, and we would wait for later arrivals. Take another.
                if file.metadata()?.len() <= number {
                    ofd::set(&file, ofd::Kind::Unlock, number, 1, false)?;
                    continue;
                }
                return Ok(Some(Ticket { file, number }));
            }
            Ok(None)
        }

        /// Unlocks the byte (waking the next ticket), empties a long queue
        /// nobody uses, and returns the descriptor.
        pub(super) fn leave(self) -> Option<File> {
            if let Err(e) = ofd::set(&self.file, ofd::Kind::Unlock, self.number, 1, false) {
                tracing::debug!(error = %e, "cannot unlock a queue ticket (closing it will)");
                return None;
            }
            if self.number >= EMPTY_PAST && !super::in_use(&self.file) {
                // A ticket appended meanwhile sees the file shorter than its
                // number and takes another (`take`).
                if let Err(e) = self.file.set_len(0) {
                    tracing::debug!(error = %e, "cannot empty the queue file");
                }
            }
            Some(self.file)
        }
    }

    /// Whether anyone holds a ticket in the queue at `path`, looked at on
    /// `kept` (opened, creating the file, when not: a missing file cost a
    /// failed open on every cycle, 10% of an uncontended one).
    pub(super) fn anyone_waiting(kept: &mut Option<File>, path: &Path, on_open: &(dyn Fn(&File) + Sync)) -> bool {
        if kept.is_none() {
            match fsutil::open_no_follow(path, Access::Create) {
                Ok(file) => {
                    on_open(&file);
                    *kept = Some(file);
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot open the queue file; going unqueued");
                    return false;
                }
            }
        }
        let Some(file) = kept else { return false };
        // A read lock on the whole file conflicts exactly with the tickets'
        // write locks (a turn's read lock is let go as soon as granted).
        ofd::conflicts(file, ofd::Kind::Read, 0, 0).unwrap_or_else(|e| {
            tracing::debug!(path = %path.display(), error = %e, "cannot look at the queue; going unqueued");
            false
        })
    }

    impl TurnWaits {
        /// Waits until no ticket below `ticket` is held, or `deadline`.
        /// `gate` is the resource's gate, looked at if the queue seems stuck.
        pub(super) async fn wait(
            &self,
            path: &Path,
            gate: &Path,
            ticket: &Ticket,
            deadline: Deadline,
        ) -> io::Result<Turned> {
            // The common case, nobody ahead, needs no helper.
            if ticket.number == 0 || !ofd::conflicts(&ticket.file, ofd::Kind::Read, 0, ticket.number)? {
                return Ok(Turned::Reached);
            }
            if deadline.has_passed() {
                return Ok(Turned::TimedOut);
            }
            let file = FileId::of_file(&ticket.file)?;
            let (tx, rx) = oneshot::channel();
            let mut tx = Some(tx);
            if let Some(pending) = self.pending.lock().get(path).filter(|p| p.file == file) {
                let mut state = pending.state.lock();
                // One waiter at a time (a dropped one's sender is closed), and
                // only one that waits for at least as many tickets.
                if state.before <= ticket.number && state.waiter.as_ref().is_none_or(oneshot::Sender::is_closed) {
                    state.before = ticket.number;
                    state.waiter = tx.take();
                }
            }
            if let Some(tx) = tx
                && !self.start(path, file, ticket.number, tx)
            {
                return Ok(Turned::Unavailable);
            }
            let answer = Self::receive(rx, deadline, gate).await;
            match answer {
                Err(turned) => Ok(turned),
                Ok(Ok(Ok(()))) => Ok(Turned::Reached),
                Ok(Ok(Err(e))) => Err(e),
                // The helper ended without an answer (its thread died).
                Ok(Err(_)) => Ok(Turned::Unavailable),
            }
        }

        /// Waits for the helper's answer until `deadline`. Past
        /// [`STUCK_AFTER`], looks at the gate every [`STUCK_LOOK`]: found
        /// free twice running, the waiters ahead are not getting on (a
        /// process stopped with its ticket, say by SIGSTOP or a debugger),
        /// and the wait ends `Unavailable` so the caller goes for the gate
        /// unqueued — order lost, never exclusion.
        async fn receive(
            mut rx: oneshot::Receiver<io::Result<()>>,
            deadline: Deadline,
            gate: &Path,
        ) -> Result<Result<io::Result<()>, oneshot::error::RecvError>, Turned> {
            let mut look = tokio::time::Instant::now() + STUCK_AFTER;
            let mut free_before = false;
            loop {
                let until = deadline.instant().map_or(look, |at| at.min(look));
                tokio::select! {
                    answer = &mut rx => return Ok(answer),
                    () = tokio::time::sleep_until(until) => {}
                }
                if deadline.has_passed() {
                    return Err(Turned::TimedOut);
                }
                let free = gate_is_free(gate);
                if free && free_before {
                    tracing::warn!(
                        gate = %gate.display(),
                        "the waiters queued ahead are not taking their turn (a process stopped while waiting?); \
                         going for the lock out of turn"
                    );
                    return Err(Turned::Unavailable);
                }
                free_before = free;
                look = tokio::time::Instant::now() + STUCK_LOOK;
            }
        }

        /// Starts a helper blocking until no ticket below `before` is held in
        /// the queue at `path` (which must still be `file`); `false` if none
        /// can be had.
        fn start(&self, path: &Path, file: FileId, before: u64, tx: oneshot::Sender<io::Result<()>>) -> bool {
            // A description of its own: a timed-out waiter closes its
            // ticket's, which must then drop its byte.
            let opened = match fsutil::open_no_follow(path, Access::Read) {
                Ok(opened) if FileId::of_file(&opened).is_ok_and(|id| id == file) => opened,
                Ok(_) => return false, // replaced meanwhile
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot open the queue file to wait in it");
                    return false;
                }
            };
            if !kernel_wait::reserve_helper() {
                return false;
            }
            let pending = Arc::new(PendingTurn { file, state: Mutex::new(TurnState { before, waiter: Some(tx) }) });
            self.pending.lock().insert(path.to_owned(), pending.clone());
            let registry = self.pending.clone();
            let key = path.to_owned();
            let job = Box::new(move || {
                let answer = wait_in_kernel(&opened, &registry, &key, &pending);
                kernel_wait::release_helper();
                if let Some(waiter) = answer.1 {
                    // A waiter that has gone meanwhile needs nothing back:
                    // the turn was a moment, not a lock.
                    let _ = waiter.send(answer.0);
                }
            });
            if let Err(e) = kernel_wait::run_on_helper(job) {
                kernel_wait::release_helper();
                self.pending.lock().remove(path);
                tracing::debug!(path = %path.display(), error = %e, "cannot start a queue helper; waiting unqueued");
                return false;
            }
            true
        }
    }

    /// The helper's work: wait (in the kernel) for the turn its waiter
    /// wants, again for as long as an adopting waiter wants a later one;
    /// then unregister and hand back the answer and whom to give it to.
    #[allow(clippy::type_complexity)]
    fn wait_in_kernel(
        file: &File,
        registry: &Mutex<PendingTurns>,
        key: &Path,
        pending: &Arc<PendingTurn>,
    ) -> (io::Result<()>, Option<oneshot::Sender<io::Result<()>>>) {
        let mut reached = 0;
        loop {
            let before = pending.state.lock().before;
            let mut result = Ok(());
            if before > reached {
                result = ofd::set(file, ofd::Kind::Read, 0, before, true).and_then(|_| {
                    // Granted: everyone earlier has left. Hold nothing.
                    ofd::set(file, ofd::Kind::Unlock, 0, before, false).map(drop)
                });
                reached = before;
            }
            // Unregister first, under both locks, so no later wait adopts a
            // helper that is done, and none raised `before` unseen.
            let mut registry = registry.lock();
            let mut state = pending.state.lock();
            let wanted = state.waiter.as_ref().is_some_and(|w| !w.is_closed());
            if result.is_ok() && wanted && state.before > reached {
                continue;
            }
            if registry.get(key).is_some_and(|p| Arc::ptr_eq(p, pending)) {
                registry.remove(key);
            }
            return (result, state.waiter.take());
        }
    }

    /// Whether nobody holds the gate at `path` now (a shared try-lock,
    /// dropped at once; a missing gate is free, an unreadable one busy).
    fn gate_is_free(path: &Path) -> bool {
        let gate = match fsutil::open_no_follow(path, Access::Read) {
            Ok(gate) => gate,
            Err(e) => return e.kind() == io::ErrorKind::NotFound,
        };
        match gate.try_lock_shared() {
            Ok(()) => {
                let _ = gate.unlock();
                true
            }
            Err(_) => false,
        }
    }

    /// Open-file-description byte-range locks (`F_OFD_*`), which `std` and
    /// `rustix` do not offer.
    pub(super) mod ofd {
        use std::fs::File;
        use std::io;
        use std::os::fd::AsRawFd;

        #[derive(Clone, Copy, Debug)]
        pub(crate) enum Kind {
            Read,
            Write,
            Unlock,
        }

        /// The request for `kind` on `len` bytes from `start` (`len` 0: to
        /// the end of any file).
        fn request(kind: Kind, start: u64, len: u64) -> io::Result<libc::flock> {
            let offset = |n: u64| {
                libc::off_t::try_from(n).map_err(|_| io::Error::other("a queue offset past the largest file offset"))
            };
            // SAFETY: `flock` is plain integers, for which all zeroes is valid;
            // OFD requests must have `l_pid` 0.
            let mut lock: libc::flock = unsafe { std::mem::zeroed() };
            lock.l_type = match kind {
                Kind::Read => libc::F_RDLCK,
                Kind::Write => libc::F_WRLCK,
                Kind::Unlock => libc::F_UNLCK,
            } as libc::c_short;
            lock.l_whence = libc::SEEK_SET as libc::c_short;
            lock.l_start = offset(start)?;
            lock.l_len = offset(len)?;
            Ok(lock)
        }

        /// Takes (or with [`Kind::Unlock`] lets go of) `kind` on `len` bytes
        /// from `start`, blocking until granted if `wait`; `Ok(false)` if
        /// not `wait` and another description holds a conflicting lock.
        pub(crate) fn set(file: &File, kind: Kind, start: u64, len: u64, wait: bool) -> io::Result<bool> {
            let mut lock = request(kind, start, len)?;
            let command = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
            loop {
                // SAFETY: the descriptor is open for the call (borrowed from
                // `file`), and `lock` is a valid request it may write to.
                let rc = unsafe { libc::fcntl(file.as_raw_fd(), command, &mut lock as *mut libc::flock) };
                if rc == 0 {
                    return Ok(true);
                }
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN | libc::EACCES) if !wait => return Ok(false),
                    _ => return Err(error),
                }
            }
        }

        /// Whether another description holds a lock that conflicts with
        /// `kind` on `len` bytes from `start`.
        pub(crate) fn conflicts(file: &File, kind: Kind, start: u64, len: u64) -> io::Result<bool> {
            let mut lock = request(kind, start, len)?;
            // SAFETY: as in `set`; `F_OFD_GETLK` writes the first conflicting
            // lock, or `F_UNLCK`, into `lock`.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock as *mut libc::flock) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
        }
    }
}
