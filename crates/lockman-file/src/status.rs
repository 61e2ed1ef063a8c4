//! Flags as files in a directory: [`FileStatusManager`].
//! (The full story is on the public type below, so rustdoc shows it.)

use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lockman_core::{FlagInfo, FlagOptions, LockError, StatusManager};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{
    self, BreakOutcome, FileId, INTERNAL_PREFIX, LockDir, from_unix_micros, io_error, stat_no_follow, unix_micros,
};
use crate::naming::{encoded_file_name, hex, is_plain_file_name};

/// The backend name in errors and [`FlagInfo::backend`] (the same as the
/// kernel-lock backend's).
const BACKEND: &str = "file";

/// The hidden subdirectory holding sidecars.
const META_DIR: &str = ".lockman-flags";

/// Encoded flag file names start with this, which plain names cannot contain.
const ENCODED_MARK: char = '@';

/// The suffix of encoded flag file names.
const ENCODED_SUFFIX: &str = ".flag";

/// Separates the flag file name from the identity key in a sidecar's name.
const SIDECAR_SEPARATOR: char = '~';

/// The suffix of sidecar files.
const SIDECAR_SUFFIX: &str = ".json";

/// Flag files' permissions unless `file_mode` is set: `0o644` less the
/// umask, as documented on [`FlagDirOptions::file_mode`] (not the `0o666`
/// fsutil gives lock files and sidecars).
const FLAG_FILE_MODE: u32 = 0o644;

/// The longest flag value (flag file) this backend writes or reads: a longer
/// file is refused as corrupt rather than read into memory.
const MAX_FLAG_VALUE: usize = 1024 * 1024;

/// The longest sidecar read back; lockman's own are a few hundred bytes.
const MAX_SIDECAR_LEN: usize = 64 * 1024;

/// The sidecar format version written by this build.
const SIDECAR_VERSION: u32 = 1;

/// A sidecar that matches no flag file is only removed once it is older than
/// this: a `set` writes its sidecar just before renaming its flag file into
/// place, and must not lose it to a concurrent sweep.
const STALE_SIDECAR_GRACE: Duration = Duration::from_secs(60);

/// Where and how a [`FileStatusManager`] keeps its flag files.
///
/// ```
/// use lockman_file::FlagDirOptions;
///
/// // Flags in the daemon's working folder; "force_charge" is the file a v3
/// // daemon for inverter 1 knows as `.FCRunning1`.
/// let options = FlagDirOptions::new("/var/lib/givtcp").dir_mode(0o770).file_name("force_charge", ".FCRunning1");
/// assert_eq!(options.dir(), std::path::Path::new("/var/lib/givtcp"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FlagDirOptions {
    dir: PathBuf,
    dir_mode: u32,
    file_mode: Option<u32>,
    file_names: BTreeMap<String, String>,
}

impl FlagDirOptions {
    /// Flag files in `dir`.
    ///
    /// ```
    /// let options = lockman_file::FlagDirOptions::new("/run/myapp/flags");
    /// assert_eq!(options.dir(), std::path::Path::new("/run/myapp/flags"));
    /// ```
    pub fn new(dir: impl AsRef<Path>) -> Self {
        FlagDirOptions { dir: dir.as_ref().to_owned(), dir_mode: 0o700, file_mode: None, file_names: BTreeMap::new() }
    }

    /// The directory.
    ///
    /// ```
    /// let options = lockman_file::FlagDirOptions::new("flags");
    /// assert_eq!(options.dir(), std::path::Path::new("flags"));
    /// ```
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Permissions for the directory if it has to be created (Unix; default
    /// `0o700`, private to this user), applied exactly as given (see
    /// [`FileOptions::dir_mode`](crate::FileOptions::dir_mode)). For flags
    /// shared by the users of one group, `0o2770`. The hidden metadata
    /// subdirectory gets the flag directory's permissions, exactly.
    ///
    /// ```
    /// let options = lockman_file::FlagDirOptions::new("/run/shared-flags").dir_mode(0o770);
    /// # let _ = options;
    /// ```
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = mode;
        self
    }

    /// Exact permissions for the flag files and metadata lockman writes
    /// (Unix; default `0o644` less the umask). Only the mode changes, never
    /// the files' names or contents.
    ///
    /// ```
    /// let options = lockman_file::FlagDirOptions::new("/srv/shared/flags").dir_mode(0o2770).file_mode(0o660);
    /// # let _ = options;
    /// ```
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.file_mode = Some(mode);
        self
    }

    /// Keeps `flag` in the file named exactly `file_name`, e.g. a readable
    /// flag `"force_charge"` in the legacy `.FCRunning1`. The file name must
    /// be one plain path component (ASCII letters, digits, `.`, `_`, `-`; not
    /// `.` or `..`; not starting with `.lockman-`), and no two flags may share
    /// one; [`FileStatusManager::open`] refuses anything else. Mapping a flag
    /// again replaces the earlier mapping. Once mapped, the file name can no
    /// longer be used as a flag name of its own.
    ///
    /// ```
    /// let options = lockman_file::FlagDirOptions::new("/var/lib/givtcp")
    ///     .file_name("force_charge", ".FCRunning1")
    ///     .file_name("force_export", ".FERunning1");
    /// # let _ = options;
    /// ```
    pub fn file_name(mut self, flag: impl Into<String>, file_name: impl Into<String>) -> Self {
        self.file_names.insert(flag.into(), file_name.into());
        self
    }
}

