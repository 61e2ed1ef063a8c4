//! `file:///dir`: lock files locked with the operating system's lock
//! (`flock` on Unix, `LockFileEx` on Windows) — exclusive, shared
//! (reader-writer) and semaphores. (The scheme is described on
//! [`FileBackend`], so rustdoc shows it.)

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use lockman_core::backend::{Acquired, Deadline, GrantRequest, Granted, LocalQueue, LockBackend};
use lockman_core::{
    Capabilities, FencingToken, LockError, LockInfo, LockMode, LockState, Locks, LostReason, WakeMechanism,
};

use crate::FileOptions;
use crate::flock::{self, SharedTurn};
use crate::fsutil::{self, Access, BreakOutcome, FileId, LockDir, Snapshot, io_error, unix_micros};
use crate::kernel_wait::{KernelWaits, Opened, Waited, Want};
use crate::naming::Member;
use crate::record::{self, FileRecord, Record, RecordState};
use crate::sentinel::{Sentinel, Watched};
use crate::watch::FileWaiter;

mod family;
pub(crate) mod queue;

use family::{Family, Slot};
use queue::{Line, TurnWaits};

/// The backend name in errors, events and metrics.
pub const BACKEND: &str = "file";

/// The kernel-lock file manager: `Locks<FileBackend>`.
///
/// ```
/// use lockman_core::{AcquireOptions, LockBackend, LockManager};
/// use lockman_file::{FileBackend, FileOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockman_core::LockError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let locks = FileBackend::open(FileOptions::new(dir.path()))?.into_manager();
/// let guard = locks.acquire("inverter_read", AcquireOptions::new().purpose("poll")).await?;
/// // Another process opening the same directory now waits (or times out).
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub type FileLockManager = Locks<FileBackend>;

