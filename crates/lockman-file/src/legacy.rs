//! `legacy-file:///dir`: locks that old existence-check daemons respect.
//! (The full story is on the public type below, so rustdoc shows it.)

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lockman_core::backend::{Acquired, GrantRequest, Granted, LockBackend};
use lockman_core::{Capabilities, FencingToken, HolderId, LockError, LockInfo, LockState, LostReason};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::flock::{self, LockAttempt, Locked, SharedTurn};
use crate::fsutil::{self, Access, BreakOutcome, FileId, LockDir, Snapshot, io_error};
use crate::naming;
use crate::record::{self, FileRecord, Record, RecordState};
use crate::sentinel::{Sentinel, Watched};
use crate::watch::FileWaiter;
use lockman_core::backend::LocalQueue;

/// The backend name in errors, events and metrics.
pub const LEGACY_BACKEND: &str = "legacy-file";

const LEGACY_SUFFIX: &str = ".lockfile";
const SIDECAR_SUFFIX: &str = ".flock";

/// `legacy-file:///dir`: locks that old existence-check daemons respect.
///
/// Old daemons (protocols A and B in `LEGACY.md`) lock a resource by
/// creating a file such as `.lockfile` if it does not exist, and unlock it by
/// deleting it. This backend takes the same file, so old and new processes
/// exclude each other during a rollout, and adds what the old protocol lacks:
///
/// 1. **New processes exclude each other strictly** with a kernel lock on a
///    sidecar file next to the legacy file (`.lockfile.flock`, never deleted by
///    normal operation). A crashed new process releases it at once.
/// 2. **Holding the sidecar**, a new process creates the legacy file
///    exclusively (written aside and `link`ed into place), containing what v3
///    readers accept: the UTC time in Python `isoformat()` form, then a line
///    naming the lockman holder (its marker). The sidecar's record names
///    that file by identity, so a file left by a crashed new process is
///    recognised and broken at once — also one whose maker crashed before
///    writing that record: a file with our marker while no new process
///    holds the sidecar (and the marker's pid is not running on this host).
/// 3. **A file an old process made** is waited for (notification plus bounded
///    backoff), or given up on at once for resources whose policy is
///    [`LegacyPolicy::SkipIfBusy`] (protocol A's behaviour) when the caller
///    chose no wait (see [`LegacyPolicy`]). It is stale, and broken, once its
///    modification time is older than the resource's `stale_after`.
/// 4. **Release** removes the file only if it is still the one we created
///    (same identity, length and modification time); otherwise the lock was
///    stolen and the release reports it lost. While held, the file is
///    re-checked every `loss_check_interval`, so a steal is reported promptly.
/// 5. **`force_release`** breaks the legacy file it judged and reports lost
///    only the grant on that file (not one taken just after). For a live new
///    holder it also moves the sidecar aside, so newcomers lock a fresh one —
///    only while the sidecar still records that holder's grant (checked
///    before and on what was moved; a sidecar moved by mistake goes back).
///
/// # When an old and a new process can both be inside
///
/// New-vs-new is strictly exclusive. New-vs-old can overlap only when the old
/// code breaks its own rules:
///
/// * **Check-then-create race (A and B):** an old process sees no file, we
///   create ours, then it truncates ours with its non-exclusive open. We
///   notice the truncation (length/mtime change) and report the lock lost.
/// * **Protocol B's steal:** a v3 reader that waited 5 s deletes the file it
///   does not own and goes on. We notice the deletion and report the lock
///   lost. Keep critical sections under 5 s while v3 processes run.
/// * **Error handlers and start-up** of old processes delete the file
///   unconditionally: same as above.
/// * **A stale file that was not stale:** an old holder hung longer than
///   `stale_after`, we broke its file, and it resumed. Set `stale_after`
///   above the old code's longest critical section.
///
/// In every case but the last, the new process's guard reports the loss.
///
/// The legacy-lockfile manager: `Locks<LegacyFileBackend>`.
///
/// ```
/// use lockman_core::{AcquireOptions, LockBackend, LockManager};
/// use lockman_file::{LegacyFileBackend, LegacyOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockman_core::LockError> {
/// # let dir = tempfile::tempdir().unwrap();
/// // The names GivTCP v2/v3 use for inverter 1, in its working folder.
/// let locks = LegacyFileBackend::open(LegacyOptions::givtcp(dir.path(), 1))?.into_manager();
/// let guard = locks.acquire("inverter_read", AcquireOptions::new().no_wait()).await?;
/// assert!(dir.path().join(".lockfile").exists()); // what old daemons check
/// guard.release().await?;
/// assert!(!dir.path().join(".lockfile").exists());
/// # Ok(()) }
/// ```
pub type LegacyFileLockManager = lockman_core::Locks<LegacyFileBackend>;