/// Flags as files in a directory: [`FileStatusManager`].
///
/// # On-disk layout
///
/// ```text
/// <dir>/
///   .FCRunning1                          a flag set by name (plain names are used verbatim)
///   .fullrefresh                         a one-shot flag, possibly created by an old daemon
///   @zurich-<32 hex>.flag                a flag whose name is not a plain file name (encoded)
///   .lockman-flags/                      lockman's metadata, hidden from old readers
///     .FCRunning1~<16 hex>.json          sidecar of `.FCRunning1`, keyed by the file's identity
///     @zurich-<32 hex>.flag~<16 hex>.json
/// ```
///
/// * **One file per flag.** The file exists while the flag is set; clearing
///   deletes it. Its content is the flag's value, byte for byte (an empty
///   file when the flag has no value), written atomically (a temp file
///   renamed into place), so a reader never sees half a value.
/// * **File names.** A name configured with [`FlagDirOptions::file_name`] is
///   used exactly. Otherwise a *plain* flag name — ASCII letters, digits, `.`,
///   `_` and `-`, at most 200 bytes, not `.`/`..`, not starting with
///   `.lockman-` — is the file name itself, so `.FCRunning1`, `.tpcRunning_2`
///   and `.fullrefresh` are exactly the files old daemons use. Any other name
///   (`../../etc/passwd`, `a/b`, unicode, 1024 bytes) becomes `@` + a readable
///   prefix + a 128-bit SHA-256 hash + `.flag`: injective, one safe path
///   component, and never equal to a plain name (plain names cannot contain
///   `@`). Nothing is ever written outside the directory.
/// * **Sidecars.** What old readers must not see — the TTL, when the flag was
///   set, whether an empty file means "no value" or the value `""`, and the
///   real name behind an encoded file — lives in a JSON sidecar under
///   `.lockman-flags/`. A sidecar is named after the flag file *and* that
///   file's identity (device, inode, length, modification time) at the time
///   it was set, and is only believed while the flag file still has that
///   identity. A flag file deleted and recreated (or rewritten) by an old
///   process therefore reads as the old process wrote it, and the stale
///   sidecar is ignored, then removed by the next `list` (or `set` of that
///   flag) once it is a minute old. (A replacement with the same inode,
///   length and modification time — possible only within the file system's
///   timestamp granularity — cannot be told apart.) Concurrent `set`s from several
///   processes each write their own sidecar, so whichever file wins the final
///   rename finds its own metadata.
/// * **Foreign metadata.** A sidecar is only believed if it is owned by the
///   owner of the flag file it describes (whoever set the flag wrote both).
///   `.lockman-flags` itself must be owned by this user, root or the flag
///   directory's owner (or, in a group-writable flag directory, belong to
///   its group), and be writable by group or others only where the flag
///   directory is; otherwise every operation that needs it fails with an
///   error naming it and how to fix it (remove it; lockman recreates it).
///
/// # Legacy compatibility
///
/// * A v3 daemon's `.FCRunning1` holding `job-7\n15:00` (no trailing newline)
///   is written exactly so by `set(".FCRunning1", value("job-7\n15:00"))`,
///   and a file an old process wrote reads back as a flag whose value is its
///   content (`None` if empty; bytes that are not UTF-8 are replaced, not
///   refused) and whose `set_at` is the file's modification time.
/// * `.fullrefresh`, created empty by an old process, is consumed exactly
///   once by [`take`](StatusManager::take): the file is renamed to a unique
///   internal name, and only the caller whose rename succeeded gets it — even
///   across threads and processes.
/// * An expired TTL'd flag reads as cleared everywhere and its file is deleted
///   lazily by the next reader. Old readers, which know nothing of TTLs, see
///   it until then.
/// * Symlinks are never followed: a symlink (or anything but a regular file)
///   where a flag file should be is reported as an error naming the path,
///   without opening it (a named pipe never blocks a reader).
/// * Flag values are at most 1 MiB: `set` refuses a longer one, and a longer
///   flag file (or a sidecar over 64 KiB) is reported as corrupt, never read
///   into memory.
///
/// Names that differ only in ASCII case are distinct files on case-sensitive
/// file systems (Linux); on case-insensitive ones (macOS, Windows, most SMB
/// shares) two *plain* names differing only in case share one file. Encoded
/// names never collide.
///
/// In short: flags kept as files in a directory, readable and writable by
/// old daemons that test for a file's existence (layout above).
///
/// [`list`](StatusManager::list) returns every set flag that lockman set
/// (it has a sidecar) plus every existing file configured with
/// [`FlagDirOptions::file_name`]. Files created by old processes under names
/// that are not configured are **not** listed — the directory may be a shared
/// working folder full of unrelated files — but [`get`](StatusManager::get),
/// [`is_set`](StatusManager::is_set), [`take`](StatusManager::take) and
/// [`clear`](StatusManager::clear) see them by name.
///
/// File I/O is done directly in the async methods: flag files are small and
/// local.
///
/// ```
/// use lockman_core::{FlagOptions, StatusManager};
/// use lockman_file::{FileStatusManager, FlagDirOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockman_core::LockError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let status = FileStatusManager::open(FlagDirOptions::new(dir.path()))?;
/// status.set(".FCRunning1", FlagOptions::new().value("job-7\n15:00")).await?;
/// // Exactly what a v3 daemon writes, and reads:
/// assert_eq!(std::fs::read(status.flag_file(".FCRunning1")).unwrap(), b"job-7\n15:00");
/// assert!(status.clear(".FCRunning1").await?);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileStatusManager {
    dir: LockDir,
    meta_dir: PathBuf,
    /// Flag name → configured exact file name.
    by_flag: HashMap<String, String>,
    /// Configured exact file name → flag name.
    by_file: HashMap<String, String>,
}

