//! File-system building blocks shared by the file backends: the lock
//! directory, opening without following symlinks, file identity, breaking a
//! lock file by renaming it to a tombstone, and exclusive creation with
//! contents.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockman_core::LockError;

/// Every file lockman creates for its own bookkeeping (temp files, tombstones)
/// starts with this, so listings can skip them and user names never clash.
pub(crate) const INTERNAL_PREFIX: &str = ".lockman-";

/// A directory that holds lock (or flag) files.
#[derive(Clone, Debug)]
pub(crate) struct LockDir {
    path: PathBuf,
    /// The exact permissions for files lockman creates here (`None`: `0o666`
    /// less the umask).
    file_mode: Option<u32>,
}

impl LockDir {
    /// Opens `path`, creating it with exactly `mode` if missing (its missing
    /// parents get the default mode, `0o777` less the umask, as `mkdir -p`
    /// gives them). Refuses a path another user could redirect (see
    /// [`check_path`]), including a `mode` every user could write without
    /// the sticky bit.
    pub(crate) fn open(path: &Path, mode: u32, backend: &'static str) -> Result<Self, LockError> {
        let refuse = |why: String| {
            LockError::Config(format!(
                "the {backend} backend refuses its directory {}: {why}; {SAFE_DIR_FIX}",
                path.display()
            ))
        };
        let cannot_use = |e: io::Error| {
            LockError::Config(format!("the {backend} backend cannot use its directory {}: {e}", path.display()))
        };
        match check_path(path).map_err(cannot_use)? {
            PathState::Directory => {}
            PathState::Unsafe(why) => return Err(refuse(why)),
            PathState::NotDirectory => {
                return Err(LockError::Config(format!(
                    "the {backend} backend's directory {} exists but is not a directory; point it at a directory",
                    path.display()
                )));
            }
            PathState::Missing => {
                if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                    return Err(refuse(format!(
                        "dir_mode {mode:#o} would let every user delete or replace other users' lock files; add \
                         the sticky bit ({:#o}) or drop write for others",
                        mode | 0o1000
                    )));
                }
                create_dir(path, mode).map_err(|e| {
                    LockError::Config(format!(
                        "the {backend} backend cannot create its directory {}: {e}; create it or choose another path",
                        path.display()
                    ))
                })?;
                // Again, on what now exists: someone may have raced us to a
                // missing component.
                match check_path(path).map_err(cannot_use)? {
                    PathState::Directory => {}
                    PathState::Unsafe(why) => return Err(refuse(why)),
                    _ => {
                        return Err(LockError::Config(format!(
                            "the {backend} backend's directory {} was replaced while being created; look at who \
                             else uses that path",
                            path.display()
                        )));
                    }
                }
            }
        }
        Ok(LockDir { path: path.to_owned(), file_mode: None })
    }

    /// Gives files lockman creates here exactly `mode` (`None`: `0o666` less
    /// the umask).
    pub(crate) fn with_file_mode(mut self, mode: Option<u32>) -> Self {
        self.file_mode = mode;
        self
    }

    /// The exact permissions for new files, if configured.
    pub(crate) fn file_mode(&self) -> Option<u32> {
        self.file_mode
    }

    /// Gives `file` (just opened or created here) the configured file mode,
    /// if we own it and it differs: a lock file made by an older build, or
    /// before the option was set, is brought in line by its owner. Logged,
    /// not fatal: the lock itself is fine, only other users' access suffers.
    pub(crate) fn adopt(&self, file: &File, path: &Path) {
        if let Err(e) = set_mode(file, self.file_mode) {
            tracing::warn!(path = %path.display(), error = %e, "cannot set the lock file's permissions (file_mode)");
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `file_name` inside the directory.
    pub(crate) fn join(&self, file_name: &str) -> PathBuf {
        self.path.join(file_name)
    }
}

/// What to do about a directory [`LockDir::open`] refuses.
const SAFE_DIR_FIX: &str = "use a directory no other user can redirect: create it as root or yourself outside \
     world-writable directories (e.g. /run/lock/APP or /srv/APP/locks), or fix the owner or mode named above (a \
     network mount showing directories as 0777: mount it with a narrower mode, e.g. cifs dir_mode=0770); the rules \
     are under \"Shared directories\" in lockman_file::FileOptions";

/// Gives `file` exactly `mode` (all 12 permission bits) if one is set, it is
/// owned by this user, and its mode differs.
pub(crate) fn set_mode(file: &File, mode: Option<u32>) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Some(mode) = mode else { return Ok(()) };
        let meta = file.metadata()?;
        if meta.uid() != rustix::process::geteuid().as_raw() || meta.mode() & 0o7777 == mode & 0o7777 {
            return Ok(());
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
    }
    #[cfg(not(unix))]
    {
        let _ = (file, mode);
        Ok(())
    }
}

