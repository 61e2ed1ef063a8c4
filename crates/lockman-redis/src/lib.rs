//! lockman's Redis backend: locks shared by processes on many machines.
//!
//! * **One round trip** to acquire and one to release on the fast path: each
//!   operation is one Lua script (`EVALSHA`). A lock is a hash holding the
//!   holder id, hold count, fencing token and metadata (host, pid, purpose,
//!   acquired-at), with the lease as its `PEXPIRE`.
//! * **Waiters are told**: one subscriber connection per manager hears every
//!   release (pub/sub); a waiter retries on a message, or after the holder's
//!   remaining TTL or its own timeout, whichever is first. A message is
//!   only a hint (any client may `PUBLISH`): a holder is told its lock was
//!   broken only once the lock key confirms it no longer names its hold.
//! * **Watchdog**: without an explicit lease a lock gets the default (30 s),
//!   renewed every third of it while the guard lives; a failed renewal marks
//!   the guard lost (core's [`Locks`] does this for every
//!   backend).
//! * **Fencing tokens** increase strictly per grant, also after a restart
//!   that lost some or all data (a restore from an older RDB snapshot, AOF
//!   `everysec` losing its last second, a lagging replica promoted): each
//!   new token is `max(last token + 1, the server's clock in µs)`, so it is
//!   above every earlier token as long as the server's clock does not step
//!   back (after a failover: the new primary's clock is not behind the old
//!   one's by more than the failover took) and a resource is not granted
//!   faster than once per microsecond. That orders grants as seen by *this*
//!   Redis; as Kleppmann notes, a lease on one Redis is not a consensus lock
//!   — a holder paused past its lease can still act, so storage that takes
//!   the token must reject older ones, and a failover to a replica that
//!   missed the last writes can grant twice.
//! * **Leases mean what they say**: a guard's lease (acquire, renewal,
//!   re-entry) is dated from before its request was sent, so the expiry it
//!   believes in — `info().lease_expires_at`, `is_lost()` — is never later
//!   than the key's in Redis, however late the reply arrives (given client
//!   and server clocks that run at the same rate).
//! * **One shared holder id in two managers** (two processes acquiring with
//!   [`AcquireOptions::shared_holder`](lockman_core::AcquireOptions::shared_holder),
//!   an explicit opt-in; ids given with `holder` are scoped to their manager
//!   and exclude each other) share one grant as two holds — same token — freed when both are
//!   released. Neither shortens the lease the other relies on, and undoing
//!   an acquire whose answer never came takes back only that attempt's hold.
//! * **Failures**: every command is bounded by the caller's remaining time
//!   and the response timeout; with Redis down, `acquire` returns a `Backend`
//!   error in time — never a false grant. The connection manager reconnects.
//!   A release whose connection dropped is sent again, and reports `Ok`
//!   only if the lock was still ours (released now), or our first attempt
//!   is seen to have run, or the lock is gone with no grant or break since
//!   ours — otherwise [`LockError::Lost`]: never a silent `Ok` when someone
//!   else may have held the lock. A release that gets no answer at all is a
//!   `Backend` error saying the outcome is unknown.
//!
//! Passwords in URLs never appear in `Debug` output, errors or logs.
//!
//! With the `url` feature (which `lockman::connect` uses),
//! `RedisOptions::from_url` reads lockman's options from the URL's query
//! (`prefix`, `lease`, `connect_timeout`, `response_timeout`, `tls_ca`,
//! `password_file`; `protocol` is passed on to the redis crate); see
//! `RedisConfigKey`:
//!
//! ```
//! # #[cfg(feature = "url")] {
//! use lockman_redis::{RedisOptions, RedisUrlDefaults};
//!
//! let url = url::Url::parse("redis://cache.internal:6379/2?prefix=givtcp:lock&lease=10s").unwrap();
//! let options = RedisOptions::from_url(&url, "LOCKMAN_URL", RedisUrlDefaults::default()).unwrap();
//! assert_eq!(options.redacted_url(), "redis://cache.internal:6379/2");
//! # }
//! ```
//!
//! ```no_run
//! use lockman_core::{AcquireOptions, LockBackend, LockManager};
//! use lockman_redis::{RedisBackend, RedisOptions};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), lockman_core::LockError> {
//! let locks = RedisBackend::connect(RedisOptions::new("redis://127.0.0.1:6379/0")).await?.into_manager();
//! let guard = locks.acquire("inverter_read", AcquireOptions::new().purpose("poll")).await?;
//! guard.release().await?;
//! # Ok(()) }
//! ```

