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
//! * **Shared and permit modes** ([`AcquireOptions::shared`](lockman_core::AcquireOptions::shared),
//!   [`AcquireOptions::permits`](lockman_core::AcquireOptions::permits)):
//!   the lock hash then holds one record per grant, each with **its own
//!   expiry** (Redis time) and its own fencing token from the same counter as
//!   exclusive grants; every script prunes records whose lease has passed
//!   before it counts holders, so a crashed or paused reader or permit holder
//!   stops counting when its own lease ends, while the others keep theirs
//!   (each guard's watchdog renews only its own record). A resource is used
//!   one way by everyone: a request whose mode disagrees with the live
//!   holders or the queued waiters (a semaphore of 3 against one of 5, a lock
//!   against a semaphore) gets [`LockError::Config`] naming both.
//! * **FIFO across modes and processes**: a request that must wait joins
//!   the resource's queue in Redis (a sorted set by arrival time, each
//!   waiter with a short queue lease it renews while it waits, so a dead
//!   waiter is skipped once its lease runs out: 3 s). A request is granted
//!   when it fits beside the holders *and* every waiter queued before it
//!   does too, in order — the compatible prefix of the queue gets in — so
//!   the longest waiter gets a released lock whichever process it is in, a
//!   stream of readers cannot starve a waiting writer, and the readers
//!   queued behind a writer get in together when it leaves.
//! * **Direct handoff**: a release whose queue is headed by a live exclusive
//!   waiter hands it the lock in the release script itself (new token, its
//!   holder details, which it left in the queue) and publishes
//!   `grant:<waiter id>:<token>:…` on that waiter's manager's inbox channel
//!   (no other manager hears it) — the waiter's manager takes the grant
//!   from the message, with no round trip of its own, so a handoff costs the
//!   release plus one message. The handed lock first gets a *claim lease*
//!   (the queue lease, 3 s, or the waiter's lease if shorter), which the
//!   new holder's first renewal (core renews within a third of it) turns
//!   into its whole lease: a waiter that died since it last renewed its
//!   place holds the lock only that long. A handoff message that comes late
//!   (after the waiter's next look found the lock no longer its own) is
//!   ignored; a waiter that missed it finds the grant when it looks again
//!   and takes it with a token of that moment. Only waiters whose lease
//!   core renews are handed locks; a waiter with a lease of its own is
//!   named instead (`next:<waiter id>`), so only its manager wakes it and
//!   asks. Other releases (readers, permits), expiries noticed and waiters
//!   that give up wake every waiter. A waiter also looks again every second
//!   to renew its queue lease (the bounded fallback). A dropped or timed-out acquire takes its queue
//!   entry (and any grant whose reply it missed) back. An uncontended plain
//!   mutex does not pay for this: an exclusive request finding neither the
//!   lock key nor a queue is decided by one `EXISTS` over both and granted
//!   at once (the reply is the token alone), and a `try_acquire` finding a
//!   plain lock another holder has, with no queue, is answered busy after
//!   one `HMGET` more. The data layout is described in the `scripts` module.
//! * **One shared holder id in two managers** (two processes acquiring with
//!   [`AcquireOptions::shared_holder`](lockman_core::AcquireOptions::shared_holder),
//!   an explicit opt-in; ids given with `holder` are scoped to their manager
//!   and exclude each other) share one exclusive grant as two holds — same
//!   token — freed when both are released (a shared acquire joins an
//!   exclusive grant of its own holder id, as re-entry does). Neither
//!   shortens the lease the other relies on, and undoing an acquire whose
//!   answer never came takes back only that attempt's hold. Shared and
//!   permit grants are not shared this way: each acquisition is its own
//!   grant, with its own token, lease and permit (one permit per process,
//!   or a semaphore would admit more processes than it has permits).
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
//! // Readers hold together (a writer waits, and readers after it wait for it):
//! let reader = locks.acquire("tariff_table", AcquireOptions::new().shared()).await?;
//! // At most 3 holders of "cloud_api" at once, across every process:
//! let permit = locks.acquire("cloud_api", AcquireOptions::new().permits(3)).await?;
//! # drop((reader, permit));
//! # Ok(()) }
//! ```