/// A flag file's identity and what changes when someone rewrites it: what
/// [`fsutil::Snapshot`] holds, in the form sidecars on disk record it (and
/// are named by, see [`key`](Stamp::key)). Not a `Snapshot`, whose serde
/// form differs and is itself on disk (lock records); and a missing or
/// pre-1970 modification time is recorded, and compared, as 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_s: u64,
    mtime_ns: u32,
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        let snapshot = fsutil::Snapshot::of(meta);
        let (mtime_s, mtime_ns) = snapshot
            .modified()
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        Stamp { dev: snapshot.id.dev(), ino: snapshot.id.ino(), len: snapshot.len(), mtime_s, mtime_ns }
    }

    /// The stamp of the regular file `meta` describes; `None` for anything else.
    fn of_file(meta: &Metadata) -> Option<Stamp> {
        meta.is_file().then(|| Stamp::of(meta))
    }

    /// A short key naming this identity in sidecar file names.
    fn key(&self) -> String {
        let digest =
            Sha256::digest(format!("{}:{}:{}:{}.{}", self.dev, self.ino, self.len, self.mtime_s, self.mtime_ns));
        hex(&digest[..8])
    }
}

/// What lockman knows about a flag beyond its file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Sidecar {
    version: u32,
    /// The flag's name as given to `set`.
    name: String,
    /// The flag file's name in the directory.
    file: String,
    /// Whether `set` was given a value (so an empty file is `Some("")`).
    has_value: bool,
    set_at_us: u64,
    expires_at_us: Option<u64>,
    /// The flag file this sidecar describes.
    stamp: Stamp,
    /// The process that set the flag (for people debugging).
    pid: u32,
}

/// A flag file read from disk.
struct Found {
    info: FlagInfo,
    /// Whether a matching sidecar described it (lockman set it).
    has_sidecar: bool,
}