/// The raw kernel-lock backend; use it through [`FileLockManager`].
///
/// # Files
///
/// Each resource has a family of files, all named from one stem: a
/// readable prefix of the name plus 128 bits of its SHA-256, so names never
/// share files (see [`lock_file`](Self::lock_file)); only files named that
/// way are ever listed or removed:
///
/// * `<stem>.lock` — the lock. An exclusive holder locks it exclusively and
///   keeps its holder record in it. Shared and permit holders lock it
///   shared; the first of them, who found it free, writes a record saying
///   what the resource is in use as (shared, or a semaphore of n permits),
///   and every later party checks its own mode against that record
///   ([`LockMode::agrees_with`](lockman_core::LockMode::agrees_with)), so a
///   semaphore of 5 meeting one of 3 gets a `Config` error naming both.
/// * `<stem>.gate` — the turnstile. Every acquirer takes it exclusively
///   before it takes the lock and lets go once it has the lock (or gives
///   up), so at most one party at a time is between arriving and being
///   granted. It also keeps the last fencing token of the resource, so
///   tokens increase across every grant, shared ones included.
/// * `<stem>.queue` — the arrival queue (Linux): a waiter's ticket is a
///   byte it appended and holds an open-file-description lock on (see
///   *Fairness*). Made by the resource's first acquisition that may wait,
///   and kept open with the gate.
/// * `<stem>.slot-<i>` — permit `i` (`i < n`) of a semaphore of `n`, locked
///   exclusively by its holder (who also holds `<stem>.lock` shared), with
///   the holder's record in it.
/// * `<stem>.reader-<32 hex>` — one shared holder's record, in a file its
///   holder keeps locked exclusively while it holds, and deletes on release.
///
/// A permit holder first takes `<stem>.lock` shared (so exclusive and
/// shared parties, and semaphores of another count, meet the kind record
/// and are refused), then the first free slot of `0..n`. With none free it
/// waits holding the gate, woken by inotify on any of the `n` slot files
/// (closed on release, unlike an exclusive grant's lock file).
/// A mode disagreeing with the live holders is refused when it reaches the
/// gate, or at once if another acquisition of the same manager is queued
/// ahead of it; a waiter of another process queued at the gate is not seen
/// until it gets there.
///
/// `force_release` removes the lock file and every permit and record file
/// held at that moment, so every holder is told it lost the grant and
/// newcomers find all permits free.
///
/// # Crash safety
///
/// Every claim is a kernel lock, which vanishes with its process: a crashed
/// holder frees the lock file, its permit slot and its record file at once,
/// and a crash while holding the gate frees the gate. Records only describe
/// what the kernel locks decide: the kind record in `<stem>.lock` counts
/// only while the lock is held (the next party to find it free rewrites
/// it), a permit or reader record counts only while its file is locked
/// (a crashed holder's is ignored, and removed by `cleanup_stale`, which
/// reports it). A record torn by a crash mid-write fails its checksum and
/// is ignored; the gate's token then comes from the lock file and the clock.
///
/// # Fairness
///
/// Within one manager, acquirers of a resource queue first come, first
/// served (core's `LocalQueue`); an exclusive holder keeps its place until
/// it releases (so a releaser cannot barge ahead of its process's waiters),
/// while shared and permit holders leave it once granted, so the next
/// shared acquirer of the same process joins them.
///
/// Across processes, waiters are served first come, first served (on
/// Linux). An acquisition that has to wait — it finds someone queued, or
/// the gate busy — takes a ticket in `<stem>.queue`: it appends a byte and
/// write-locks it with an open-file-description lock (`F_OFD_SETLK`), then
/// waits, blocked in the kernel on a helper thread, for a read lock on
/// every byte below its own, which is granted once every earlier waiter
/// has been granted, given up or died. Only then does it go for the gate,
/// and it leaves the queue once granted. A releaser coming straight back
/// finds the others' tickets and queues behind them. Exclusion never
/// depends on the queue: a queue file deleted, damaged or ignored by an
/// older lockman costs order only. A waiter whose turn has not come after
/// a second looks at the gate every 250 ms; finding it free twice running,
/// it takes the tickets still held ahead of it for stuck (a process stopped
/// by SIGSTOP or a debugger while it waited) and goes on out of turn, and
/// its manager passes over those tickets from then on while they stay
/// held: a stopped waiter costs each manager about a second once, not a
/// wait for as long as it is stopped. `try_acquire` never queues:
/// like a fair mutex's `try_lock`, it takes a free lock at once. Elsewhere
/// than Linux, waiters at the gate race for it when it is let go.
///
/// Nobody passes a waiter holding the gate, and `flock` alone would let
/// new shared locks in beside a waiting exclusive request for ever. The
/// gate prevents that: a writer waiting for the readers to drain holds the
/// gate, so readers arriving after it queue instead of joining. Once the
/// writer is done, the readers queued behind it get in one after another,
/// each as soon as it gets the gate (a few system calls each), and hold
/// together again.
///
/// # Waiting, and descriptors kept open
///
/// A waiter for its turn, the gate or the lock file blocks in the kernel on
/// a helper thread (`fcntl`, `flock`, or `LockFileEx` on Windows), so the
/// release itself wakes it, in any process; meanwhile a waiter for the gate
/// or the lock file re-checks, with backoff up to 50 ms, that the path
/// still names the file it waits on, and moves to the new file if it was
/// deleted or replaced. A wait that times out or is cancelled leaves its
/// helper blocked: the next wait of this backend for the same file adopts
/// it, and a helper that gets the lock with nobody waiting lets go at once
/// (a turn is let go as soon as it is granted). At most 256 helpers block
/// at once in a process; past that, waits for the gate and the lock file
/// fall back to inotify and bounded backoff, and a wait for a turn is
/// skipped (the waiter goes on unqueued).
/// Permit waits for a free slot use inotify (slot files are closed on
/// release).
///
/// An exclusive grant keeps its gate and lock file open when released (for
/// up to 64 resources per backend: [`FileOptions::keep_open`]), and the
/// resource's next exclusive grant reuses them after checking that the
/// paths still name them (the queue file, kept with them, is opened anew
/// when the gate was replaced) — an uncontended cycle is then a look at the
/// queue (`F_OFD_GETLK`), two `try_lock`s, two `stat`s, one read of the
/// gate's token, one write each of the gate and the lock file, and at
/// release a `fstat`, a one-byte write and an unlock; no open or close. A
/// grant whose descriptor was handed out ([`LockGuard::lock_fd`]) is never
/// reused, since another process may share it.
///
/// `list` and `cleanup_stale` open every file of the directory, so they run
/// on tokio's blocking pool rather than on the caller's runtime.
///
/// [`LockGuard::lock_fd`]: lockman_core::LockGuard::lock_fd
#[derive(Debug)]
pub struct FileBackend {
    dir: LockDir,
    sentinel: Sentinel,
    queue: LocalQueue,
    /// Waits blocked in the kernel (see [`crate::kernel_wait`]).
    waits: KernelWaits,
    /// Waits for a turn in an arrival queue (see [`queue`]).
    turns: TurnWaits,
    /// The open gate and lock files of resources granted exclusively,
    /// kept for their next grant.
    idle: Mutex<IdleFiles>,
}

/// Open gate, lock and queue files kept between exclusive grants, by
/// resource: the next grant reuses them after checking the paths still name
/// the gate and lock file, instead of opening (and closing) them again. At
/// most `limit` resources' files ([`FileOptions::keep_open`], three
/// descriptors each); past it, the files of an arbitrary one are closed.
#[derive(Debug)]
struct IdleFiles {
    by_resource: HashMap<Arc<str>, Idle>,
    limit: usize,
}

/// One resource's kept files, and their paths (naming them hashes the name).
#[derive(Debug)]
struct Idle {
    family: Arc<Family>,
    gate: Opened,
    lock: Opened,
    /// The arrival queue, if the resource had one.
    queue: Option<File>,
}

impl IdleFiles {
    fn family(&self, resource: &str) -> Option<Arc<Family>> {
        self.by_resource.get(resource).map(|idle| idle.family.clone())
    }

    fn take(&mut self, resource: &str) -> Option<Idle> {
        self.by_resource.remove(resource)
    }