mod client;
mod connection;
mod fenced;
mod hash;
mod keys;
mod options;
mod runner;
mod scripts;
mod status;
#[cfg(feature = "url")]
mod url_options;
mod waiters;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::connection::Connection;
use crate::runner::ScriptCall;
use lockman_core::backend::{Acquired, Deadline, GrantRequest, Granted, LocalQueue, LockBackend};
use lockman_core::{
    Capabilities, FencingToken, HolderId, LockError, LockInfo, LockMode, LockState, Locks, WakeMechanism,
};
use tokio::time::Instant;

#[cfg(feature = "tls")]
use client::install_crypto_provider;
use client::{open_client, unreachable_error};
pub use fenced::FencedKey;
use hash::{info_of, millis, mode_arg, parse_mode, state_of, unix_micros};
use keys::Keys;
pub use options::RedisOptions;
use runner::scan;
pub use status::RedisStatusManager;
#[cfg(feature = "url")]
pub use url_options::{RedisConfigKey, RedisUrlDefaults};
use waiters::Listeners;

/// The backend name in errors, events and metrics.
pub const BACKEND: &str = "redis";

/// The Redis lock manager: `Locks<RedisBackend>`.
pub type RedisLockManager = Locks<RedisBackend>;

/// The raw Redis backend; use it through [`RedisLockManager`].
pub struct RedisBackend {
    connection: Connection,
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
    /// Names this hold in the lock hash (`h:<hold>` or `g:<hold>`), unique
    /// per acquire attempt, so a release or undo takes back exactly this hold.
    hold: String,
    layout: Layout,
}

/// Which layout of the lock hash a grant lives in (see `scripts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The exclusive hash: one grant, its lease the key's TTL.
    Exclusive,
    /// The shared or permits hash: one record per grant, each with its own expiry.
    Modes,
}

/// What one acquire attempt got.
enum Attempt {
    Granted(Grant),
    /// Someone else holds it, or a waiter before us: look again after `ttl`
    /// at the latest (zero when Redis reports none).
    Busy {
        ttl: Duration,
        /// Boxed: a holder record is large next to a grant.
        holder: Option<Box<LockInfo>>,
        /// Our arrival (server µs), kept for later attempts.
        arrival: u64,
        /// Whether we are in the resource's queue now.
        queued: bool,
        /// When we sent the attempt, and the server's time (ms) when it
        /// answered: dates a grant a release hands us later.
        asked: (SystemTime, u64),
    },
    /// The resource is held or awaited in this mode, which disagrees with ours.
    Refused(LockMode),
}

