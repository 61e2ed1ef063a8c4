//! The files of one resource in kernel-lock mode, and reading who holds it
//! from them without taking anything (see the scheme in [`super`]).

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use lockman_core::{LockInfo, LockMode, LockState};

use crate::fsutil::{self, Access, FileId, Snapshot};
use crate::naming::{self, Member};
use crate::record::{self, FileRecord, RecordState};

/// The paths of one resource's files.
#[derive(Debug)]
pub(super) struct Family {
    dir: PathBuf,
    stem: String,
    /// `<stem>.lock`: the lock itself.
    pub(super) lock: PathBuf,
    /// `<stem>.gate`: the turnstile every acquirer passes.
    pub(super) gate: PathBuf,
    /// `<stem>.queue`: waiters' tickets, in arrival order (see [`super::queue`]).
    pub(super) queue: PathBuf,
}

impl Family {
    pub(super) fn new(dir: &Path, resource: &str) -> Family {
        let stem = naming::encoded_file_name(resource, "");
        Family {
            lock: dir.join(naming::member_file_name(&stem, Member::Lock)),
            gate: dir.join(naming::member_file_name(&stem, Member::Gate)),
            queue: dir.join(naming::member_file_name(&stem, Member::Queue)),
            dir: dir.to_owned(),
            stem,
        }
    }

    /// The file of permit `index` of a semaphore.
    pub(super) fn slot(&self, index: u32) -> PathBuf {
        self.dir.join(naming::member_file_name(&self.stem, Member::Slot(index)))
    }

    /// A fresh, unique name for a shared holder's record.
    pub(super) fn new_reader_record(&self) -> PathBuf {
        self.dir.join(naming::member_file_name(&self.stem, Member::Reader))
    }

    /// The permit and reader-record files of this resource now in the directory.
    pub(super) fn holder_files(&self) -> io::Result<Vec<(PathBuf, Member)>> {
        let mut members = scan(&self.dir)?.remove(&self.stem).unwrap_or_default();
        members.retain(|(_, member)| member.is_holder_file());
        Ok(members)
    }
}

/// Every file of every resource family in `dir`, by stem; files not named
/// as lockman names them are left out (and so never touched).
pub(super) fn scan(dir: &Path) -> io::Result<HashMap<String, Vec<(PathBuf, Member)>>> {
    let mut families: HashMap<String, Vec<(PathBuf, Member)>> = HashMap::new();
    for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some((stem, member)) = name.to_str().and_then(naming::parse_member) else { continue };
        families.entry(stem.to_owned()).or_default().push((entry.path(), member));
    }
    Ok(families)
}

/// The kind the resource is in use as, from the record in its lock file:
/// written by whoever found it free, so it speaks for the live holders
/// while the lock is held. `None` when no held record is readable.
pub(super) fn kind_of(lock: &File) -> Option<LockMode> {
    match record::read_from(lock) {
        Ok(FileRecord::Found(record, RecordState::Held)) => Some(record.mode),
        _ => None,
    }
}

/// Who holds the resource whose lock file is `lock`, probed with shared
/// try-locks dropped at once: the exclusive holder's record, or (held shared
/// or by permits) every live holder's, combined with
/// [`LockInfo::of_holders`]. `holder_files` lists the family's permit and
/// reader-record files; it is only called for a resource held that way.
pub(super) fn probe(
    lock: &File,
    resource: &str,
    backend: &str,
    holder_files: impl FnOnce() -> io::Result<Vec<(PathBuf, Member)>>,
) -> io::Result<LockState> {
    match lock.try_lock_shared() {
        Ok(()) => lock.unlock()?,
        Err(TryLockError::WouldBlock) => {
            let holder = crate::flock::holder_of(lock, backend);
            return Ok(LockState::Held(holder.unwrap_or_else(|| record::unknown_holder(resource, backend))));
        }
        Err(TryLockError::Error(e)) => return Err(e),
    }
    // Free, or held shared: the holders' own files tell which.
    if matches!(kind_of(lock), None | Some(LockMode::Exclusive)) {
        return Ok(LockState::Available);
    }
    let holders = holder_files()?.into_iter().filter_map(|(path, _)| live_holder(&path, backend)).collect();
    Ok(LockInfo::of_holders(holders).map_or(LockState::Available, LockState::Held))
}