    fn put(&mut self, resource: Arc<str>, idle: Idle) {
        if self.limit == 0 {
            return; // closed as `idle` drops
        }
        if self.by_resource.len() >= self.limit
            && !self.by_resource.contains_key(&resource)
            && let Some(evicted) = self.by_resource.keys().next().cloned()
        {
            self.by_resource.remove(&evicted);
        }
        self.by_resource.insert(resource, idle);
    }
}

/// A held lock file: the open handle carries the kernel lock.
#[derive(Debug)]
pub struct FileGrant {
    resource: Arc<str>,
    /// `<stem>.lock`, locked exclusively or shared.
    file: Arc<File>,
    snapshot: Snapshot,
    /// An exclusive grant's gate (unlocked), kept open to be reused with
    /// the lock file by the resource's next grant.
    gate: Option<Opened>,
    /// An exclusive grant's arrival queue file, kept open likewise.
    queue: Mutex<Option<File>>,
    /// The resource's file paths (`family.lock` is the lock file's).
    family: Arc<Family>,
    /// Whether the lock's descriptor was handed out ([`LockBackend::lock_fd`]):
    /// then it is never reused, since another process may share it.
    exported: AtomicBool,
    /// The sentinel's watches: the lock file, and a permit's slot file.
    watch_ids: Vec<u64>,
    /// Our place in this manager's queue: kept while held exclusively.
    turn: SharedTurn,
    share: Share,
}

/// What a grant holds besides the lock file.
#[derive(Debug)]
enum Share {
    Exclusive,
    /// Our record file, locked exclusively while we hold.
    Reader {
        record: File,
        path: PathBuf,
    },
    /// Our permit's slot file, locked exclusively, with our record.
    Permit(Slot),
}

/// A grant taken while holding the gate, before the gate is let go.
struct Taken {
    file: Arc<File>,
    snapshot: Snapshot,
    share: Share,
    token: u64,
    now: SystemTime,
    waited: bool,
}

/// Why a grant whose file a breaker moved by mistake, and could not put
/// back, is lost.
fn displaced(path: &Path) -> LostReason {
    LostReason::Stolen {
        detail: format!("the lock file {} was moved aside and another process took its place", path.display()),
    }
}

/// What one look at the lock file found.
enum MainLock {
    /// It was free: we hold it exclusively and start a new period of use.
    First,
    /// Held shared by parties of our kind: we joined them.
    Joined,
    /// Held in a way we must wait for.
    Busy,
}

impl FileBackend {
    /// A backend over `options.dir`.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] if the directory cannot be created or is not one.
    pub fn open(options: FileOptions) -> Result<Self, LockError> {
        let dir = LockDir::open(&options.dir, options.dir_mode, BACKEND)?.with_file_mode(options.file_mode);
        let sentinel = Sentinel::new(
            options.loss_check_interval,
            "the lock file was deleted or replaced by another process (force-released or cleaned up)",
        );
        Ok(FileBackend {
            dir,
            sentinel,
            queue: LocalQueue::default(),
            waits: KernelWaits::default(),
            turns: TurnWaits::default(),
            idle: Mutex::new(IdleFiles { by_resource: HashMap::new(), limit: options.keep_open }),
        })
    }

    /// The directory holding the lock files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The lock file used for `resource`.
    pub fn lock_file(&self, resource: &str) -> PathBuf {
        self.family(resource).lock
    }

    fn family(&self, resource: &str) -> Family {
        Family::new(self.dir.path(), resource)
    }

    fn io(&self, action: &str, resource: &str, path: &Path, error: io::Error) -> LockError {
        io_error(BACKEND, action, Some(resource), path, error)
    }

    /// The resource's state, read from its files without taking anything.
    fn state_of(&self, family: &Family, resource: &str) -> Result<LockState, LockError> {
        let Some(file) = self.open_existing(resource, &family.lock)? else {
            return Ok(LockState::Available);
        };
        family::probe(&file, resource, BACKEND, || family.holder_files())
            .map_err(|e| self.io("probing the lock", resource, &family.lock, e))
    }

    /// `Busy`, naming every holder we can see.
    fn busy(&self, family: &Family, resource: &str) -> Acquired<FileGrant> {
        let holder = match self.state_of(family, resource) {
            Ok(LockState::Held(info) | LockState::Stale(info)) => Some(info),
            _ => None,
        };
        Acquired::Busy { holder }
    }

    /// Refuses `mode` if it disagrees with holders of the resource we can be
    /// sure of without its gate (see [`family::certain_holder_modes`]); the
    /// gate holder checks the rest.
    fn check_kind(&self, family: &Family, resource: &str, mode: LockMode) -> Result<(), LockError> {
        let Some(file) = self.open_existing(resource, &family.lock)? else {
            return Ok(());
        };
        let modes = family::certain_holder_modes(&file, || family.holder_files())
            .map_err(|e| self.io("probing the lock", resource, &family.lock, e))?;
        for held in modes {
            mode.agrees_with(held, resource, BACKEND)?;
        }
        Ok(())
    }

