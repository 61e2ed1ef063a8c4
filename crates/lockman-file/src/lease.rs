//! `file:///dir?mode=lease`: lease files for network shares, where kernel
//! locks cannot be trusted — exclusive, shared (reader-writer) and semaphores.
//! (The full story is on the public type below, so rustdoc shows it.)

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lockman_core::backend::{Acquired, Deadline, GrantRequest, Granted, LockBackend};
use lockman_core::{Capabilities, FencingToken, LockError, LockInfo, LockMode, LockState, LostReason, WakeMechanism};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::FileOptions;
use crate::flock::SharedTurn;
use crate::fsutil::{self, Access, BreakOutcome, FileId, LockDir, Snapshot, io_error, unix_micros};
use crate::record::{self, FileRecord, Record, RecordState};
use crate::sentinel::{Sentinel, Watched};
use crate::watch::FileWaiter;
use lockman_core::backend::{LocalQueue, Turn};

mod family;
mod sequence;

use family::{Family, Member, Registered, Registry};
use sequence::Sequence;

/// The backend name in errors, events and metrics.
pub const LEASE_BACKEND: &str = "file-lease";

const SEQUENCE_SUFFIX: &str = ".seq";

/// `file:///dir?mode=lease`: lease files for network shares, where kernel
/// locks cannot be trusted (SMB, some NFS mounts, synced folders).
///
/// A lock is a file created exclusively (written aside, then `link`ed into
/// place, so readers never see it half-written) holding the holder's record
/// and a heartbeat the holder renews while its guard lives. It is stale when
/// the heartbeat is older than the lease, or at once when its pid is dead on
/// this same host; the next acquirer (or `cleanup_stale`) breaks it by
/// renaming it to a unique tombstone — of several racing breakers exactly one
/// rename succeeds — and re-checking what it moved. A live file moved by
/// mistake (another breaker and a newcomer got there first) is put back; if
/// a third process created the path meanwhile, the earlier grant's file
/// still goes back over the later one (ranked by token), whose creator finds
/// its file gone before granting or by its loss check.
///
/// Fencing tokens: each grant's token is above the `.seq` file's last one
/// and the clock (µs). A creator writes its token to `.seq` and then checks
/// that its file is still in place before granting, so a creator paused past
/// its lease and broken meanwhile gets no grant, and a successor always
/// reads a token above every granted one — unless the paused creator's late
/// write lands just after its successor's, a window that `lease/sequence.rs`
/// describes, covered by the clock floor while clocks are in step. `.seq`
/// holds two slots and is updated in place, one slot per grant (the
/// smaller), so a reader racing a write or a crash mid-write still finds the
/// other whole; it is never flushed to disk, so after a power loss the clock
/// keeps tokens rising (with clocks in step).
///
/// Lease files judge staleness by the holder's clock: hosts sharing the
/// directory need clocks in step to well within the lease. Times in a record
/// are untrusted input: a record whose grant or heartbeat time is further
/// ahead of this host's clock than its lease (at least ten minutes), or
/// whose lease exceeds 1000 years, is treated like a corrupt file — held for
/// one default lease from its last change, then broken — as is a corrupt
/// file whose change time is in the future.
///
/// Only regular files are ever read: a named pipe, symlink or device in place
/// of a lease or `.seq` file is an error naming the path for its resource,
/// and skipped (with a warning) by `list` and `cleanup_stale`. The `.seq`
/// file is read at most 64 bytes. A token counter at `u64::MAX` is an error,
/// never a repeated or wrapped token.
///
/// # Shared holds and semaphores
///
/// A resource is a family of files named from one stem (the resource's
/// encoded name, as for the kernel flavour's [`FileBackend`](crate::FileBackend)):
///
/// * `<stem>.lease` — the exclusive holder's lease file, as above, and the
///   **gate** every acquirer passes, whatever its mode: at most one party at
///   a time is between arriving and being granted.
/// * `<stem>.reader-<i>.lease` — one shared holder's lease file, renewed by
///   its own heartbeat and removed when it releases (it needs no gate to
///   leave).
/// * `<stem>.slot-<i>.lease` — permit `i` (`i < n`) of a semaphore of `n`.
/// * `<stem>.holders` — the registry, written only by gate holders: what
///   the resource is in use as (`shared <count>`, or `permits <n>`), so a
///   writer finds every reader's file by its exact name (`0..count`) and
///   parties with another permit count are refused
///   ([`LockMode::agrees_with`]: a `Config` error naming both). It stays
///   once written (one small file per resource ever used with modes).
/// * `<stem>.seq` — the last fencing token, as for exclusive grants. Every
///   grant's token is issued as its acquirer takes the gate, so tokens
///   increase across modes.
///
/// A **reader** takes the gate, checks that no live holder uses the
/// resource another way, picks the first reader index whose file is free
/// (or stale, and broken), names it in the registry, creates its file, checks
/// that the gate is still its own and lets the gate go. A **permit** holder
/// takes the gate, then the first free or stale slot of `0..n` (waiting,
/// holding the gate, while all `n` are held). A **writer** takes the gate
/// and keeps it for its whole hold: before it is granted it waits, holding
/// it (and renewing its heartbeat), until every reader's file is gone or
/// stale — readers arriving meanwhile queue behind it at the gate, so a
/// stream of readers cannot starve it. A resource never used with modes
/// has no registry, and an exclusive acquirer that finds none is granted
/// as before (one failed open more).
///
/// `state`, `list` and timeout errors show every live reader or permit
/// holder ([`LockInfo::of_holders`]); a waiting writer holding the gate is
/// no holder. `force_release` breaks every holder's file (each holder is
/// told it lost its grant), or, with none, the exclusive lease file; a
/// gate a waiter holds is left alone. `cleanup_stale` breaks and reports
/// stale holders' files too.
///
/// # Crash safety
///
/// Every claim is a lease file, broken only once stale (its heartbeat
/// older than its lease, or its pid dead on this host) and only by the
/// tombstone rename above, so:
///
/// * a reader or permit holder that crashes or freezes stops counting when
///   its own lease lapses — at once when it ran on this host and its
///   process is gone — while the others keep theirs. A frozen holder that
///   resumes finds its file gone and is told it lost its grant;
/// * a party that crashes holding the gate (passing, or a writer waiting
///   for readers) blocks acquirers for at most the gate's lease;
/// * a reader is named in the registry *before* its file exists, and
///   checks that the gate is still its own *after* creating the file: a
///   writer that broke the gate of a reader frozen in between either sees
///   its file or has been granted before it exists, and then the reader
///   finds the gate gone, removes its file and starts over. A writer keeps
///   checking that the gate is its own while it waits.
///
/// **Network shares.** On NFS a directory listing may be served from the
/// client's cache and miss a file another host just created, so safety
/// never rests on a listing: writers look readers up by the registry's
/// exact names. The registry is rewritten whole (written aside, renamed
/// over); a count is merged with the one read just before, and never
/// shrinks, but a gate holder frozen past the gate's lease between that
/// read and its rename can still overwrite a later holder's larger count.
/// Writers therefore also take any reader file a listing shows, so a
/// reader is missed only if both failed at once. Exact-name lookups rely
/// on the share's close-to-open consistency; mount with `lookupcache=positive`
/// (or `none`) where negative lookups may be cached for long. As for
/// exclusive leases, a holder paused past its lease may act after losing
/// its grant: fence what it writes with its token.
///
/// # Fairness
///
/// Within one manager, acquirers queue first come, first served; an
/// exclusive holder keeps its place until it releases, shared and permit
/// holders leave it once granted. Across processes and hosts, waiters race
/// for the gate when it is let go (woken by inotify for local changes, by
/// re-checking every 100 ms for remote ones), so there is no strict arrival
/// order between them — but nobody passes a writer, or a permit waiter,
/// that holds it.
///
/// The lease-file manager: `Locks<LeaseFileBackend>`.
///
/// ```
/// use std::time::Duration;
/// use lockman_core::{AcquireOptions, LockBackend, LockManager};
/// use lockman_file::{FileOptions, LeaseFileBackend};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockman_core::LockError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let options = FileOptions::new(dir.path()).default_lease(Duration::from_secs(10));
/// let locks = LeaseFileBackend::open(options)?.into_manager();
/// let guard = locks.acquire("nightly-report", AcquireOptions::new().purpose("render")).await?;
/// // The heartbeat is renewed every ~3.3 s while `guard` lives.
/// guard.release().await?;
///
/// // Readers together, each with a lease of its own; a writer waits for them.
/// let a = locks.acquire("catalog", AcquireOptions::new().shared()).await?;
/// let b = locks.acquire("catalog", AcquireOptions::new().shared()).await?;
/// assert!(locks.try_acquire("catalog", AcquireOptions::new()).await?.is_none());
/// assert!(b.fencing_token() > a.fencing_token());
/// a.release().await?;
/// b.release().await?;
/// // At most 2 holders of "uploads" at once.
/// let permit = locks.acquire("uploads", AcquireOptions::new().permits(2)).await?;
/// permit.release().await?;
/// # Ok(()) }
/// ```
pub type LeaseFileLockManager = lockman_core::Locks<LeaseFileBackend>;