mod fenced;
mod keys;
mod scripts;
mod status;
#[cfg(feature = "url")]
mod url_options;
mod waiters;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockman_core::backend::{Acquired, Deadline, GrantRequest, Granted, LocalQueue, LockBackend};
use lockman_core::{Capabilities, FencingToken, HolderId, LockError, LockInfo, LockState, Locks, WakeMechanism};
use redis::aio::ConnectionManager;
use tokio::time::Instant;

pub use fenced::FencedKey;
use keys::Keys;
pub use status::RedisStatusManager;
#[cfg(feature = "url")]
pub use url_options::{RedisConfigKey, RedisUrlDefaults};
use waiters::Listeners;

/// The backend name in errors, events and metrics.
pub const BACKEND: &str = "redis";

/// The Redis lock manager: `Locks<RedisBackend>`.
pub type RedisLockManager = Locks<RedisBackend>;

/// How to reach Redis and how to name keys.
///
/// ```
/// use std::time::Duration;
/// use lockman_redis::RedisOptions;
///
/// let options = RedisOptions::new("redis://:secret@cache.internal:6379/2").prefix("givtcp:lock");
/// assert!(!format!("{options:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    url: String,
    /// Used when the URL carries none (`LOCKMAN_REDIS_PASSWORD`, a password file).
    password: Option<String>,
    prefix: String,
    default_lease: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// PEM CA certificates trusted for `rediss://` instead of the platform's.
    #[cfg(feature = "tls")]
    tls_root_certificates: Option<Vec<u8>>,
}

impl RedisOptions {
    /// `redis://[user:password@]host:port/db` or `rediss://…` (with the `tls` feature).
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            password: None,
            prefix: "lockman".to_owned(),
            default_lease: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls_root_certificates: None,
        }
    }

    /// For `rediss://` (with the `tls` feature): trust the CA certificates in
    /// `pem` (one or more PEM blocks), instead of the platform's trust store —
    /// for a server whose certificate a private CA signed. The certificate
    /// must still name the URL's host.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificates = Some(pem.into());
        self
    }

    /// The password to authenticate with when the URL has none, so it need
    /// not sit in a URL (visible in `ps`, shell history, the environment of
    /// child processes). A password in the URL wins. Never shown in `Debug`,
    /// errors or logs.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Prefix of every key (default `lockman`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease of locks whose caller names none, renewed every third of it (default 30 s).
    pub fn default_lease(mut self, lease: Duration) -> Self {
        self.default_lease = lease;
        self
    }

    /// How long to wait for a connection (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for any reply (default 2 s; a caller's shorter
    /// deadline wins).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The URL with any password replaced by `***` (see [`lockman_core::redact_url`]).
    pub fn redacted_url(&self) -> String {
        lockman_core::redact_url(&self.url)
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisOptions");
        debug
            .field("url", &self.redacted_url())
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("prefix", &self.prefix)
            .field("default_lease", &self.default_lease)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout);
        #[cfg(feature = "tls")]
        debug.field("tls_root_certificates", &self.tls_root_certificates.as_ref().map(|_| "<PEM>"));
        debug.finish()
    }
}

/// The raw Redis backend; use it through [`RedisLockManager`].
pub struct RedisBackend {
    connection: ConnectionManager,
    keys: Keys,
    listeners: Arc<Listeners>,
    /// This manager's waiters, in arrival order: only the first of them
    /// contends for a busy lock, so a releaser cannot barge ahead of them.
    queue: LocalQueue,
    options: RedisOptions,
    /// Dropped with the backend, which ends the release subscriber.
    _stop_subscriber: tokio::sync::oneshot::Sender<()>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend").field("options", &self.options).finish_non_exhaustive()
    }
}

/// A live Redis grant: who holds it, under which token, and which hold of
/// it is this one.
#[derive(Debug)]
pub struct RedisGrant {
    resource: Arc<str>,
    holder: HolderId,
    token: u64,
    /// Names this hold in the lock hash (`h:<hold>`), unique per acquire
    /// attempt, so a release or undo takes back exactly this hold.
    hold: String,
}