/// What to do when an old process holds a resource's legacy file.
///
/// The policy is the resource's *default*; a wait the caller chose wins.
/// On a [`SkipIfBusy`](Self::SkipIfBusy) resource, an acquire whose options
/// name no wait (`AcquireOptions` left at its default; `lockctl run` without
/// `--wait`, `--no-wait` or a configured default wait) gives up at once when
/// an old process's file exists, like protocol A, failing with a
/// [`LockError::Timeout`] (exit 75 in `lockctl`) that reads "skipped …
/// without waiting: an old (legacy) process holds `<file>` (written 3.0s ago)
/// and the resource's legacy policy is skip". A wait the caller chose —
/// `timeout(d)`, `wait_forever()`, `wait(..)`, `lockctl run --wait 30s`, a
/// configured default wait — is honoured: the acquire waits for the old
/// process to delete its file (or for the file to pass `stale_after`, when it
/// is broken) until that wait runs out. `no_wait()` and `try_acquire` never
/// wait. The policy concerns old processes only: new processes queue for
/// each other on the sidecar lock within the caller's wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LegacyPolicy {
    /// Give up at once, like protocol A ("Lockfile set so aborting"),
    /// unless the caller chose a wait.
    SkipIfBusy,
    /// Wait, up to the caller's timeout, like protocol B.
    Wait,
}

/// How one resource maps onto the legacy protocol.
#[derive(Clone, Debug)]
pub struct LegacyResource {
    file: PathBuf,
    stale_after: Option<Duration>,
    policy: LegacyPolicy,
    settle: Duration,
}

impl LegacyResource {
    /// The resource's legacy file: relative to the backend's directory, or
    /// absolute (e.g. under a shared cache folder).
    pub fn new(file: impl AsRef<Path>) -> Self {
        LegacyResource {
            file: file.as_ref().to_owned(),
            stale_after: None,
            policy: LegacyPolicy::Wait,
            settle: Duration::from_millis(2),
        }
    }

    /// How long to wait after creating the legacy file before going in,
    /// re-checking that no old process opened it meanwhile (default 2 ms).
    ///
    /// Old daemons check `exists()` and then create the file with a plain
    /// truncating open; one that checked just before we created the file
    /// truncates ours an instant later and goes in. Waiting this long and
    /// looking again turns nearly all such races into a clean wait; a race
    /// slower than this is still detected and reported as a lost lock. Zero
    /// turns the check off.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Treat an old process's file as stale (and break it) once it is this
    /// old. Default: the backend's [`LegacyOptions::stale_after`].
    pub fn stale_after(mut self, age: Duration) -> Self {
        self.stale_after = Some(age);
        self
    }

    /// What to do when an old process holds the file (default: wait).
    pub fn policy(mut self, policy: LegacyPolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// Where the legacy files live and which resource uses which.
///
/// Resources without a mapping get a file of their own named like
/// `inverter_read-<hash>.lockfile` (nothing old uses those).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LegacyOptions {
    dir: PathBuf,
    dir_mode: u32,
    file_mode: Option<u32>,
    resources: HashMap<String, LegacyResource>,
    stale_after: Duration,
    loss_check_interval: Duration,
}

impl LegacyOptions {
    /// Legacy files in `dir` (an old daemon's working folder).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        LegacyOptions {
            dir: dir.as_ref().to_owned(),
            dir_mode: 0o700,
            file_mode: None,
            resources: HashMap::new(),
            stale_after: Duration::from_secs(300),
            loss_check_interval: Duration::from_millis(500),
        }
    }

    /// The mapping GivTCP uses for inverter `n` in its working folder `dir`:
    /// `inverter_read` → `.lockfile` (protocol A: skip if busy) and
    /// `regcache` → `.regcache_lockfile_<n>` (protocol B: wait), both stale
    /// after 60 s.
    pub fn givtcp(dir: impl AsRef<Path>, n: u32) -> Self {
        let stale = Duration::from_secs(60);
        LegacyOptions::new(dir)
            .resource(
                "inverter_read",
                LegacyResource::new(".lockfile").stale_after(stale).policy(LegacyPolicy::SkipIfBusy),
            )
            .resource("regcache", LegacyResource::new(format!(".regcache_lockfile_{n}")).stale_after(stale))
    }

    /// Maps `resource` to its legacy file.
    pub fn resource(mut self, resource: impl Into<String>, mapping: LegacyResource) -> Self {
        self.resources.insert(resource.into(), mapping);
        self
    }

    /// The default age after which an old process's file is stale (5 min).
    pub fn stale_after(mut self, age: Duration) -> Self {
        self.stale_after = age;
        self
    }

    /// Permissions for the directory if it has to be created (default
    /// `0o700`), applied exactly (see [`FileOptions::dir_mode`](crate::FileOptions::dir_mode)).
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = mode;
        self
    }

    /// Exact permissions for the files lockman creates (sidecars and legacy
    /// files; default `0o666` less the umask). Only modes change, never the
    /// files' names or contents, so old daemons see the same bytes. See
    /// [`FileOptions::file_mode`](crate::FileOptions::file_mode).
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.file_mode = Some(mode);
        self
    }

    /// How often a held legacy file is re-checked for having been deleted or
    /// rewritten by an old process (default 500 ms).
    pub fn loss_check_interval(mut self, interval: Duration) -> Self {
        self.loss_check_interval = interval;
        self
    }
}