/// The raw lease-file backend; use it through [`LeaseFileLockManager`].
#[derive(Debug)]
pub struct LeaseFileBackend {
    dir: LockDir,
    default_lease: Duration,
    sentinel: Sentinel,
    queue: LocalQueue,
}

/// A held lease file.
#[derive(Debug)]
pub struct LeaseGrant {
    resource: Arc<str>,
    file: File,
    path: PathBuf,
    id: FileId,
    record: Mutex<Record>,
    watch_id: u64,
    turn: SharedTurn,
}

impl LeaseFileBackend {
    /// A backend over `options.dir`.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] if the directory cannot be created or is not one.
    pub fn open(options: FileOptions) -> Result<Self, LockError> {
        let dir = LockDir::open(&options.dir, options.dir_mode, LEASE_BACKEND)?.with_file_mode(options.file_mode);
        let sentinel = Sentinel::new(
            options.loss_check_interval,
            "the lease file was broken as stale or deleted by another process",
        );
        Ok(LeaseFileBackend { dir, default_lease: options.default_lease, sentinel, queue: LocalQueue::default() })
    }

    /// The lease file used for `resource`: its exclusive holder's, and the
    /// gate every acquirer passes (shared holders and permits have files of
    /// their own beside it; see the scheme on [`LeaseFileLockManager`]).
    pub fn lease_file(&self, resource: &str) -> PathBuf {
        self.family(resource).gate
    }

    fn family(&self, resource: &str) -> Family {
        Family::new(self.dir.path(), resource)
    }

    fn io(&self, action: &str, resource: &str, path: &Path, error: io::Error) -> LockError {
        io_error(LEASE_BACKEND, action, Some(resource), path, error)
    }