/// What one acquire attempt got.
enum Attempt {
    Granted(Grant),
    /// Someone else holds it, for `ttl` more (zero when Redis reports none).
    Busy {
        ttl: Duration,
        holder: Option<LockInfo>,
    },
}

/// What one successful acquire attempt got.
struct Grant {
    token: u64,
    acquired_us: u64,
    /// When the lease ends at the earliest: counted from before the request
    /// was sent, so never later than Redis's own expiry.
    lease_expires_at: SystemTime,
}

impl RedisBackend {
    /// Connects (bounded by the connect timeout) and starts the release subscriber.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] for a URL that cannot be used; [`LockError::Backend`]
    /// if Redis cannot be reached.
    pub async fn connect(options: RedisOptions) -> Result<Self, LockError> {
        #[cfg(feature = "tls")]
        install_crypto_provider();
        let client = open_client(&options)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = tokio::time::timeout(
            options.connect_timeout + Duration::from_millis(100),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| unreachable_error(&options, "connecting", "no answer within the connect timeout"))?
        .map_err(|e| unreachable_error(&options, "connecting", &e.to_string()))?;
        let keys = Keys::new(&options.prefix);
        let listeners = Arc::new(Listeners::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let confirm = waiters::Confirm { connection: connection.clone(), timeout: options.response_timeout };
        tokio::spawn(waiters::subscribe(client, keys.clone(), confirm, Arc::downgrade(&listeners), stopped));
        Ok(RedisBackend { connection, keys, listeners, queue: LocalQueue::default(), options, _stop_subscriber: stop })
    }

    /// Runs one script, bounded by `deadline` (if any) and the response timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        action: &str,
        resource: Option<&str>,
        deadline: Deadline,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        self.run_raw(deadline, invocation).await.map_err(|e| self.failed(action, resource, &e.detail))
    }

    /// [`run`](Self::run), keeping whether the connection dropped (then the
    /// connection manager reconnects, but does not resend the command).
    async fn run_raw<T: redis::FromRedisValue>(
        &self,
        deadline: Deadline,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RunError> {
        let limit = match deadline {
            Deadline::At(at) => at.saturating_duration_since(Instant::now()).min(self.options.response_timeout),
            Deadline::Now | Deadline::Never => self.options.response_timeout,
        };
        let mut connection = self.connection.clone();
        match tokio::time::timeout(limit, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                Err(RunError { dropped: e.is_connection_dropped() || e.is_io_error(), detail: e.to_string() })
            }
            Err(_) => Err(RunError { dropped: false, detail: format!("no answer within {limit:?}") }),
        }
    }

    fn failed(&self, action: &str, resource: Option<&str>, detail: &str) -> LockError {
        LockError::Backend {
            backend: BACKEND.to_owned(),
            action: action.to_owned(),
            resource: resource.map(str::to_owned),
            message: format!(
                "Redis at {}: {detail}; check that Redis is running and reachable",
                self.options.redacted_url()
            ),
            source: None,
        }
    }

    fn lost(&self, grant: &RedisGrant) -> LockError {
        self.lost_because(grant, "the Redis key is gone or held by another holder (lease expired or force-released)")
    }

    fn lost_because(&self, grant: &RedisGrant, detail: &str) -> LockError {
        LockError::stolen(BACKEND, &*grant.resource, detail)
    }

    /// Undoes the hold an acquire attempt may have added, if we missed its
    /// reply; best effort, in the background.
    fn abandon(&self, resource: &str, hold: &str) {
        let mut connection = self.connection.clone();
        let (lock, channel, hold) = (self.keys.lock(resource), self.keys.channel(resource), hold.to_owned());
        tokio::spawn(async move {
            let undone: Result<i64, _> =
                scripts::ABANDON.key(lock).arg(hold).arg(channel).invoke_async(&mut connection).await;
            if let Err(e) = undone {
                tracing::debug!(backend = BACKEND, error = %e, "could not undo an unanswered grant; it expires with its lease");
            }
        });
    }

