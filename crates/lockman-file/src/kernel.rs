//! `file:///dir`: one lock file per resource, locked with the operating
//! system's lock (`flock` on Unix, `LockFileEx` on Windows).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use lockman_core::backend::{Acquired, GrantRequest, Granted, LockBackend};
use lockman_core::{Capabilities, FencingToken, LockError, LockInfo, LockState, Locks, LostReason};

use crate::flock::{self, LockAttempt, Locked, SharedTurn};
use crate::fsutil::{self, Access, BreakOutcome, FileId, LockDir, io_error};
use crate::record::{self, FileRecord, RecordState};
use crate::sentinel::{Sentinel, Watched};
use crate::{FileOptions, naming};
use lockman_core::backend::LocalQueue;

/// The backend name in errors, events and metrics.
pub const BACKEND: &str = "file";

/// The suffix of lock files in kernel-lock mode.
pub(crate) const LOCK_SUFFIX: &str = ".lock";

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
#[derive(Debug)]
pub struct FileBackend {
    dir: LockDir,
    sentinel: Sentinel,
    queue: LocalQueue,
}

/// A held lock file: the open handle carries the kernel lock.
#[derive(Debug)]
pub struct FileGrant {
    resource: Arc<str>,
    file: File,
    path: PathBuf,
    watch_id: u64,
    turn: SharedTurn,
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
        Ok(FileBackend { dir, sentinel, queue: LocalQueue::default() })
    }

    /// The directory holding the lock files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The lock file used for `resource`.
    pub fn lock_file(&self, resource: &str) -> PathBuf {
        self.dir.join(&naming::encoded_file_name(resource, LOCK_SUFFIX))
    }

    fn io(&self, action: &str, resource: &str, path: &Path, error: io::Error) -> LockError {
        io_error(BACKEND, action, Some(resource), path, error)
    }

    /// Why a grant whose file a breaker moved by mistake, and could not put
    /// back, is lost.
    fn displaced(&self, path: &Path) -> LostReason {
        LostReason::Stolen {
            detail: format!("the lock file {} was moved aside and another process took its place", path.display()),
        }
    }

    fn release_sync(&self, grant: &FileGrant) -> Result<(), LockError> {
        self.sentinel.unwatch(grant.watch_id);
        // Deleted, or replaced by a rename over it: either way our file has no
        // name left (checked on the handle, which is cheaper than the path;
        // the sentinel covers a file merely renamed away).
        let ours = fsutil::has_links(&grant.file);
        if ours && let Err(e) = record::mark_released(&grant.file) {
            tracing::warn!(path = %grant.path.display(), error = %e, "cannot mark the lock record released");
        }
        // Unlock before close, so waiters woken by the close find it free.
        let unlocked = grant.file.unlock();
        drop(grant.turn.lock().take()); // the next waiter in this process goes now
        if !ours {
            return Err(LockError::stolen(
                BACKEND,
                &*grant.resource,
                format!("the lock file {} was deleted or replaced by another process while held", grant.path.display()),
            ));
        }
        unlocked.map_err(|e| io_error(BACKEND, "unlocking", None, &grant.path, e))
    }

    /// Opens an existing lock file for inspection; `None` if there is none.
    fn open_existing(&self, resource: &str, path: &Path) -> Result<Option<File>, LockError> {
        match fsutil::open_no_follow(path, Access::Read) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("opening the lock file", resource, path, e)),
        }
    }

    /// The lock files lockman made here (by name); other `*.lock` files in a
    /// shared directory are not ours to list or remove.
    fn lock_files(&self) -> Result<Vec<PathBuf>, LockError> {
        fsutil::encoded_files_with_suffix(self.dir.path(), LOCK_SUFFIX)
            .map_err(|e| io_error(BACKEND, "listing lock files", None, self.dir.path(), e))
    }
}