impl FileStatusManager {
    /// A status manager over `options.dir`, created with `options.dir_mode` if
    /// missing.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] if the directory cannot be created or is not
    /// one, if a configured file name is not one plain path component or is
    /// shared by two flags, if a configured flag name is invalid, or if
    /// `.lockman-flags` in the directory is not a directory. (One another
    /// user controls is refused when used; see "Foreign metadata" above.)
    ///
    /// ```
    /// use lockman_file::{FileStatusManager, FlagDirOptions};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let status = FileStatusManager::open(FlagDirOptions::new(dir.path()).file_name("force_charge", ".FCRunning1"))?;
    /// assert_eq!(status.flag_file("force_charge"), dir.path().join(".FCRunning1"));
    ///
    /// // A file name that would leave the directory is refused.
    /// let err = FileStatusManager::open(FlagDirOptions::new(dir.path()).file_name("x", "../x")).unwrap_err();
    /// assert!(matches!(err, lockman_core::LockError::Config(_)));
    /// # Ok::<(), lockman_core::LockError>(())
    /// ```
    pub fn open(options: FlagDirOptions) -> Result<Self, LockError> {
        let mut by_flag = HashMap::new();
        let mut by_file: HashMap<String, String> = HashMap::new();
        for (flag, file) in options.file_names {
            lockman_core::validate_name(&flag).map_err(|e| {
                LockError::Config(format!("flag file mapping to {file:?}: {e}; fix the flag name in the configuration"))
            })?;
            if !is_plain_file_name(&file) {
                return Err(LockError::Config(format!(
                    "flag {flag:?} is mapped to the file name {file:?}, which is not one plain file name; use ASCII \
                     letters, digits, '.', '_' and '-' only (at most 200 bytes, not '.' or '..', not starting with \
                     {INTERNAL_PREFIX:?}), with no path separators"
                )));
            }
            if let Some(other) = by_file.get(&file) {
                return Err(LockError::Config(format!(
                    "flags {other:?} and {flag:?} are both mapped to the file {file:?}; give each flag its own file"
                )));
            }
            by_file.insert(file.clone(), flag.clone());
            by_flag.insert(flag, file);
        }
        let dir = LockDir::open(&options.dir, options.dir_mode, BACKEND)?.with_file_mode(options.file_mode);
        let meta_dir = dir.join(META_DIR);
        match std::fs::symlink_metadata(&meta_dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(LockError::Config(format!(
                    "{} is not a directory (a symlink or file is in the way); lockman keeps flag metadata there and \
                     never follows links — remove it",
                    meta_dir.display()
                )));
            }
            _ => {}
        }
        tracing::debug!(dir = %dir.path().display(), mapped = by_flag.len(), "opened the flag directory");
        Ok(FileStatusManager { dir, meta_dir, by_flag, by_file })
    }

    /// The directory holding the flag files.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let status = lockman_file::FileStatusManager::open(lockman_file::FlagDirOptions::new(dir.path()))?;
    /// assert_eq!(status.dir(), dir.path());
    /// # Ok::<(), lockman_core::LockError>(())
    /// ```
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file that holds `flag` while it is set: the configured exact name,
    /// else the name itself if it is a plain file name, else an encoded name
    /// starting with `@`. Always directly inside [`dir`](Self::dir). The name
    /// is not validated here; `set` and friends refuse names that are
    /// invalid, and plain names that are configured as another flag's file.
    ///
    /// ```
    /// use lockman_file::{FileStatusManager, FlagDirOptions};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let status = FileStatusManager::open(FlagDirOptions::new(dir.path()))?;
    /// assert_eq!(status.flag_file(".fullrefresh"), dir.path().join(".fullrefresh"));
    /// let encoded = status.flag_file("../../etc/passwd");
    /// assert_eq!(encoded.parent(), Some(dir.path()));
    /// assert!(encoded.file_name().unwrap().to_str().unwrap().starts_with('@'));
    /// # Ok::<(), lockman_core::LockError>(())
    /// ```
    pub fn flag_file(&self, flag: &str) -> PathBuf {
        self.dir.join(&self.file_name_of(flag))
    }

    fn file_name_of(&self, flag: &str) -> String {
        if let Some(file) = self.by_flag.get(flag) {
            file.clone()
        } else if is_plain_file_name(flag) {
            flag.to_owned()
        } else {
            format!("{ENCODED_MARK}{}", encoded_file_name(flag, ENCODED_SUFFIX))
        }
    }

    /// Validates `flag` and finds its file name.
    fn resolve(&self, flag: &str) -> Result<String, LockError> {
        lockman_core::validate_name(flag)?;
        if !self.by_flag.contains_key(flag)
            && let Some(owner) = self.by_file.get(flag)
        {
            return Err(LockError::invalid_name(
                flag,
                format!(
                    "this file name is configured as the file of flag {owner:?} in {}; use that flag name",
                    self.dir.path().display()
                ),
            ));
        }
        Ok(self.file_name_of(flag))
    }

    /// The flag name by which this manager reaches `file`, given the name
    /// recorded in its sidecar; `None` if no name leads there.
    fn flag_for_file(&self, file: &str, recorded: &str) -> Option<String> {
        [self.by_file.get(file).map(String::as_str), Some(file), Some(recorded)]
            .into_iter()
            .flatten()
            .find(|candidate| self.resolve(candidate).is_ok_and(|resolved| resolved == file))
            .map(str::to_owned)
    }

    fn sidecar_path(&self, file: &str, stamp: &Stamp) -> PathBuf {
        self.meta_dir.join(format!("{file}{SIDECAR_SEPARATOR}{}{SIDECAR_SUFFIX}", stamp.key()))
    }

    fn io(&self, action: &str, flag: Option<&str>, path: &Path, error: io::Error) -> LockError {
        // Where a flag file should be, a symlink gets the same message as
        // any other non-file (`not_a_file`), not the generic hint.
        if fsutil::is_symlink_error(&error) {
            return not_a_file(action, flag, path, "a symlink");
        }
        io_error(BACKEND, action, flag, path, error)
    }

    /// The metadata of the flag file at `path`, not following a symlink:
    /// `None` if nothing is there, an error if something other than a
    /// regular file is.
    fn flag_file_meta(&self, action: &str, flag: Option<&str>, path: &Path) -> Result<Option<Metadata>, LockError> {
        match stat_no_follow(path) {
            Ok(Some(meta)) if !meta.is_file() => Err(not_a_file(action, flag, path, fsutil::describe_kind(&meta))),
            Ok(meta) => Ok(meta),
            Err(e) => Err(self.io(action, flag, path, e)),
        }
    }

    /// Whether the metadata directory exists; an error if something other
    /// than a directory is in its place.
    fn meta_dir_exists(&self, action: &str, flag: Option<&str>) -> Result<bool, LockError> {
        match std::fs::symlink_metadata(&self.meta_dir) {
            Ok(meta) if meta.is_dir() => match self.untrusted_meta_dir(&meta) {
                None => Ok(true),
                Some(why) => Err(LockError::backend(
                    BACKEND,
                    action,
                    flag,
                    format!(
                        "{path} (lockman's flag metadata) {why}, so another user could rewrite when your flags \
                         expire or what they hold; lockman refuses to use it. Remove it (`rm -r {path}`) and lockman \
                         recreates it safely, and keep the flag directory {dir} writable only by users you trust",
                        path = self.meta_dir.display(),
                        dir = self.dir.path().display(),
                    ),
                )),
            },
            Ok(meta) => Err(LockError::backend(
                BACKEND,
                action,
                flag,
                format!(
                    "{} is {}, not a directory; lockman keeps flag metadata there and never follows links — remove it",
                    self.meta_dir.display(),
                    fsutil::describe_kind(&meta)
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(action, flag, &self.meta_dir, e)),
        }
    }

    /// Why the metadata directory `meta` cannot be trusted, if it cannot:
    /// it must be owned by us, root, or the flag directory's owner (or, in a
    /// group-shared flag directory, belong to its group), and be writable by
    /// group or others only where the flag directory itself is (as when
    /// lockman creates it, mirroring the flag directory's mode). Otherwise a
    /// user who could not touch our flags could rewrite their metadata.
    #[cfg(unix)]
    fn untrusted_meta_dir(&self, meta: &Metadata) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        let (dir_uid, dir_gid, dir_mode) =
            std::fs::metadata(self.dir.path()).map_or((me, u32::MAX, 0), |dir| (dir.uid(), dir.gid(), dir.mode()));
        let group_shared = dir_mode & 0o020 != 0 && dir_mode & 0o002 == 0;
        let owner_trusted = [me, 0, dir_uid].contains(&meta.uid())
            || (group_shared && meta.gid() == dir_gid && meta.mode() & 0o002 == 0);
        if !owner_trusted {
            return Some(format!(
                "is owned by uid {} (not you, uid {me}, nor root, nor the flag directory's owner)",
                meta.uid()
            ));
        }
        let extra_write = meta.mode() & 0o022 & !dir_mode;
        if extra_write != 0 {
            return Some(format!(
                "has mode {:04o}: writable by {} although the flag directory (mode {:04o}) is not",
                meta.mode() & 0o7777,
                if extra_write & 0o002 != 0 { "everyone" } else { "its group" },
                dir_mode & 0o7777
            ));
        }
        None
    }

    #[cfg(not(unix))]
    fn untrusted_meta_dir(&self, _meta: &Metadata) -> Option<String> {
        None
    }

    fn ensure_meta_dir(&self, action: &str, flag: &str) -> Result<(), LockError> {
        if self.meta_dir_exists(action, Some(flag))? {
            return Ok(());
        }
        // Mirror the flag directory exactly (not less the umask), so every
        // user who may set flags there may also write their metadata.
        #[cfg(unix)]
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(self.dir.path()).map_or(0o700, |meta| meta.permissions().mode() & 0o7777)
        };
        #[cfg(not(unix))]
        let mode = 0o700;
        match fsutil::make_dir(&self.meta_dir, mode) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if self.meta_dir_exists(action, Some(flag))? {
                    Ok(())
                } else {
                    Err(self.io(action, Some(flag), &self.meta_dir, e))
                }
            }
            Err(e) => Err(self.io(action, Some(flag), &self.meta_dir, e)),
        }
    }

    /// The sidecar describing the flag file `file` with identity `stamp`, if
    /// there is a valid one. Unreadable sidecars are reported and ignored:
    /// the flag then reads as an old process would see it.
    ///
    /// Only a sidecar owned by the flag file's owner is believed: whoever set
    /// the flag wrote both, and a sidecar planted by anyone else (who may
    /// create files in a shared metadata directory) must not decide when
    /// another user's flag expires.
    fn load_sidecar(&self, file: &str, stamp: &Stamp, flag_meta: &Metadata) -> Option<Sidecar> {
        let path = self.sidecar_path(file, stamp);
        let bytes = match fsutil::read_capped(&path, MAX_SIDECAR_LEN) {
            Ok(Some((_, meta))) if !same_owner(&meta, flag_meta) => {
                tracing::warn!(
                    path = %path.display(),
                    "flag metadata not owned by the flag file's owner; ignored (remove it)"
                );
                return None;
            }
            Ok(Some((bytes, _))) => bytes,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a flag's metadata; using the flag file alone");
                return None;
            }
        };
        match serde_json::from_slice::<Sidecar>(&bytes) {
            Ok(sidecar) if sidecar.version == SIDECAR_VERSION && sidecar.file == file && sidecar.stamp == *stamp => {
                Some(sidecar)
            }
            Ok(sidecar) => {
                tracing::warn!(
                    path = %path.display(), version = sidecar.version,
                    "flag metadata does not describe this flag file; using the flag file alone"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(), error = %e,
                    "corrupt flag metadata; using the flag file alone (remove the file or set the flag again)"
                );
                None
            }
        }
    }

    fn remove_sidecar(&self, file: &str, stamp: &Stamp) {
        let path = self.sidecar_path(file, stamp);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a flag's metadata"),
        }
    }

    /// Reads the flag `name` kept in `file`; `None` if it is not set (or has
    /// expired, in which case its file is deleted).
    fn read_flag(&self, name: &str, file: &str, action: &str) -> Result<Option<Found>, LockError> {
        let path = self.dir.join(file);
        if self.flag_file_meta(action, Some(name), &path)?.is_none() {
            return Ok(None);
        }
        let Some((content, meta)) =
            fsutil::read_capped(&path, MAX_FLAG_VALUE).map_err(|e| self.io(action, Some(name), &path, e))?
        else {
            return Ok(None);
        };
        let stamp = Stamp::of(&meta);
        let sidecar =
            if self.meta_dir_exists(action, Some(name))? { self.load_sidecar(file, &stamp, &meta) } else { None };
        let info = flag_info(name, &content, &meta, sidecar.as_ref());
        if info.expired_at(SystemTime::now()) {
            self.remove_expired(name, &path, file, &meta);
            return Ok(None);
        }
        Ok(Some(Found { info, has_sidecar: sidecar.is_some() }))
    }

    /// Deletes an expired flag file, unless it was replaced meanwhile.
    fn remove_expired(&self, name: &str, path: &Path, file: &str, meta: &Metadata) {
        let stamp = Stamp::of(meta);
        // Only if it was not rewritten in place meanwhile (an old process
        // reusing the file): then it is no longer the expired flag.
        let unchanged =
            |moved: &Path| stat_no_follow(moved).ok().flatten().as_ref().and_then(Stamp::of_file) == Some(stamp);
        match fsutil::break_by_rename(path, FileId::of(meta), unchanged) {
            Ok(BreakOutcome::Broken) => {
                tracing::debug!(flag = name, path = %path.display(), "removed an expired flag");
                self.remove_sidecar(file, &stamp);
            }
            Ok(BreakOutcome::Gone) => self.remove_sidecar(file, &stamp),
            // Rewritten meanwhile: set again (by whoever holds the path now).
            Ok(BreakOutcome::NotOurs | BreakOutcome::Displaced(_)) => {}
            Err(e) => tracing::warn!(
                flag = name, path = %path.display(), error = %e,
                "cannot remove an expired flag file; it reads as cleared, but old processes still see it"
            ),
        }
    }

    fn set_sync(&self, flag: &str, options: &FlagOptions) -> Result<(), LockError> {
        const ACTION: &str = "setting flag";
        let file = self.resolve(flag)?;
        let path = self.dir.join(&file);
        let previous = self.flag_file_meta(ACTION, Some(flag), &path)?.map(|meta| Stamp::of(&meta));
        let content = options.value.as_deref().unwrap_or("").as_bytes();
        if content.len() > MAX_FLAG_VALUE {
            return Err(LockError::backend(
                BACKEND,
                ACTION,
                Some(flag),
                format!(
                    "a value of {} bytes is longer than flag files may be ({MAX_FLAG_VALUE} bytes); keep large data \
                     elsewhere and put a reference to it in the flag",
                    content.len()
                ),
            ));
        }
        let temp = fsutil::sibling(&path, "new");
        let written = fsutil::write_new(&temp, content, FLAG_FILE_MODE, self.dir.file_mode())
            .and_then(|()| std::fs::symlink_metadata(&temp));
        let stamp = match written {
            Ok(meta) => Stamp::of(&meta),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(self.io(ACTION, Some(flag), &path, e));
            }
        };
        // The sidecar goes first: a crash before the rename leaves an unused
        // sidecar (swept later), never a TTL'd flag without its TTL.
        let written = self.ensure_meta_dir(ACTION, flag).and_then(|()| {
            let set_at = SystemTime::now();
            let sidecar = Sidecar {
                version: SIDECAR_VERSION,
                name: flag.to_owned(),
                file: file.clone(),
                has_value: options.value.is_some(),
                set_at_us: unix_micros(set_at),
                expires_at_us: options.ttl.and_then(|ttl| set_at.checked_add(ttl)).map(unix_micros),
                stamp,
                pid: std::process::id(),
            };
            let body = serde_json::to_vec(&sidecar)
                .map_err(|e| LockError::backend_caused_by(BACKEND, ACTION, Some(flag), e))?;
            let sidecar_path = self.sidecar_path(&file, &stamp);
            fsutil::replace_with(&sidecar_path, &body, self.dir.file_mode())
                .map_err(|e| self.io(ACTION, Some(flag), &sidecar_path, e))
        });
        let renamed = written.and_then(|()| {
            std::fs::rename(&temp, &path).map_err(|e| {
                self.remove_sidecar(&file, &stamp);
                self.io(ACTION, Some(flag), &path, e)
            })
        });
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        if let Some(previous) = previous {
            self.remove_sidecar(&file, &previous);
        }
        match self.sidecars(Some(&file)) {
            Ok(sidecars) => self.sweep(&sidecars),
            Err(e) => tracing::debug!(flag, error = %e, "cannot sweep the flag's old metadata"),
        }
        tracing::debug!(flag, path = %path.display(), ttl = ?options.ttl, has_value = options.value.is_some(), "flag set");
        Ok(())
    }

    fn take_sync(&self, flag: &str, action: &str) -> Result<Option<FlagInfo>, LockError> {
        let file = self.resolve(flag)?;
        let path = self.dir.join(&file);
        if self.flag_file_meta(action, Some(flag), &path)?.is_none() {
            return Ok(None);
        }
        // Exactly one rename of a given file succeeds: its caller owns it.
        let taken = fsutil::sibling(&path, "take");
        match std::fs::rename(&path, &taken) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(action, Some(flag), &path, e)),
        }
        let (content, meta) = match fsutil::read_capped(&taken, MAX_FLAG_VALUE) {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(None),
            Err(e) => {
                // Not a readable regular file after all (replaced by a symlink
                // in between?): put it back for someone to look at.
                if let Err(back) = std::fs::hard_link(&taken, &path) {
                    tracing::warn!(path = %path.display(), error = %back, "cannot put back an unreadable flag file");
                }
                let _ = std::fs::remove_file(&taken);
                return Err(self.io(action, Some(flag), &path, e));
            }
        };
        let stamp = Stamp::of(&meta);
        let sidecar = match self.meta_dir_exists(action, Some(flag)) {
            Ok(true) => self.load_sidecar(&file, &stamp, &meta),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(flag, error = %e, "flag metadata unusable while consuming a flag");
                None
            }
        };
        if let Err(e) = std::fs::remove_file(&taken) {
            tracing::warn!(path = %taken.display(), error = %e, "cannot remove a consumed flag file");
        }
        if sidecar.is_some() {
            self.remove_sidecar(&file, &stamp);
        }
        let info = flag_info(flag, &content, &meta, sidecar.as_ref());
        if info.expired_at(SystemTime::now()) {
            tracing::debug!(flag, "consumed an expired flag");
            return Ok(None);
        }
        tracing::debug!(flag, path = %path.display(), action, "flag consumed");
        Ok(Some(info))
    }

    fn list_sync(&self) -> Result<Vec<FlagInfo>, LockError> {
        const ACTION: &str = "listing flags";
        // File name → the flag name it is listed under.
        let mut candidates: BTreeMap<String, String> = BTreeMap::new();
        let sidecars = if self.meta_dir_exists(ACTION, None)? { self.sidecars(None)? } else { Vec::new() };
        for (sidecar, _) in &sidecars {
            let path = self.dir.join(&sidecar.file);
            let current = self.flag_file_meta(ACTION, Some(&sidecar.name), &path)?.map(|meta| Stamp::of(&meta));
            if current != Some(sidecar.stamp) {
                continue;
            }
            match self.flag_for_file(&sidecar.file, &sidecar.name) {
                Some(name) => {
                    candidates.insert(sidecar.file.clone(), name);
                }
                None => tracing::debug!(
                    file = %sidecar.file, recorded = %sidecar.name,
                    "a flag set under another file-name mapping is not reachable by name here; not listed"
                ),
            }
        }
        for (flag, file) in &self.by_flag {
            candidates.insert(file.clone(), flag.clone());
        }
        let mut listed = Vec::with_capacity(candidates.len());
        for (file, name) in candidates {
            if let Some(found) = self.read_flag(&name, &file, ACTION)?
                && (found.has_sidecar || self.by_file.contains_key(&file))
            {
                listed.push(found.info);
            }
        }
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        self.sweep(&sidecars);
        Ok(listed)
    }

    /// Every well-formed sidecar (of flag file `only`, or of every flag
    /// file), with its path. Malformed ones are reported and skipped (and
    /// removed once older than the grace period, as are temp files left by a
    /// crashed writer).
    fn sidecars(&self, only: Option<&str>) -> Result<Vec<(Sidecar, PathBuf)>, LockError> {
        const ACTION: &str = "listing flags";
        let entries = match std::fs::read_dir(&self.meta_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(ACTION, None, &self.meta_dir, e)),
        };
        // Flag file names never contain the separator, so this prefix picks
        // exactly one flag file's sidecars.
        let prefix = only.map(|file| format!("{file}{SIDECAR_SEPARATOR}"));
        let mut sidecars = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io(ACTION, None, &self.meta_dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(path = %path.display(), "unexpected file in the flag metadata directory; ignored");
                continue;
            };
            if name.starts_with(INTERNAL_PREFIX) {
                if only.is_none() && is_old(&path) {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if !name.ends_with(SIDECAR_SUFFIX) || prefix.as_ref().is_some_and(|prefix| !name.starts_with(prefix)) {
                continue;
            }
            let bytes = match fsutil::read_capped(&path, MAX_SIDECAR_LEN) {
                Ok(Some((bytes, _))) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable flag metadata; ignored");
                    continue;
                }
            };
            match serde_json::from_slice::<Sidecar>(&bytes) {
                Ok(sidecar)
                    if sidecar.version == SIDECAR_VERSION
                        && is_flag_file_name(&sidecar.file)
                        && self.sidecar_path(&sidecar.file, &sidecar.stamp) == path =>
                {
                    sidecars.push((sidecar, path));
                }
                Ok(_) => tracing::warn!(path = %path.display(), "flag metadata does not match its file name; ignored"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "corrupt flag metadata; ignored");
                    if is_old(&path) {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        Ok(sidecars)
    }

    /// Removes the sidecars among `sidecars` that no longer describe their
    /// flag file and are older than the grace period. Failures only cost disk
    /// space, so they are logged, never returned.
    fn sweep(&self, sidecars: &[(Sidecar, PathBuf)]) {
        for (sidecar, path) in sidecars {
            let current = stat_no_follow(&self.dir.join(&sidecar.file));
            if current.is_ok_and(|meta| meta.as_ref().and_then(Stamp::of_file) != Some(sidecar.stamp)) && is_old(path) {
                tracing::debug!(path = %path.display(), "removing metadata of a flag file that is gone or was replaced");
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::debug!(path = %path.display(), error = %e, "cannot remove stale flag metadata");
                }
            }
        }
    }
}