    /// Creates the lease file at `path` (the gate) if nobody holds one, with
    /// the next fencing token. `Ok(None)` if it exists, or if ours was broken
    /// before it could be granted; then look again.
    fn try_create(&self, request: &GrantRequest, path: &Path) -> Result<Option<Lease>, LockError> {
        let resource = &*request.resource;
        let sequence = path.with_extension(&SEQUENCE_SUFFIX[1..]);
        let now = SystemTime::now();
        let mut record = Record::new(request, 0, now);
        record.lease_ms = Some(millis(request.lease.unwrap_or(self.default_lease)));
        record.heartbeat_us = Some(unix_micros(now));
        // The file carries a real token from the moment it appears: a breaker
        // that moved it by mistake ranks it by its token to put it back.
        let previous = sequence::read(&sequence)
            .map_err(|e| self.io("reading the token sequence file", resource, &sequence, e))?;
        record.token = fsutil::next_token(LEASE_BACKEND, resource, &sequence, previous, unix_micros(now))?;
        let Some(file) = fsutil::create_exclusive_with(path, &record.encode(RecordState::Held), self.dir.file_mode())
            .map_err(|e| self.io("creating the lease file", resource, path, e))?
        else {
            return Ok(None);
        };
        crate::testhook::point("lease.created", path);
        let id = FileId::of_file(&file).map_err(|e| self.io("inspecting the lease file", resource, path, e))?;
        // We hold the lease: only we write the sequence file now. A grant
        // made and released between our first read and the create took a
        // token we must be above.
        let opened = Sequence::open(&sequence)
            .map_err(|e| self.io("reading the token sequence file", resource, &sequence, e))
            .and_then(|opened| {
                let taken = opened.last();
                if taken < record.token {
                    return Ok((opened, None));
                }
                let floor = unix_micros(SystemTime::now());
                fsutil::next_token(LEASE_BACKEND, resource, &sequence, taken, floor).map(|token| (opened, Some(token)))
            });
        let (opened, taken) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                // Not granted: our file must not block others until it goes stale.
                let _ = fsutil::break_by_rename(path, id, |_| true);
                return Err(e);
            }
        };
        let token_changed = taken.is_some();
        if let Some(token) = taken {
            record.token = token;
        }
        let stored = opened
            .record(&sequence, record.token, self.dir.file_mode())
            .and_then(|()| if token_changed { record.write_to(&file, RecordState::Held) } else { Ok(()) });
        if let Err(e) = stored {
            let _ = fsutil::break_by_rename(path, id, |_| true);
            return Err(self.io("recording the lease", resource, path, e));
        }
        // Still ours? A creator paused past its lease since the create may
        // have been broken as stale and succeeded by a newer grant, whose
        // token it must not follow: no grant then. Checked after the sequence
        // file is written, so whoever breaks us after this reads a higher one.
        let still_ours =
            FileId::at(path).map_err(|e| self.io("checking the lease file", resource, path, e))? == Some(id);
        if !still_ours {
            tracing::info!(resource, path = %path.display(), "our new lease file was broken as stale before it was granted; looking again");
            return Ok(None);
        }
        Ok(Some(Lease { file, path: path.to_owned(), id, record }))
    }

    /// Creates a holder's own lease file at `path` (a reader's or a permit's)
    /// with `record`. `Ok(None)` if the path is taken.
    fn create_holder_file(&self, resource: &str, path: &Path, record: Record) -> Result<Option<Lease>, LockError> {
        let Some(file) = fsutil::create_exclusive_with(path, &record.encode(RecordState::Held), self.dir.file_mode())
            .map_err(|e| self.io("creating a holder's lease file", resource, path, e))?
        else {
            return Ok(None);
        };
        let id = FileId::of_file(&file).map_err(|e| self.io("inspecting a holder's lease file", resource, path, e))?;
        Ok(Some(Lease { file, path: path.to_owned(), id, record }))
    }

    /// Makes `lease` the grant of `request`: watched for loss from now on.
    fn grant(
        &self,
        request: &GrantRequest,
        lease: Lease,
        turn: SharedTurn,
        waited: bool,
    ) -> Result<Acquired<LeaseGrant>, LockError> {
        let resource = &*request.resource;
        let meta = match lease.file.metadata() {
            Ok(meta) => meta,
            Err(e) => {
                remove_own(&lease); // not granted: it must not block others until it goes stale
                return Err(self.io("inspecting the lease file", resource, &lease.path, e));
            }
        };
        let watch_id = self.sentinel.watch(Watched {
            resource: request.resource.clone(),
            path: lease.path.clone(),
            snapshot: Snapshot::of(&meta),
            strict: false,
            loss: request.loss.clone(),
            turn: Some(turn.clone()),
        });
        let Lease { file, path, id, record } = lease;
        let expires = record.lease_expires_at();
        let acquired_at = fsutil::from_unix_micros(record.acquired_at_us);
        let token = FencingToken::new(record.token);
        let grant = LeaseGrant {
            resource: request.resource.clone(),
            file,
            path,
            id,
            record: Mutex::new(record),
            watch_id,
            turn,
        };
        Ok(Acquired::Granted(Granted::new(grant, token, expires).acquired_at(acquired_at).after_waiting(waited)))
    }

    /// Looks at an existing lease file: its holder, and whether it is stale.
    fn examine(&self, resource: &str, path: &Path) -> Result<Option<Existing>, LockError> {
        let file = match fsutil::open_no_follow(path, Access::Read) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("opening the lease file", resource, path, e)),
        };
        let meta = file.metadata().map_err(|e| self.io("inspecting the lease file", resource, path, e))?;
        let id = FileId::of(&meta);
        let now = SystemTime::now();
        let read = record::read_from(&file).map_err(|e| self.io("reading the lease file", resource, path, e))?;
        Ok(Some(match read {
            FileRecord::Found(record, _) => {
                let stale_at = record.lease_expires_at().unwrap_or(now);
                let stale = stale_at <= now || record.holder_process_is_dead();
                Existing { id, info: Some(record.to_info(LEASE_BACKEND)), stale, stale_at }
            }
            // Unreadable (a half-written file from the no-link fallback, or
            // corruption, or implausible times): give it one default lease
            // from its last change. A change time in the future is as
            // untrusted as the record (anyone who owns the file can set it):
            // beyond the clock allowance, the file is stale at once.
            unreadable @ (FileRecord::Empty | FileRecord::Corrupt(_)) => {
                if let FileRecord::Corrupt(corrupt) = unreadable {
                    tracing::warn!(path = %path.display(), error = %corrupt, "unreadable lease file");
                }
                let modified = meta.modified().unwrap_or(now);
                let plausible = now.checked_add(record::CLOCK_AHEAD_ALLOWANCE).is_none_or(|latest| modified <= latest);
                let stale_at = if plausible { modified + self.default_lease } else { now };
                Existing { id, info: None, stale: stale_at <= now, stale_at }
            }
        }))
    }

    /// Breaks a lease judged stale, unless it was renewed meanwhile.
    fn break_stale(&self, resource: &str, path: &Path, id: FileId) -> Result<bool, LockError> {
        // Judged again on what was moved, the same way: a renewal since the
        // first look (or a record torn by one) makes it live again.
        let still_stale =
            |tombstone: &Path| self.examine(resource, tombstone).ok().flatten().is_some_and(|existing| existing.stale);
        match self.break_file(resource, path, id, still_stale) {
            Ok(true) => {
                tracing::info!(resource, path = %path.display(), "broke a stale lease file");
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(self.io("breaking a stale lease file", resource, path, e)),
        }
    }

    /// Breaks the lease file `id` at `path` with [`fsutil`]'s rename dance.
    /// A live file moved by mistake goes back even over one a third process
    /// created meanwhile, when that one is a later grant (see
    /// [`restores_over`](Self::restores_over)); a grant of ours that loses
    /// its file anyway is reported lost at once.
    fn break_file(
        &self,
        resource: &str,
        path: &Path,
        id: FileId,
        still_breakable: impl FnOnce(&Path) -> bool,
    ) -> io::Result<bool> {
        let restore_over = |moved: &Path, current: &Path| self.restores_over(resource, moved, current);
        match fsutil::break_by_rename_or_restore(path, id, still_breakable, restore_over)? {
            BreakOutcome::Broken => Ok(true),
            BreakOutcome::NotOurs | BreakOutcome::Gone => Ok(false),
            BreakOutcome::Displaced(moved) => {
                let reason = LostReason::Stolen {
                    detail: format!(
                        "the lease file {} was moved aside by a process breaking a stale lease, and another took its place",
                        path.display()
                    ),
                };
                self.sentinel.mark_lost(&self.sentinel.grants_on(path, moved), &reason);
                Ok(false)
            }
        }
    }

    /// Whether the lease file `moved` aside by mistake goes back over
    /// `current`, created at its path while it was aside: when `moved` is a
    /// live lease and `current` a later grant (a higher token) or one still
    /// being written (no readable record). `current` took the path only
    /// because it was emptied by mistake; its creator finds it replaced
    /// before granting, or by its loss check.
    fn restores_over(&self, resource: &str, moved: &Path, current: &Path) -> bool {
        let Ok(Some(Existing { info: Some(moved), stale: false, .. })) = self.examine(resource, moved) else {
            return false;
        };
        match self.examine(resource, current) {
            Ok(Some(Existing { info: Some(current), .. })) => current.fencing_token > moved.fencing_token,
            Ok(Some(Existing { info: None, .. }) | None) => true,
            Err(_) => false,
        }
    }

    /// The resource's registry (see [`family::Registry`]).
    fn registered(&self, resource: &str, family: &Family) -> Result<Registered, LockError> {
        family::read_registry(&family.registry)
            .map_err(|e| self.io("reading the holder registry", resource, &family.registry, e))
    }

    /// Records that the resource is in use as `registry` (a gate holder
    /// only). A reader count never shrinks: a count read just before the
    /// write is merged in, so readers registered by a gate holder before us
    /// stay named.
    fn register(&self, resource: &str, family: &Family, registry: Registry) -> Result<(), LockError> {
        let mut registry = registry;
        if registry.kind == LockMode::Shared
            && let Registered::Kind(Registry { kind: LockMode::Shared, count }) = self.registered(resource, family)?
        {
            if count >= registry.count {
                return Ok(());
            }
            registry.count = registry.count.max(count);
        }
        family::write_registry(&family.registry, registry, self.dir.file_mode())
            .map_err(|e| self.io("writing the holder registry", resource, &family.registry, e))
    }

    /// The live holders among the holder files `paths` (readers' and
    /// permits'); stale ones are broken on the way (`break_stale`) or, for a
    /// look that must change nothing, returned apart.
    fn holders_in(&self, resource: &str, paths: &[PathBuf], break_stale: bool) -> Result<(Found, Found), LockError> {
        let (mut live, mut stale) = (Vec::new(), Vec::new());
        for path in paths {
            match self.examine(resource, path)? {
                None => {}
                Some(existing) if existing.stale => {
                    if break_stale {
                        self.break_stale(resource, path, existing.id)?;
                    } else {
                        stale.push((path.clone(), existing));
                    }
                }
                Some(existing) => live.push((path.clone(), existing)),
            }
        }
        Ok((live, stale))
    }

    /// Refuses `request`'s mode if a live holder uses the resource another way.
    fn check_agreement(&self, request: &GrantRequest, live: &[(PathBuf, Existing)]) -> Result<(), LockError> {
        for info in live.iter().filter_map(|(_, existing)| existing.info.as_ref()) {
            request.mode.agrees_with(info.mode, &request.resource, LEASE_BACKEND)?;
        }
        Ok(())
    }

    /// Past the gate (we hold it): grants `request` in its mode, waiting
    /// while holding the gate for readers to leave (exclusive) or a permit
    /// to come free.
    async fn pass(
        &self,
        family: &Family,
        request: &GrantRequest,
        gate: Lease,
        waited: &mut bool,
    ) -> Result<Passed, LockError> {
        let resource = &*request.resource;
        let mut gate = GateHold::new(gate, request.lease.unwrap_or(self.default_lease));
        let registered = self.registered(resource, family)?;
        match request.mode {
            LockMode::Exclusive => {
                if registered == Registered::Nothing {
                    // Never used with modes: the plain lease-file lock.
                    return Ok(Passed::Granted(gate.into_lease()));
                }
                // Every registered holder file by its exact name, and (a
                // safety net against a registry a frozen gate holder
                // overwrote with an older count) any a listing shows.
                let mut candidates = family.registered(&registered);
                let listed =
                    family.listed().map_err(|e| self.io("listing holders' lease files", resource, &family.gate, e))?;
                for path in listed {
                    if !candidates.contains(&path) {
                        candidates.push(path);
                    }
                }
                let mut waiter = FileWaiter::new(Duration::from_millis(1), LEASE_POLL_MAX);
                loop {
                    let (live, _) = self.holders_in(resource, &candidates, true)?;
                    self.check_agreement(request, &live)?;
                    if live.is_empty() {
                        if *waited {
                            gate.redate().map_err(|e| self.io("recording the lease", resource, &family.gate, e))?;
                        }
                        return Ok(Passed::Granted(gate.into_lease()));
                    }
                    if request.deadline.has_passed() {
                        return Ok(Passed::Busy(holders_info(live)));
                    }
                    candidates = live.iter().map(|(path, _)| path.clone()).collect();
                    match self.wait_holding_gate(resource, &mut gate, &mut waiter, request.deadline, &live).await? {
                        Waited::Changed => *waited = true,
                        Waited::TimedOut => return Ok(Passed::Busy(holders_info(live))),
                        Waited::GateLost => return Ok(Passed::GateLost),
                    }
                }
            }
            LockMode::Shared => {
                let (live, _) = self.holders_in(resource, &family.registered(&registered), true)?;
                self.check_agreement(request, &live)?;
                let count = match registered.kind() {
                    Some(Registry { kind: LockMode::Shared, count }) => count,
                    _ => 0,
                };
                let taken: Vec<&PathBuf> = live.iter().map(|(path, _)| path).collect();
                let mut index = (0..count).find(|i| !taken.contains(&&family.reader(*i))).unwrap_or(count);
                loop {
                    if index >= family::MAX_REGISTERED {
                        return Err(LockError::backend(
                            LEASE_BACKEND,
                            "registering a shared holder",
                            Some(resource),
                            format!(
                                "{}: more than {} shared holders' files are in use; look for a process taking \
                                 shared holds without releasing them",
                                family.registry.display(),
                                family::MAX_REGISTERED
                            ),
                        ));
                    }
                    let path = family.reader(index);
                    // Named in the registry before the file exists, so a
                    // writer that can see the file can find it by name.
                    self.register(resource, family, Registry { kind: LockMode::Shared, count: index + 1 })?;
                    crate::testhook::point("lease.registered", &path);
                    let Some(reader) = self.create_holder_file(resource, &path, gate.holder_record())? else {
                        // Taken meanwhile (by a party that broke a stale gate of ours), or a stale one.
                        if let Some(existing) = self.examine(resource, &path)?
                            && existing.stale
                        {
                            self.break_stale(resource, &path, existing.id)?;
                        } else {
                            index += 1;
                        }
                        continue;
                    };
                    return self.leave_gate(resource, gate, reader);
                }
            }
            LockMode::Permits(permits) => {
                let slots: Vec<PathBuf> = (0..permits).map(|i| family.slot(i)).collect();
                let mut candidates = family.registered(&registered);
                for slot in &slots {
                    if !candidates.contains(slot) {
                        candidates.push(slot.clone());
                    }
                }
                let mut waiter = FileWaiter::new(Duration::from_millis(1), LEASE_POLL_MAX);
                let mine = Registry { kind: request.mode, count: permits };
                let mut registered = registered.kind() == Some(mine);
                loop {
                    let (live, _) = self.holders_in(resource, &candidates, true)?;
                    self.check_agreement(request, &live)?;
                    // Agreed, so any holder of another kind is gone: the
                    // resource is a semaphore of ours from now on.
                    if !registered {
                        self.register(resource, family, mine)?;
                        registered = true;
                    }
                    candidates.clone_from(&slots);
                    for slot in &slots {
                        if live.iter().any(|(path, _)| path == slot) {
                            continue;
                        }
                        if let Some(permit) = self.create_holder_file(resource, slot, gate.holder_record())? {
                            return self.leave_gate(resource, gate, permit);
                        }
                    }
                    if request.deadline.has_passed() {
                        return Ok(Passed::Busy(holders_info(live)));
                    }
                    match self.wait_holding_gate(resource, &mut gate, &mut waiter, request.deadline, &live).await? {
                        Waited::Changed => *waited = true,
                        Waited::TimedOut => return Ok(Passed::Busy(holders_info(live))),
                        Waited::GateLost => return Ok(Passed::GateLost),
                    }
                }
            }
        }
    }

    /// A reader or permit holder with its own file leaves the gate: if the
    /// gate is no longer ours (we were paused past its lease and it was
    /// broken), a writer may have been granted without seeing our file, so
    /// our file goes and we start over.
    fn leave_gate(&self, resource: &str, gate: GateHold, mine: Lease) -> Result<Passed, LockError> {
        crate::testhook::point("lease.holder_file_created", &mine.path);
        let ours = match gate.is_ours() {
            Ok(ours) => ours,
            Err(e) => {
                remove_own(&mine);
                return Err(self.io("checking the gate", resource, gate.path(), e));
            }
        };
        if !ours {
            tracing::info!(resource, path = %mine.path.display(), "the gate was broken as stale while we passed it; looking again");
            remove_own(&mine);
            return Ok(Passed::GateLost);
        }
        drop(gate); // removes it: the next acquirer may pass
        Ok(Passed::Granted(mine))
    }

    /// Waits, holding the gate, for a change to one of the holders' files
    /// `live`, the first of their leases to run out, or the deadline;
    /// renews the gate's heartbeat meanwhile.
    async fn wait_holding_gate(
        &self,
        resource: &str,
        gate: &mut GateHold,
        waiter: &mut FileWaiter,
        deadline: Deadline,
        live: &[(PathBuf, Existing)],
    ) -> Result<Waited, LockError> {
        let paths: Vec<&Path> = live.iter().map(|(path, _)| path.as_path()).collect();
        if waiter.watch_first_all(&paths) {
            return Ok(Waited::Changed); // look again before waiting: a change may have come first
        }
        let stale_at = live.iter().map(|(_, existing)| existing.stale_at).min().map(instant_of);
        let wake = [stale_at, Some(gate.renew_at())].into_iter().flatten().min();
        let in_time = waiter.wait(deadline, wake).await;
        waiter.forget(); // the next look watches whoever holds then
        if !gate.keep().map_err(|e| self.io("renewing the gate", resource, gate.path(), e))? {
            tracing::info!(resource, path = %gate.path().display(), "the gate we held while waiting was broken as stale; looking again");
            return Ok(Waited::GateLost);
        }
        Ok(if in_time { Waited::Changed } else { Waited::TimedOut })
    }

    /// Who holds the resource while its gate is held by `gate_holder`: its
    /// shared or permit holders if there are any, else the gate's holder.
    fn busy_holder(&self, resource: &str, family: &Family, gate_holder: Option<LockInfo>) -> Option<LockInfo> {
        let holders = self
            .registered(resource, family)
            .and_then(|registered| self.holders_in(resource, &family.registered(&registered), false));
        match holders {
            Ok((live, _)) if !live.is_empty() => holders_info(live),
            _ => gate_holder,
        }
    }

    /// The state of a resource from its gate and its holder files.
    fn state_of(
        &self,
        resource: &str,
        gate: Option<Existing>,
        live: Vec<(PathBuf, Existing)>,
        stale: Vec<(PathBuf, Existing)>,
    ) -> LockState {
        if let Some(info) = holders_info(live) {
            return LockState::Held(info);
        }
        if let Some(gate) = gate {
            // A reader or permit holder passing the gate is no holder yet.
            let passing = !gate.stale && gate.info.as_ref().is_some_and(|info| info.mode != LockMode::Exclusive);
            if !passing {
                let info = gate.info.unwrap_or_else(|| record::unknown_holder(resource, LEASE_BACKEND));
                return if gate.stale { LockState::Stale(info) } else { LockState::Held(info) };
            }
        }
        holders_info(stale).map_or(LockState::Available, LockState::Stale)
    }

    fn release_sync(&self, grant: &LeaseGrant) -> Result<(), LockError> {
        self.sentinel.unwatch(grant.watch_id);
        if !matches!(FileId::at(&grant.path), Ok(Some(now)) if now == grant.id) {
            drop(grant.turn.lock().take());
            return Err(self.stolen(grant));
        }
        let removed = self.break_file(&grant.resource, &grant.path, grant.id, |_| true);
        drop(grant.turn.lock().take()); // the next waiter in this process goes now
        match removed {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.stolen(grant)),
            Err(e) => Err(self.io("removing the lease file", &grant.resource, &grant.path, e)),
        }
    }

    fn stolen(&self, grant: &LeaseGrant) -> LockError {
        LockError::stolen(
            LEASE_BACKEND,
            &*grant.resource,
            format!("the lease file {} was broken as stale or deleted by another process", grant.path.display()),
        )
    }

    /// Every resource with lease files here (by name: another program's
    /// `*.lease` is never judged stale and broken): its gate, if any, and
    /// its holders' files.
    fn families(&self) -> Result<Vec<FamilyFiles>, LockError> {
        let scanned = family::scan(self.dir.path())
            .map_err(|e| io_error(LEASE_BACKEND, "listing lease files", None, self.dir.path(), e))?;
        Ok(scanned
            .into_values()
            .map(|members| {
                let mut gate = None;
                let mut holders = Vec::new();
                for (path, member) in members {
                    if !is_regular_file(&path) {
                        continue;
                    }
                    match member {
                        Member::Gate => gate = Some(path),
                        Member::Reader | Member::Slot => holders.push(path),
                    }
                }
                (gate, holders)
            })
            .collect())
    }
}