impl LockBackend for FileBackend {
    type Grant = FileGrant;

    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        flock::capabilities()
    }

    async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<FileGrant>, LockError> {
        let resource = &*request.resource;
        let path = self.lock_file(resource);
        let Locked { file, snapshot, waited, turn } =
            match flock::lock(BACKEND, &self.queue, &request.resource, &path, request.deadline).await? {
                LockAttempt::Locked(locked) => locked,
                LockAttempt::Busy(holder) => return Ok(Acquired::Busy { holder }),
            };
        // Kernel lock files outlive their holders: other users of a shared
        // directory must be able to open this one after we release it.
        self.dir.adopt(&file, &path);
        // On an error the file (and with it the kernel lock) and our turn are dropped.
        let (record, now) = flock::next_record(BACKEND, &path, &file, request)?;
        record
            .write_to(&file, RecordState::Held)
            .map_err(|e| self.io("writing the holder record", resource, &path, e))?;
        let token = record.token;
        let turn: SharedTurn = Arc::new(Mutex::new(Some(turn)));
        let watch_id = self.sentinel.watch(Watched {
            resource: request.resource.clone(),
            path: path.clone(),
            snapshot,
            strict: false,
            loss: request.loss.clone(),
            turn: Some(turn.clone()),
        });
        Ok(Acquired::Granted(
            Granted::new(
                FileGrant { resource: request.resource.clone(), file, path, watch_id, turn },
                FencingToken::new(token),
                None,
            )
            .acquired_at(now)
            .after_waiting(waited),
        ))
    }

    fn release_now(&self, grant: &FileGrant) -> Option<Result<(), LockError>> {
        Some(self.release_sync(grant))
    }

    /// The lock file's descriptor: the kernel lock is on its open file description.
    #[cfg(unix)]
    fn lock_fd<'g>(&self, grant: &'g FileGrant) -> Option<std::os::fd::BorrowedFd<'g>> {
        use std::os::fd::AsFd;
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
        let path = self.lock_file(resource);
        let Some(file) = self.open_existing(resource, &path)? else {
            return Ok(LockState::Available);
        };
        flock::probe(&file, resource, BACKEND).map_err(|e| self.io("probing the lock", resource, &path, e))
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let mut held = Vec::new();
        for path in self.lock_files()? {
            let Ok(file) = fsutil::open_no_follow(&path, Access::Read) else { continue };
            let unnamed = fsutil::file_name_of(&path);
            match flock::probe(&file, &unnamed, BACKEND) {
                Ok(LockState::Held(info)) => held.push(info),
                Ok(_) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot probe a lock file"),
            }
        }
        held.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(held)
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let path = self.lock_file(resource);
        let Some(file) = self.open_existing(resource, &path)? else {
            return Ok(None);
        };
        let id = FileId::of_file(&file).map_err(|e| self.io("inspecting the lock file", resource, &path, e))?;
        let info = match flock::probe(&file, resource, BACKEND)
            .map_err(|e| self.io("probing the lock", resource, &path, e))?
        {
            LockState::Held(info) => info,
            _ => return Ok(None),
        };
        // A kernel lock cannot be taken from a live process; removing its file
        // lets newcomers lock a fresh one, and the holder notices its file is gone.
        let victims = self.sentinel.grants_on(&path, id);
        match fsutil::break_by_rename(&path, id, |_| true) {
            Ok(BreakOutcome::Broken) => {}
            Ok(BreakOutcome::NotOurs | BreakOutcome::Gone) => return Ok(None),
            Ok(BreakOutcome::Displaced(moved)) => {
                self.sentinel.mark_lost(&self.sentinel.grants_on(&path, moved), &self.displaced(&path));
                return Ok(None);
            }
            Err(e) => return Err(self.io("removing the lock file", resource, &path, e)),
        }
        crate::testhook::point("kernel.force_release.broken", &path);
        self.sentinel.mark_lost(&victims, &LostReason::ForceReleased { reason: reason.to_owned() });
        Ok(Some(info))
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        // A kernel lock dies with its process, so nothing is ever *held* by a
        // dead holder; what remains are files. Remove every unlocked one of
        // ours (bounding the directory; `lock_files` lists only names lockman
        // makes, never another program's `*.lock`) and report those a
        // crashed holder left.
        let mut crashed = Vec::new();
        for path in self.lock_files()? {
            let Ok(file) = fsutil::open_no_follow(&path, Access::Read) else { continue };
            if file.try_lock().is_err() {
                continue;
            }
            // Only a file the path still names: one we locked after another
            // cleanup removed it is an orphan, and moving the path now would
            // move a live holder's file.
            let Ok(id) = FileId::of_file(&file) else { continue };
            if !matches!(FileId::at(&path), Ok(Some(now)) if now == id) {
                continue;
            }
            let left = record::read_from(&file).ok().and_then(FileRecord::held);
            // Removing it while we hold its lock is safe: anyone who opened it
            // meanwhile finds the path changed after locking, and retries.
            match fsutil::break_by_rename(&path, id, |_| true) {
                Ok(BreakOutcome::Broken) => {
                    if let Some(record) = left {
                        crashed.push(record.to_info(BACKEND));
                    }
                }
                Ok(BreakOutcome::Displaced(moved)) => {
                    self.sentinel.mark_lost(&self.sentinel.grants_on(&path, moved), &self.displaced(&path));
                }
                Ok(BreakOutcome::NotOurs | BreakOutcome::Gone) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove an unused lock file"),
            }
        }
        Ok(crashed)
    }
}