    /// One attempt to take the lock, adding the hold `hold`.
    async fn attempt(
        &self,
        request: &GrantRequest,
        lease: Duration,
        hold: &str,
        budget: Deadline,
    ) -> Result<Attempt, LockError> {
        let resource = &*request.resource;
        let mut invocation = scripts::ACQUIRE.prepare_invoke();
        invocation
            .key(self.keys.lock(resource))
            .key(self.keys.fence(resource))
            .arg(request.holder.as_str())
            .arg(millis(lease))
            .arg(unix_micros(SystemTime::now()))
            .arg(lockman_core::hostname())
            .arg(std::process::id())
            .arg(request.purpose.as_deref().unwrap_or(""))
            .arg(lockman_core::username().unwrap_or(""))
            .arg(if request.deadline == Deadline::Now { "0" } else { "1" })
            .arg(hold);
        // If this future is dropped or times out after the script ran, the
        // hold would be orphaned until its lease ran out: undo it.
        let mut pending = Pending { backend: self, resource, hold, armed: true };
        // Redis starts the lease when it runs the script, which is after
        // this: dated from here, the guard's lease never outlasts the key's,
        // however late the reply comes.
        let sent = SystemTime::now();
        let reply: Vec<String> = match self.run("acquiring", Some(resource), budget, &invocation).await {
            Ok(reply) => reply,
            Err(e) => return Err(e),
        };
        pending.armed = false;
        let number = |index: usize| reply.get(index).and_then(|v| v.parse::<u64>().ok());
        match reply.first().map(String::as_str) {
            Some("1") => {
                // The token, and the lease left: ours, or longer when
                // re-entering a grant another manager holds under the same holder id.
                let (Some(token), Some(left)) = (number(1), number(3)) else {
                    return Err(self.failed(
                        "acquiring",
                        Some(resource),
                        &format!("unexpected script reply {reply:?}"),
                    ));
                };
                let acquired_us = number(2).unwrap_or(0);
                let lease_expires_at = sent + Duration::from_millis(left);
                Ok(Attempt::Granted(Grant { token, acquired_us, lease_expires_at }))
            }
            Some("0") => {
                let pttl = reply.get(1).and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
                let ttl = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
                Ok(Attempt::Busy { ttl, holder: parse_info(resource, &reply[2..], Some(pttl)) })
            }
            _ => Err(self.failed("acquiring", Some(resource), &format!("unexpected script reply {reply:?}"))),
        }
    }

    /// The lock's state, asked with at most `limit` to answer.
    async fn inspect_within(&self, resource: &str, limit: Duration) -> Result<LockState, LockError> {
        let mut invocation = scripts::INSPECT.prepare_invoke();
        invocation.key(self.keys.lock(resource));
        let deadline = Deadline::At(Instant::now() + limit);
        let fields: Vec<String> = self.run("inspecting", Some(resource), deadline, &invocation).await?;
        Ok(state_of(resource, &fields))
    }
}

/// Why a command failed.
struct RunError {
    /// The connection broke (the command may or may not have run).
    dropped: bool,
    detail: String,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Undoes an acquisition whose reply was not processed.
struct Pending<'a> {
    backend: &'a RedisBackend,
    resource: &'a str,
    hold: &'a str,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.backend.abandon(self.resource, self.hold);
        }
    }
}

