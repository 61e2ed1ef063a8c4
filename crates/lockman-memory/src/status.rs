//! In-process flags with optional TTLs.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use lockman_core::{FlagInfo, FlagOptions, LockError, StatusManager};

use crate::BACKEND;
use crate::clock::{Clock, Instant, Wall};
use crate::store::Store;

/// Flags kept in this process's memory.
///
/// [`MemoryStatusManager::new`] (and `default()`) is a private map;
/// [`MemoryStatusManager::named`] is the process-wide map of that name, which
/// `lockman::connect("memory://NAME")` opens too, and
/// [`MemoryStatusManager::beside`] the flags of a lock backend's map.
///
/// TTLs run on tokio's clock: under a paused test clock a flag clears when
/// virtual time passes its TTL. Expired flags read as cleared at once and are
/// purged as the map grows, so memory is bounded by the flags that are set.
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
#[derive(Debug)]
pub struct MemoryStatusManager {
    store: Arc<Store>,
}

impl Default for MemoryStatusManager {
    fn default() -> Self {
        MemoryStatusManager { store: Store::private() }
    }
}

/// The flags of one map.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    set: HashMap<String, Flag>,
    /// Purge expired flags when the map outgrows this.
    purge_at: usize,
    clock: Clock,
}

/// A set flag, its times on tokio's clock.
#[derive(Debug)]
struct Flag {
    info: FlagInfo,
    set: Instant,
    expires: Option<Instant>,
}

impl Flag {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// The flag as shown, its wall-clock times derived from tokio's clock.
    fn info(&self, wall: &Wall) -> FlagInfo {
        let mut info = self.info.clone();
        info.set_at = wall.of(self.set);
        info.expires_at = self.expires.map(|at| wall.of(at));
        info
    }
}

impl MemoryStatusManager {
    /// A private map: no other manager sees these flags.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide map called `name`: every manager (and lock backend,
    /// [`MemoryBackend::named`](crate::MemoryBackend::named)) opened with the
    /// same name in this process sees the same flags. The map lives while
    /// anyone uses it.
    ///
    /// ```
    /// use lockman_core::{FlagOptions, StatusManager};
    /// use lockman_memory::MemoryStatusManager;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockman_core::LockError> {
    /// let writer = MemoryStatusManager::named("docs-status");
    /// let reader = MemoryStatusManager::named("docs-status");
    /// writer.set(".FCRunning", FlagOptions::new()).await?;
    /// assert!(reader.is_set(".FCRunning").await?);
    /// assert!(!MemoryStatusManager::named("elsewhere").is_set(".FCRunning").await?);
    /// # Ok(()) }
    /// ```
    pub fn named(name: &str) -> Self {
        MemoryStatusManager { store: Store::named(name) }
    }

    /// The flags of `backend`'s map (private or named).
    pub fn beside(backend: &crate::MemoryBackend) -> Self {
        MemoryStatusManager { store: backend.store().clone() }
    }

    /// The map's name, `None` for a private map.
    pub fn map_name(&self) -> Option<&str> {
        self.store.name()
    }

    /// How many flags the map holds, expired ones not yet purged included.
    pub fn stored_flags(&self) -> usize {
        self.store.flags.lock().set.len()
    }
}

impl Flags {
    fn live(&mut self, flag: &str, now: Instant) -> Option<&Flag> {
        if self.set.get(flag).is_some_and(|stored| stored.expired(now)) {
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
        let now = crate::clock::now();
        // A TTL too long to represent never expires (as in FlagInfo::new).
        let expires = options.ttl.and_then(|ttl| now.checked_add(ttl));
        let mut flags = self.store.flags.lock();
        flags.set.insert(flag.to_owned(), Flag { info, set: now, expires });
        if flags.set.len() > flags.purge_at {
            flags.set.retain(|_, stored| !stored.expired(now));
            flags.purge_at = (flags.set.len() * 2).max(64);
        }
        Ok(())
    }

    async fn clear(&self, flag: &str) -> Result<bool, LockError> {
        Ok(self.take(flag).await?.is_some())
    }

    async fn get(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        lockman_core::validate_name(flag)?;
        let mut flags = self.store.flags.lock();
        let wall = flags.clock.wall();
        Ok(flags.live(flag, wall.instant()).map(|stored| stored.info(&wall)))
    }

    async fn take(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        lockman_core::validate_name(flag)?;
        let mut flags = self.store.flags.lock();
        let wall = flags.clock.wall();
        flags.live(flag, wall.instant());
        Ok(flags.set.remove(flag).map(|stored| stored.info(&wall)))
    }

    async fn list(&self) -> Result<Vec<FlagInfo>, LockError> {
        let mut flags = self.store.flags.lock();
        let wall = flags.clock.wall();
        flags.set.retain(|_, stored| !stored.expired(wall.instant()));
        let mut listed: Vec<FlagInfo> = flags.set.values().map(|stored| stored.info(&wall)).collect();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }
}
