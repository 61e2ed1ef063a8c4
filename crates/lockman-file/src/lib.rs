//! lockman's file backends: locks and flags kept as files in a directory.
//!
//! Three flavours of lock, one [`StatusManager`](lockman_core::StatusManager)
//! for flags:
//!
//! | flavour | URL | excludes | a crashed holder | waiters wake by |
//! |---|---|---|---|---|
//! | [`FileLockManager`] | `file:///dir` | processes on this host (and hosts sharing a file system with working `flock`) | releases at once (the kernel drops its lock) | inotify on Linux, bounded backoff elsewhere |
//! | [`LeaseFileLockManager`] | `file:///dir?mode=lease` | processes and hosts sharing the directory, even where kernel locks are unreliable (SMB, some NFS, synced folders) | after its heartbeat is older than the lease, or at once if its pid is dead on this host | inotify locally, bounded backoff |
//! | [`LegacyFileLockManager`] | `legacy-file:///dir` | new processes strictly; old existence-check daemons as far as their protocol allows | new: at once; old: after the resource's stale age | as above |
//!
//! The kernel and lease flavours also hold resources shared (reader-writer,
//! with a waiting writer never starved by new readers, across processes
//! too) and as semaphores of n permits; see [`FileBackend`] and
//! [`LeaseFileLockManager`] for the files and why a crash never leaves a
//! share taken (kernel locks: it ends with the process; lease files: with
//! the holder's own lease, or at once when its pid is dead on this host).
//! The legacy flavour holds exclusively only, and refuses the other modes
//! with a configuration error.
//!
//! Flags: [`FileStatusManager`] keeps one file per flag (`.FCRunning1`
//! holding `job-7\n15:00`, byte for byte what old readers expect), with TTLs
//! and real names in a hidden sidecar directory, and one-shot flags consumed
//! atomically by rename.
//!
//! Every flavour encodes resource names injectively into safe file names
//! (a readable prefix plus a hash; see [`FileBackend::lock_file`]), never
//! writes outside its directory, refuses symlinks, keeps holder metadata
//! readable by `state`/`list` without taking the lock, only ever lists or
//! cleans up files named as it names them, refuses a directory whose path
//! another user could redirect (see [`FileOptions`], "Shared directories"),
//! hands out fencing
//! tokens that keep increasing across processes, and reports a lock lost
//! when its file is deleted or replaced under it.
//!
//! # Caveats
//!
//! * `state`/`list` on the kernel flavour probe the lock (and, for a
//!   resource held shared or by permits, each holder's file) with a shared
//!   try-lock held for two system calls, and `cleanup_stale` try-locks every
//!   file; a `try_acquire` in another process at that instant sees the lock
//!   busy.
//! * Kernel locks on network file systems are only as good as the server's
//!   lock support (NFSv4 implements `flock` as whole-file POSIX locks; SMB
//!   varies). Use lease mode there. Lease mode judges staleness by the
//!   holder's clock, so hosts need clocks in step to well within the lease,
//!   and a holder paused longer than its lease loses the lock (its guard
//!   reports it when it resumes). A holder's pid is only judged dead where it
//!   means the same process: same host name, boot and pid namespace (so
//!   containers sharing a host name do not break each other's leases).
//! * Fencing tokens are microsecond timestamps floored on the previous token
//!   (kept in the lock file, the lease's `.seq` file, or the legacy sidecar).
//!   Where `cleanup_stale` or `force_release` removed that file, only the
//!   clock floors the next token, so a clock stepped back past the last
//!   token could repeat one.
//! * File operations are plain system calls made on the calling task (they
//!   take microseconds on a local disk); on a hard-mounted network share
//!   that stops responding they block the runtime thread until it answers.
//! * Each resource waited on in a manager uses one inotify instance while it
//!   waits (Linux allows 128 per user by default); past that, waiters fall
//!   back to bounded backoff.
//!
//! # By URL
//!
//! With the `url` feature (which `lockman::connect` uses),
//! [`FileOptions::from_url`] reads `file:///dir?…` and
//! [`LegacyOptions::from_url`] reads `legacy-file:///dir?…`; their options
//! are listed by `FileConfigKey` and `LegacyConfigKey`:
//!
//! ```
//! # #[cfg(feature = "url")] {
//! use lockman_file::FileOptions;
//!
//! let url = url::Url::parse("file:///srv/app/locks?dir_mode=2770&file_mode=0660&flag.force_charge=.FCRunning1").unwrap();
//! let file = FileOptions::from_url(&url, "LOCKMAN_URL", None).unwrap();
//! assert!(!file.lease_mode);
//! # }
//! ```
//!
//! ```
//! use lockman_core::{AcquireOptions, LockBackend, LockManager};
//! use lockman_file::{FileBackend, FileOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockman_core::LockError> {
//! # let dir = tempfile::tempdir().unwrap();
//! let locks = FileBackend::open(FileOptions::new(dir.path()))?.into_manager();
//! let guard = locks.acquire("inverter_read", AcquireOptions::new().purpose("poll")).await?;
//! println!("{:?}", locks.state("inverter_read").await?);
//! guard.release().await?;
//! # Ok(()) }
//! ```

mod flock;
mod fsutil;
mod kernel;
mod kernel_wait;
mod lease;
mod legacy;
mod naming;
mod record;
mod sentinel;
mod status;
mod testhook;
#[cfg(feature = "url")]
mod url_options;
mod watch;