/// The raw legacy backend; use it through [`LegacyFileLockManager`].
#[derive(Debug)]
pub struct LegacyFileBackend {
    dir: LockDir,
    options: LegacyOptions,
    sentinel: Sentinel,
    queue: LocalQueue,
}

/// A held legacy lock: the sidecar's kernel lock and the legacy file we made.
#[derive(Debug)]
pub struct LegacyGrant {
    resource: Arc<str>,
    sidecar: Arc<File>,
    sidecar_path: PathBuf,
    path: PathBuf,
    snapshot: Snapshot,
    watch_id: u64,
    turn: SharedTurn,
}

/// Where one resource's files are.
struct Files {
    path: PathBuf,
    sidecar: PathBuf,
    stale_after: Duration,
    policy: LegacyPolicy,
    settle: Duration,
}

/// A legacy file we just created, removed on drop unless kept.
struct MadeFile<'a> {
    path: &'a Path,
    snapshot: Snapshot,
    keep: bool,
}

impl Drop for MadeFile<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let snapshot = self.snapshot;
            let _ =
                fsutil::break_by_rename(self.path, snapshot.id, |t| Snapshot::at(t).ok().flatten() == Some(snapshot));
        }
    }
}

/// Who is behind an existing legacy file.
enum Occupant {
    /// A new process (alive if its sidecar is locked, else crashed); its
    /// record was read from the sidecar file `sidecar`.
    New { record: Box<Record>, alive: bool, sidecar: Option<FileId> },
    /// An old process, or one we cannot identify.
    Old { since: SystemTime, stale: bool },
}

impl LegacyFileBackend {
    /// A backend over `options`.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] if the directory cannot be created, or a mapped
    /// file name is empty or ends in `/`.
    pub fn open(options: LegacyOptions) -> Result<Self, LockError> {
        let dir = LockDir::open(&options.dir, options.dir_mode, LEGACY_BACKEND)?.with_file_mode(options.file_mode);
        for (resource, mapping) in &options.resources {
            if mapping.file.file_name().is_none() {
                return Err(LockError::Config(format!(
                    "legacy file for {resource:?} is {:?}, which names no file; give a file name such as \".lockfile\"",
                    mapping.file
                )));
            }
        }
        let sentinel = Sentinel::new(
            options.loss_check_interval,
            "the legacy lock file was deleted or rewritten by another process (an old daemon broke or took the lock)",
        );
        Ok(LegacyFileBackend { dir, options, sentinel, queue: LocalQueue::default() })
    }

    /// The legacy file used for `resource`.
    pub fn legacy_file(&self, resource: &str) -> PathBuf {
        self.files(resource).path
    }

    fn files(&self, resource: &str) -> Files {
        let (path, stale_after, policy, settle) = match self.options.resources.get(resource) {
            Some(mapping) => (
                self.dir.path().join(&mapping.file),
                mapping.stale_after.unwrap_or(self.options.stale_after),
                mapping.policy,
                mapping.settle,
            ),
            // No old process knows these files: nothing to settle.
            None => (
                self.dir.join(&naming::encoded_file_name(resource, LEGACY_SUFFIX)),
                self.options.stale_after,
                LegacyPolicy::Wait,
                Duration::ZERO,
            ),
        };
        let mut sidecar = path.clone().into_os_string();
        sidecar.push(SIDECAR_SUFFIX);
        Files { path, sidecar: PathBuf::from(sidecar), stale_after, policy, settle }
    }