    /// Takes the lock (and, for a semaphore, a permit) while we hold the
    /// gate, waiting until the request's deadline; `None` if it came first.
    /// Writes the records and the next fencing token.
    ///
    /// `cached` is the lock file this backend kept open from the
    /// resource's last grant, if any.
    async fn take(
        &self,
        family: &Family,
        request: &GrantRequest,
        gate: &File,
        cached: Option<Opened>,
    ) -> Result<Option<Taken>, LockError> {
        let resource = &*request.resource;
        let lock_path = &family.lock;
        let mut waited = false;
        let mut cached = cached;
        // Waiting for the lock file blocks in the kernel unless no helper
        // can be had; then change notification and backoff (`waiter`).
        let mut in_kernel = true;
        let mut waiter = FileWaiter::new(Duration::from_millis(1), flock::POLL_MAX);
        let mut slot_waiter = FileWaiter::new(Duration::from_millis(1), flock::POLL_MAX);
        'reopen: loop {
            let Opened { mut file, mut snapshot } = match cached.take() {
                Some(opened) => opened,
                None => {
                    let opened = Opened::create(lock_path)
                        .map_err(|e| self.io("opening the lock file", resource, lock_path, e))?;
                    self.dir.adopt(&opened.file, lock_path);
                    opened
                }
            };
            // A shared or permit waiter is woken by a shared lock it lets go
            // of at once; if the lock is still busy for it right after (an
            // unreadable kind record), it waits by notification once, so it
            // never spins.
            let mut woken_shared = false;
            let first = loop {
                match self.lock_main(family, &file, request)? {
                    MainLock::First => break true,
                    MainLock::Joined => break false,
                    MainLock::Busy => {}
                }
                if request.deadline.has_passed() {
                    return Ok(None);
                }
                waited = true;
                if in_kernel && !woken_shared {
                    let want = if request.mode == LockMode::Exclusive { Want::Exclusive } else { Want::Shared };
                    let opened = Opened { file, snapshot };
                    let waited = self
                        .waits
                        .wait(lock_path, want, opened, request.deadline)
                        .await
                        .map_err(|e| self.io("waiting for the lock file", resource, lock_path, e))?;
                    match waited {
                        Waited::Locked(opened) => {
                            // Below, the path is checked to still name this
                            // file (an adopted wait's may be an older one).
                            (file, snapshot) = (opened.file, opened.snapshot);
                            if want == Want::Exclusive {
                                break true;
                            }
                            // Only a wake-up: lock_main decides how to hold it.
                            let _ = file.unlock();
                            woken_shared = true;
                            continue;
                        }
                        Waited::TimedOut => return Ok(None),
                        Waited::Replaced => continue 'reopen,
                        Waited::Unavailable => {
                            in_kernel = false;
                            continue 'reopen;
                        }
                    }
                }
                woken_shared = false;
                if waiter.watch_first(lock_path) {
                    continue;
                }
                if !waiter.wait(request.deadline, None).await {
                    return Ok(None);
                }
                if !family::still_names(lock_path, snapshot.id) {
                    waiter.forget();
                    continue 'reopen;
                }
            };
            // Someone may have deleted (cleanup) or replaced the file while we
            // opened or waited: then our lock is on an orphan.
            if !family::still_names(lock_path, snapshot.id) {
                waiter.forget();
                continue 'reopen;
            }
            let slot = match request.mode {
                LockMode::Permits(permits) => loop {
                    let slot = family::take_slot(family, permits)
                        .map_err(|(path, e)| self.io("taking a permit", resource, &path, e))?;
                    if let Some(slot) = slot {
                        self.dir.adopt(&slot.file, &slot.path);
                        break Some(slot);
                    }
                    if request.deadline.has_passed() {
                        return Ok(None);
                    }
                    let paths: Vec<PathBuf> = (0..permits).map(|index| family.slot(index)).collect();
                    if slot_waiter.watch_first_all(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>()) {
                        continue;
                    }
                    waited = true;
                    if !slot_waiter.wait(request.deadline, None).await {
                        return Ok(None);
                    }
                    if !family::still_names(lock_path, snapshot.id) {
                        waiter.forget();
                        slot_waiter.forget();
                        continue 'reopen;
                    }
                },
                LockMode::Exclusive | LockMode::Shared => None,
            };
            // The gate keeps the last token of every grant, shared ones too:
            // every grant writes it first (an exclusive or first shared one
            // then writes the same token to the lock file), so a readable
            // gate token is the largest. The lock file's counts when the
            // gate has none: created anew after a cleanup removed the old
            // one (which may have raced a grant), or torn by a crash.
            let previous = match record::read_token_from(gate) {
                Ok(Some(token)) => token,
                _ => record::read_token_from(&file).ok().flatten().unwrap_or(0),
            };
            let now = SystemTime::now();
            // An exhausted counter names the lock file, and the gate that
            // keeps the same token: both must go for tokens to restart.
            let token =
                fsutil::next_token(BACKEND, resource, lock_path, previous, unix_micros(now)).map_err(|mut e| {
                    if let LockError::Backend { message, .. } = &mut e {
                        message.push_str(&format!("; remove its gate {} with it", family.gate.display()));
                    }
                    e
                })?;
            let record = Record::new(request, token, now);
            // Encoded once: the gate's copy differs only in its state byte.
            let mut encoded = record.encode(RecordState::Released);
            record::write_encoded(gate, &encoded)
                .map_err(|e| self.io("writing the fencing token", resource, &family.gate, e))?;
            if first || request.mode == LockMode::Exclusive {
                record::set_state(&mut encoded, RecordState::Held);
                record::write_encoded(&file, &encoded)
                    .map_err(|e| self.io("writing the holder record", resource, lock_path, e))?;
            }
            if first && request.mode != LockMode::Exclusive {
                // Let others of our kind in beside us. Only lockman parties
                // holding the gate (none but us) or another program could
                // take the lock in the moment the kernel converts it.
                // Windows keeps an exclusive and a shared lock side by side
                // instead of converting: let go of the exclusive one first.
                #[cfg(not(unix))]
                file.unlock().map_err(|e| self.io("sharing the lock", resource, lock_path, e))?;
                crate::testhook::point("kernel.sharing", lock_path);
                match file.try_lock_shared() {
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => continue 'reopen,
                    Err(TryLockError::Error(e)) => {
                        return Err(self.io("sharing the lock", resource, lock_path, e));
                    }
                }
                if !family::still_names(lock_path, snapshot.id) {
                    waiter.forget();
                    continue 'reopen;
                }
            }
            let share = match slot {
                Some(slot) => {
                    record
                        .write_to(&slot.file, RecordState::Held)
                        .map_err(|e| self.io("writing the permit holder's record", resource, &slot.path, e))?;
                    Share::Permit(slot)
                }
                None if request.mode == LockMode::Shared => {
                    let path = family.new_reader_record();
                    let record =
                        fsutil::create_locked_with(&path, &record.encode(RecordState::Held), self.dir.file_mode())
                            .map_err(|e| self.io("writing the shared holder's record", resource, &path, e))?;
                    Share::Reader { record, path }
                }
                None => Share::Exclusive,
            };
            return Ok(Some(Taken { file, snapshot, share, token, now, waited }));
        }
    }

    /// One try at the lock file, for `request`'s mode; refuses a mode that
    /// disagrees with the kind the live holders use it as.
    fn lock_main(&self, family: &Family, file: &File, request: &GrantRequest) -> Result<MainLock, LockError> {
        let resource = &*request.resource;
        let failed = |e| self.io("locking the lock file", resource, &family.lock, e);
        match file.try_lock() {
            Ok(()) => return Ok(MainLock::First),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(failed(e)),
        }
        let mut kind = family::kind_of(file);
        if let Some(held) = kind
            && let Err(disagree) = request.mode.agrees_with(held, resource, BACKEND)
        {
            if family::kind_is_live(file, held, || family.holder_files()).map_err(failed)? {
                return Err(disagree);
            }
            // An outdated record: wait for whoever holds the lock for a moment.
            kind = None;
        }
        // Join the holders only if they hold it our way (an exclusive
        // holder's record, or none readable, means waiting).
        if request.mode == LockMode::Exclusive || kind != Some(request.mode) {
            return Ok(MainLock::Busy);
        }
        match file.try_lock_shared() {
            Ok(()) => Ok(MainLock::Joined),
            Err(TryLockError::WouldBlock) => Ok(MainLock::Busy),
            Err(TryLockError::Error(e)) => Err(failed(e)),
        }
    }

    fn release_sync(&self, grant: &FileGrant) -> Result<(), LockError> {
        for id in &grant.watch_ids {
            self.sentinel.unwatch(*id);
        }
        // Deleted, or replaced by a rename over it: either way our file has no
        // name left (checked on the handle, which is cheaper than the path;
        // the sentinel covers a file merely renamed away).
        let ours = fsutil::has_links(&grant.file);
        match &grant.share {
            Share::Exclusive => {
                if ours && let Err(e) = record::mark_released(&grant.file) {
                    tracing::warn!(path = %grant.family.lock.display(), error = %e, "cannot mark the lock record released");
                }
            }
            Share::Reader { record, path } => {
                // Only our own file: a force-release may have moved it.
                let still = FileId::of_file(record).is_ok_and(|id| family::still_names(path, id));
                if still && let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a shared holder's record");
                }
            }
            Share::Permit(slot) => {
                if fsutil::has_links(&slot.file)
                    && let Err(e) = record::mark_released(&slot.file)
                {
                    tracing::warn!(path = %slot.path.display(), error = %e, "cannot mark the permit record released");
                }
                // Unlock before close, so a waiter woken by the close finds it free.
                if let Err(e) = slot.file.unlock() {
                    tracing::warn!(path = %slot.path.display(), error = %e, "cannot unlock a permit");
                }
            }
        }
        // Unlock before close, so waiters woken by the close find it free.
        let unlocked = grant.file.unlock();
        // Keep the files for the resource's next grant (before our turn
        // ends, so this process's next waiter finds them) — unless the
        // descriptor was handed out: a process sharing it would share the
        // next grant's lock too.
        if ours
            && unlocked.is_ok()
            && !grant.exported.load(Ordering::Relaxed)
            && let Some(gate) = &grant.gate
        {
            let idle = Idle {
                family: grant.family.clone(),
                gate: gate.clone(),
                lock: Opened { file: grant.file.clone(), snapshot: grant.snapshot },
                queue: grant.queue.lock().take(),
            };
            self.idle.lock().put(grant.resource.clone(), idle);
        }
        drop(grant.turn.lock().take()); // the next waiter in this process goes now
        if !ours {
            return Err(LockError::stolen(
                BACKEND,
                &*grant.resource,
                format!(
                    "the lock file {} was deleted or replaced by another process while held",
                    grant.family.lock.display()
                ),
            ));
        }
        unlocked.map_err(|e| io_error(BACKEND, "unlocking", None, &grant.family.lock, e))
    }

    /// Opens an existing lock file for inspection; `None` if there is none.
    fn open_existing(&self, resource: &str, path: &Path) -> Result<Option<File>, LockError> {
        match fsutil::open_no_follow(path, Access::Read) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("opening the lock file", resource, path, e)),
        }
    }

    /// What the directory-wide operations need, owned by a blocking-pool task.
    fn walk(&self) -> DirWalk {
        DirWalk { dir: self.dir.path().to_owned(), sentinel: self.sentinel.clone() }
    }
}

