//! Named flags ("force charge is running") stored in a backend.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::LockError;

/// Options for [`StatusManager::set`].
///
/// ```
/// use std::time::Duration;
/// use lockman_core::FlagOptions;
///
/// // What a v3 daemon writes to `.FCRunning1`: a job id, then the finish time.
/// let opts = FlagOptions::new().value("job-42\n14:30").ttl(Duration::from_secs(3600));
/// assert_eq!(opts.value.as_deref(), Some("job-42\n14:30"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagOptions {
    /// The flag clears itself after this long.
    pub ttl: Option<Duration>,
    /// A value stored with the flag.
    pub value: Option<String>,
}

impl FlagOptions {
    /// No TTL, no value.
    pub fn new() -> Self {
        Self::default()
    }

    /// The flag clears itself after `ttl`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Stores `value` with the flag.
    pub fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }
}

/// A set flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlagInfo {
    /// The flag's name.
    pub name: String,
    /// Its value, if one was stored.
    pub value: Option<String>,
    /// When it was set.
    pub set_at: SystemTime,
    /// When it clears itself, if it has a TTL.
    pub expires_at: Option<SystemTime>,
    /// The backend storing it.
    pub backend: String,
}

impl FlagInfo {
    /// A flag `name` set now with `options`.
    pub fn new(name: impl Into<String>, options: &FlagOptions, backend: impl Into<String>) -> Self {
        let set_at = SystemTime::now();
        FlagInfo {
            name: name.into(),
            value: options.value.clone(),
            set_at,
            // A TTL too long to represent never expires (rather than panicking).
            expires_at: options.ttl.and_then(|ttl| set_at.checked_add(ttl)),
            backend: backend.into(),
        }
    }

    /// Whether the TTL ran out before `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Named flags with optional values and TTLs.
///
/// Flag names follow the same rules as resource names
/// ([`validate_name`](crate::validate_name)).
///
/// ```
/// use lockman_core::{FlagOptions, LockError, StatusManager};
///
/// async fn force_charge(status: &dyn StatusManager) -> Result<(), LockError> {
///     status.set(".FCRunning1", FlagOptions::new().value("job-7\n15:00")).await?;
///     // ... charge ...
///     status.clear(".FCRunning1").await?;
///     Ok(())
/// }
/// ```
#[async_trait]
pub trait StatusManager: Debug + Send + Sync {
    /// The backend's short name.
    fn name(&self) -> &str;

    /// Sets `flag` (replacing its value and TTL if it was set).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::Backend`].
    async fn set(&self, flag: &str, options: FlagOptions) -> Result<(), LockError>;

    /// Clears `flag`; true if it was set.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::Backend`].
    async fn clear(&self, flag: &str) -> Result<bool, LockError>;

    /// The flag, if it is set (and not expired).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::Backend`].
    async fn get(&self, flag: &str) -> Result<Option<FlagInfo>, LockError>;

    /// Whether `flag` is set.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::Backend`].
    async fn is_set(&self, flag: &str) -> Result<bool, LockError> {
        Ok(self.get(flag).await?.is_some())
    }

    /// Clears `flag` and returns it, atomically: of several callers racing to
    /// consume a one-shot flag (such as `.fullrefresh`), exactly one gets it.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::Backend`].
    async fn take(&self, flag: &str) -> Result<Option<FlagInfo>, LockError>;

    /// Every set flag, sorted by name.
    ///
    /// # Errors
    ///
    /// [`LockError::Backend`].
    async fn list(&self) -> Result<Vec<FlagInfo>, LockError>;
}