/// One look at a family from [`LeaseFileBackend::families`]: the name for
/// messages about files without a readable record.
fn unnamed(gate: Option<&PathBuf>, holders: &[PathBuf]) -> String {
    gate.or(holders.first()).map(|path| fsutil::file_name_of(path)).unwrap_or_default()
}

/// The holders' records combined into one [`LockInfo`] (the first grant,
/// with every holder in `holders`); an unreadable record counts as an
/// unknown holder.
fn holders_info(holders: Vec<(PathBuf, Existing)>) -> Option<LockInfo> {
    let infos = holders
        .into_iter()
        .map(|(path, existing)| {
            existing.info.unwrap_or_else(|| record::unknown_holder(&fsutil::file_name_of(&path), LEASE_BACKEND))
        })
        .collect();
    LockInfo::of_holders(infos)
}

/// A lease file we created and hold: the gate, or a holder's own file.
#[derive(Debug)]
struct Lease {
    file: File,
    path: PathBuf,
    id: FileId,
    record: Record,
}

/// Removes a lease file of ours, if the path still names it.
fn remove_own(lease: &Lease) {
    if let Err(e) = fsutil::break_by_rename(&lease.path, lease.id, |_| true) {
        tracing::warn!(path = %lease.path.display(), error = %e, "cannot remove our lease file; it lasts until its lease runs out");
    }
}