#[cfg(test)]
mod interleavings;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use kernel::{BACKEND, FileBackend, FileGrant, FileLockManager};
pub use lease::{LEASE_BACKEND, LeaseFileBackend, LeaseFileLockManager, LeaseGrant};
pub use legacy::{
    LEGACY_BACKEND, LegacyFileBackend, LegacyFileLockManager, LegacyGrant, LegacyOptions, LegacyPolicy, LegacyResource,
};
pub use status::{FileStatusManager, FlagDirOptions};
#[cfg(feature = "url")]
pub use url_options::{FileConfigKey, FileUrl, LegacyConfigKey, LegacyUrl};

/// Where and how a file backend keeps its lock files.
///
/// # Shared directories
///
/// A lock directory other users can write is a place they can plant things
/// in, so every file backend (and [`FileStatusManager`]) opens one only if
/// no other user can redirect its path, and refuses it with a
/// [`LockError::Config`](lockman_core::LockError::Config) naming the path
/// and the fix otherwise. Walking the path from `/`, following symlinks
/// (the rules of systemd-tmpfiles' unsafe-path-transition check and
/// OpenSSH's `StrictModes`):
///
/// 1. no directory on the path, the lock directory included, may be
///    writable by every user without the sticky bit;
/// 2. in a sticky directory every user can write (`/tmp`, `/run/lock`), the
///    next component must be owned by root or by the user running lockman —
///    so a symlink or directory another user planted there is refused;
/// 3. after a directory or symlink owned by another user, everything
///    further on (and wherever its links point) must have that same owner.
///
/// Members of a directory's group are trusted like its owner. Inside the
/// directory, lockman never follows a symlink, and `list` and
/// `cleanup_stale` only look at files named as lockman names them
/// (`<prefix>-<32 hex>.lock`, `.lease`, `.lockfile.flock`, plus the files
/// configured for legacy resources), so pointing lockman at a directory
/// other programs use (`/run/lock` with `LCK..ttyS0`, a project with
/// `Cargo.lock`) never removes their files.
///
/// To share locks between the users of a group `G`: a directory owned by
/// root (or one of them) and group `G`, mode `2770`, and `file_mode(0o660)`
/// so each user can lock the files the others made — as a URL,
/// `file:///srv/app/locks?dir_mode=2770&file_mode=0660` (`chgrp G` the
/// parent, or create the directory as root beforehand).
///
/// ```
/// use std::time::Duration;
/// use lockman_file::FileOptions;
///
/// let options = FileOptions::new("/run/myapp/locks").dir_mode(0o770).loss_check_interval(Duration::from_millis(500));
/// assert_eq!(options.dir(), std::path::Path::new("/run/myapp/locks"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FileOptions {
    dir: PathBuf,
    dir_mode: u32,
    file_mode: Option<u32>,
    loss_check_interval: Duration,
    default_lease: Duration,
    keep_open: usize,
}

impl FileOptions {
    /// Lock files in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        FileOptions {
            dir: dir.as_ref().to_owned(),
            dir_mode: 0o700,
            file_mode: None,
            loss_check_interval: Duration::from_secs(1),
            default_lease: Duration::from_secs(30),
            keep_open: DEFAULT_KEEP_OPEN,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Permissions for the directory if it has to be created (Unix; default
    /// `0o700`, private to this user). Applied exactly as given — set after
    /// creating it, so the umask does not reduce it and setgid (`0o2000`) and
    /// sticky (`0o1000`) bits are kept — and only to the directory itself:
    /// missing parents are created with the default mode (`0o777` less the
    /// umask), as `mkdir -p` does. An existing directory is left as it is.
    /// For the users of one group, `0o2770` with
    /// [`file_mode(0o660)`](Self::file_mode) (see "Shared directories"
    /// below); a mode writable by every user without the sticky bit (`0o777`)
    /// is refused.
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = mode;
        self
    }

    /// Exact permissions for the files lockman creates in the directory
    /// (Unix; default `0o666` less the umask, usually `0o644`). Set after
    /// creating each file, so the umask does not reduce it; a lock file this
    /// user owns with another mode (made before the option was set) is
    /// brought in line when it is next locked.
    ///
    /// Kernel lock files stay after release, so where several users share a
    /// directory they must be able to open each other's: `0o660` in a group
    /// directory (`0o2770`).
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.file_mode = Some(mode);
        self
    }

    /// How often held locks are re-checked for having been deleted or
    /// replaced by another process (default 1 s). Breaks made by this process
    /// are reported at once.
    pub fn loss_check_interval(mut self, interval: Duration) -> Self {
        self.loss_check_interval = interval;
        self
    }

    /// The lease given to locks whose caller names none, renewed every third
    /// of it while the guard lives (lease mode only; default 30 s).
    pub fn default_lease(mut self, lease: Duration) -> Self {
        self.default_lease = lease;
        self
    }

    /// For how many resources an exclusive grant's files (the gate, the lock
    /// file and, on Linux, the arrival queue) stay open after release, for
    /// the resource's next grant to reuse instead of opening them again
    /// (kernel locks only; default 64, so up to 192 descriptors per
    /// backend; past it, an arbitrary resource's files are closed). `0` keeps none open: every grant opens
    /// and closes its files, for a process with many backends and few
    /// descriptors to spare.
    ///
    /// ```
    /// use lockman_file::FileOptions;
    ///
    /// let options = FileOptions::new("/run/myapp/locks").keep_open(0);
    /// # let _ = options;
    /// ```
    pub fn keep_open(mut self, resources: usize) -> Self {
        self.keep_open = resources;
        self
    }
}

/// [`FileOptions::keep_open`]'s default.
const DEFAULT_KEEP_OPEN: usize = 64;