impl LockBackend for RedisBackend {
    type Grant = RedisGrant;

    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
            .with_cross_process(true)
            .with_cross_host(true)
            .with_leases(Some(self.options.default_lease))
            .with_lost_detection(true)
            .with_fencing(true)
            .with_fifo(true)
            .with_wake(WakeMechanism::Notification)
            // The ACQUIRE script lets a second manager with the same stored
            // holder id in as one more hold (`h:<hold id>`).
            .with_shared_holders(true)
    }

    async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<RedisGrant>, LockError> {
        let resource = &*request.resource;
        let lease = request.lease.unwrap_or(self.options.default_lease);
        // Wait behind this manager's earlier waiters (the turn is given up
        // as soon as this call returns). `try_acquire` does not queue.
        let turn = match request.deadline {
            Deadline::Now => None,
            deadline => Some(self.queue.enter(&request.resource, deadline).await),
        };
        if turn.as_ref().is_some_and(|turn| !turn.is_ours()) {
            // Timed out in the queue: still say who holds it, if Redis tells us at once.
            let holder = self.inspect_within(resource, MIN_ATTEMPT).await.ok().and_then(|s| s.info().cloned());
            return Ok(Acquired::Busy { holder });
        }
        let mut waited = turn.as_ref().is_some_and(|turn| turn.waited());
        let mut last_busy: Option<Option<LockInfo>> = None;
        let waiting = (request.deadline != Deadline::Now).then(|| self.listeners.wait_for(resource));
        loop {
            // Listen before asking, so a release between the two is heard.
            let notified = waiting.as_ref().map(|w| w.notify.clone());
            let notified = notified.as_ref().map(|n| n.notified());
            let mut notified = notified.map(Box::pin);
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            // The first try may use the whole response timeout; a retry after
            // waiting gets what is left of the caller's time (at least a
            // round trip's worth), and a retry that fails once the caller's
            // time is up reports the lock busy, as it last was.
            let budget = match (&last_busy, request.deadline) {
                (None, first) => first,
                (Some(_), Deadline::At(at)) => Deadline::At(at.max(Instant::now() + MIN_ATTEMPT)),
                (Some(_), other) => other,
            };
            // A new hold id per attempt: an undone attempt must never take
            // back the hold a later one added.
            let hold = HolderId::unique().as_str().to_owned();
            let attempt = match self.attempt(request, lease, &hold, budget).await {
                Err(_) if request.deadline.has_passed() && last_busy.is_some() => {
                    return Ok(Acquired::Busy { holder: last_busy.flatten() });
                }
                attempt => attempt?,
            };
            match attempt {
                Attempt::Granted(Grant { token, acquired_us, lease_expires_at }) => {
                    self.listeners.hold(
                        resource,
                        waiters::Held {
                            holder: request.holder.as_str().to_owned(),
                            token,
                            hold: hold.clone(),
                            loss: request.loss.clone(),
                        },
                    );
                    let grant =
                        RedisGrant { resource: request.resource.clone(), holder: request.holder.clone(), token, hold };
                    return Ok(Acquired::Granted(
                        Granted::new(grant, FencingToken::new(token), Some(lease_expires_at))
                            .acquired_at(UNIX_EPOCH + Duration::from_micros(acquired_us))
                            .after_waiting(waited),
                    ));
                }
                Attempt::Busy { ttl, holder } => {
                    let Some(notified) = notified else { return Ok(Acquired::Busy { holder }) };
                    if request.deadline.has_passed() {
                        return Ok(Acquired::Busy { holder });
                    }
                    last_busy = Some(holder);
                    waited = true;
                    // A lease with no TTL reported (-1) still gets re-checked now and then.
                    let ttl = if ttl.is_zero() { Duration::from_millis(50) } else { ttl };
                    let mut wake_at = Instant::now() + ttl;
                    if let Some(at) = request.deadline.instant() {
                        wake_at = wake_at.min(at);
                    }
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(wake_at) => {}
                    }
                }
            }
        }
    }

    async fn release(&self, grant: &RedisGrant) -> Result<(), LockError> {
        let resource = &*grant.resource;
        self.listeners.unhold(resource, &grant.hold);
        let release = |retry: &'static str| {
            let mut invocation = scripts::RELEASE.prepare_invoke();
            invocation
                .key(self.keys.lock(resource))
                .key(self.keys.fence(resource))
                .arg(grant.holder.as_str())
                .arg(grant.token)
                .arg(self.keys.channel(resource))
                .arg(&grant.hold)
                .arg(retry);
            invocation
        };
        let left: i64 = match self.run_raw(Deadline::Now, &release("0")).await {
            Ok(left) => left,
            // Reconnected, but the command was not resent, and it may or may
            // not have run: send it again, marked as a retry, so the script
            // tells a release that already happened from a lock lost before
            // it (see `scripts::RELEASE`).
            Err(e) if e.dropped => {
                let left: i64 = self.run_raw(Deadline::Now, &release("1")).await.map_err(|retry| {
                    self.failed(
                        "releasing",
                        Some(resource),
                        &format!(
                            "the connection dropped ({}) and the retry failed too ({}); whether the lock was \
                             released is unknown — it is freed when its lease runs out at the latest",
                            e.detail, retry.detail
                        ),
                    )
                })?;
                if left < 0 {
                    return Err(self.lost_because(
                        grant,
                        "the release was retried after the connection dropped, and by then the lock was no \
                         longer ours and nothing showed that the first attempt released it: either it did and \
                         another grant followed, or the lock was lost before (lease expired, broken, or Redis \
                         lost it)",
                    ));
                }
                left
            }
            Err(e) => {
                let detail = format!(
                    "{}; whether the lock was released is unknown — it is freed when its lease runs out at the latest",
                    e.detail
                );
                return Err(self.failed("releasing", Some(resource), &detail));
            }
        };
        if left < 0 { Err(self.lost(grant)) } else { Ok(()) }
    }

    async fn renew(&self, grant: &RedisGrant, lease: Duration) -> Result<SystemTime, LockError> {
        let resource = &*grant.resource;
        let mut invocation = scripts::RENEW.prepare_invoke();
        invocation.key(self.keys.lock(resource)).arg(grant.holder.as_str()).arg(grant.token).arg(millis(lease));
        // As for acquire: dated from before the request, never after Redis's expiry.
        let sent = SystemTime::now();
        let left: i64 = self.run("renewing the lease", Some(resource), Deadline::Now, &invocation).await?;
        match u64::try_from(left) {
            Ok(left) => Ok(sent + Duration::from_millis(left)),
            Err(_) => Err(self.lost(grant)),
        }
    }

    async fn inspect(&self, resource: &str) -> Result<LockState, LockError> {
        self.inspect_within(resource, self.options.response_timeout).await
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let keys = scan(&self.connection, &self.keys.lock_pattern(), self.options.response_timeout)
            .await
            .map_err(|detail| self.failed("listing locks", None, &detail))?;
        let mut held = Vec::new();
        for key in keys {
            let Some(resource) = self.keys.resource_of_lock(&key) else { continue };
            if let Some(info) = self.inspect(resource).await?.info() {
                held.push(info.clone());
            }
        }
        held.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(held)
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let mut invocation = scripts::FORCE_RELEASE.prepare_invoke();
        invocation
            .key(self.keys.lock(resource))
            .key(self.keys.fence(resource))
            .arg(self.keys.channel(resource))
            .arg(reason);
        let fields: Vec<String> = self.run("force-releasing", Some(resource), Deadline::Now, &invocation).await?;
        Ok(state_of(resource, &fields).info().cloned())
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        // Redis expires leases itself: nothing stale outlives its lease.
        Ok(Vec::new())
    }
}