/// What [`check_path`] found at the end of a path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathState {
    /// A directory.
    Directory,
    /// Something else.
    NotDirectory,
    /// Nothing (from some component on).
    Missing,
    /// A path another user could redirect: why.
    Unsafe(String),
}

/// Walks `path` from `/` as the kernel resolves it, following symlinks, and
/// finds it [`Unsafe`](PathState::Unsafe) if another user could redirect it — the rules of
/// systemd-tmpfiles' "unsafe path transition" check, plus OpenSSH
/// StrictModes' refusal of world-writable directories:
///
/// 1. no directory on the path (the last included) is writable by every
///    user without the sticky bit (anyone could rename entries there);
/// 2. in a directory every user can write (sticky, like `/tmp`), the next
///    component is owned by root or us (its owner could rename it away and
///    plant a symlink in its place);
/// 3. after a component owned by another user (not root, not us), every
///    later one — and wherever its symlinks lead — has that same owner: a
///    user's directories and links may lead only to that user's files.
///
/// Members of a directory's group are trusted as its owner is (a 2770 group
/// directory is the way to share locks between users). The answer holds for
/// the moment of the check; the rules make sure nobody but root and us can
/// change it later.
#[cfg(unix)]
pub(crate) fn check_path(path: &Path) -> io::Result<PathState> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;

    const MAX_LINKS: u32 = 40;
    let us = rustix::process::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == us;
    let world_writable = |meta: &std::fs::Metadata| meta.mode() & 0o002 != 0;
    let sticky = |meta: &std::fs::Metadata| meta.mode() & 0o1000 != 0;

    let absolute = std::path::absolute(path)?;
    let mut todo: VecDeque<OsString> = VecDeque::new();
    let push_front = |todo: &mut VecDeque<OsString>, target: &Path| {
        let parts: Vec<OsString> = target
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        for part in parts.into_iter().rev() {
            todo.push_front(part);
        }
    };
    push_front(&mut todo, &absolute);
    let mut current = PathBuf::from("/");
    let mut current_meta = std::fs::symlink_metadata(&current)?;
    // The owner of the last step (directory entered or link followed).
    let mut previous_uid = current_meta.uid();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        let (next, meta) = if name == ".." {
            let parent = current.parent().map_or_else(|| PathBuf::from("/"), Path::to_owned);
            let meta = std::fs::symlink_metadata(&parent)?;
            (parent, meta)
        } else {
            if world_writable(&current_meta) && !sticky(&current_meta) {
                return Ok(PathState::Unsafe(format!(
                    "{} is writable by every user and has no sticky bit, so anyone can replace what is in it",
                    current.display()
                )));
            }
            let next = current.join(&name);
            match std::fs::symlink_metadata(&next) {
                Ok(meta) => {
                    if world_writable(&current_meta) && !trusted(meta.uid()) {
                        return Ok(PathState::Unsafe(format!(
                            "{} is owned by uid {} and sits in {}, which every user can write: its owner could \
                             replace it with a symlink to anywhere",
                            next.display(),
                            meta.uid(),
                            current.display()
                        )));
                    }
                    (next, meta)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PathState::Missing),
                Err(e) => return Err(e),
            }
        };
        if !trusted(previous_uid) && meta.uid() != previous_uid {
            return Ok(PathState::Unsafe(format!(
                "{} (owned by uid {}) is reached through something owned by uid {}, another user, who could \
                 point it anywhere (an unsafe path transition)",
                next.display(),
                meta.uid(),
                previous_uid
            )));
        }
        previous_uid = meta.uid();
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error()));
            }
            let target = std::fs::read_link(&next)?;
            if target.is_absolute() {
                current = PathBuf::from("/");
                current_meta = std::fs::symlink_metadata(&current)?;
                if !trusted(previous_uid) && current_meta.uid() != previous_uid {
                    return Ok(PathState::Unsafe(format!(
                        "{} is a symlink owned by uid {}, another user, to {}: following it could lead anywhere \
                         (an unsafe path transition)",
                        next.display(),
                        previous_uid,
                        target.display()
                    )));
                }
            }
            push_front(&mut todo, &target);
            continue;
        }
        if !meta.is_dir() {
            return Ok(if todo.is_empty() { PathState::NotDirectory } else { PathState::Missing });
        }
        current = next;
        current_meta = meta;
    }
    if world_writable(&current_meta) && !sticky(&current_meta) {
        return Ok(PathState::Unsafe(format!(
            "{} is writable by every user and has no sticky bit, so anyone can delete or replace lock files in it",
            current.display()
        )));
    }
    Ok(PathState::Directory)
}

