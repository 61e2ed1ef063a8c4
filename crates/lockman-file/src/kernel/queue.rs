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
//! a wait nobody wants holds nothing back. Past the process's helper cap
//! ([`crate::kernel_wait::MAX_HELPERS`], shared with gate and lock waits),
//! a wait for a turn is skipped: the waiter goes on unqueued.
//!
//! A waiter stopped with its ticket (SIGSTOP, a debugger) would hold up
//! everyone behind it for as long as it stays stopped. So a wait that has
//! gone a second without its turn looks at the gate every 250 ms, and
//! finding it free twice running (nobody at the head of the line) takes
//! the tickets still held before its own for stuck: it goes on unqueued,
//! and this backend's later waits on the queue pass over those bytes while
//! they stay locked. Each manager pays that second once per stuck ticket.
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
            self.waits.anyone_waiting(&mut self.kept, path, &|file| adopt(file, path, mode))
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
            let kept = self.kept.take();
            let ticket = match linux::Ticket::take(path, kept, &|file| adopt(file, path, mode)) {
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

    /// Forgets the kept queue file (the gate it was kept with was replaced,
    /// so it may name a removed queue): the next grant opens it anew.
    pub(crate) fn forget_kept(&mut self) {
        self.kept = None;
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

/// One backend's helpers blocked waiting for a turn, by queue file, and
/// the tickets it found stuck (see the module docs). Cheap to clone: clones
/// share them.
#[derive(Debug, Default, Clone)]
pub(crate) struct TurnWaits {
    #[cfg(target_os = "linux")]
    turns: Arc<linux::Turns>,
}

/// Whether a queue file is in use by anyone (a ticket held, or a turn being
/// granted): `cleanup_stale` leaves such a file alone.
pub(crate) fn in_use(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        linux::ofd::conflict(file, linux::ofd::Kind::Write, 0, None).map_or(true, |found| found.is_some())
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

    /// The most stuck tickets a backend remembers (the oldest are forgotten).
    const STUCK_MAX: usize = 64;

    /// Every this many tickets, a leaving ticket frees the file's blocks
    /// below it (the bytes' content is never read, only their locks count),
    /// so the file stays small on disk however long the queue stays busy.
    const FREE_EVERY: u64 = 64 * 1024;

    /// One backend's waits for a turn.
    #[derive(Debug, Default)]
    pub(super) struct Turns {
        /// Helpers blocked now, by queue file.
        pending: Mutex<HashMap<PathBuf, Arc<PendingTurn>>>,
        /// Tickets found stuck, by queue file: passed over while locked.
        stuck: Mutex<Vec<(FileId, u64)>>,
    }

    /// A helper blocked until every ticket below `before` has left.
    #[derive(Debug)]
    struct PendingTurn {
        /// The queue file the helper waits on: only a wait on the same file adopts it.
        file: FileId,
        state: Mutex<TurnState>,
    }

    #[derive(Debug)]
    struct TurnState {
        /// Wait until no ticket below this one is held.
        before: u64,
        waiter: Option<oneshot::Sender<io::Result<()>>>,
        /// Its waiter found the queue stuck: never adopted again (it waits
        /// for a ticket that is not moving).
        stuck: bool,
    }

    /// What a wait for a turn ended with.
    pub(super) enum Turned {
        /// Every earlier ticket has left.
        Reached,
        /// The deadline came first.
        TimedOut,
        /// No helper could be had, the queue file changed, or the queue is
        /// stuck: go on unqueued.
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
        /// Appends to the queue at `path` (on `kept`, the queue file as
        /// opened for appending by an earlier look or ticket, else opening
        /// it, creating it if missing) and locks the byte appended; `None`
        /// if no byte could be had (a queue emptied or locked whole under
        /// us twice running).
        pub(super) fn take(
            path: &Path,
            kept: Option<File>,
            on_open: &(dyn Fn(&File) + Sync),
        ) -> io::Result<Option<Ticket>> {
            let file = match kept {
                Some(file) => file,
                None => {
                    let file = fsutil::open_no_follow(path, Access::Append)?;
                    on_open(&file);
                    file
                }
            };
            for _ in 0..2 {
                (&file).write_all(b"\n")?;
                let Some(number) = (&file).stream_position()?.checked_sub(1) else { continue };
                // Already locked: the file was emptied and refilled past this
                // offset by others meanwhile, or is being emptied (locked
                // whole). Take the next byte.
                if !ofd::set(&file, ofd::Kind::Write, number, Some(1), false)? {
                    continue;
                }
                // Emptied between our append and our lock: numbering restarted
                // below us, and we would wait for later arrivals. Take another.
                if file.metadata()?.len() <= number {
                    ofd::set(&file, ofd::Kind::Unlock, number, Some(1), false)?;
                    continue;
                }
                return Ok(Some(Ticket { file, number }));
            }
            Ok(None)
        }

        /// Unlocks the byte (waking the next ticket), keeps the file small,
        /// and returns the descriptor to keep — unless its file lost its
        /// name meanwhile (deleted, or replaced by a rename): the next look
        /// then opens the queue by its path.
        pub(super) fn leave(self) -> Option<File> {
            if let Err(e) = ofd::set(&self.file, ofd::Kind::Unlock, self.number, Some(1), false) {
                tracing::debug!(error = %e, "cannot unlock a queue ticket (closing it will)");
                return None;
            }
            if self.number >= FREE_EVERY && self.number.is_multiple_of(FREE_EVERY) {
                self.shrink();
            }
            fsutil::has_links(&self.file).then_some(self.file)
        }

        /// Empties the file if nobody uses it: only while holding a write
        /// lock on all of it, so no ticket is taken meanwhile (one appended
        /// before sees the file shorter than its number and takes another).
        /// Else frees the blocks below this ticket, where the filesystem can.
        fn shrink(&self) {
            match ofd::set(&self.file, ofd::Kind::Write, 0, None, false) {
                Ok(true) => {
                    if let Err(e) = self.file.set_len(0) {
                        tracing::debug!(error = %e, "cannot empty the queue file");
                    }
                    let _ = ofd::set(&self.file, ofd::Kind::Unlock, 0, None, false);
                }
                Ok(false) => {
                    let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
                    if let Err(e) = rustix::fs::fallocate(&self.file, flags, 0, self.number) {
                        tracing::debug!(error = %e, "cannot free the queue file's old bytes");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot look at the queue file"),
            }
        }
    }

    /// `[start, end)` (`end` `None`: to the end of any file) less the bytes
    /// in `skip`, as ranges of `(start, length)` (`None`: to the end).
    fn gaps(start: u64, end: Option<u64>, skip: &[u64]) -> Vec<(u64, Option<u64>)> {
        let mut gaps = Vec::with_capacity(skip.len() + 1);
        let mut from = start;
        for &byte in skip {
            if byte < from || end.is_some_and(|end| byte >= end) {
                continue;
            }
            if byte > from {
                gaps.push((from, Some(byte - from)));
            }
            from = byte + 1;
        }
        match end {
            Some(end) if end > from => gaps.push((from, Some(end - from))),
            Some(_) => {}
            None => gaps.push((from, None)),
        }
        gaps
    }

    /// Whether another description holds a ticket in any of `ranges`.
    fn any_ticket_in(file: &File, ranges: &[(u64, Option<u64>)]) -> io::Result<bool> {
        for &(start, len) in ranges {
            if ofd::conflict(file, ofd::Kind::Read, start, len)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    impl TurnWaits {
        /// The stuck tickets of the queue file `file` (sorted), forgetting
        /// those no longer locked (looked at on `on`).
        fn stuck_in(&self, file: FileId, on: &File) -> Vec<u64> {
            let mut stuck = self.turns.stuck.lock();
            if stuck.is_empty() {
                return Vec::new();
            }
            stuck.retain(|&(of, byte)| {
                of != file || ofd::conflict(on, ofd::Kind::Read, byte, Some(1)).is_ok_and(|found| found.is_some())
            });
            let mut bytes: Vec<u64> = stuck.iter().filter(|(of, _)| *of == file).map(|&(_, byte)| byte).collect();
            bytes.sort_unstable();
            bytes
        }

        /// Remembers the tickets held below `number` in `ticket`'s queue as stuck.
        fn mark_stuck(&self, ticket: &Ticket, file: FileId) {
            let mut held = Vec::new();
            let mut budget = STUCK_MAX;
            if let Err(e) = held_in(&ticket.file, 0, ticket.number, &mut held, &mut budget) {
                tracing::debug!(error = %e, "cannot list the stuck tickets");
            }
            let mut stuck = self.turns.stuck.lock();
            for byte in held {
                if !stuck.contains(&(file, byte)) {
                    stuck.push((file, byte));
                }
            }
            let excess = stuck.len().saturating_sub(STUCK_MAX);
            stuck.drain(..excess);
        }

        /// Whether anyone holds a ticket in the queue at `path` (tickets
        /// this backend found stuck aside), looked at on `kept` (opened,
        /// creating the file, when not: a missing file cost a failed open
        /// on every cycle, 10% of an uncontended one).
        pub(super) fn anyone_waiting(
            &self,
            kept: &mut Option<File>,
            path: &Path,
            on_open: &(dyn Fn(&File) + Sync),
        ) -> bool {
            if kept.is_none() {
                // For appending: the next ticket is taken on this descriptor.
                match fsutil::open_no_follow(path, Access::Append) {
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
            let skip = if self.turns.stuck.lock().is_empty() {
                Vec::new()
            } else {
                FileId::of_file(file).map(|id| self.stuck_in(id, file)).unwrap_or_default()
            };
            // A read lock conflicts exactly with the tickets' write locks (a
            // turn's read lock is let go as soon as granted).
            any_ticket_in(file, &gaps(0, None, &skip)).unwrap_or_else(|e| {
                tracing::debug!(path = %path.display(), error = %e, "cannot look at the queue; going unqueued");
                false
            })
        }

        /// Waits until no ticket below `ticket` is held (tickets found
        /// stuck aside), or `deadline`. `gate` is the resource's gate,
        /// looked at if the queue seems stuck.
        pub(super) async fn wait(
            &self,
            path: &Path,
            gate: &Path,
            ticket: &Ticket,
            deadline: Deadline,
        ) -> io::Result<Turned> {
            let file = FileId::of_file(&ticket.file)?;
            let skip = self.stuck_in(file, &ticket.file);
            // The common case, nobody ahead, needs no helper.
            if !any_ticket_in(&ticket.file, &gaps(0, Some(ticket.number), &skip))? {
                return Ok(Turned::Reached);
            }
            if deadline.has_passed() {
                return Ok(Turned::TimedOut);
            }
            let (tx, rx) = oneshot::channel();
            let mut tx = Some(tx);
            let mut pending = None;
            if let Some(found) = self.turns.pending.lock().get(path).filter(|p| p.file == file) {
                let mut state = found.state.lock();
                // One waiter at a time (a dropped one's sender is closed), and
                // only one that waits for at least as many tickets, on a
                // helper whose queue is moving.
                if !state.stuck
                    && state.before <= ticket.number
                    && state.waiter.as_ref().is_none_or(oneshot::Sender::is_closed)
                {
                    state.before = ticket.number;
                    state.waiter = tx.take();
                    pending = Some(found.clone());
                }
            }
            if let Some(tx) = tx {
                match self.start(path, file, ticket.number, skip, tx) {
                    Some(started) => pending = Some(started),
                    None => return Ok(Turned::Unavailable),
                }
            }
            let Some(pending) = pending else { return Ok(Turned::Unavailable) };
            match receive(rx, deadline, gate).await {
                Ok(Ok(answer)) => answer.map(|()| Turned::Reached),
                // The helper ended without an answer (its thread died).
                Ok(Err(_)) => Ok(Turned::Unavailable),
                Err(Turned::Unavailable) => {
                    pending.state.lock().stuck = true;
                    self.mark_stuck(ticket, file);
                    Ok(Turned::Unavailable)
                }
                Err(turned) => Ok(turned),
            }
        }

        /// Starts a helper blocking until no ticket below `before` (but those
        /// in `skip`) is held in the queue at `path` (which must still be
        /// `file`); `None` if none can be had.
        fn start(
            &self,
            path: &Path,
            file: FileId,
            before: u64,
            skip: Vec<u64>,
            tx: oneshot::Sender<io::Result<()>>,
        ) -> Option<Arc<PendingTurn>> {
            // A description of its own: a timed-out waiter closes its
            // ticket's, which must then drop its byte.
            let opened = match fsutil::open_no_follow(path, Access::Read) {
                Ok(opened) if FileId::of_file(&opened).is_ok_and(|id| id == file) => opened,
                Ok(_) => return None, // replaced meanwhile
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot open the queue file to wait in it");
                    return None;
                }
            };
            if !kernel_wait::reserve_helper() {
                tracing::debug!(path = %path.display(), "all kernel-wait helpers busy; waiting unqueued");
                return None;
            }
            let state = TurnState { before, waiter: Some(tx), stuck: false };
            let pending = Arc::new(PendingTurn { file, state: Mutex::new(state) });
            self.turns.pending.lock().insert(path.to_owned(), pending.clone());
            let (turns, key, helper) = (self.turns.clone(), path.to_owned(), pending.clone());
            let job = Box::new(move || {
                let (answer, waiter) = wait_in_kernel(&opened, &turns, &key, &helper, &skip);
                kernel_wait::release_helper();
                if let Some(waiter) = waiter {
                    // A waiter that has gone meanwhile needs nothing back:
                    // the turn was a moment, not a lock.
                    let _ = waiter.send(answer);
                }
            });
            if let Err(e) = kernel_wait::run_on_helper(job) {
                kernel_wait::release_helper();
                self.turns.pending.lock().remove(path);
                tracing::debug!(path = %path.display(), error = %e, "cannot start a queue helper; waiting unqueued");
                return None;
            }
            Some(pending)
        }
    }

    /// Waits for the helper's answer until `deadline`; `Err` with why not.
    /// Past [`STUCK_AFTER`], looks at the gate every [`STUCK_LOOK`]: found
    /// free twice running, the waiters ahead are not getting on (a process
    /// stopped with its ticket), and the wait ends `Unavailable` so the
    /// caller goes for the gate unqueued — order lost, never exclusion.
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
                     going for the lock out of turn, and passing over their tickets from now on"
                );
                return Err(Turned::Unavailable);
            }
            free_before = free;
            look = tokio::time::Instant::now() + STUCK_LOOK;
        }
    }

    /// The helper's work: wait (in the kernel) for the turn its waiter
    /// wants, again for as long as an adopting waiter wants a later one;
    /// then unregister and hand back the answer and whom to give it to.
    fn wait_in_kernel(
        file: &File,
        turns: &Turns,
        key: &Path,
        pending: &Arc<PendingTurn>,
        skip: &[u64],
    ) -> (io::Result<()>, Option<oneshot::Sender<io::Result<()>>>) {
        let mut reached = 0;
        loop {
            let before = pending.state.lock().before;
            let mut result = Ok(());
            if before > reached {
                // Range by range: an earlier range's tickets never come back
                // (numbers only grow), so each needs to be free once.
                for (start, len) in gaps(reached, Some(before), skip) {
                    result = ofd::set(file, ofd::Kind::Read, start, len, true).and_then(|_| {
                        // Granted: everyone in it has left. Hold nothing.
                        ofd::set(file, ofd::Kind::Unlock, start, len, false).map(drop)
                    });
                    if result.is_err() {
                        break;
                    }
                }
                reached = before;
            }
            // Unregister first, under both locks, so no later wait adopts a
            // helper that is done, and none raised `before` unseen.
            let mut registry = turns.pending.lock();
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

    /// Collects into `out` the bytes locked by other descriptions in
    /// `[start, end)` of `file`, with at most `budget` looks (`F_OFD_GETLK`
    /// names one conflicting lock at a time, not necessarily the lowest).
    fn held_in(file: &File, start: u64, end: u64, out: &mut Vec<u64>, budget: &mut usize) -> io::Result<()> {
        if start >= end || *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        let Some((at, len)) = ofd::conflict(file, ofd::Kind::Read, start, Some(end - start))? else {
            return Ok(());
        };
        let stop = len.map_or(end, |len| at.saturating_add(len).min(end));
        // A ticket is one byte; a wider lock is someone else's, noted by its start.
        out.push(at.max(start));
        held_in(file, start, at.max(start), out, budget)?;
        held_in(file, stop, end, out, budget)
    }

    /// Whether nobody holds the gate at `path` now (a shared try-lock,
    /// dropped at once; a missing gate is free, an unreadable one busy).
    /// The probe holds the gate shared for two system calls: a `try_acquire`
    /// in another process at that instant finds the gate busy.
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

        fn offset(n: u64) -> io::Result<libc::off_t> {
            libc::off_t::try_from(n).map_err(|_| io::Error::other("a queue offset past the largest file offset"))
        }

        /// The request for `kind` on `len` bytes from `start` (`None`: to
        /// the end of any file).
        fn request(kind: Kind, start: u64, len: Option<u64>) -> io::Result<libc::flock> {
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
            lock.l_len = offset(len.unwrap_or(0))?;
            Ok(lock)
        }

        /// Takes (or with [`Kind::Unlock`] lets go of) `kind` on `len` bytes
        /// from `start`, blocking until granted if `wait`; `Ok(false)` if
        /// not `wait` and another description holds a conflicting lock.
        pub(crate) fn set(file: &File, kind: Kind, start: u64, len: Option<u64>, wait: bool) -> io::Result<bool> {
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

        /// A lock another description holds that conflicts with `kind` on
        /// `len` bytes from `start`: its start and length (`None`: to the end).
        pub(crate) fn conflict(
            file: &File,
            kind: Kind,
            start: u64,
            len: Option<u64>,
        ) -> io::Result<Option<(u64, Option<u64>)>> {
            let mut lock = request(kind, start, len)?;
            // SAFETY: as in `set`; `F_OFD_GETLK` writes the first conflicting
            // lock, or `F_UNLCK`, into `lock`.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock as *mut libc::flock) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            if lock.l_type == libc::F_UNLCK as libc::c_short {
                return Ok(None);
            }
            let at = u64::try_from(lock.l_start).unwrap_or(0);
            let len = u64::try_from(lock.l_len).ok().filter(|&len| len > 0);
            Ok(Some((at, len)))
        }
    }

    #[cfg(test)]
    mod tests {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;

        use super::{Ticket, gaps, ofd};

        /// A queue file of `len` bytes, and a ticket on its byte `number`.
        fn queue_with(dir: &std::path::Path, len: usize, number: u64) -> Ticket {
            let path = dir.join("q.queue");
            std::fs::File::create(&path).and_then(|mut f| f.write_all(&vec![b'\n'; len])).expect("write");
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open");
            assert!(ofd::set(&file, ofd::Kind::Write, number, Some(1), false).expect("lock"));
            Ticket { file, number }
        }

        #[test]
        fn an_unused_queue_is_emptied() {
            let dir = tempfile::tempdir().expect("dir");
            let ticket = queue_with(dir.path(), 70_000, 65_536);
            let file = ticket.leave().expect("left");
            assert_eq!(file.metadata().expect("stat").len(), 0);
        }

        #[test]
        fn a_queue_in_use_keeps_its_tickets_and_frees_its_old_blocks() {
            let dir = tempfile::tempdir().expect("dir");
            let ticket = queue_with(dir.path(), 70_000, 65_536);
            let other =
                std::fs::OpenOptions::new().read(true).write(true).open(dir.path().join("q.queue")).expect("open");
            assert!(ofd::set(&other, ofd::Kind::Write, 65_537, Some(1), false).expect("a later ticket"));
            let blocks = other.metadata().expect("stat").blocks();
            let file = ticket.leave().expect("left");
            let meta = file.metadata().expect("stat");
            assert_eq!(meta.len(), 70_000, "emptied under a held ticket");
            assert!(meta.blocks() < blocks, "no blocks freed: {} then {}", blocks, meta.blocks());
            assert!(ofd::conflict(&file, ofd::Kind::Read, 65_537, Some(1)).expect("look").is_some());
        }

        #[test]
        fn gaps_leave_out_the_skipped_bytes() {
            assert_eq!(gaps(0, Some(5), &[]), [(0, Some(5))]);
            assert_eq!(gaps(0, Some(5), &[2]), [(0, Some(2)), (3, Some(2))]);
            assert_eq!(gaps(0, Some(5), &[0, 4]), [(1, Some(3))]);
            assert_eq!(gaps(0, Some(5), &[7]), [(0, Some(5))]);
            assert_eq!(gaps(3, None, &[1, 3, 9]), [(4, Some(5)), (10, None)]);
            assert_eq!(gaps(0, Some(1), &[0]), []);
        }
    }
}