#[async_trait]
impl StatusManager for FileStatusManager {
    fn name(&self) -> &str {
        BACKEND
    }

    async fn set(&self, flag: &str, options: FlagOptions) -> Result<(), LockError> {
        self.set_sync(flag, &options)
    }

    async fn clear(&self, flag: &str) -> Result<bool, LockError> {
        Ok(self.take_sync(flag, "clearing flag")?.is_some())
    }

    async fn get(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        let file = self.resolve(flag)?;
        Ok(self.read_flag(flag, &file, "reading flag")?.map(|found| found.info))
    }

    async fn take(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        self.take_sync(flag, "taking flag")
    }

    async fn list(&self) -> Result<Vec<FlagInfo>, LockError> {
        self.list_sync()
    }
}

/// The flag `name` as read from a file with `content` and `meta`, described
/// by `sidecar` if lockman set it.
fn flag_info(name: &str, content: &[u8], meta: &Metadata, sidecar: Option<&Sidecar>) -> FlagInfo {
    let mut info = FlagInfo::new(name, &FlagOptions::new(), BACKEND);
    let has_value = sidecar.map_or(!content.is_empty(), |sidecar| sidecar.has_value || !content.is_empty());
    info.value = has_value.then(|| String::from_utf8_lossy(content).into_owned());
    match sidecar {
        Some(sidecar) => {
            info.set_at = from_unix_micros(sidecar.set_at_us);
            info.expires_at = sidecar.expires_at_us.map(from_unix_micros);
        }
        None => {
            if let Ok(modified) = meta.modified() {
                info.set_at = modified;
            }
        }
    }
    info
}