/// What one successful acquire attempt got.
struct Grant {
    token: u64,
    acquired_us: u64,
    /// When the lease ends at the earliest: counted from before the request
    /// was sent, so never later than Redis's own expiry.
    lease_expires_at: SystemTime,
    layout: Layout,
    /// Handed to us by a release: the hold is our waiter id.
    handed: Option<String>,
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
            // Every command is bounded by a `tokio::time::timeout` on the
            // caller's runtime; the connection's own timer would be armed in
            // the context commands are polled in (the background runtime's,
            // see `connection.rs`) and wake that thread on every command.
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let background = lockman_core::background_handle()?;
        let connection = tokio::time::timeout(
            options.connect_timeout + Duration::from_millis(100),
            Connection::open(client.clone(), config, background.clone()),
        )
        .await
        .map_err(|_| unreachable_error(&options, "connecting", "no answer within the connect timeout"))?
        .map_err(|e| unreachable_error(&options, "connecting", &e.to_string()))?;
        // Bounded like the connection above; on failure its commands use
        // the shared connection.
        let _ = tokio::time::timeout(options.connect_timeout, connection.home_on_caller()).await;
        let keys = Keys::new(&options.prefix);
        // Unique across processes: `anon-<process nonce>-<n>`.
        let listeners = Arc::new(Listeners::new(HolderId::unique().as_str().to_owned()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let confirm = waiters::Confirm { connection: connection.clone(), timeout: options.response_timeout };
        // On the background runtime, like the connection: it must outlive an
        // idle or dropped caller runtime.
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        background.spawn(waiters::subscribe(
            client,
            keys.clone(),
            keys.inbox(listeners.manager()),
            confirm,
            Arc::downgrade(&listeners),
            subscribed_tx,
            stopped,
        ));
        // Return once releases are heard: a waiter that starts right after
        // connect must not miss the first one.
        match tokio::time::timeout(options.connect_timeout, subscribed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(detail))) => {
                return Err(LockError::Backend {
                    backend: BACKEND.to_owned(),
                    action: "subscribing to release messages".to_owned(),
                    resource: None,
                    message: format!(
                        "Redis at {} answers commands but not the release subscription: {detail}; waiters are \
                         woken by it, so allow pub/sub for this user (for an ACL user: +psubscribe, +subscribe and the \
                         channels under the prefix)",
                        options.redacted_url()
                    ),
                    source: None,
                });
            }
            Ok(Err(_)) | Err(_) => {
                return Err(unreachable_error(
                    &options,
                    "subscribing to release messages",
                    "no subscription within the connect timeout",
                ));
            }
        }
        Ok(RedisBackend { connection, keys, listeners, queue: LocalQueue::default(), options, _stop_subscriber: stop })
    }

    fn lost(&self, grant: &RedisGrant) -> LockError {
        self.lost_because(grant, "the Redis key is gone or held by another holder (lease expired or force-released)")
    }

    fn lost_because(&self, grant: &RedisGrant, detail: &str) -> LockError {
        LockError::stolen(BACKEND, &*grant.resource, detail)
    }

    /// Undoes the hold an acquire attempt may have added, if we missed its
    /// reply, and takes a waiter that gave up out of the queue; best effort,
    /// in the background (a missed hold expires with its lease, a missed
    /// queue entry with its queue lease).
    fn abandon(&self, resource: &str, hold: Option<&str>, waiter: Option<&str>) {
        let mut connection = self.connection.clone();
        let mut invocation = ScriptCall::new(&scripts::ABANDON, 3);
        invocation
            .key(self.keys.lock(resource))
            .key(self.keys.queue(resource))
            .key(self.keys.waiters(resource))
            .arg(hold.unwrap_or(""))
            .arg(self.keys.channel(resource))
            .arg(waiter.unwrap_or(""));
        let timeout = self.options.response_timeout;
        let resource = resource.to_owned();
        let spawned = lockman_core::spawn_background(async move {
            let undone: Result<Result<i64, redis::RedisError>, _> =
                tokio::time::timeout(timeout, invocation.invoke(&mut connection)).await;
            let error = match undone {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            tracing::debug!(
                backend = BACKEND,
                resource,
                error,
                "could not undo an unanswered grant or leave the queue; it expires with its lease"
            );
        });
        if let Err(e) = spawned {
            tracing::debug!(backend = BACKEND, error = %e, "cannot undo an unanswered grant; it expires with its lease");
        }
    }

    /// One attempt to take the lock, adding the hold `hold`, as waiter
    /// `waiter` that first arrived at `arrival` (server µs, 0 if not yet).
    async fn attempt(
        &self,
        request: &GrantRequest,
        lease: Duration,
        hold: &str,
        queue: (&str, u64),
        budget: Deadline,
    ) -> Result<Attempt, LockError> {
        let resource = &*request.resource;
        let (waiter, arrival) = queue;
        let acquired_us = unix_micros(SystemTime::now());
        let mut invocation = ScriptCall::new(&scripts::ACQUIRE, 4);
        invocation
            .key(self.keys.lock(resource))
            .key(self.keys.fence(resource))
            .key(self.keys.queue(resource))
            .key(self.keys.waiters(resource))
            .arg(request.holder.as_str())
            .arg(millis(lease))
            .arg(acquired_us)
            .arg(lockman_core::hostname())
            .arg(std::process::id())
            .arg(request.purpose.as_deref().unwrap_or(""))
            .arg(lockman_core::username().unwrap_or(""))
            .arg(if request.deadline == Deadline::Now { "0" } else { "1" })
            .arg(hold)
            .arg(mode_arg(request.mode))
            .arg(waiter)
            .arg(arrival)
            .arg(millis(QUEUE_LEASE))
            .arg(self.keys.channel(resource))
            .arg(if request.renewed { "1" } else { "0" });
        // Redis starts the lease when it runs the script, which is after
        // this: dated from here, the guard's lease never outlasts the key's,
        // however late the reply comes.
        let sent = SystemTime::now();
        let reply: redis::Value = self.run("acquiring", Some(resource), budget, &invocation).await?;
        let reply: Vec<String> = match reply {
            // The fast path's grant: its token alone (see `scripts::ACQUIRE`).
            redis::Value::Int(token) => {
                let token = u64::try_from(token).map_err(|_| {
                    self.failed("acquiring", Some(resource), &format!("a negative fencing token {token}"))
                })?;
                let lease_expires_at = sent + Duration::from_millis(millis(lease));
                return Ok(Attempt::Granted(Grant {
                    token,
                    acquired_us,
                    lease_expires_at,
                    layout: Layout::Exclusive,
                    handed: None,
                }));
            }
            other => redis::from_redis_value(other)
                .map_err(|e| self.failed("acquiring", Some(resource), &format!("unexpected script reply ({e})")))?,
        };
        let number = |index: usize| reply.get(index).and_then(|v| v.parse::<u64>().ok());
        let unexpected = || self.failed("acquiring", Some(resource), &format!("unexpected script reply {reply:?}"));
        match reply.first().map(String::as_str) {
            Some("1") => {
                // The token, and the lease left: ours, or longer when
                // re-entering a grant another manager holds under the same holder id.
                let (Some(token), Some(left)) = (number(1), number(3)) else { return Err(unexpected()) };
                let layout = match reply.get(4).map(String::as_str) {
                    Some("p") => Layout::Exclusive,
                    Some("m") => Layout::Modes,
                    _ => return Err(unexpected()),
                };
                let acquired_us = number(2).unwrap_or(0);
                let lease_expires_at = sent + Duration::from_millis(left);
                // A grant a release handed us names its hold (our waiter id).
                let handed = reply.get(5).cloned();
                Ok(Attempt::Granted(Grant { token, acquired_us, lease_expires_at, layout, handed }))
            }
            Some("0") if reply.len() >= 4 => Ok(Attempt::Busy {
                ttl: Duration::from_millis(number(1).unwrap_or(0)),
                holder: info_of(resource, &reply[4..]).map(Box::new),
                arrival: number(2).unwrap_or(0),
                queued: reply[3] == "1",
                // The reply ends with the server's time (ms).
                asked: (sent, reply.last().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)),
            }),
            Some("E") => reply.get(1).and_then(|m| parse_mode(m)).map(Attempt::Refused).ok_or_else(unexpected),
            _ => Err(unexpected()),
        }
    }

    /// The lock's state, asked with at most `limit` to answer.
    async fn inspect_within(&self, resource: &str, limit: Duration) -> Result<LockState, LockError> {
        let mut invocation = ScriptCall::new(&scripts::INSPECT, 1);
        invocation.key(self.keys.lock(resource));
        let deadline = Deadline::At(Instant::now() + limit);
        let fields: Vec<String> = self.run("inspecting", Some(resource), deadline, &invocation).await?;
        Ok(state_of(resource, &fields))
    }
}

