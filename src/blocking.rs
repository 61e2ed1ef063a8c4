//! The lock API for plain threads, without an async runtime in the caller:
//! everything in [`lockman_core::blocking`], plus `connect` and
//! `from_env` for choosing the backend at runtime (feature `config`).
//!
//! ```
//! # #[cfg(all(feature = "config", feature = "memory"))] {
//! let backends = lockman::blocking::connect("memory://")?;
//! let guard = backends.locks.lock("inverter_read")?; // the calling thread is the holder
//! guard.release()?;
//! # }
//! # Ok::<(), lockman::LockError>(())
//! ```

#[cfg(feature = "config")]
use std::fmt;

pub use lockman_core::blocking::*;
#[cfg(feature = "config")]
use lockman_core::{AcquireOptions, LockError};

#[cfg(feature = "config")]
use crate::Config;

/// The blocking lock and status managers a configuration selected.
#[cfg(feature = "config")]
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

#[cfg(feature = "config")]
impl BlockingBackends {
    /// Acquisition options with the configured default wait, as
    /// [`crate::Backends::acquire_options`]. (The manager applies that wait
    /// to acquisitions that leave it unset anyway.)
    pub fn acquire_options(&self) -> AcquireOptions {
        self.backends.acquire_options()
    }
}

#[cfg(feature = "config")]
impl fmt::Debug for BlockingBackends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingBackends").field("chosen", &self.chosen).finish()
    }
}

#[cfg(feature = "config")]
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
#[cfg(feature = "config")]
///
/// # Errors
///
/// As [`crate::connect`]; [`LockError::Config`] if called inside an async runtime.
pub fn connect(url: &str) -> Result<BlockingBackends, LockError> {
    Ok(block_on(crate::connect(url))??.into())
}

/// [`crate::from_env`] for plain threads.
#[cfg(feature = "config")]
///
/// # Errors
///
/// As [`crate::from_env`]; [`LockError::Config`] if called inside an async runtime.
pub fn from_env() -> Result<BlockingBackends, LockError> {
    let config = Config::load()?;
    Ok(block_on(crate::connect_with(&config))??.into())
}

/// [`crate::connect_with`] for plain threads.
///
/// # Errors
///
/// As [`crate::connect_with`]; [`LockError::Config`] if called inside an async runtime.
#[cfg(feature = "config")]
pub fn connect_with(config: &Config) -> Result<BlockingBackends, LockError> {
    Ok(block_on(crate::connect_with(config))??.into())
}