/// The gate while we pass it or wait behind it: removed when dropped (we
/// passed, gave up, failed, or our acquire was cancelled), unless it
/// becomes the exclusive grant.
struct GateHold {
    lease: Option<Lease>,
    /// The gate's lease, renewed every third of it while we wait.
    length: Duration,
    renewed: Instant,
}

impl GateHold {
    fn new(lease: Lease, length: Duration) -> Self {
        GateHold { lease: Some(lease), length, renewed: Instant::now() }
    }

    fn lease(&self) -> &Lease {
        // Taken only by `into_lease`, which consumes the hold.
        self.lease.as_ref().unwrap_or_else(|| unreachable!("a gate hold without its lease"))
    }

    fn path(&self) -> &Path {
        &self.lease().path
    }

    /// The record for a holder's own file: the gate's (its token is the
    /// grant's), dated now.
    fn holder_record(&self) -> Record {
        let mut record = self.lease().record.clone();
        let now = unix_micros(SystemTime::now());
        record.acquired_at_us = now;
        record.heartbeat_us = Some(now);
        record
    }

    fn is_ours(&self) -> io::Result<bool> {
        Ok(FileId::at(self.path())? == Some(self.lease().id))
    }

    /// When the gate's heartbeat is next due.
    fn renew_at(&self) -> Instant {
        self.renewed + self.length / 3
    }