impl RedisBackend {
    /// Our grant, `hold` in the lock hash: remembered for force-release
    /// messages and returned to core.
    fn granted(&self, request: &GrantRequest, grant: Grant, hold: String, waited: bool) -> Acquired<RedisGrant> {
        let Grant { token, acquired_us, lease_expires_at, layout, handed: _ } = grant;
        self.listeners.hold(
            &request.resource,
            waiters::Held {
                holder: request.holder.as_str().to_owned(),
                token,
                hold: hold.clone(),
                layout,
                loss: request.loss.clone(),
            },
        );
        let grant =
            RedisGrant { resource: request.resource.clone(), holder: request.holder.clone(), token, hold, layout };
        Acquired::Granted(
            Granted::new(grant, FencingToken::new(token), Some(lease_expires_at))
                .acquired_at(UNIX_EPOCH + Duration::from_micros(acquired_us))
                .after_waiting(waited),
        )
    }

    /// Releases a shared or permit grant (see `scripts::RELEASE_MODES`).
    async fn release_modes(&self, grant: &RedisGrant) -> Result<(), LockError> {
        let resource = &*grant.resource;
        let mut invocation = ScriptCall::new(&scripts::RELEASE_MODES, 2);
        invocation
            .key(self.keys.lock(resource))
            .key(self.keys.queue(resource))
            .arg(&grant.hold)
            .arg(grant.token)
            .arg(self.keys.channel(resource));
        let left: i64 = match self.run_raw(Deadline::Now, &invocation).await {
            Ok(left) => left,
            // It may or may not have run: look again. A grant still there is
            // released now; one that is gone cannot be told from a break.
            Err(e) if e.dropped => {
                let left: i64 = self.run_raw(Deadline::Now, &invocation).await.map_err(|retry| {
                    self.failed(
                        "releasing",
                        Some(resource),
                        &format!(
                            "the connection dropped ({}) and the retry failed too ({}); whether the shared or \
                             permit hold was released is unknown — it is freed when its lease runs out at the latest",
                            e.detail, retry.detail
                        ),
                    )
                })?;
                if left < 0 {
                    return Err(self.lost_because(
                        grant,
                        "the release was retried after the connection dropped, and by then the grant was gone: \
                         either the first attempt released it, or it was lost before (lease expired, broken, or \
                         Redis lost it)",
                    ));
                }
                left
            }
            Err(e) => {
                let detail = format!(
                    "{}; whether the hold was released is unknown — it is freed when its lease runs out at the latest",
                    e.detail
                );
                return Err(self.failed("releasing", Some(resource), &detail));
            }
        };
        if left < 0 {
            Err(self.lost_because(
                grant,
                "its record is gone from the Redis lock hash or its lease had run out (lease expired, or \
                 force-released)",
            ))
        } else {
            Ok(())
        }
    }
}