/// The client for `options`: its URL, its password, and the CA certificates it trusts.
fn open_client(options: &RedisOptions) -> Result<redis::Client, LockError> {
    use redis::IntoConnectionInfo;

    // The redis crate's URL errors never quote the URL.
    let mut info = options.url.as_str().into_connection_info().map_err(|e| {
        LockError::Config(format!(
            "cannot use Redis URL {}: {}; expected redis://[user:password@]host:port/db or rediss://…",
            options.redacted_url(),
            e.detail().unwrap_or("bad URL")
        ))
    })?;
    if let Some(password) = &options.password
        && info.redis_settings().password().is_none()
    {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    #[cfg(feature = "tls")]
    if let Some(pem) = &options.tls_root_certificates {
        if !options.url.starts_with("rediss://") {
            return Err(LockError::Config(format!(
                "Redis URL {}: TLS root certificates need a rediss:// URL",
                options.redacted_url()
            )));
        }
        let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
        // These errors (a bad URL or PEM) never quote the URL.
        return redis::Client::build_with_tls(info, certificates).map_err(|e| {
            LockError::Config(format!(
                "cannot use Redis URL {} with its TLS root certificates: {e}",
                options.redacted_url()
            ))
        });
    }
    redis::Client::open(info).map_err(|e| {
        LockError::Config(format!(
            "cannot use Redis URL {}: {}; expected redis://[user:password@]host:port/db or rediss://…",
            options.redacted_url(),
            e.detail().unwrap_or("bad URL")
        ))
    })
}

/// rustls needs a process-wide crypto provider, which the redis crate does
/// not choose: use ring, unless the application installed one already.
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one first: as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The least time given to one acquisition attempt: about a round trip, so
/// a wait that ends at the deadline still gets its last look.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// Every key matching `pattern`, by `SCAN` (never `KEYS`, which blocks the
/// server), each batch bounded by `timeout`.
pub(crate) async fn scan(
    connection: &ConnectionManager,
    pattern: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let mut connection = connection.clone();
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut command = redis::cmd("SCAN");
        command.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500);
        let (next, batch): (u64, Vec<String>) = tokio::time::timeout(timeout, command.query_async(&mut connection))
            .await
            .map_err(|_| format!("no answer to SCAN within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return Ok(keys);
        }
    }
}

fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The state from `HGETALL` fields followed by the PTTL.
fn state_of(resource: &str, fields: &[String]) -> LockState {
    let Some((pttl, fields)) = fields.split_last() else { return LockState::Available };
    match parse_info(resource, fields, pttl.parse().ok()) {
        Some(info) => LockState::Held(info),
        None => LockState::Available,
    }
}

/// A `LockInfo` from a lock hash's field/value pairs.
fn parse_info(resource: &str, fields: &[String], pttl: Option<i64>) -> Option<LockInfo> {
    let get = |name: &str| fields.chunks(2).find(|pair| pair[0] == name).and_then(|pair| pair.get(1));
    let holder = get("holder")?;
    let token = get("token").and_then(|t| t.parse().ok()).unwrap_or(0);
    let mut info = LockInfo::local(resource, HolderId::shared(holder.as_str()), FencingToken::new(token), BACKEND);
    info.hostname = get("host").cloned().unwrap_or_default();
    info.pid = get("pid").and_then(|p| p.parse().ok()).unwrap_or(0);
    info.user = get("user").filter(|u| !u.is_empty()).cloned();
    info.purpose = get("purpose").filter(|p| !p.is_empty()).cloned();
    // Any client of the server can write these fields: a time that does not
    // parse or that this platform cannot represent counts as absent (the
    // record's own times are only shown, never used to judge the lock: its
    // PTTL does that), and one out of any calendar is shown flagged.
    match get("acquired_us").map(|a| a.parse::<u64>().ok().and_then(lockman_core::display::from_unix_micros)) {
        Some(Some(at)) => info.acquired_at = at,
        Some(None) => tracing::warn!(resource, "ignoring an unreadable acquired_us in a Redis lock hash"),
        None => {}
    }
    info.hold_count = get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
    if let Some(ms) = pttl.and_then(|p| u64::try_from(p).ok()) {
        info.lease_expires_at = SystemTime::now().checked_add(Duration::from_millis(ms));
    }
    Some(info)
}

#[cfg(test)]
mod planted_hash_tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<String> {
        pairs.iter().flat_map(|(k, v)| [(*k).to_owned(), (*v).to_owned()]).collect()
    }

    #[test]
    fn absurd_times_in_a_lock_hash_are_absent_or_shown_flagged() {
        let huge = u64::MAX.to_string();
        for acquired in ["300000000000000000", huge.as_str(), "0", "-5", "3e17", "", "99999999999999999999999"] {
            let hash = fields(&[("holder", "h"), ("host", "x"), ("pid", "7"), ("acquired_us", acquired)]);
            let info = parse_info("job", &hash, Some(i64::MAX)).expect("a holder is there");
            // Formatting never fails (it panicked inside to_string() before).
            let shown = info.to_string();
            assert!(shown.starts_with("locked by h on x (pid 7) since "), "{acquired}: {shown}");
        }
        let hash = fields(&[("holder", "h"), ("acquired_us", "300000000000000000")]);
        let shown = parse_info("job", &hash, None).expect("a holder is there").to_string();
        assert!(shown.contains("far future (corrupt? 300000000000000000µs"), "{shown}");
    }
}

fn unreachable_error(options: &RedisOptions, action: &str, detail: &str) -> LockError {
    LockError::Backend {
        backend: BACKEND.to_owned(),
        action: action.to_owned(),
        resource: None,
        message: format!(
            "cannot reach Redis at {}: {detail}; check the URL, that redis-server is running, and the network",
            options.redacted_url()
        ),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for url in
            ["redis://u:hunter2@h:1/0", "redis://:hun@ter2@h:1/0", "redis://:hunter%402@h/0", "redis://:hun/ter2@h"]
        {
            let options = RedisOptions::new(url);
            let debug = format!("{options:?}");
            assert!(!debug.contains("ter2"), "{debug}");
        }
        let options = RedisOptions::new("redis://h:1/0").password("hunter2");
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