    fn io(&self, action: &str, resource: &str, path: &Path, error: io::Error) -> LockError {
        io_error(LEGACY_BACKEND, action, Some(resource), path, error)
    }

    /// Who holds the legacy file at `files.path`, if anyone. `sidecar` is our
    /// own locked sidecar when we hold it (then no other new process is alive).
    fn occupant(
        &self,
        resource: &str,
        files: &Files,
        sidecar: Option<&File>,
    ) -> Result<Option<(Snapshot, Occupant)>, LockError> {
        let meta = match std::fs::symlink_metadata(&files.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("inspecting the legacy lock file", resource, &files.path, e)),
        };
        if !meta.is_file() {
            return Err(self.io(
                "inspecting the legacy lock file",
                resource,
                &files.path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file (a symlink or directory?)"),
            ));
        }
        let snapshot = Snapshot::of(&meta);
        let opened;
        let sidecar_file = match sidecar {
            Some(file) => Some(file),
            None => {
                opened = fsutil::open_no_follow(&files.sidecar, Access::Read).ok();
                opened.as_ref()
            }
        };
        let sidecar_id = sidecar_file.and_then(|file| FileId::of_file(file).ok());
        // Ours only if the sidecar's last grant made exactly this file and was
        // never released: a released grant removed its file, and a file now
        // there is an old process's, even if it reuses the inode number.
        if let Some(file) = sidecar_file
            && let Some(record) = record::read_from(file).ok().and_then(FileRecord::held)
            && record.guards == Some(snapshot)
        {
            let alive = match sidecar {
                Some(_) => false,
                None => matches!(flock::probe(file, resource, LEGACY_BACKEND), Ok(LockState::Held(_))),
            };
            return Ok(Some((snapshot, Occupant::New { record: Box::new(record), alive, sidecar: sidecar_id })));
        }
        let since = judged_since(&files.path, &meta, files.stale_after);
        // Our marker, but no grant recorded for the file: a new process
        // crashed between linking it into place and writing the sidecar
        // record. Ours to break at once — if no new process holds the sidecar
        // now (one that does may be between those two steps), and the
        // marker's process is not still running here (a sidecar replaced
        // under a live holder must not get its file broken).
        if let Some(marker) = Marker::read(&files.path, snapshot.id)
            && self.sidecar_is_free(resource, files, sidecar, sidecar_file, sidecar_id)
            && !marker.process_runs_here()
        {
            let record = marker.into_record(resource, since);
            return Ok(Some((snapshot, Occupant::New { record: Box::new(record), alive: false, sidecar: sidecar_id })));
        }
        let stale = since + files.stale_after <= SystemTime::now();
        Ok(Some((snapshot, Occupant::Old { since, stale })))
    }

    /// Whether no new process holds the resource's sidecar lock: `ours` is
    /// the sidecar we hold (free for us if it is still the file the sidecar
    /// path names, not one moved aside), else `opened` is the sidecar file
    /// (none: it does not exist), probed.
    fn sidecar_is_free(
        &self,
        resource: &str,
        files: &Files,
        ours: Option<&File>,
        opened: Option<&File>,
        id: Option<FileId>,
    ) -> bool {
        match (ours, opened) {
            (Some(_), _) => id.is_some() && matches!(FileId::at(&files.sidecar), Ok(now) if now == id),
            (None, Some(file)) => matches!(flock::probe(file, resource, LEGACY_BACKEND), Ok(LockState::Available)),
            (None, None) => !files.sidecar.exists(),
        }
    }

    /// Breaks the legacy file `id` at `files.path` if it is still unchanged.
    /// Breaks the legacy file at `files.path` if it is still exactly the one
    /// judged (identity, length and modification time: an inode number alone
    /// is soon reused for a newer file).
    fn break_file(&self, resource: &str, files: &Files, judged: Snapshot, why: &str) -> Result<bool, LockError> {
        let unchanged = |path: &Path| Snapshot::at(path).ok().flatten() == Some(judged);
        if !unchanged(&files.path) {
            return Ok(false);
        }
        match fsutil::break_by_rename(&files.path, judged.id, unchanged) {
            Ok(BreakOutcome::Broken) => {
                tracing::warn!(resource, path = %files.path.display(), why, "broke a legacy lock file");
                Ok(true)
            }
            Ok(BreakOutcome::Displaced(moved)) => {
                let reason = LostReason::Stolen {
                    detail: format!(
                        "the legacy lock file {} was moved aside by a process breaking a stale lock, and another took its place",
                        files.path.display()
                    ),
                };
                self.sentinel.mark_lost(&self.sentinel.grants_on(&files.path, moved), &reason);
                Ok(false)
            }
            Ok(BreakOutcome::NotOurs | BreakOutcome::Gone) => Ok(false),
            Err(e) => Err(self.io("breaking the legacy lock file", resource, &files.path, e)),
        }
    }

    fn release_sync(&self, grant: &LegacyGrant) -> Result<(), LockError> {
        self.sentinel.unwatch(grant.watch_id);
        let intact = Snapshot::at(&grant.path).ok().flatten() == Some(grant.snapshot);
        let removed = intact
            && matches!(
                fsutil::break_by_rename(&grant.path, grant.snapshot.id, |t| Snapshot::at(t).ok().flatten()
                    == Some(grant.snapshot)),
                Ok(BreakOutcome::Broken)
            );
        if let Err(e) = record::mark_released(&grant.sidecar) {
            tracing::warn!(path = %grant.sidecar_path.display(), error = %e, "cannot mark the sidecar record released");
        }
        let unlocked = grant.sidecar.unlock();
        drop(grant.turn.lock().take()); // the next waiter in this process goes now
        if !removed {
            return Err(LockError::stolen(
                LEGACY_BACKEND,
                &*grant.resource,
                format!(
                    "the legacy lock file {} was deleted or rewritten while held — an old process broke or took the lock",
                    grant.path.display()
                ),
            ));
        }
        unlocked.map_err(|e| self.io("unlocking the sidecar", &grant.resource, &grant.sidecar_path, e))
    }

    /// Moves aside the sidecar (the file `judged_sidecar`) of the live holder
    /// `judged`, whose legacy file was just broken, so newcomers lock a fresh
    /// one — only while it still records that grant: the holder may have
    /// released meanwhile and a newcomer locked the same sidecar. Re-checked
    /// on what was moved; a sidecar moved by mistake goes back, over a fresh
    /// one created meanwhile if need be (its locker finds the path changed).
    fn move_sidecar_aside(&self, resource: &str, files: &Files, judged_sidecar: FileId, judged: &Record) {
        let records_judged = |path: &Path| {
            fsutil::open_no_follow(path, Access::Read).is_ok_and(|file| {
                record::read_from(&file)
                    .ok()
                    .and_then(FileRecord::held)
                    .is_some_and(|record| record.token == judged.token && record.guards == judged.guards)
            })
        };
        if !records_judged(&files.sidecar) {
            tracing::info!(resource, path = %files.sidecar.display(), "the sidecar records a newer grant; left in place");
            return;
        }
        match fsutil::break_by_rename_or_restore(&files.sidecar, judged_sidecar, records_judged, |_, _| true) {
            Ok(BreakOutcome::Broken) => {}
            Ok(BreakOutcome::NotOurs | BreakOutcome::Gone) => {
                tracing::info!(resource, path = %files.sidecar.display(), "the sidecar was taken by a newer grant; left in place");
            }
            Ok(BreakOutcome::Displaced(_)) => tracing::error!(
                resource,
                path = %files.sidecar.display(),
                "a sidecar moved aside by mistake could not be put back; two new processes may hold the lock until one notices"
            ),
            Err(e) => {
                tracing::warn!(resource, path = %files.sidecar.display(), error = %e, "cannot move the sidecar aside")
            }
        }
    }

    fn state_of(&self, resource: &str, files: &Files) -> Result<LockState, LockError> {
        Ok(match self.occupant(resource, files, None)? {
            None => LockState::Available,
            Some((_, Occupant::New { record, alive, .. })) => {
                let info = record.to_info(LEGACY_BACKEND);
                if alive { LockState::Held(info) } else { LockState::Stale(info) }
            }
            Some((_, Occupant::Old { since, stale })) => {
                let info = old_holder(resource, &files.path, since);
                if stale { LockState::Stale(info) } else { LockState::Held(info) }
            }
        })
    }

    /// Every resource whose files may exist: the mapped ones, and unmapped
    /// ones found in the directory (named by their sidecar's record).
    fn known_resources(&self) -> Result<Vec<String>, LockError> {
        let mut names: Vec<String> = self.options.resources.keys().cloned().collect();
        let sidecars = fsutil::encoded_files_with_suffix(self.dir.path(), &format!("{LEGACY_SUFFIX}{SIDECAR_SUFFIX}"))
            .map_err(|e| io_error(LEGACY_BACKEND, "listing legacy lock files", None, self.dir.path(), e))?;
        for sidecar in sidecars {
            if let Ok(file) = fsutil::open_no_follow(&sidecar, Access::Read)
                && let Some(record) = record::read_from(&file).ok().and_then(FileRecord::record)
                && !self.options.resources.contains_key(&record.resource)
            {
                names.push(record.resource);
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

impl LockBackend for LegacyFileBackend {
    type Grant = LegacyGrant;

    fn name(&self) -> &'static str {
        LEGACY_BACKEND
    }

    fn modes_unsupported_because(&self) -> Option<&'static str> {
        Some("the legacy lockfile protocol has one holder per lock file, and old daemons know no other mode")
    }

    fn capabilities(&self) -> Capabilities {
        flock::capabilities()
    }

    async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<LegacyGrant>, LockError> {
        let resource = &*request.resource;
        let files = self.files(resource);
        // 1. Among new processes: the sidecar's kernel lock.
        let Locked { file: sidecar, waited, turn, .. } = match flock::lock(
            LEGACY_BACKEND,
            &self.queue,
            &request.resource,
            &files.sidecar,
            request.deadline,
        )
        .await?
        {
            LockAttempt::Locked(locked) => locked,
            LockAttempt::Busy(holder) => return Ok(Acquired::Busy { holder }),
        };
        // The sidecar outlives its holder: other users must be able to open it.
        self.dir.adopt(&sidecar, &files.sidecar);
        // 2. Against old processes: the legacy file itself.
        let mut waiter = FileWaiter::new(Duration::from_millis(5), Duration::from_millis(250));
        let mut waited_for_old = false;
        loop {
            let (mut record, now) = flock::next_record(LEGACY_BACKEND, &files.sidecar, &sidecar, request)?;
            let created = fsutil::create_exclusive_with(
                &files.path,
                legacy_contents(now, &record).as_bytes(),
                self.dir.file_mode(),
            )
            .map_err(|e| self.io("creating the legacy lock file", resource, &files.path, e))?;
            if let Some(file) = created {
                let snapshot = Snapshot::of(
                    &file
                        .metadata()
                        .map_err(|e| self.io("inspecting the legacy lock file", resource, &files.path, e))?,
                );
                // Removes the file again if we fail or are cancelled before granting.
                let mut made = MadeFile { path: &files.path, snapshot, keep: false };
                // Held from now, not from before the file was made: a process
                // frozen in between may have seen old daemons come and go.
                let held_since = SystemTime::now();
                record.acquired_at_us = fsutil::unix_micros(held_since);
                record.guards = Some(snapshot);
                record
                    .write_to(&sidecar, RecordState::Held)
                    .map_err(|e| self.io("writing the holder record", resource, &files.sidecar, e))?;
                if !files.settle.is_zero() {
                    // An old process that saw no file an instant ago may be
                    // about to open it (its check-then-create race). If it
                    // does so now, it thinks the file is its own: let it have it.
                    tokio::time::sleep(files.settle).await;
                    if Snapshot::at(&files.path).ok().flatten() != Some(snapshot) {
                        tracing::info!(resource, path = %files.path.display(), "an old process took the legacy file as we created it; waiting for it");
                        made.keep = true;
                        continue;
                    }
                }
                made.keep = true;
                drop(made);
                let turn: SharedTurn = Arc::new(Mutex::new(Some(turn)));
                let watch_id = self.sentinel.watch(Watched {
                    resource: request.resource.clone(),
                    path: files.path.clone(),
                    snapshot,
                    strict: true,
                    loss: request.loss.clone(),
                    turn: Some(turn.clone()),
                });
                let grant = LegacyGrant {
                    resource: request.resource.clone(),
                    sidecar,
                    sidecar_path: files.sidecar,
                    path: files.path,
                    snapshot,
                    watch_id,
                    turn,
                };
                return Ok(Acquired::Granted(
                    Granted::new(grant, FencingToken::new(record.token), None)
                        .acquired_at(held_since)
                        .after_waiting(waited || waited_for_old),
                ));
            }
            let Some((judged, occupant)) = self.occupant(resource, &files, Some(&sidecar))? else {
                continue; // removed meanwhile
            };
            let since = match occupant {
                Occupant::New { .. } => {
                    // We hold the sidecar, so its maker is gone: it crashed.
                    self.break_file(resource, &files, judged, "left by a crashed lockman process")?;
                    continue;
                }
                Occupant::Old { stale: true, .. } => {
                    self.break_file(resource, &files, judged, "stale: older than stale_after")?;
                    continue;
                }
                Occupant::Old { since, stale: false } => since,
            };
            let holder = Some(old_holder(resource, &files.path, since));
            // The resource's policy is the default; a wait the caller chose wins.
            if files.policy == LegacyPolicy::SkipIfBusy && !request.explicit_wait {
                return Ok(Acquired::Skipped { holder, reason: skip_reason(&files.path, since) });
            }
            if request.deadline.has_passed() {
                return Ok(Acquired::Busy { holder });
            }
            if waiter.watch_first(&files.path) {
                continue;
            }
            waited_for_old = true;
            let stale_at = since + files.stale_after;
            let wake_by = Instant::now() + stale_at.duration_since(SystemTime::now()).unwrap_or_default();
            if !waiter.wait(request.deadline, Some(wake_by)).await {
                return Ok(Acquired::Busy { holder });
            }
            waiter.forget();
        }
    }

    fn release_now(&self, grant: &LegacyGrant) -> Option<Result<(), LockError>> {
        Some(self.release_sync(grant))
    }

    /// The sidecar's descriptor: its kernel lock is what excludes new processes.
    #[cfg(unix)]
    fn lock_fd<'g>(&self, grant: &'g LegacyGrant) -> Option<std::os::fd::BorrowedFd<'g>> {
        use std::os::fd::AsFd;
        Some(grant.sidecar.as_fd())
    }

    async fn renew(&self, _grant: &LegacyGrant, _lease: Duration) -> Result<SystemTime, LockError> {
        Err(LockError::Config(
            "the legacy-file backend has no leases (old daemons would not honour them); \
             staleness is judged by each resource's stale_after"
                .to_owned(),
        ))
    }

    async fn inspect(&self, resource: &str) -> Result<LockState, LockError> {
        self.state_of(resource, &self.files(resource))
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut held = Vec::new();
        for resource in self.known_resources()? {
            if let Some(info) = self.state_of(&resource, &self.files(&resource))?.info() {
                held.push(info.clone());
            }
        }
        Ok(held)
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let files = self.files(resource);
        let Some((judged, occupant)) = self.occupant(resource, &files, None)? else {
            return Ok(None);
        };
        let victims = self.sentinel.grants_on(&files.path, judged.id);
        if !self.break_file(resource, &files, judged, reason)? {
            return Ok(None);
        }
        crate::testhook::point("legacy.force_release.broken", &files.path);
        let info = match occupant {
            Occupant::New { record, alive, sidecar } => {
                if alive && let Some(sidecar) = sidecar {
                    // A live new holder keeps its sidecar locked; move the
                    // sidecar aside too, so newcomers lock a fresh one.
                    self.move_sidecar_aside(resource, &files, sidecar, &record);
                }
                record.to_info(LEGACY_BACKEND)
            }
            Occupant::Old { since, .. } => old_holder(resource, &files.path, since),
        };
        self.sentinel.mark_lost(&victims, &LostReason::ForceReleased { reason: reason.to_owned() });
        Ok(Some(info))
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut broken = Vec::new();
        for resource in self.known_resources()? {
            let files = self.files(&resource);
            let Some((judged, occupant)) = self.occupant(&resource, &files, None)? else { continue };
            let info = match occupant {
                Occupant::New { record, alive: false, .. } => record.to_info(LEGACY_BACKEND),
                Occupant::Old { since, stale: true } => old_holder(&resource, &files.path, since),
                _ => continue,
            };
            if self.break_file(&resource, &files, judged, "stale")? {
                broken.push(info);
            }
        }
        Ok(broken)
    }
}