/// Non-Unix: no ownership to check; only whether the directory is there.
#[cfg(not(unix))]
pub(crate) fn check_path(path: &Path) -> io::Result<PathState> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(PathState::Directory),
        Ok(_) => Ok(PathState::NotDirectory),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PathState::Missing),
        Err(e) => Err(e),
    }
}

/// Creates the directory `path` with exactly `mode` (see [`make_dir`]).
/// Missing parents get the default mode, as `mkdir -p` gives them; a
/// directory someone else created first is left as it is.
fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).create(parent)?;
    }
    match make_dir(path, mode) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        made => made,
    }
}

/// Creates the directory `path` (its parent must exist; `AlreadyExists` if
/// it does) with exactly `mode`: set with `fchmod` after `mkdir`, so the
/// umask does not reduce it and setgid/sticky bits are kept (Unix).
pub(crate) fn make_dir(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new().mode(mode & 0o777).create(path)?;
        let flags = rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW;
        let dir = OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path)?;
        dir.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        std::fs::DirBuilder::new().create(path)
    }
}

/// How [`open_no_follow`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read-write, created if missing (taking a lock).
    Create,
    /// Read-only, never created (inspecting; kernel locks work on read-only
    /// handles, and other users may lack write permission).
    Read,
    /// Read-write, never created (updating a file in place).
    Update,
    /// Read and append, created if missing (taking a queue ticket).
    Append,
}

/// Opens `path`, refusing a symlink in the last component (a lock file
/// replaced by a symlink must not redirect our writes outside the directory).
///
/// New files get mode `0o666` less the umask, as files conventionally do
/// (the directory, private by default, is what keeps other users out);
/// callers give them the configured `file_mode` with [`LockDir::adopt`].
pub(crate) fn open_no_follow(path: &Path, access: Access) -> io::Result<File> {
    open_no_follow_with_meta(path, access).map(|(file, _)| file)
}

/// [`open_no_follow`], also returning the file's metadata (one `fstat`
/// serves both the regular-file check and the caller's identity check).
pub(crate) fn open_no_follow_with_meta(path: &Path, access: Access) -> io::Result<(File, std::fs::Metadata)> {
    let mut options = OpenOptions::new();
    options.read(true);
    match access {
        Access::Create => options.write(true).create(true),
        Access::Update => options.write(true),
        Access::Append => options.append(true).create(true),
        Access::Read => &mut options,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: opening a named pipe planted where a lock file should be
        // would otherwise wait forever for a writer. Cleared again below.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        options.custom_flags(flags.bits() as i32).mode(0o666);
    }
    let file = open_without_atime(&options, path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_a_regular_file(&meta));
    }
    clear_nonblock(&file)?;
    Ok((file, meta))
}

/// The error for a path that names something other than a regular file (a
/// named pipe, socket, device or directory): never read, locked or written.
pub(crate) fn not_a_regular_file(meta: &std::fs::Metadata) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{}, not a regular file", describe_kind(meta)))
}

