//! What can be known about a lock, and what a backend can guarantee.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{FencingToken, HolderId};

/// Everything known about one held lock.
///
/// Returned by [`LockManager::state`](crate::LockManager::state) and
/// [`LockManager::list`](crate::LockManager::list), carried by timeout errors
/// and events, and available from a guard with
/// [`LockGuard::info`](crate::LockGuard::info).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// The resource name, as given by the caller.
    pub resource: String,
    /// Who holds it.
    pub holder: HolderId,
    /// The operating-system user running the holding process, if known.
    pub user: Option<String>,
    /// Host name of the holding process.
    pub hostname: String,
    /// Process id of the holding process.
    pub pid: u32,
    /// When this grant was made.
    pub acquired_at: SystemTime,
    /// Why it was taken, if the holder said.
    pub purpose: Option<String>,
    /// When the lease runs out, if the lock has one.
    pub lease_expires_at: Option<SystemTime>,
    /// When the holder last proved it is alive (lease renewal, heartbeat).
    pub last_heartbeat: Option<SystemTime>,
    /// The grant's fencing token.
    pub fencing_token: FencingToken,
    /// How many times the holder has entered (1 unless reentrant).
    pub hold_count: u32,
    /// The backend that holds it (`"memory"`, `"file"`, `"redis"`, ...).
    pub backend: String,
}

impl LockInfo {
    /// A record for `resource` held by `holder` in *this* process, with the
    /// local host name and pid, acquired now, hold count 1.
    pub fn local(
        resource: impl Into<String>,
        holder: HolderId,
        fencing_token: FencingToken,
        backend: impl Into<String>,
    ) -> Self {
        LockInfo {
            resource: resource.into(),
            holder,
            user: crate::username().map(str::to_owned),
            hostname: crate::hostname().to_owned(),
            pid: std::process::id(),
            acquired_at: SystemTime::now(),
            purpose: None,
            lease_expires_at: None,
            last_heartbeat: None,
            fencing_token,
            hold_count: 1,
            backend: backend.into(),
        }
    }

    /// How long the lock has been held, as seen by this host's clock.
    pub fn age(&self) -> Duration {
        SystemTime::now().duration_since(self.acquired_at).unwrap_or_default()
    }

    /// Whether the lease ran out before `now`.
    pub fn lease_expired_at(&self, now: SystemTime) -> bool {
        self.lease_expires_at.is_some_and(|expiry| expiry <= now)
    }
}

impl fmt::Display for LockInfo {
    /// `locked by HOLDER [(user USER)] on HOST (pid N) since T (3.2s ago) [for PURPOSE]`,
    /// or, when no process is known (pid 0: an old daemon's lock file, a lock
    /// taken by another program), `locked by HOLDER [(PURPOSE)] since T (3.2s ago)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = humantime::format_rfc3339_seconds(self.acquired_at);
        if self.pid == 0 {
            // "on unknown (pid 0)" tells a person nothing; the backend says
            // what it does know in the holder and purpose.
            write!(f, "locked by {}", self.holder)?;
            if let Some(purpose) = &self.purpose {
                // Control characters escaped: the text may hold a path.
                f.write_str(" (")?;
                for c in purpose.chars() {
                    if c.is_control() { write!(f, "{}", c.escape_default())? } else { write!(f, "{c}")? }
                }
                f.write_str(")")?;
            }
            return write!(f, " since {since} ({:.1?} ago)", self.age());
        }
        write!(f, "locked by {}", self.holder)?;
        if let Some(user) = &self.user {
            write!(f, " (user {user})")?;
        }
        write!(f, " on {} (pid {}) since {since} ({:.1?} ago)", self.hostname, self.pid, self.age())?;
        if let Some(purpose) = &self.purpose {
            write!(f, " for {purpose:?}")?;
        }
        Ok(())
    }
}

/// The state of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockState {
    /// Nobody holds it.
    Available,
    /// Held by a live holder.
    Held(LockInfo),
    /// Still recorded as held, but the holder is gone or its lease ran out;
    /// the next acquisition (or [`cleanup_stale`](crate::LockManager::cleanup_stale))
    /// will break it.
    Stale(LockInfo),
}

impl LockState {
    /// The lock's details, if anyone (live or stale) holds it.
    pub fn info(&self) -> Option<&LockInfo> {
        match self {
            LockState::Available => None,
            LockState::Held(info) | LockState::Stale(info) => Some(info),
        }
    }

    /// Whether a live holder has it.
    pub fn is_held(&self) -> bool {
        matches!(self, LockState::Held(_))
    }
}

/// How a backend wakes a waiter when the lock it waits for is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WakeMechanism {
    /// The releaser hands the lock to the first waiter directly (FIFO).
    DirectHandoff,
    /// The operating system wakes a waiter blocked on a kernel lock.
    Kernel,
    /// A release message (e.g. Redis pub/sub) tells waiters to retry.
    Notification,
    /// Waiters poll with bounded backoff between these intervals.
    Poll {
        /// First retry interval.
        min: Duration,
        /// Largest retry interval.
        max: Duration,
    },
}

/// What a backend guarantees, so callers and the conformance suite can adapt
/// instead of guessing.
///
/// ```
/// use lockman_core::Capabilities;
/// let caps = Capabilities::default();
/// assert!(!caps.cross_process);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Excludes holders in other processes on the same host.
    pub cross_process: bool,
    /// Excludes holders on other hosts.
    pub cross_host: bool,
    /// Supports leases: a lock given a lease is lost when it runs out.
    pub leases: bool,
    /// Leases can be extended (and are renewed automatically while a guard
    /// with the default lease lives).
    pub renewal: bool,
    /// The lease used when the caller gives none; renewed every third of it.
    /// `None`: no lease unless the caller asks for one.
    pub default_lease: Option<Duration>,
    /// Detects and reports a lost lock (lease expired, force-released, backend gone).
    pub lost_detection: bool,
    /// Fencing tokens strictly increase per grant of a resource.
    pub fencing: bool,
    /// Waiters of this manager are served in arrival order, so a releaser
    /// cannot barge ahead of them. (Whether processes sharing a store are
    /// served in order is up to the backend; see its docs.)
    pub fifo: bool,
    /// How waiters learn of a release.
    pub wake: WakeMechanism,
}

impl Default for Capabilities {
    /// The weakest promise: in-process only, no leases, polling.
    fn default() -> Self {
        Capabilities {
            cross_process: false,
            cross_host: false,
            leases: false,
            renewal: false,
            default_lease: None,
            lost_detection: false,
            fencing: false,
            fifo: false,
            wake: WakeMechanism::Poll { min: Duration::from_millis(10), max: Duration::from_millis(200) },
        }
    }
}