/// When the legacy file at `path` was last changed, as staleness is judged.
/// Its modification time is untrusted (whoever owns the file can set it): one
/// further ahead of this host's clock than the allowance for clock skew is
/// planted or broken, and is judged as if the file were already
/// `stale_after` old — else it would never go stale.
fn judged_since(path: &Path, meta: &std::fs::Metadata, stale_after: Duration) -> SystemTime {
    let now = SystemTime::now();
    let modified = meta.modified().unwrap_or(now);
    if now.checked_add(record::CLOCK_AHEAD_ALLOWANCE).is_some_and(|latest| modified > latest) {
        tracing::warn!(path = %path.display(), "legacy lock file modified in the future; judged stale");
        return now.checked_sub(stale_after).unwrap_or(std::time::UNIX_EPOCH);
    }
    modified
}

/// What is known of an old process holding `path`: nothing but the file's
/// age. Shown as "locked by an old (legacy) process (PATH exists) since T
/// (3.0s ago)".
fn old_holder(resource: &str, path: &Path, since: SystemTime) -> LockInfo {
    let mut info = record::unknown_holder(resource, LEGACY_BACKEND);
    info.holder = HolderId::new("an old (legacy) process");
    info.acquired_at = since;
    info.purpose = Some(format!("{} exists", path.display()));
    info
}