/// What kind of file `meta` describes, for messages.
pub(crate) fn describe_kind(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    if kind.is_symlink() {
        "a symlink"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Puts `file` back in blocking mode: `O_NONBLOCK` was only for the open.
fn clear_nonblock(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        let flags = rustix::fs::fcntl_getfl(file)?;
        if flags.contains(rustix::fs::OFlags::NONBLOCK) {
            rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::NONBLOCK)?;
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Reads the whole regular file at `path` — never through a symlink, never
/// waiting on a named pipe — refusing one longer than `cap` bytes (as
/// `InvalidData`) rather than allocating for it. `None` if nothing is there.
///
/// Every file lockman reads back whole is one it writes small itself, so a
/// longer one is corrupt or planted; the cap bounds what it can cost.
pub(crate) fn read_capped(path: &Path, cap: usize) -> io::Result<Option<(Vec<u8>, std::fs::Metadata)>> {
    use std::io::Read;
    let (file, meta) = match open_no_follow_with_meta(path, Access::Read) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(cap).min(cap));
    // One byte past the cap tells "exactly the cap" from "longer".
    Read::take(&file, limit).read_to_end(&mut content)?;
    if content.len() > cap {
        return Err(longer_than(cap));
    }
    Ok(Some((content, meta)))
}

/// The error for a file longer than the `cap` bytes lockman ever writes
/// there (as `InvalidData`).
pub(crate) fn longer_than(cap: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("longer than {cap} bytes, more than lockman ever writes there; corrupt or planted"),
    )
}

/// Whether the open file still has a name (it was not deleted, or replaced
/// by a rename over it). Unknown counts as yes.
pub(crate) fn has_links(file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata().map_or(true, |meta| meta.nlink() > 0)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        true
    }
}

/// Opens with `O_NOATIME` where allowed (we own the file): every acquire
/// reads the previous record from a file just written, which would otherwise
/// dirty the inode with a new access time each time.
fn open_without_atime(options: &OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut no_atime = options.clone();
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOATIME;
        no_atime.custom_flags(flags.bits() as i32);
        match no_atime.open(path) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {}
            opened => return opened,
        }
    }
    options.open(path)
}

/// Which file a path or handle refers to (device and inode on Unix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileId {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileId { dev: meta.dev(), ino: meta.ino() }
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            FileId { dev: 0, ino: 0 }
        }
    }

    pub(crate) fn of_file(file: &File) -> io::Result<FileId> {
        Ok(FileId::of(&file.metadata()?))
    }

    /// The file `path` names now, without following a symlink; `None` if
    /// nothing is there.
    pub(crate) fn at(path: &Path) -> io::Result<Option<FileId>> {
        Ok(stat_no_follow(path)?.as_ref().map(FileId::of))
    }

    /// The device number (0 where there is none).
    pub(crate) fn dev(&self) -> u64 {
        self.dev
    }

    /// The inode number (0 where there is none).
    pub(crate) fn ino(&self) -> u64 {
        self.ino
    }
}

/// The metadata of what `path` names, without following a symlink; `None`
/// if nothing is there.
pub(crate) fn stat_no_follow(path: &Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A file's identity plus what changes when someone rewrites it: enough to
/// notice a legacy process truncating or replacing a lock file we hold, and
/// to tell our file from a new one that reuses its inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) id: FileId,
    len: u64,
    modified: Option<SystemTime>,
}

impl Snapshot {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Snapshot {
        Snapshot { id: FileId::of(meta), len: meta.len(), modified: meta.modified().ok() }
    }

    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The file's modification time, where the platform has one.
    pub(crate) fn modified(&self) -> Option<SystemTime> {
        self.modified
    }

    pub(crate) fn at(path: &Path) -> io::Result<Option<Snapshot>> {
        Ok(stat_no_follow(path)?.as_ref().map(Snapshot::of))
    }
}

