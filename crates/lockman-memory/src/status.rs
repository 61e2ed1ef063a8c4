//! In-process flags with optional TTLs.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use lockman_core::{FlagInfo, FlagOptions, LockError, StatusManager};
use parking_lot::Mutex;

use crate::BACKEND;

/// Flags kept in this process's memory.
///
/// Expired flags read as cleared at once and are purged as the map grows, so
/// memory is bounded by the flags that are set.
///
/// ```
/// use lockman_core::{FlagOptions, StatusManager};
/// use lockman_memory::MemoryStatusManager;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockman_core::LockError> {
/// let status = MemoryStatusManager::default();
/// status.set(".FCRunning", FlagOptions::new().value("job-1")).await?;
/// assert!(status.is_set(".FCRunning").await?);
/// assert!(status.clear(".FCRunning").await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStatusManager {
    flags: Mutex<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    set: HashMap<String, FlagInfo>,
    /// Purge expired flags when the map outgrows this.
    purge_at: usize,
}

impl MemoryStatusManager {
    /// No flags set.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many flags the map holds, expired ones not yet purged included.
    pub fn stored_flags(&self) -> usize {
        self.flags.lock().set.len()
    }
}

impl Flags {
    fn live(&mut self, flag: &str, now: SystemTime) -> Option<&FlagInfo> {
        if self.set.get(flag).is_some_and(|info| info.expired_at(now)) {
            self.set.remove(flag);
        }
        self.set.get(flag)
    }
}

#[async_trait]
impl StatusManager for MemoryStatusManager {
    fn name(&self) -> &str {
        BACKEND
    }

    async fn set(&self, flag: &str, options: FlagOptions) -> Result<(), LockError> {
        lockman_core::validate_name(flag)?;
        let info = FlagInfo::new(flag, &options, BACKEND);
        let mut flags = self.flags.lock();
        flags.set.insert(flag.to_owned(), info);
        if flags.set.len() > flags.purge_at {
            let now = SystemTime::now();
            flags.set.retain(|_, info| !info.expired_at(now));
            flags.purge_at = (flags.set.len() * 2).max(64);
        }
        Ok(())
    }

    async fn clear(&self, flag: &str) -> Result<bool, LockError> {
        Ok(self.take(flag).await?.is_some())
    }

    async fn get(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        lockman_core::validate_name(flag)?;
        Ok(self.flags.lock().live(flag, SystemTime::now()).cloned())
    }

    async fn take(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        lockman_core::validate_name(flag)?;
        let mut flags = self.flags.lock();
        flags.live(flag, SystemTime::now());
        Ok(flags.set.remove(flag))
    }

    async fn list(&self) -> Result<Vec<FlagInfo>, LockError> {
        let now = SystemTime::now();
        let mut flags = self.flags.lock();
        flags.set.retain(|_, info| !info.expired_at(now));
        let mut listed: Vec<FlagInfo> = flags.set.values().cloned().collect();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }
}
