//! Stores that check fencing tokens, so a holder whose lock was lost cannot
//! overwrite the work of the holder after it.
//!
//! A lock alone does not protect data from a holder that pauses — a GC
//! pause, a stopped VM, a slow disk — past its lease: the lock passes to the
//! next holder, and the paused one wakes up and writes anyway. Every grant
//! carries a [`FencingToken`] that is higher than every earlier grant's; a
//! store that remembers the highest token it has accepted and refuses lower
//! ones turns that late write into an error (see "Fencing" in the README).
//!
//! * [`FencedFile`] — a file replaced atomically, only by writes whose token
//!   is at least the last accepted one.
//! * `lockman::redis::FencedKey` (feature `redis`) — the same check for a
//!   Redis key, in one Lua script.
//!
//! ```
//! use lockman::fencing::FencedFile;
//! use lockman::FencingToken;
//!
//! let dir = tempfile::tempdir()?;
//! let cache = FencedFile::new(dir.path().join("regcache.json"));
//! cache.write(FencingToken::new(8), b"{\"soc\": 81}")?;
//! // A holder from before token 8 wakes up and writes: refused.
//! let late = cache.write(FencingToken::new(7), b"{\"soc\": 40}").unwrap_err();
//! assert!(late.is_stale());
//! assert_eq!(std::fs::read(cache.path())?, b"{\"soc\": 81}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use lockman_core::FencingToken;
pub use lockman_core::fencing::{FenceError, accepts};

/// A file written only with a fencing token at least as high as the last
/// one written to it.
///
/// * The last accepted token lives beside the file, in `<file>.fence`.
///   A write locks that file (an exclusive `flock`-style lock, so writers in
///   other processes wait too), compares, stores the new token, then
///   replaces the file through a temporary file and a rename — readers see
///   the old contents or the new, never a mix — and syncs both to disk.
/// * The token is stored before the contents: a crash between the two leaves
///   the old contents under the new token, which still refuses every older
///   writer; the reverse order could let one in.
/// * Equal tokens are accepted ([`accepts`]), so one grant can write
///   several times.
///
/// The methods do blocking file I/O; from async code call them through
/// `tokio::task::spawn_blocking` (as the `inverter_daemon` example does).
/// Every writer of the file must go through `FencedFile`: a plain write does
/// not check or move the token. The new file gets the mode of a newly created
/// file (umask), not the old file's.
#[derive(Debug, Clone)]
pub struct FencedFile {
    path: PathBuf,
    fence: PathBuf,
    temp: PathBuf,
}

impl FencedFile {
    /// The fenced file at `path`; its token is kept in `<path>.fence`.
    /// Nothing is touched until the first write.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let with_suffix = |suffix: &str| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        FencedFile { fence: with_suffix(".fence"), temp: with_suffix(".fence-tmp"), path }
    }

    /// The file the contents are written to (read it with `std::fs::read`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token of the last accepted write, `None` before the first.
    ///
    /// # Errors
    ///
    /// [`FenceError::Store`] if the token file cannot be read or does not
    /// hold a token.
    pub fn last_token(&self) -> Result<Option<FencingToken>, FenceError> {
        match File::open(&self.fence) {
            Ok(mut file) => {
                file.lock_shared().map_err(|e| self.error("locking the token file to read it", &self.fence, e))?;
                self.read_token(&mut file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error("opening the token file", &self.fence, e)),
        }
    }

    /// Replaces the file's contents with `contents` if `token` is at least
    /// the last accepted token.
    ///
    /// # Errors
    ///
    /// [`FenceError::Stale`] (nothing written) if a higher token already
    /// wrote; [`FenceError::Store`] if the file or its token could not be
    /// read or written.
    pub fn write(&self, token: FencingToken, contents: &[u8]) -> Result<(), FenceError> {
        let mut fence = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.fence)
            .map_err(|e| self.error("opening the token file", &self.fence, e))?;
        // Held until `fence` is dropped: the compare and both writes are one step for every writer.
        self.lock(&fence, "locking the token file")?;
        let last = self.read_token(&mut fence)?;
        if let Some(last) = last
            && !accepts(Some(last), token)
        {
            tracing::debug!(file = %self.path.display(), %token, %last, "refused a write with a stale fencing token");
            return Err(FenceError::Stale { store: self.path.display().to_string(), token, last });
        }
        // Fixed width, overwritten in place (never truncated first, so a crash cannot leave it empty).
        let record = format!("{:020}\n", token.get());
        fence
            .seek(SeekFrom::Start(0))
            .and_then(|_| fence.write_all(record.as_bytes()))
            .and_then(|()| fence.sync_data())
            .map_err(|e| self.error("storing the new token", &self.fence, e))?;

        let mut temp = File::create(&self.temp).map_err(|e| self.error("creating", &self.temp, e))?;
        temp.write_all(contents).and_then(|()| temp.sync_all()).map_err(|e| self.error("writing", &self.temp, e))?;
        std::fs::rename(&self.temp, &self.path)
            .map_err(|e| self.error(&format!("renaming {} over", self.temp.display()), &self.path, e))?;
        // The rename itself must reach the disk too.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn lock(&self, file: &File, action: &str) -> Result<(), FenceError> {
        file.lock().map_err(|e| self.error(action, &self.fence, e))
    }

    fn read_token(&self, file: &mut File) -> Result<Option<FencingToken>, FenceError> {
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|e| self.error("reading the token file", &self.fence, e))?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(|t| Some(FencingToken::new(t))).map_err(|_| FenceError::Store {
            store: self.path.display().to_string(),
            detail: format!(
                "the token file {} holds {:?}, not a fencing token; it is written only by FencedFile, so \
                 something else changed it — restore it or, with every writer stopped, delete it",
                self.fence.display(),
                lockman_core::display::escape(text)
            ),
        })
    }

    fn error(&self, action: &str, path: &Path, e: std::io::Error) -> FenceError {
        FenceError::Store {
            store: self.path.display().to_string(),
            detail: format!("{action} {}: {e}", path.display()),
        }
    }
}