/// What [`break_by_rename`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BreakOutcome {
    /// The file we judged was removed; nobody else removed it first.
    Broken,
    /// The path named another file by the time we moved it (someone broke the
    /// lock first and a new holder took it), or the file was no longer
    /// breakable; it was put back.
    NotOurs,
    /// Nothing was there any more.
    Gone,
    /// We moved a file by mistake (as for `NotOurs`), and a third process
    /// created the path while it was aside and kept it: the moved file (this
    /// identity) is gone, and whoever held it has lost the lock. Report it.
    Displaced(FileId),
}

/// Removes the lock file at `path` if it is still `expected`, safely against
/// racing breakers: rename it to a unique tombstone (exactly one rename of a
/// given file succeeds), then re-check what was moved — that it is the file
/// judged, and that `still_breakable` (given the tombstone's path) still
/// holds, e.g. that a lease judged stale was not renewed meanwhile. A file
/// moved by mistake is put back without overwriting anything (`link`, or a
/// no-replace rename); if a third process created the path meanwhile, the
/// moved file is [`Displaced`](BreakOutcome::Displaced).
pub(crate) fn break_by_rename(
    path: &Path,
    expected: FileId,
    still_breakable: impl FnOnce(&Path) -> bool,
) -> io::Result<BreakOutcome> {
    break_by_rename_or_restore(path, expected, still_breakable, |_, _| false)
}

/// [`break_by_rename`], but when a file moved by mistake cannot be put back
/// because a third process created the path meanwhile, `restore_over(moved,
/// current)` (the tombstone's path and `path`) decides whether the moved file
/// goes back anyway, replacing the newcomer's: its holder was there first,
/// and the newcomer took the path only because we had emptied it. The
/// newcomer then finds its file replaced (before granting, or by its loss
/// check) instead of the earlier holder losing its lock.
pub(crate) fn break_by_rename_or_restore(
    path: &Path,
    expected: FileId,
    still_breakable: impl FnOnce(&Path) -> bool,
    restore_over: impl FnOnce(&Path, &Path) -> bool,
) -> io::Result<BreakOutcome> {
    // Look first: moving a file that is not the one judged opens a window
    // (until it is put back) in which a newcomer can take the path.
    match FileId::at(path)? {
        None => return Ok(BreakOutcome::Gone),
        Some(now) if now != expected => return Ok(BreakOutcome::NotOurs),
        Some(_) => {}
    }
    crate::testhook::point("break.before_rename", path);
    let tombstone = sibling(path, "tomb");
    match std::fs::rename(path, &tombstone) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BreakOutcome::Gone),
        Err(e) => return Err(e),
    }
    crate::testhook::point("break.moved", path);
    let moved = FileId::at(&tombstone)?;
    if moved == Some(expected) && still_breakable(&tombstone) {
        remove_tombstone(&tombstone);
        return Ok(BreakOutcome::Broken);
    }
    let Some(moved) = moved else {
        return Ok(BreakOutcome::Gone); // someone removed our tombstone: nothing to put back
    };
    match put_back(&tombstone, path) {
        Ok(()) => {
            remove_tombstone(&tombstone);
            Ok(BreakOutcome::NotOurs)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && restore_over(&tombstone, path) => {
            // Atomically replaces the newcomer's file with the one it displaced.
            match std::fs::rename(&tombstone, path) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), "put back a lock file moved by mistake over one created meanwhile");
                    Ok(BreakOutcome::NotOurs)
                }
                Err(e) => Ok(displaced(path, &tombstone, moved, &e)),
            }
        }
        Err(e) => Ok(displaced(path, &tombstone, moved, &e)),
    }
}

/// A file moved by mistake could not be put back: log it, clear the
/// tombstone, and say whose file it was.
fn displaced(path: &Path, tombstone: &Path, moved: FileId, error: &io::Error) -> BreakOutcome {
    tracing::warn!(
        path = %path.display(),
        error = %error,
        "could not put back a lock file moved by mistake while breaking a stale lock; its holder has lost the lock"
    );
    remove_tombstone(tombstone);
    BreakOutcome::Displaced(moved)
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then): a hard
/// link where the file system has them, else a no-replace rename (Linux).
fn put_back(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::hard_link(from, to) {
        Err(e) if matches!(e.kind(), io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied) => {
            rename_no_replace(from, to)
                .map_err(|no_rename| if no_rename.kind() == io::ErrorKind::Unsupported { e } else { no_rename })
        }
        linked => linked,
    }
}

