//! What can be known about a lock, and what a backend can guarantee.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::display::{Escaped, Timestamp};
use crate::{FencingToken, HolderId, LockMode};

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
    /// How this grant holds the resource (exclusive unless it was taken
    /// shared or as a permit of a semaphore).
    #[serde(default)]
    pub mode: LockMode,
    /// Every holder of the resource when it may have more than one (a
    /// shared or permits mode), oldest grant first, this record's own grant
    /// among them; empty for an exclusive hold, whose only holder is this
    /// record. The entries' own `holders` are empty. See
    /// [`all_holders`](Self::all_holders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<LockInfo>,
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
            mode: LockMode::Exclusive,
            holders: Vec::new(),
        }
    }

    /// Every holder of the resource: [`holders`](Self::holders), or this
    /// record alone when that is empty.
    ///
    /// ```
    /// use lockman_core::{FencingToken, HolderId, LockInfo};
    /// let info = LockInfo::local("r", HolderId::new("a"), FencingToken::new(1), "memory");
    /// assert_eq!(info.all_holders().count(), 1);
    /// ```
    pub fn all_holders(&self) -> impl Iterator<Item = &LockInfo> {
        let alone = self.holders.is_empty().then_some(self);
        alone.into_iter().chain(self.holders.iter())
    }

    /// The record describing a resource held by `holders` (non-empty, in
    /// grant order): the oldest grant, carrying them all when there is more
    /// than one party or the mode is not exclusive.
    pub fn of_holders(mut holders: Vec<LockInfo>) -> Option<LockInfo> {
        holders.sort_by_key(|info| info.fencing_token);
        let mut first = holders.first()?.clone();
        if holders.len() > 1 || first.mode != LockMode::Exclusive {
            for holder in &mut holders {
                holder.holders.clear();
            }
            first.holders = holders;
        }
        Some(first)
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
    ///
    /// The fields come from a record anyone able to write the store may have
    /// planted: text is shown with control and bidi characters escaped, and a
    /// time out of range is shown as such (see [`display`](crate::display)),
    /// so this never fails.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "locked by {}", Escaped(self.holder.as_str()))?;
        if self.pid == 0 {
            // "on unknown (pid 0)" tells a person nothing; the backend says
            // what it does know in the holder and purpose.
            if let Some(purpose) = &self.purpose {
                write!(f, " ({})", Escaped(purpose))?;
            }
        } else {
            if let Some(user) = &self.user {
                write!(f, " (user {})", Escaped(user))?;
            }
            write!(f, " on {} (pid {})", Escaped(&self.hostname), self.pid)?;
        }
        write!(f, " since {}", Timestamp(self.acquired_at))?;
        match SystemTime::now().duration_since(self.acquired_at) {
            Ok(age) => write!(f, " ({age:.1?} ago)")?,
            // Hosts' clocks differ a little; more than a minute ahead is worth saying.
            Err(ahead) if ahead.duration() > Duration::from_secs(60) => {
                write!(f, " ({:.0?} ahead of this host's clock)", ahead.duration())?
            }
            Err(_) => write!(f, " ({:.1?} ago)", Duration::ZERO)?,
        }
        if self.pid != 0
            && let Some(purpose) = &self.purpose
        {
            // Debug quoting escapes control and bidi characters too.
            write!(f, " for {purpose:?}")?;
        }
        match self.mode {
            LockMode::Exclusive => {}
            LockMode::Shared => write!(f, " [shared")?,
            LockMode::Permits(n) => write!(f, " [{} of {n} permits", self.holders.len().max(1))?,
        }
        if self.mode != LockMode::Exclusive {
            let others: Vec<String> = self
                .holders
                .iter()
                .filter(|holder| holder.fencing_token != self.fencing_token)
                .map(|holder| format!("{} (pid {})", Escaped(holder.holder.as_str()), holder.pid))
                .collect();
            if !others.is_empty() {
                write!(f, "; also held by {}", others.join(", "))?;
            }
            write!(f, "]")?;
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

    /// Which state, without the details.
    pub fn kind(&self) -> LockStateKind {
        match self {
            LockState::Available => LockStateKind::Available,
            LockState::Held(_) => LockStateKind::Held,
            LockState::Stale(_) => LockStateKind::Stale,
        }
    }
}

/// A [`LockState`] without its details: for tables, exit codes and
/// machine-readable output.
///
/// ```
/// use lockman_core::{LockState, LockStateKind};
/// assert_eq!(LockState::Available.kind(), LockStateKind::Available);
/// assert_eq!(LockStateKind::Stale.as_str(), "stale");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockStateKind {
    /// Nobody holds it.
    Available,
    /// A live holder has it.
    Held,
    /// Recorded as held, but the holder is gone or its lease ran out.
    Stale,
}