/// Why an acquire with no wait of the caller's gave up on a skip-if-busy resource.
fn skip_reason(path: &Path, since: SystemTime) -> String {
    let age = SystemTime::now().duration_since(since).unwrap_or_default();
    format!(
        "an old (legacy) process holds {} (written {age:.1?} ago) and the resource's legacy policy is skip, \
         as the old daemons do; give a wait (lockctl --wait 30s, AcquireOptions::timeout) to wait for it instead",
        path.display()
    )
}

/// What a new process writes into a legacy file: the first line is what v3
/// daemons write (and the only thing any old reader looks at); the second
/// marks it as ours and makes it longer than anything an old daemon writes,
/// so an old process rewriting it is noticed even where modification times
/// are coarse.
fn legacy_contents(now: SystemTime, record: &Record) -> String {
    format!(
        "{}\n{MARKER_PREFIX}{} on {} (fencing token {})",
        python_isoformat(now),
        record.pid,
        record.host,
        record.token
    )
}

/// How our marker line (the second line of a legacy file we made) begins.
const MARKER_PREFIX: &str = "# lockman: held by pid ";

/// What our marker line says about the new process that made a legacy file.
#[derive(Debug, PartialEq, Eq)]
struct Marker {
    pid: u32,
    host: String,
    token: u64,
}