impl LockBackend for FileBackend {
    type Grant = FileGrant;

    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // Waits for the lock and the gate block in the kernel (permit slots
        // excepted, which are woken by inotify as the legacy backend's are).
        flock::capabilities().with_modes(true, true).with_wake(WakeMechanism::Kernel)
    }

    async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<FileGrant>, LockError> {
        let resource = &*request.resource;
        // Naming a resource's files hashes its name: reuse the kept names.
        let kept = self.idle.lock().family(resource);
        let family = kept.unwrap_or_else(|| Arc::new(self.family(resource)));
        let mut turn = self.queue.enter(&request.resource, Deadline::Now).await;
        if !turn.is_ours() {
            // Someone in this manager is ahead of us: a mode that disagrees
            // with the live holders is refused now, not after the wait.
            self.check_kind(&family, resource, request.mode)?;
            drop(turn);
            turn = self.queue.enter(&request.resource, request.deadline).await;
            if !turn.is_ours() {
                return Ok(self.busy(&family, resource));
            }
        }
        // Only exclusive grants keep their files open for the next one.
        let kept = match request.mode {
            LockMode::Exclusive => self.idle.lock().take(resource),
            LockMode::Shared | LockMode::Permits(_) => None,
        };
        let (cached_gate, cached_lock, cached_queue) = match kept {
            Some(Idle { gate, lock, queue, .. }) => (Some(gate), Some(lock), queue),
            None => (None, None, None),
        };
        // First come, first served across processes: with anyone queued
        // (or, below, the gate busy) we wait for our turn before the gate.
        // A `try_acquire` never queues; like a fair mutex's `try_lock` it
        // takes a free lock at once.
        let mut line = Line::new(&self.turns, family.clone(), self.dir.file_mode(), cached_queue);
        let may_wait = !matches!(request.deadline, Deadline::Now);
        if may_wait && line.anyone_waiting() && !line.wait_turn(request.deadline).await {
            drop(line); // out of the queue before the look at the holder
            return Ok(self.busy(&family, resource));
        }
        let cached_gate_id = cached_gate.as_ref().map(|gate| gate.snapshot.id);
        let queue = may_wait.then_some(&mut line);
        let adopt = |file: &File| self.dir.adopt(file, &family.gate);
        let opening =
            flock::Opening { name: "gate", cached: cached_gate, waits: Some(&self.waits), queue, on_open: &adopt };
        let Some((gate, gate_waited)) =
            flock::lock_until(BACKEND, resource, &family.gate, request.deadline, opening).await?
        else {
            drop(line);
            return Ok(self.busy(&family, resource));
        };
        if cached_gate_id.is_some_and(|id| id != gate.snapshot.id) {
            // The kept gate was replaced (a cleanup removed the family): the
            // kept queue file may be gone too.
            line.forget_kept();
        }
        // On an error or timeout the files (and with them the kernel locks),
        // the gate and our turn are dropped.
        let Some(taken) = self.take(&family, request, &gate.file, cached_lock).await? else {
            drop((gate, line));
            return Ok(self.busy(&family, resource));
        };
        // Unlock before close, so the gate's next waiter, woken by either, finds it free.
        if let Err(e) = gate.file.unlock() {
            tracing::debug!(path = %family.gate.display(), error = %e, "cannot unlock the gate (closing it will)");
        }
        // Then the next in the queue goes for the gate.
        let queue = line.leave();
        let waited = taken.waited || gate_waited || turn.waited();
        let gate = (request.mode == LockMode::Exclusive).then_some(gate);
        let Taken { file, snapshot, share, token, now, .. } = taken;
        // Shared and permit holders let the next of this manager's waiters
        // in at once; an exclusive one keeps its turn until it releases.
        let turn: SharedTurn = Arc::new(Mutex::new((request.mode == LockMode::Exclusive).then_some(turn)));
        let mut watch_ids = vec![self.sentinel.watch(Watched {
            resource: request.resource.clone(),
            path: family.lock.clone(),
            snapshot,
            strict: false,
            loss: request.loss.clone(),
            turn: Some(turn.clone()),
        })];
        if let Share::Permit(slot) = &share {
            watch_ids.push(self.sentinel.watch(Watched {
                resource: request.resource.clone(),
                path: slot.path.clone(),
                snapshot: slot.snapshot,
                strict: false,
                loss: request.loss.clone(),
                turn: None,
            }));
        }
        let grant = FileGrant {
            resource: request.resource.clone(),
            file,
            snapshot,
            queue: Mutex::new(queue.filter(|_| gate.is_some())),
            gate,
            family,
            exported: AtomicBool::new(false),
            watch_ids,
            turn,
            share,
        };
        Ok(Acquired::Granted(
            Granted::new(grant, FencingToken::new(token), None).acquired_at(now).after_waiting(waited),
        ))
    }

    fn release_now(&self, grant: &FileGrant) -> Option<Result<(), LockError>> {
        Some(self.release_sync(grant))
    }

    /// The lock file's descriptor: the kernel lock is on its open file description.
    #[cfg(unix)]
    fn lock_fd<'g>(&self, grant: &'g FileGrant) -> Option<std::os::fd::BorrowedFd<'g>> {
        use std::os::fd::AsFd;
        grant.exported.store(true, Ordering::Relaxed);
        Some(grant.file.as_fd())
    }

    async fn renew(&self, _grant: &FileGrant, _lease: Duration) -> Result<SystemTime, LockError> {
        Err(LockError::Config(
            "the file backend has no leases: a kernel lock lasts until released or the process exits; \
             use file:///dir?mode=lease for leases"
                .to_owned(),
        ))
    }

    async fn inspect(&self, resource: &str) -> Result<LockState, LockError> {
        self.state_of(&self.family(resource), resource)
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let walk = self.walk();
        off_the_runtime("listing lock files", move || walk.list()).await
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let family = self.family(resource);
        let path = &family.lock;
        let Some(file) = self.open_existing(resource, path)? else {
            return Ok(None);
        };
        let id = FileId::of_file(&file).map_err(|e| self.io("inspecting the lock file", resource, path, e))?;
        let holder_files = || family.holder_files();
        let info = match family::probe(&file, resource, BACKEND, holder_files)
            .map_err(|e| self.io("probing the lock", resource, path, e))?
        {
            LockState::Held(info) => info,
            _ => return Ok(None),
        };
        // The permits and records held now (judged before the lock file goes,
        // so a newcomer's fresh ones are not taken for them).
        let holders_files = family::held_files(family.holder_files().unwrap_or_default());
        // A kernel lock cannot be taken from a live process; removing its file
        // lets newcomers lock a fresh one, and the holder notices its file is gone.
        let victims = self.sentinel.grants_on(path, id);
        match fsutil::break_by_rename(path, id, |_| true) {
            Ok(BreakOutcome::Broken) => {}
            Ok(BreakOutcome::NotOurs | BreakOutcome::Gone) => return Ok(None),
            Ok(BreakOutcome::Displaced(moved)) => {
                self.sentinel.mark_lost(&self.sentinel.grants_on(path, moved), &displaced(path));
                return Ok(None);
            }
            Err(e) => return Err(self.io("removing the lock file", resource, path, e)),
        }
        // Every holder's permit goes too, so that newcomers find all n free.
        for (held, held_id) in holders_files {
            if let Err(e) = fsutil::break_by_rename(&held, held_id, |_| true) {
                tracing::warn!(path = %held.display(), error = %e, "cannot remove a force-released holder's file");
            }
        }
        crate::testhook::point("kernel.force_release.broken", path);
        self.sentinel.mark_lost(&victims, &LostReason::ForceReleased { reason: reason.to_owned() });
        Ok(Some(info))
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        let walk = self.walk();
        off_the_runtime("cleaning up lock files", move || walk.cleanup_stale()).await
    }
}

