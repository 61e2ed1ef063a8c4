//! The lock API for plain threads, without an async runtime in the caller:
//! everything in [`lockman_core::blocking`], plus [`connect`] and
//! [`from_env`] for choosing the backend at runtime.
//!
//! ```
//! let backends = lockman::blocking::connect("memory://")?;
//! let guard = backends.locks.lock("inverter_read")?; // the calling thread is the holder
//! guard.release()?;
//! # Ok::<(), lockman::LockError>(())
//! ```

use std::fmt;

use lockman_core::LockError;
pub use lockman_core::blocking::*;

use crate::Config;

/// The blocking lock and status managers a configuration selected.
#[derive(Clone)]
#[non_exhaustive]
pub struct BlockingBackends {
    /// The lock manager.
    pub locks: BlockingLockManager,
    /// The flags.
    pub status: BlockingStatusManager,
    /// What was chosen (passwords redacted), as [`crate::Backends::chosen`].
    pub chosen: String,
    /// The async managers underneath, with the configured defaults.
    pub backends: crate::Backends,
}

impl fmt::Debug for BlockingBackends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingBackends").field("chosen", &self.chosen).finish()
    }
}

impl From<crate::Backends> for BlockingBackends {
    fn from(backends: crate::Backends) -> Self {
        BlockingBackends {
            locks: BlockingLockManager::new(backends.locks.clone()),
            status: BlockingStatusManager::new(backends.status.clone()),
            chosen: backends.chosen.clone(),
            backends,
        }
    }
}

/// [`crate::connect`] for plain threads.
///
/// # Errors
///
/// As [`crate::connect`]; [`LockError::Config`] if called inside an async runtime.
pub fn connect(url: &str) -> Result<BlockingBackends, LockError> {
    Ok(block_on(crate::connect(url))??.into())
}

/// [`crate::from_env`] for plain threads.
///
/// # Errors
///
/// As [`crate::from_env`]; [`LockError::Config`] if called inside an async runtime.
pub fn from_env() -> Result<BlockingBackends, LockError> {
    let config = Config::load()?;
    Ok(block_on(crate::connect_with(&config))??.into())
}