impl Marker {
    /// The marker in the legacy file `id` at `path`, if it carries one.
    fn read(path: &Path, id: FileId) -> Option<Marker> {
        let file = fsutil::open_no_follow(path, Access::Read).ok()?;
        if FileId::of_file(&file).ok()? != id {
            return None;
        }
        let mut text = String::new();
        // Ours are well under this; old daemons write a timestamp or nothing.
        io::Read::read_to_string(&mut io::Read::take(&file, 4096), &mut text).ok()?;
        Marker::parse(text.lines().nth(1)?)
    }

    /// Parses `# lockman: held by pid 42 on box (fencing token 7)`.
    fn parse(line: &str) -> Option<Marker> {
        let (pid, rest) = line.strip_prefix(MARKER_PREFIX)?.split_once(" on ")?;
        let (host, token) = rest.rsplit_once(" (fencing token ")?;
        Some(Marker { pid: pid.parse().ok()?, host: host.to_owned(), token: token.strip_suffix(')')?.parse().ok()? })
    }

    /// Whether the process that wrote it still runs on this host (another
    /// process than this one: a file of ours no grant records is an orphan).
    fn process_runs_here(&self) -> bool {
        self.host == lockman_core::hostname() && self.pid != std::process::id() && fsutil::pid_alive(self.pid)
    }

    /// A record of the crashed grant, for `state`, `list` and `cleanup_stale`.
    fn into_record(self, resource: &str, since: SystemTime) -> Record {
        Record {
            resource: resource.to_owned(),
            holder: "unknown (crashed before recording its grant)".to_owned(),
            user: None,
            host: self.host,
            pid: self.pid,
            purpose: None,
            acquired_at_us: fsutil::unix_micros(since),
            lease_ms: None,
            heartbeat_us: None,
            token: self.token,
            machine: None,
            guards: None,
            mode: lockman_core::LockMode::Exclusive,
        }
    }
}

/// `2025-11-10T12:34:56.123456+00:00`: what Python's `datetime.isoformat()`
/// writes for an aware UTC time, as v3 daemons do.
fn python_isoformat(at: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_micros(at).to_string();
    match rfc3339.strip_suffix('Z') {
        Some(local) => format!("{local}+00:00"),
        None => rfc3339,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isoformat_matches_python() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_762_778_096_123_456);
        assert_eq!(python_isoformat(at), "2025-11-10T12:34:56.123456+00:00");
    }
}