impl LockStateKind {
    /// A stable lowercase name (`available`, `held`, `stale`), the same as its serde name.
    pub const fn as_str(self) -> &'static str {
        match self {
            LockStateKind::Available => "available",
            LockStateKind::Held => "held",
            LockStateKind::Stale => "stale",
        }
    }
}

impl fmt::Display for LockStateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
/// The struct is `#[non_exhaustive]` (new guarantees may be added): a
/// backend builds its value from [`Capabilities::default`] — the weakest
/// promise — with the `with_*` methods, so a field added later starts at its
/// weakest value everywhere.
///
/// ```
/// use std::time::Duration;
/// use lockman_core::{Capabilities, WakeMechanism};
///
/// let caps = Capabilities::default()
///     .with_cross_process(true)
///     .with_leases(Some(Duration::from_secs(30)))
///     .with_fencing(true)
///     .with_wake(WakeMechanism::Notification);
/// assert!(caps.cross_process && caps.leases && caps.renewal);
/// assert!(!caps.cross_host);
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
    /// Managers (and processes) acquiring with one
    /// [shared holder id](crate::HolderId::shared) share a grant — each
    /// gets in, with the same fencing token — instead of excluding each
    /// other. Ids scoped to a manager (the default) never do.
    pub shared_holders: bool,
    /// Holds resources shared ([`AcquireOptions::shared`](crate::AcquireOptions::shared)):
    /// reader-writer locks, FIFO across modes.
    pub shared_mode: bool,
    /// Holds semaphores ([`AcquireOptions::permits`](crate::AcquireOptions::permits)).
    pub permits: bool,
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
            shared_holders: false,
            shared_mode: false,
            permits: false,
        }
    }
}

impl Capabilities {
    /// Sets [`cross_process`](Self::cross_process).
    #[must_use]
    pub const fn with_cross_process(mut self, yes: bool) -> Self {
        self.cross_process = yes;
        self
    }

    /// Sets [`cross_host`](Self::cross_host).
    #[must_use]
    pub const fn with_cross_host(mut self, yes: bool) -> Self {
        self.cross_host = yes;
        self
    }

    /// Leases that can be renewed and extended, with `default_lease` for
    /// callers that give none (`None`: no lease unless asked for): sets
    /// [`leases`](Self::leases), [`renewal`](Self::renewal) and
    /// [`default_lease`](Self::default_lease).
    #[must_use]
    pub const fn with_leases(mut self, default_lease: Option<Duration>) -> Self {
        self.leases = true;
        self.renewal = true;
        self.default_lease = default_lease;
        self
    }

    /// Sets [`lost_detection`](Self::lost_detection).
    #[must_use]
    pub const fn with_lost_detection(mut self, yes: bool) -> Self {
        self.lost_detection = yes;
        self
    }

    /// Sets [`fencing`](Self::fencing).
    #[must_use]
    pub const fn with_fencing(mut self, yes: bool) -> Self {
        self.fencing = yes;
        self
    }