    /// Whether the gate is still ours; renews its heartbeat when due.
    fn keep(&mut self) -> io::Result<bool> {
        if !self.is_ours()? {
            return Ok(false);
        }
        if Instant::now() >= self.renew_at() {
            self.redate_heartbeat(false)?;
        }
        Ok(true)
    }

    /// Dates the gate's record from now (an exclusive grant that waited for
    /// readers is granted now, not when it took the gate).
    fn redate(&mut self) -> io::Result<()> {
        self.redate_heartbeat(true)
    }

    fn redate_heartbeat(&mut self, acquired: bool) -> io::Result<()> {
        let Some(lease) = self.lease.as_mut() else { return Ok(()) };
        let now = unix_micros(SystemTime::now());
        lease.record.heartbeat_us = Some(now);
        if acquired {
            lease.record.acquired_at_us = now;
        }
        lease.record.write_to(&lease.file, RecordState::Held)?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// The gate becomes the grant (exclusive): kept, not removed.
    fn into_lease(mut self) -> Lease {
        self.lease.take().unwrap_or_else(|| unreachable!("a gate hold without its lease"))
    }
}

impl Drop for GateHold {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            remove_own(&lease);
        }
    }
}

/// What passing the gate came to.
enum Passed {
    Granted(Lease),
    /// The deadline passed; who holds it.
    Busy(Option<LockInfo>),
    /// Our gate was broken as stale while we held it: take it again.
    GateLost,
}