/// Whether live holders really use the resource as `kind`, the kind its
/// lock file's record names, before a party is refused for disagreeing:
/// a record outlives its period of use (a crashed exclusive holder's, the
/// kind record of readers who have all left), and the lock may be held for
/// a moment by a probe or a cleanup rather than by holders.
pub(super) fn kind_is_live(
    lock: &File,
    kind: LockMode,
    holder_files: impl FnOnce() -> io::Result<Vec<(PathBuf, Member)>>,
) -> io::Result<bool> {
    if kind != LockMode::Exclusive {
        let live = holder_files()?.into_iter().filter_map(|(path, _)| live_holder(&path, ""));
        return Ok(live.into_iter().any(|info| info.mode == kind));
    }
    let dead = matches!(record::read_from(lock), Ok(FileRecord::Found(record, _)) if record.holder_process_is_dead());
    match lock.try_lock_shared() {
        Ok(()) => {
            lock.unlock()?;
            Ok(false)
        }
        Err(TryLockError::WouldBlock) => Ok(!dead),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The modes of the resource's holders that are certain without holding
/// its gate: every live permit or reader record (each is locked by its
/// holder and written by it), and an exclusive holder in this very process.
/// Whatever else the lock file says may be a moment out of date — a party
/// that has just found it free holds it before it rewrites the record.
pub(super) fn certain_holder_modes(
    lock: &File,
    holder_files: impl FnOnce() -> io::Result<Vec<(PathBuf, Member)>>,
) -> io::Result<Vec<LockMode>> {
    let Ok(FileRecord::Found(record, RecordState::Held)) = record::read_from(lock) else {
        return Ok(Vec::new());
    };
    if record.mode != LockMode::Exclusive {
        let live = holder_files()?.into_iter().filter_map(|(path, _)| live_holder(&path, ""));
        return Ok(live.map(|info| info.mode).collect());
    }
    let ours = record.pid == std::process::id() && record.holder_is_local();
    let held = match lock.try_lock_shared() {
        Ok(()) => {
            lock.unlock()?;
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(e)) => return Err(e),
    };
    Ok(if ours && held { vec![LockMode::Exclusive] } else { Vec::new() })
}

/// The record in a permit or reader-record file whose holder is alive (it
/// keeps the file's kernel lock for as long as it holds).
fn live_holder(path: &Path, backend: &str) -> Option<LockInfo> {
    let file = fsutil::open_no_follow(path, Access::Read).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => crate::flock::holder_of(&file, backend),
        Err(TryLockError::Error(e)) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot probe a holder's file");
            None
        }
    }
}

/// The ids of the holder files that are held now (their holders are the
/// ones a force-release breaks; a file free now may be a newcomer's next).
pub(super) fn held_files(files: Vec<(PathBuf, Member)>) -> Vec<(PathBuf, FileId)> {
    files
        .into_iter()
        .filter_map(|(path, _)| {
            let file = fsutil::open_no_follow(&path, Access::Read).ok()?;
            if !matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)) {
                return None;
            }
            let id = FileId::of_file(&file).ok()?;
            Some((path, id))
        })
        .collect()
}

/// A permit file whose exclusive lock we took.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) snapshot: Snapshot,
}

/// Takes the first free of the `permits` slot files, if any. An error
/// comes with the path it is about.
pub(super) fn take_slot(family: &Family, permits: u32) -> Result<Option<Slot>, (PathBuf, io::Error)> {
    for index in 0..permits {
        let path = family.slot(index);
        let (file, meta) = match fsutil::open_no_follow_with_meta(&path, Access::Create) {
            Ok(opened) => opened,
            Err(e) => return Err((path, e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err((path, e)),
        }
        let snapshot = Snapshot::of(&meta);
        // A cleanup may have removed the (then free) file after we opened it.
        if still_names(&path, snapshot.id) {
            return Ok(Some(Slot { file, path, snapshot }));
        }
    }
    Ok(None)
}

/// Whether `path` still names the file `id`.
pub(super) fn still_names(path: &Path, id: FileId) -> bool {
    matches!(FileId::at(path), Ok(Some(now)) if now == id)
}