/// What [`FileBackend::list`] and [`FileBackend::cleanup_stale`] need, owned:
/// they open every file of the directory (seconds at 100,000 files), so they
/// run on tokio's blocking pool instead of stalling the caller's runtime.
#[derive(Debug)]
struct DirWalk {
    dir: PathBuf,
    sentinel: Sentinel,
}

impl DirWalk {
    /// The files lockman made here (by name), by resource; other files in a
    /// shared directory are not ours to list or remove.
    fn families(&self) -> Result<std::collections::HashMap<String, Vec<(PathBuf, Member)>>, LockError> {
        family::scan(&self.dir).map_err(|e| io_error(BACKEND, "listing lock files", None, &self.dir, e))
    }

    /// Removes the unlocked file at `path` (one of a family's), returning
    /// the held record a crashed holder left in it, if asked to report one.
    fn remove_unused(&self, path: &Path, report: impl FnOnce(&Record) -> bool) -> Option<LockInfo> {
        let file = fsutil::open_no_follow(path, Access::Read).ok()?;
        file.try_lock().ok()?;
        // Only a file the path still names: one we locked after another
        // cleanup removed it is an orphan, and moving the path now would
        // move a live holder's file.
        let id = FileId::of_file(&file).ok()?;
        if !family::still_names(path, id) {
            return None;
        }
        let left = record::read_from(&file).ok().and_then(FileRecord::held).filter(|r| report(r));
        // Removing it while we hold its lock is safe: anyone who opened it
        // meanwhile finds the path changed after locking, and retries.
        match fsutil::break_by_rename(path, id, |_| true) {
            Ok(BreakOutcome::Broken) => left.map(|record| record.to_info(BACKEND)),
            Ok(BreakOutcome::Displaced(moved)) => {
                self.sentinel.mark_lost(&self.sentinel.grants_on(path, moved), &displaced(path));
                None
            }
            Ok(BreakOutcome::NotOurs | BreakOutcome::Gone) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an unused lock file");
                None
            }
        }
    }

    /// Removes the queue file at `path` unless someone holds a ticket in it.
    fn remove_unused_queue(&self, path: &Path) {
        let Ok(file) = fsutil::open_no_follow(path, Access::Read) else { return };
        let Ok(id) = FileId::of_file(&file) else { return };
        if queue::in_use(&file) || !family::still_names(path, id) {
            return;
        }
        if let Err(e) = fsutil::break_by_rename(path, id, |_| true) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an unused queue file");
        }
    }

    /// Every held lock in the directory.
    fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut held = Vec::new();
        for (_, members) in self.families()? {
            let Some((path, _)) = members.iter().find(|(_, member)| *member == Member::Lock) else { continue };
            let Ok(file) = fsutil::open_no_follow(path, Access::Read) else { continue };
            let unnamed = fsutil::file_name_of(path);
            let holder_files = || Ok(members.iter().filter(|(_, m)| m.is_holder_file()).cloned().collect());
            match family::probe(&file, &unnamed, BACKEND, holder_files) {
                Ok(LockState::Held(info)) => held.push(info),
                Ok(_) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot probe a lock file"),
            }
        }
        held.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(held)
    }

    /// Removes every unused file of ours, reporting what crashed holders left.
    fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        // A kernel lock dies with its process, so nothing is ever *held* by a
        // dead holder; what remains are files. Remove every unlocked one of
        // ours (bounding the directory; only names lockman makes are listed,
        // never another program's `*.lock`) and report those a crashed
        // holder left: an exclusive record in a lock file (a shared
        // resource's kind record stays "held" after a clean end, so it
        // proves nothing), a permit's record, a shared holder's record file.
        let mut crashed = Vec::new();
        for (_, mut members) in self.families()? {
            // Holders' files, then the lock file, then the gate — and the gate
            // only once the lock file is gone: while the resource is in use
            // the gate keeps the token that shared grants must stay above.
            members.sort_by_key(|(_, member)| match member {
                Member::Slot(_) | Member::Reader => 0,
                Member::Lock => 1,
                Member::Gate => 2,
                Member::Queue => 3,
            });
            for (path, member) in members {
                let left = match member {
                    Member::Slot(_) | Member::Reader => self.remove_unused(&path, |_| true),
                    Member::Lock => self.remove_unused(&path, |record| record.mode == LockMode::Exclusive),
                    Member::Gate if matches!(fsutil::stat_no_follow(&path.with_extension("lock")), Ok(None)) => {
                        self.remove_unused(&path, |_| false)
                    }
                    Member::Gate => None,
                    // Last, once the gate is gone too, and only unused: a
                    // queue removed under waiters costs their order.
                    Member::Queue
                        if matches!(fsutil::stat_no_follow(&path.with_extension("lock")), Ok(None))
                            && matches!(fsutil::stat_no_follow(&path.with_extension("gate")), Ok(None)) =>
                    {
                        self.remove_unused_queue(&path);
                        None
                    }
                    Member::Queue => None,
                };
                crashed.extend(left);
            }
        }
        Ok(crashed)
    }
}

/// Runs `work` on tokio's blocking pool (inline without a runtime). If the
/// caller stops waiting, the work still runs to its end.
async fn off_the_runtime<T: Send + 'static>(
    action: &str,
    work: impl FnOnce() -> Result<T, LockError> + Send + 'static,
) -> Result<T, LockError> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime.spawn_blocking(work).await.unwrap_or_else(|e| {
            Err(LockError::backend(BACKEND, action, None, format!("the blocking task failed: {e}")))
        }),
        Err(_) => work(),
    }
}