/// What a wait behind the gate came to.
enum Waited {
    Changed,
    TimedOut,
    GateLost,
}

/// Holders' lease files as examined, with their paths.
type Found = Vec<(PathBuf, Existing)>;

/// One resource's files as a listing found them: its gate, if any, and its
/// holders' files.
type FamilyFiles = (Option<PathBuf>, Vec<PathBuf>);

/// An existing lease file, as examined.
struct Existing {
    id: FileId,
    info: Option<LockInfo>,
    stale: bool,
    stale_at: SystemTime,
}

impl LockBackend for LeaseFileBackend {
    type Grant = LeaseGrant;

    fn name(&self) -> &'static str {
        LEASE_BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
            .with_cross_process(true)
            .with_cross_host(true)
            .with_leases(Some(self.default_lease))
            .with_lost_detection(true)
            .with_fencing(true)
            .with_modes(true, true)
            // In arrival order within this manager; processes and hosts race
            // for the gate, but nobody passes a writer that holds it.
            .with_fifo(true)
            // Local changes wake waiters through inotify, but changes made by
            // other hosts on a network share are only seen by re-checking.
            .with_wake(WakeMechanism::Poll { min: Duration::from_millis(1), max: LEASE_POLL_MAX })
    }

    async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<LeaseGrant>, LockError> {
        let resource = &*request.resource;
        let family = self.family(resource);
        let path = family.gate.clone();
        let mut waiter = FileWaiter::new(Duration::from_millis(1), LEASE_POLL_MAX);
        // Our turn among this manager's waiters. A holder here whose lease
        // runs out keeps its turn until its guard drops, so while queued
        // re-check its lease file at least every LEASE_POLL_MAX (and at the
        // lease's end), keeping our place in the lane; once the file is stale,
        // go and break it without waiting for the turn.
        let lane_wait = if request.deadline == Deadline::Now { Deadline::Now } else { Deadline::Never };
        let mut entering = pin!(self.queue.enter(&request.resource, lane_wait));
        let turn = loop {
            let existing = self.examine(resource, &path)?;
            let recheck_at = Instant::now() + LEASE_POLL_MAX;
            let recheck_at = existing.as_ref().map_or(recheck_at, |e| recheck_at.min(instant_of(e.stale_at)));
            let wake = earlier(request.deadline, Some(recheck_at));
            let entered = match wake.instant() {
                Some(at) => tokio::time::timeout_at(at, &mut entering).await.ok(),
                None => Some((&mut entering).await),
            };
            // `enter` completes only with our turn, except for a no-wait
            // caller, whose deadline has then passed: it never polls again.
            if let Some(turn) = entered.filter(Turn::is_ours) {
                break Some(turn);
            }
            let existing = self.examine(resource, &path)?;
            if request.deadline.has_passed() {
                let holder = existing.and_then(|e| e.info);
                return Ok(Acquired::Busy { holder: self.busy_holder(resource, &family, holder) });
            }
            if existing.is_some_and(|e| e.stale) {
                break None;
            }
        };
        let mut waited = turn.as_ref().is_some_and(Turn::waited);
        let turn: SharedTurn = Arc::new(Mutex::new(turn));
        loop {
            if let Some(gate) = self.try_create(request, &path)? {
                match self.pass(&family, request, gate, &mut waited).await? {
                    Passed::Granted(lease) => {
                        // Shared and permit holders let the next of this
                        // manager's waiters in at once; an exclusive one keeps
                        // its turn until it releases.
                        if request.mode != LockMode::Exclusive {
                            drop(turn.lock().take());
                        }
                        return self.grant(request, lease, turn, waited);
                    }
                    Passed::Busy(holder) => return Ok(Acquired::Busy { holder }),
                    Passed::GateLost => {
                        waited = true;
                        continue;
                    }
                }
            }
            let Some(existing) = self.examine(resource, &path)? else {
                continue; // released meanwhile
            };
            if existing.stale {
                self.break_stale(resource, &path, existing.id)?;
                continue;
            }
            if request.deadline.has_passed() {
                return Ok(Acquired::Busy { holder: self.busy_holder(resource, &family, existing.info) });
            }
            if waiter.watch_first(&path) {
                continue;
            }
            waited = true;
            if !waiter.wait(request.deadline, Some(instant_of(existing.stale_at))).await {
                return Ok(Acquired::Busy { holder: self.busy_holder(resource, &family, existing.info) });
            }
            // The file we watched may be gone; watch whatever is there next.
            waiter.forget();
        }
    }

    fn release_now(&self, grant: &LeaseGrant) -> Option<Result<(), LockError>> {
        Some(self.release_sync(grant))
    }

    async fn renew(&self, grant: &LeaseGrant, lease: Duration) -> Result<SystemTime, LockError> {
        if !matches!(FileId::at(&grant.path), Ok(Some(now)) if now == grant.id) {
            return Err(self.stolen(grant));
        }
        let now = SystemTime::now();
        let mut record = grant.record.lock().clone();
        record.heartbeat_us = Some(unix_micros(now));
        record.lease_ms = Some(millis(lease));
        record
            .write_to(&grant.file, RecordState::Held)
            .map_err(|e| self.io("renewing the lease", &grant.resource, &grant.path, e))?;
        *grant.record.lock() = record;
        Ok(now + lease)
    }

    async fn inspect(&self, resource: &str) -> Result<LockState, LockError> {
        let family = self.family(resource);
        let gate = self.examine(resource, &family.gate)?;
        let registered = self.registered(resource, &family)?;
        let (live, stale) = self.holders_in(resource, &family.registered(&registered), false)?;
        Ok(self.state_of(resource, gate, live, stale))
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut held = Vec::new();
        for (gate, holders) in self.families()? {
            let unnamed = unnamed(gate.as_ref(), &holders);
            let gate = match &gate {
                Some(path) => self.examine(&unnamed, path)?,
                None => None,
            };
            let (live, stale) = self.holders_in(&unnamed, &holders, false)?;
            match self.state_of(&unnamed, gate, live, stale) {
                LockState::Held(info) | LockState::Stale(info) => held.push(info),
                LockState::Available => {}
            }
        }
        held.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(held)
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let family = self.family(resource);
        let reason = LostReason::ForceReleased { reason: reason.to_owned() };
        // Every holder file, by the registry's names and by a listing.
        let registered = self.registered(resource, &family)?;
        let mut paths = family.registered(&registered);
        let listed = family.listed().map_err(|e| self.io("listing holders' lease files", resource, &family.gate, e))?;
        for path in listed {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        let (live, stale) = self.holders_in(resource, &paths, false)?;
        let had_holders = !live.is_empty();
        let mut broken = Vec::new();
        for (path, existing) in live.into_iter().chain(stale) {
            let victims = self.sentinel.grants_on(&path, existing.id);
            match self.break_file(resource, &path, existing.id, |_| true) {
                Ok(true) => {
                    self.sentinel.mark_lost(&victims, &reason);
                    broken.push((path, existing));
                }
                Ok(false) => {}
                Err(e) => return Err(self.io("removing a holder's lease file", resource, &path, e)),
            }
        }
        if had_holders {
            // The gate, if held, is a waiter's (or a passing party's), not a holder's.
            return Ok(holders_info(broken));
        }
        let path = family.gate;
        let Some(existing) = self.examine(resource, &path)? else {
            return Ok(holders_info(broken));
        };
        let victims = self.sentinel.grants_on(&path, existing.id);
        match self.break_file(resource, &path, existing.id, |_| true) {
            Ok(true) => {}
            Ok(false) => return Ok(holders_info(broken)),
            Err(e) => return Err(self.io("removing the lease file", resource, &path, e)),
        }
        self.sentinel.mark_lost(&victims, &reason);
        Ok(Some(existing.info.unwrap_or_else(|| record::unknown_holder(resource, LEASE_BACKEND))))
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut broken = Vec::new();
        for (gate, holders) in self.families()? {
            let unnamed = unnamed(gate.as_ref(), &holders);
            for path in gate.iter().chain(&holders) {
                let Some(existing) = self.examine(&unnamed, path)? else { continue };
                if existing.stale && self.break_stale(&unnamed, path, existing.id)? {
                    broken.push(existing.info.unwrap_or_else(|| record::unknown_holder(&unnamed, LEASE_BACKEND)));
                }
            }
        }
        Ok(broken)
    }
}