/// What an acquire call leaves in Redis if it ends now (returns without a
/// grant, fails, or its future is dropped): the hold of an attempt whose
/// reply was not processed, and its queue entry. Dropping it undoes both
/// (cancel safety).
struct Pending<'a> {
    backend: &'a RedisBackend,
    resource: &'a str,
    waiter: &'a str,
    /// The hold of the attempt in flight.
    hold: Option<String>,
    /// Whether we may be in the queue.
    queued: bool,
}

impl Pending<'_> {
    /// Leaves the queue before the caller is told it timed out: a process
    /// that exits right after a timeout (`lockctl run --wait 1s`) would
    /// leave its entry behind for the rest of its queue lease, holding back
    /// every later request. One round trip, bounded; left to the background
    /// (and the lease) if Redis does not answer in time.
    async fn leave_queue(&mut self) {
        if !self.queued || self.hold.is_some() {
            return;
        }
        let mut invocation = ScriptCall::new(&scripts::ABANDON, 3);
        invocation
            .key(self.backend.keys.lock(self.resource))
            .key(self.backend.keys.queue(self.resource))
            .key(self.backend.keys.waiters(self.resource))
            .arg("")
            .arg(self.backend.keys.channel(self.resource))
            .arg(self.waiter);
        let limit = self.backend.options.response_timeout.min(LEAVE_QUEUE_WAIT);
        let left: Result<Result<i64, _>, _> =
            tokio::time::timeout(limit, invocation.invoke(&mut self.backend.connection.clone())).await;
        if matches!(left, Ok(Ok(_))) {
            self.queued = false;
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.hold.is_some() || self.queued {
            self.backend.abandon(self.resource, self.hold.as_deref(), self.queued.then_some(self.waiter));
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
            // holder id in as one more hold (`h:<hold id>`) of an exclusive grant.
            .with_shared_holders(true)
            .with_modes(true, true)
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
        // Our name in the resource's queue (if we meet one), and when we
        // first found the resource busy (server µs): our place in it.
        let waiter = self.listeners.new_waiter_id();
        let waiting = (request.deadline != Deadline::Now).then(|| self.listeners.wait_for(resource, &waiter));
        let mut arrival = 0;
        let mut pending = Pending { backend: self, resource, waiter: &waiter, hold: None, queued: false };
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
            // If this future is dropped or the reply is lost after the script
            // ran, the hold (and a queue entry) would be left until their
            // leases ran out: `pending` undoes them.
            pending.hold = Some(hold.clone());
            pending.queued |= request.deadline != Deadline::Now;
            let attempt = match self.attempt(request, lease, &hold, (&waiter, arrival), budget).await {
                Err(_) if request.deadline.has_passed() && last_busy.is_some() => {
                    return Ok(Acquired::Busy { holder: last_busy.flatten() });
                }
                attempt => attempt?,
            };
            pending.hold = None;
            match attempt {
                Attempt::Granted(grant) => {
                    // The script took us out of the queue.
                    pending.queued = false;
                    let hold = grant.handed.clone().unwrap_or(hold);
                    return Ok(self.granted(request, grant, hold, waited));
                }
                Attempt::Refused(held) => {
                    return Err(request.mode.agrees_with(held, resource, BACKEND).err().unwrap_or_else(|| {
                        LockError::Config(format!(
                            "{resource:?} on {BACKEND} is in use as {held}, which Redis reports as disagreeing \
                             with {}; take it the way the others do",
                            request.mode
                        ))
                    }));
                }
                Attempt::Busy { ttl, holder, arrival: first, queued, asked } => {
                    let holder = holder.map(|info| *info);
                    arrival = first;
                    pending.queued = queued;
                    let Some(notified) = notified else { return Ok(Acquired::Busy { holder }) };
                    if request.deadline.has_passed() {
                        pending.leave_queue().await;
                        return Ok(Acquired::Busy { holder });
                    }
                    last_busy = Some(holder);
                    waited = true;
                    // Wake on a release message, when the first holder's
                    // lease ends, or — when queued — in time to renew our
                    // queue lease (which also notices a waiter ahead of us
                    // that died: its entry is pruned). A lease with no TTL
                    // reported (-1) still gets re-checked now and then.
                    let pause = match (ttl.is_zero(), queued) {
                        (true, false) => Duration::from_millis(50),
                        (true, true) => QUEUE_REFRESH,
                        (false, false) => ttl,
                        (false, true) => ttl.min(QUEUE_REFRESH),
                    };
                    let mut wake_at = Instant::now() + pause;
                    if let Some(at) = request.deadline.instant() {
                        wake_at = wake_at.min(at);
                    }
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(wake_at) => {}
                    }
                    // A release handed us the lock: no round trip to take it
                    // — unless its claim lease may have run out meanwhile
                    // (this process was frozen, say, and someone else may
                    // hold it now): then ask, as for any other wake-up.
                    if let Some(handed) = waiting.as_ref().and_then(|w| self.listeners.take_handed(&w.waiter)) {
                        match handed.grant(asked) {
                            Some(grant) if grant.lease_expires_at > SystemTime::now() + MIN_ATTEMPT => {
                                pending.queued = false;
                                return Ok(self.granted(request, grant, waiter.clone(), waited));
                            }
                            _ => tracing::debug!(
                                backend = BACKEND,
                                resource,
                                "a handoff message came too late to be sure of its claim lease; asking Redis"
                            ),
                        }
                    }
                }
            }
        }
    }

    async fn release(&self, grant: &RedisGrant) -> Result<(), LockError> {
        let resource = &*grant.resource;
        self.listeners.unhold(resource, &grant.hold);
        if grant.layout == Layout::Modes {
            return self.release_modes(grant).await;
        }
        let release = |retry: &'static str| {
            let mut invocation = ScriptCall::new(&scripts::RELEASE, 4);
            invocation
                .key(self.keys.lock(resource))
                .key(self.keys.fence(resource))
                .key(self.keys.queue(resource))
                .key(self.keys.waiters(resource))
                .arg(grant.holder.as_str())
                .arg(grant.token)
                .arg(self.keys.channel(resource))
                .arg(&grant.hold)
                .arg(retry)
                .arg(millis(QUEUE_LEASE))
                .arg(self.keys.inboxes());
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
        let mut invocation = match grant.layout {
            Layout::Exclusive => {
                let mut invocation = ScriptCall::new(&scripts::RENEW, 1);
                invocation.key(self.keys.lock(resource)).arg(grant.holder.as_str());
                invocation
            }
            Layout::Modes => {
                let mut invocation = ScriptCall::new(&scripts::RENEW_MODES, 1);
                invocation.key(self.keys.lock(resource)).arg(&grant.hold);
                invocation
            }
        };
        invocation.arg(grant.token).arg(millis(lease));
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
        let mut invocation = ScriptCall::new(&scripts::FORCE_RELEASE, 2);
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

/// The longest a timed-out waiter waits for Redis to take it out of the
/// queue before it reports the timeout (and leaves that to the background).
const LEAVE_QUEUE_WAIT: Duration = Duration::from_millis(250);

/// The least time given to one acquisition attempt: about a round trip, so
/// a wait that ends at the deadline still gets its last look.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// How long a queued waiter keeps its place without looking again: a dead
/// (killed, frozen) waiter holds up the ones behind it for at most this
/// long. Every waiter for a busy lock queues, so this is the stall a
/// crashed waiting process costs the rest; shorter means more renewals.
const QUEUE_LEASE: Duration = Duration::from_secs(3);

/// How often a queued waiter looks again (renewing its queue lease) when no
/// message wakes it first: a bounded fallback, a third of the queue lease.
const QUEUE_REFRESH: Duration = Duration::from_millis(1000);