    /// Sets [`fifo`](Self::fifo).
    #[must_use]
    pub const fn with_fifo(mut self, yes: bool) -> Self {
        self.fifo = yes;
        self
    }

    /// Sets [`wake`](Self::wake).
    #[must_use]
    pub const fn with_wake(mut self, wake: WakeMechanism) -> Self {
        self.wake = wake;
        self
    }

    /// Sets [`shared_holders`](Self::shared_holders).
    #[must_use]
    pub const fn with_shared_holders(mut self, yes: bool) -> Self {
        self.shared_holders = yes;
        self
    }

    /// Whether this backend can hold a grant in `mode` (exclusive always;
    /// shared per [`shared_mode`](Self::shared_mode), permits per
    /// [`permits`](Self::permits)).
    pub fn supports(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => true,
            LockMode::Shared => self.shared_mode,
            LockMode::Permits(_) => self.permits,
        }
    }

    /// Sets [`shared_mode`](Self::shared_mode) and [`permits`](Self::permits).
    #[must_use]
    pub const fn with_modes(mut self, shared: bool, permits: bool) -> Self {
        self.shared_mode = shared;
        self.permits = permits;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::LockError;
    use crate::display::needs_escape;

    fn planted(acquired_us: u64) -> LockInfo {
        let mut info = LockInfo::local("job", HolderId::new("h"), FencingToken::new(1), "redis");
        info.acquired_at = UNIX_EPOCH + Duration::from_micros(acquired_us);
        info.lease_expires_at = Some(UNIX_EPOCH + Duration::from_micros(acquired_us));
        info.last_heartbeat = Some(info.acquired_at);
        info
    }

    fn timeout(holder: LockInfo) -> LockError {
        LockError::Timeout {
            resource: "job".into(),
            backend: "redis".into(),
            waited: Duration::ZERO,
            holder: Some(Box::new(holder)),
            skipped: None,
        }
    }

    #[test]
    fn absurd_times_display_without_failing() {
        for (us, shown) in [
            (u64::MAX, format!("in the far future (corrupt? {}µs after the Unix epoch)", u64::MAX)),
            (300_000_000_000_000_000, "in the far future (corrupt? 300000000000000000µs".to_owned()),
            (0, "since 1970-01-01T00:00:00Z (".to_owned()),
        ] {
            for pid in [0, 42] {
                let mut info = planted(us);
                info.pid = pid;
                let text = info.to_string();
                assert!(text.contains(&shown), "{us}, pid {pid}: {text}");
                let error = timeout(info.clone()).to_string();
                assert!(error.contains(&shown), "{us}, pid {pid}: {error}");
                // A serializer does not fail either (times after 1970).
                assert!(serde_json::to_string(&info).is_ok(), "{us}");
            }
        }
        assert!(planted(u64::MAX).to_string().contains("ahead of this host's clock"));
    }

    #[test]
    fn stored_text_cannot_drive_a_terminal() {
        let hostile = "x\x1b[2J\x1b]0;title\x07\r\nFAKE LINE\u{202e}txt";
        let mut info = planted(1_700_000_000_000_000);
        info.holder = HolderId::new(hostile);
        info.hostname = hostile.to_owned();
        info.user = Some(hostile.to_owned());
        info.purpose = Some(hostile.to_owned());
        for pid in [0, 42] {
            info.pid = pid;
            let texts = [
                info.to_string(),
                timeout(info.clone()).to_string(),
                LockError::Lost {
                    resource: "job".into(),
                    backend: "redis".into(),
                    reason: crate::LostReason::ForceReleased { reason: hostile.into() },
                }
                .to_string(),
                LockError::backend("redis", "listing", Some(hostile), hostile).to_string(),
                LockError::invalid_name(hostile, "bad").to_string(),
            ];
            for text in texts {
                assert!(!text.contains(needs_escape), "pid {pid}: {text:?}");
                assert!(text.contains("FAKE LINE"), "the text is kept, escaped: {text:?}");
            }
        }
    }
}