/// A lease length in milliseconds, as records keep it.
fn millis(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `path` names a regular file (not following a symlink). Listing
/// and cleanup skip anything else with a warning — a named pipe or symlink
/// planted under a lease file's name is no lease, and must neither hang nor
/// fail the whole listing; `inspect` and `acquire` of its resource report it.
fn is_regular_file(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => true,
        Ok(meta) => {
            tracing::warn!(path = %path.display(), kind = fsutil::describe_kind(&meta), "not a regular file where a lease file should be; skipped (remove it)");
            false
        }
        // Gone meanwhile: examine says so. Other errors: examine reports them.
        Err(_) => true,
    }
}

/// The monotonic instant at which the wall-clock time `at` comes.
fn instant_of(at: SystemTime) -> Instant {
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// `deadline`, or `at` if that comes first.
fn earlier(deadline: Deadline, at: Option<Instant>) -> Deadline {
    match (deadline, at) {
        (Deadline::Now, _) | (_, None) => deadline,
        (Deadline::Never, Some(at)) => Deadline::At(at),
        (Deadline::At(limit), Some(at)) => Deadline::At(limit.min(at)),
    }
}

/// The longest a lease waiter goes without re-checking: changes made by
/// other hosts are seen no later than this.
const LEASE_POLL_MAX: Duration = Duration::from_millis(100);