#[cfg(target_os = "linux")]
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(|e| match e {
        rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS => io::Error::from(io::ErrorKind::Unsupported),
        other => io::Error::from(other),
    })
}

#[cfg(not(target_os = "linux"))]
fn rename_no_replace(_from: &Path, _to: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Deletes a tombstone; the lock path is already free, so a failure here is
/// only litter (`.lockman-tomb-*`), logged rather than reported.
fn remove_tombstone(tombstone: &Path) {
    if let Err(e) = std::fs::remove_file(tombstone) {
        tracing::warn!(path = %tombstone.display(), error = %e, "could not delete a tombstone; remove it by hand");
    }
}

/// Creates `path` with `contents` only if it does not exist, so that readers
/// never see it half-written: write a temp file, then `link` it into place
/// (which fails if the path exists). Falls back to `O_CREAT|O_EXCL` where
/// hard links are not supported (some SMB mounts). `None` if `path` exists.
/// `mode`: the file's exact permissions (see [`set_mode`]).
pub(crate) fn create_exclusive_with(path: &Path, contents: &[u8], mode: Option<u32>) -> io::Result<Option<File>> {
    let temp = sibling(path, "new");
    let mut file = new_file(&temp, DEFAULT_FILE_MODE, mode)?;
    let written = file.write_all(contents).and_then(|()| file.flush());
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) if matches!(e.kind(), io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied) => {
            match new_file(path, DEFAULT_FILE_MODE, mode) {
                Ok(mut file) => match file.write_all(contents) {
                    Ok(()) => Ok(Some(file)),
                    Err(e) => {
                        // We created it exclusively, so it is ours to remove:
                        // a half-written lock file would block others for a lease.
                        let _ = std::fs::remove_file(path);
                        Err(e)
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Creates `path` (a fresh, unique name) holding `contents` and our
/// exclusive kernel lock, appearing under its name only once locked and
/// written: a cleanup that finds it unlocked may take it for a crashed
/// holder's, so it must never be seen unlocked while its holder lives.
pub(crate) fn create_locked_with(path: &Path, contents: &[u8], mode: Option<u32>) -> io::Result<File> {
    let temp = sibling(path, "new");
    let mut file = new_file(&temp, DEFAULT_FILE_MODE, mode)?;
    let made = file
        .try_lock()
        .map_err(|e| match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => io::Error::other("a file just created is locked by someone else"),
        })
        .and_then(|()| file.write_all(contents))
        .and_then(|()| std::fs::rename(&temp, path));
    match made {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Writes `contents` to `path` atomically (temp file + rename): readers see
/// the old contents or the new, never a mix. `mode`: the file's exact
/// permissions (see [`set_mode`]).
pub(crate) fn replace_with(path: &Path, contents: &[u8], mode: Option<u32>) -> io::Result<()> {
    let temp = sibling(path, "new");
    let result = write_new(&temp, contents, DEFAULT_FILE_MODE, mode).and_then(|()| std::fs::rename(&temp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// The permissions of new files unless a mode is configured: `0o666` less
/// the umask, as files conventionally get.
const DEFAULT_FILE_MODE: u32 = 0o666;

/// Creates `path` (which must not exist) with `contents`, closed when this
/// returns: `base_mode` less the umask, or exactly `mode` if given (see
/// [`new_file`]). The caller removes it if this fails.
pub(crate) fn write_new(path: &Path, contents: &[u8], base_mode: u32, mode: Option<u32>) -> io::Result<()> {
    let mut file = new_file(path, base_mode, mode)?;
    file.write_all(contents)?;
    file.flush()
}

/// Creates `path` (which must not exist): `base_mode` less the umask, or
/// exactly `mode` if given.
fn new_file(path: &Path, base_mode: u32, mode: Option<u32>) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(base_mode);
    }
    #[cfg(not(unix))]
    let _ = base_mode;
    let file = options.open(path)?;
    if let Err(e) = set_mode(&file, mode) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// A unique internal file next to `path`: `.lockman-<kind>-<uuid>`.
pub(crate) fn sibling(path: &Path, kind: &str) -> PathBuf {
    let name = format!("{INTERNAL_PREFIX}{kind}-{}", uuid::Uuid::new_v4().simple());
    match path.parent() {
        Some(parent) => parent.join(name),
        None => PathBuf::from(name),
    }
}

/// The files in `dir` named as lockman names its own files for resources
/// (`<prefix>-<32 hex><suffix>`, see [`crate::naming`]): what listing and
/// cleanup look at, so nothing else in a shared directory is ever touched.
pub(crate) fn encoded_files_with_suffix(dir: &Path, suffix: &str) -> io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_str().is_some_and(|n| crate::naming::is_encoded_file_name(n, suffix)))
        .map(|entry| entry.path())
        .collect())
}

/// The last component of `path`, for messages about files with no readable record.
pub(crate) fn file_name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Whether process `pid` is running on this host. Unknown (non-Unix) counts
/// as alive: only the heartbeat then decides.
pub(crate) fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
            return false;
        };
        !matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH))
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The fencing token after `previous`, at least `floor`; an error naming
/// `path` if `previous` is already the largest token there is. Tokens must
/// only ever increase, so one that would wrap or stand still is never issued.
pub(crate) fn next_token(
    backend: &'static str,
    resource: &str,
    path: &Path,
    previous: u64,
    floor: u64,
) -> Result<u64, LockError> {
    match previous.checked_add(1) {
        Some(next) => Ok(next.max(floor)),
        None => Err(LockError::Backend {
            backend: backend.to_owned(),
            action: "issuing a fencing token".to_owned(),
            resource: Some(resource.to_owned()),
            message: format!(
                "{}: the fencing token counter is exhausted (the last token is {previous}, the largest there is); \
                 no later token can be issued. Tokens that high are only ever planted or corrupt: check who can \
                 write the directory, then remove the file while nobody holds the lock (tokens then restart from \
                 the clock, so fenced services must forget the old maximum)",
                path.display()
            ),
            source: None,
        }),
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The time `micros` after the Unix epoch.
pub(crate) fn from_unix_micros(micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros)
}

/// A backend error for an I/O failure on `path`.
pub(crate) fn io_error(
    backend: &'static str,
    action: &str,
    resource: Option<&str>,
    path: &Path,
    error: io::Error,
) -> LockError {
    let hint = match error.kind() {
        io::ErrorKind::PermissionDenied => {
            "; check the permissions of the directory and its files (where several users share a directory, \
             give it group write and the setgid bit, and every user file_mode=0660: see FileOptions::file_mode)"
        }
        io::ErrorKind::NotFound => "; the lock directory may have been removed",
        _ if is_symlink_error(&error) => "; it is a symlink, which lockman never follows — remove it",
        io::ErrorKind::InvalidInput => {
            "; something other than a regular file is in the way (lockman never reads or locks through it) — remove it"
        }
        io::ErrorKind::InvalidData => {
            "; it is corrupt or was planted: check who can write the directory, then remove it"
        }
        _ => "",
    };
    LockError::Backend {
        backend: backend.to_owned(),
        action: action.to_owned(),
        resource: resource.map(str::to_owned),
        message: format!("{}: {error}{hint}", path.display()),
        source: Some(Box::new(error)),
    }
}

/// Whether `error` is what opening a symlink with `O_NOFOLLOW` fails with
/// (`ELOOP`; never, where there is no such flag).
pub(crate) fn is_symlink_error(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// Reads as much as fits into `buf` from offset 0 (a short read of a
/// regular file is its end).
pub(crate) fn read_from_start(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = read_at(file, &mut buf[filled..], filled as u64)?;
        filled += n;
        // A short read of a regular file means end of file: no second call to learn it.
        if n == 0 || filled < buf.len() {
            break;
        }
    }
    Ok(filled)
}

/// One `pread`: up to `buf.len()` bytes at `offset`.
#[cfg(unix)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// One positioned read: up to `buf.len()` bytes at `offset`.
#[cfg(windows)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(unix)]
pub(crate) fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(windows)]
pub(crate) fn write_at(file: &File, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, bytes, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}
