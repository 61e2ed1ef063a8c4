//! # lockman — one lock API, swappable backends
//!
//! lockman gives a program one lock API — [`LockManager`] — and lets it pick
//! the backend: an in-process lock map, lock files on a local or network
//! disk, a legacy lockfile protocol for mixed old/new fleets, or Redis for
//! locks shared across machines. Named flags ("force charge is running") go
//! through [`StatusManager`] on the same backends.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lockman::{AcquireOptions, LockManager, MemoryLockManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockman::LockError> {
//! let locks: Arc<dyn LockManager> = Arc::new(MemoryLockManager::default());
//!
//! let guard = locks
//!     .acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(5)).purpose("poll"))
//!     .await?;
//! println!("token {} — bus is ours", guard.fencing_token());
//! guard.release().await?; // errors if the lock was lost meanwhile
//! # Ok(()) }
//! ```
//!
//! ## Crates
//!
//! * [`lockman_core`] — the contract and the machinery shared by all
//!   backends (re-exported here).
//! * `lockman-memory` — the in-process backend (`lockman::memory`, feature `memory`).
//! * `lockman-file` — kernel-locked lock files, lease files for network
//!   disks, the legacy lockfile protocol, and file flags (`lockman::file`,
//!   feature `file`).
//! * `lockman-redis` — Redis locks and flags (`lockman::redis`, feature
//!   `redis`; `rediss://` with `redis-tls`).
//! * `lockman-etcd` — etcd locks and flags (`lockman::etcd`, feature `etcd`;
//!   `etcds://` with `etcd-tls`).
//! * `lockman-testkit` — the conformance suite every backend passes, and
//!   private redis-server and etcd fixtures for tests (a dev-dependency).
//! * `lockctl` — the admin CLI: list, inspect, break and wait for locks, set
//!   flags, run a command under a lock.
//!
//! ## Features
//!
//! `config` (default) — `connect`, `from_env` and `Config`: choosing the
//! backend at runtime from a URL, `lockman.toml` and `LOCKMAN_*` variables.
//! `memory`, `file`, `redis` (default) — the backends; `redis-tls` —
//! `rediss://`; `etcd` (not default: tonic and prost) — `etcd://`;
//! `etcd-tls` — `etcds://`. A build with `default-features = false, features = ["memory"]`
//! has the in-process backend and little else (about 40 crates); create its
//! manager directly (`MemoryLockManager::default()`).
//!
//! See `ARCHITECTURE.md` for how an acquisition flows through core and a
//! backend, and how to add a backend.

pub mod blocking;
#[cfg(feature = "config")]
mod config;

/// The README's `rust` blocks, compiled and run as doctests (`cargo test -p
/// lockman --doc`), so its getting-started keeps compiling.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "config")]
mod connect;
pub mod fencing;

#[cfg(feature = "config")]
pub use config::{
    CONFIG_ENV, CONFIG_FILE, Config, ETCD_PASSWORD_ENV, EtcdConfig, REDIS_PASSWORD_ENV, RedisConfig, USE_NEW_LOCKS_ENV,
};
#[cfg(feature = "config")]
pub use connect::{Backends, connect, connect_with, from_env};
pub use lockman_core::BridgedLockManager;
/// Printing stored text and times safely (escaping control and bidi characters).
pub use lockman_core::display;

pub use lockman_core::{
    AcquireOptions, Capabilities, EventSink, EventsError, FencingToken, FlagInfo, FlagOptions, HolderId, LockBackend,
    LockError, LockEvent, LockEventKind, LockEvents, LockGuard, LockInfo, LockManager, LockManagerExt, LockMode,
    LockState, LockStateKind, Locks, LossSignal, LostReason, MAX_NAME_LEN, MultiLockGuard, StatusManager, Wait,
    WakeMechanism, backend, hostname, metrics, redact_url, validate_name,
};

/// The in-process backend.
#[cfg(feature = "memory")]
pub use lockman_memory as memory;
#[cfg(feature = "memory")]
pub use lockman_memory::{MemoryLockManager, MemoryStatusManager};

/// The file backends: kernel-locked lock files, lease files, legacy lockfiles, and file flags.
#[cfg(feature = "file")]
pub use lockman_file as file;
#[cfg(feature = "file")]
pub use lockman_file::{FileLockManager, FileStatusManager, LeaseFileLockManager, LegacyFileLockManager};

/// The Redis backend and Redis flags.
#[cfg(feature = "redis")]
pub use lockman_redis as redis;
#[cfg(feature = "redis")]
pub use lockman_redis::{RedisLockManager, RedisStatusManager};

/// The etcd backend and etcd flags.
#[cfg(feature = "etcd")]
pub use lockman_etcd as etcd;
#[cfg(feature = "etcd")]
pub use lockman_etcd::{EtcdLockManager, EtcdStatusManager};