/// Whether `file` is a name this module gives flag files: one path component.
fn is_flag_file_name(file: &str) -> bool {
    is_plain_file_name(file) || file.strip_prefix(ENCODED_MARK).is_some_and(is_plain_file_name)
}

/// Whether the file at `path` was last modified longer ago than the grace
/// period (false if that cannot be told).
fn is_old(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age > STALE_SIDECAR_GRACE)
}

/// Whether two files have the same owner (always, where there are no owners).
fn same_owner(a: &Metadata, b: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.uid() == b.uid()
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        true
    }
}

/// The error for something other than a regular file where a flag file (or
/// the metadata directory) should be.
fn not_a_file(action: &str, flag: Option<&str>, path: &Path, what: &str) -> LockError {
    LockError::backend(
        BACKEND,
        action,
        flag,
        format!(
            "{} is {what}, not a regular flag file; lockman never reads or writes through it — remove it (old \
             daemons only ever create plain files there)",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &Path) -> FileStatusManager {
        FileStatusManager::open(FlagDirOptions::new(dir).file_name("force_charge", ".FCRunning1"))
            .expect("open the flag directory")
    }

    #[test]
    fn verbatim_and_encoded_names_never_collide() {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = manager(dir.path());
        assert_eq!(status.file_name_of(".fullrefresh"), ".fullrefresh");
        assert_eq!(status.file_name_of("force_charge"), ".FCRunning1");
        for hostile in ["a/b", "..", ".", "@x", ".lockman-flags", "zürich", "with space"] {
            let file = status.file_name_of(hostile);
            assert!(file.starts_with(ENCODED_MARK), "{hostile:?} → {file}");
            assert!(!is_plain_file_name(&file), "{file} could be a verbatim name");
            assert!(is_flag_file_name(&file), "{file}");
        }
    }

    #[test]
    fn mapped_file_names_are_reserved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = manager(dir.path());
        assert!(matches!(status.resolve(".FCRunning1"), Err(LockError::InvalidName { .. })));
        assert_eq!(status.flag_for_file(".FCRunning1", ".FCRunning1").as_deref(), Some("force_charge"));
        let encoded = status.file_name_of("a/b");
        assert_eq!(status.flag_for_file(&encoded, "a/b").as_deref(), Some("a/b"));
        assert_eq!(status.flag_for_file(&encoded, "c/d"), None);
    }

    #[test]
    fn sidecar_names_depend_on_the_file_identity() {
        let a = Stamp { dev: 1, ino: 2, len: 3, mtime_s: 4, mtime_ns: 5 };
        let b = Stamp { mtime_ns: 6, ..a };
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key().len(), 16);
        let dir = tempfile::tempdir().expect("temp dir");
        let status = manager(dir.path());
        let path = status.sidecar_path(&"x".repeat(200), &a);
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        assert!(name.len() <= 255, "sidecar name too long for common file systems: {}", name.len());
    }

    /// Sidecars written by earlier builds must still be found and read: this
    /// pins their JSON form (which round-trips) and the key that names them,
    /// byte for byte.
    #[test]
    fn sidecar_format_and_key_are_stable() {
        let stamp = Stamp { dev: 66306, ino: 1_234_567, len: 11, mtime_s: 1_764_782_400, mtime_ns: 123_456_789 };
        assert_eq!(stamp.key(), "4a724463fad79421");
        assert_eq!(Stamp { dev: 1, ino: 2, len: 3, mtime_s: 4, mtime_ns: 5 }.key(), "3906b38e36cd268b");
        let sidecar = Sidecar {
            version: SIDECAR_VERSION,
            name: "a/b".into(),
            file: "@a_b-00.flag".into(),
            has_value: true,
            set_at_us: 1,
            expires_at_us: Some(2),
            stamp,
            pid: 7,
        };
        let json = r#"{"version":1,"name":"a/b","file":"@a_b-00.flag","has_value":true,"set_at_us":1,"expires_at_us":2,"stamp":{"dev":66306,"ino":1234567,"len":11,"mtime_s":1764782400,"mtime_ns":123456789},"pid":7}"#;
        assert_eq!(String::from_utf8(serde_json::to_vec(&sidecar).expect("serialize")).expect("utf-8"), json);
        assert_eq!(serde_json::from_str::<Sidecar>(json).expect("parse"), sidecar);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = manager(dir.path()).sidecar_path(".FCRunning1", &stamp);
        assert_eq!(path, dir.path().join(".lockman-flags/.FCRunning1~4a724463fad79421.json"));
    }

    /// A stamp records exactly the file's device, inode, length and
    /// modification time (what sidecars on disk were keyed by).
    #[cfg(unix)]
    #[test]
    fn stamp_records_the_files_identity_and_mtime() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").expect("write");
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let expected = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: 5,
            mtime_s: u64::try_from(meta.mtime()).expect("after 1970"),
            mtime_ns: u32::try_from(meta.mtime_nsec()).expect("nanoseconds"),
        };
        assert_eq!(Stamp::of(&meta), expected);
    }
}
