//! lockman's etcd backend: locks on a consensus store.
//!
//! The protocol is the one of etcd's own `concurrency` package:
//!
//! * each manager holds one etcd lease (its *session*), kept alive by a task
//!   over etcd's keep-alive stream; every key the manager writes is bound to
//!   it, so a crashed process's keys vanish one lease TTL after its last
//!   keep-alive;
//! * a request writes `PREFIX/lock/<resource>/<uuid>` (holder, host, pid,
//!   purpose and times as JSON) and, in the same transaction, reads the
//!   resource's key with the lowest create revision: if that is its own, the
//!   lock is granted;
//! * otherwise it watches only the key created just before its own (no
//!   herd) and checks again when that key is deleted, so waiters from every
//!   process are served in the order their keys were created — **FIFO**;
//! * the **fencing token is the grant key's create revision**: cluster-wide,
//!   strictly increasing, persisted by Raft;
//! * a grant's own lease (the caller's, or the default renewed by core's
//!   watchdog) is kept in the process: a task deletes the key at its end,
//!   and reports the grant lost if someone else deletes the key first
//!   (`force_release`, an expired or revoked etcd lease);
//! * **shared and permit grants** ([`AcquireOptions::shared`],
//!   [`AcquireOptions::permits`]) join the same queue: a key's name says its
//!   kind (`x`, `s` or `p` before the UUID), and the holders are the oldest
//!   keys whose modes admit each other — one writer; the readers before
//!   the first queued writer; the n oldest permits. A reader waits on the
//!   last writer queued before it (one prefix read, as etcd's
//!   reader-writer recipe does), a writer on the key just before it, a
//!   permit on the delete of any older key. So a stream of readers never
//!   starves a writer, the readers behind a writer get in together after
//!   it, and every mode is served in order across processes. A request
//!   whose mode disagrees with the holders' (a semaphore of 3 meeting a
//!   plain lock or one of 5) withdraws its key and fails with
//!   [`LockError::Config`] naming both;
//! * a dropped or timed-out acquire deletes its waiting key;
//! * a key this manager fails to delete (a release, an expired grant, an
//!   abandoned wait meeting an election or an outage) is deleted again in
//!   the background until it is gone or the manager's etcd lease is over —
//!   left alone it would keep the lock, or block every later waiter, for as
//!   long as the manager lives. `release()` still returns the error.
//!
//! # On a cluster: a leader lost, a client partitioned
//!
//! Give a manager every member's endpoint (`EtcdOptions::new([...])`); the
//! tests in `tests/cluster.rs` break a three-member cluster on purpose.
//!
//! * **Leader lost.** Keys, revisions and leases are Raft state: every grant
//!   etcd acknowledged survives, and a new leader extends every lease, so
//!   no manager's keys expire because of the election. Waiters and new
//!   requests ride through it: a request that finds no leader, a changed
//!   leader, an unreachable member or no answer is sent again with a
//!   backoff (50 to 500 ms) within the caller's deadline (a `try_acquire`
//!   gets one attempt), with the same key, written only if absent — an
//!   attempt written but unanswered keeps its place in the queue. The manager's etcd lease is kept alive through it
//!   too (a keep-alive unanswered within the response timeout, or a third
//!   of the TTL, is sent again on a new stream, which reaches the new
//!   leader), and grant watches broken by it are opened again. A holder
//!   keeps its lock if a renewal succeeds within its lease; otherwise it is
//!   told through its guard that it lost it — never granted twice. An election takes about one election
//!   timeout plus a round of votes, and a renewal sent to the dead leader
//!   waits out the response timeout: choose a lease several times their
//!   sum (a 2 s lease with a 1 s response timeout often loses its lock to
//!   a 0.5 s election). Fencing tokens are revisions, so they keep rising
//!   across elections and whole-cluster restarts.
//! * **Partitioned client** (it reaches only a member cut off from the
//!   quorum, or a frozen one). Its requests time out or are refused, and
//!   its keep-alives no longer reach the leader: each of its holders is
//!   told it lost its lock when its lease passes without a renewal (about
//!   one lease), and the cluster expires the manager's etcd lease one TTL
//!   after its last keep-alive, which frees its keys for the others, whose
//!   grants then carry higher tokens. Its waiters fail once that lease is
//!   over. Once it reaches a quorum again it starts a new etcd lease and is
//!   served as before.
//!
//! A limit of this first version: the etcd lease is the manager's, so a
//! grant with a shorter lease of its own is ended on time only while its
//! process lives; a crashed or frozen holder's keys last until the manager's
//! lease (the `lease` option, whole seconds) runs out — and etcd raises a
//! TTL below its minimum (one and a half election timeouts: 2 s with the
//! default 1 s timeout), so `lease=1s` still frees a crashed holder's keys
//! only after about 2–2.5 s (`tests/mode_processes.rs` measures it).
//!
//! [`AcquireOptions::shared`]: lockman_core::AcquireOptions::shared
//! [`AcquireOptions::permits`]: lockman_core::AcquireOptions::permits
//!
//! ```no_run
//! # async fn run() -> Result<(), lockman_core::LockError> {
//! use lockman_core::{AcquireOptions, LockBackend, LockManager};
//! use lockman_etcd::{EtcdBackend, EtcdOptions};
//!
//! let backend = EtcdBackend::connect(EtcdOptions::new(["http://127.0.0.1:2379"])).await?;
//! let locks = backend.into_manager();
//! let guard = locks.acquire("inverter_read", AcquireOptions::new()).await?;
//! println!("token {}", guard.fencing_token());
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use lockman_core::backend::{Acquired, Deadline, GrantRequest, Granted};
use lockman_core::{
    Capabilities, FencingToken, LockBackend, LockError, LockInfo, LockMode, LockState, Locks, WakeMechanism,
};
use tokio::sync::watch;
use tokio::time::Instant;

mod keys;
mod monitor;
mod options;
mod queue;
mod reaper;
mod retry;
mod session;
mod status;
#[cfg(feature = "url")]
mod url_options;

use keys::{Record, ResourceKeys};
#[cfg(feature = "tls")]
pub use options::EtcdTls;
pub use options::{DEFAULT_LEASE, DEFAULT_PREFIX, EtcdOptions};
use session::{Session, Sessions};
pub use status::EtcdStatusManager;
#[cfg(feature = "url")]
pub use url_options::{EtcdConfigKey, EtcdUrlDefaults};

/// The backend's name in errors, events and metrics.
pub const BACKEND: &str = "etcd";

/// The most keys of one resource read to show its holders (`state`,
/// `list`, a timeout's message, `force_release`): a shared lock with more
/// readers than this shows (and force-releases) the oldest ones.
const QUEUE_READ_LIMIT: i64 = 1024;

/// A complete lock manager on etcd.
pub type EtcdLockManager = Locks<EtcdBackend>;

/// The etcd backend (see the crate docs for its protocol).
pub struct EtcdBackend {
    client: Client,
    options: EtcdOptions,
    sessions: Sessions,
}

/// A live grant: its key, create revision (the token) and lease.
pub struct EtcdGrant {
    key: String,
    revision: i64,
    resource: Arc<str>,
    record: parking_lot::Mutex<Record>,
    session: Arc<Session>,
    session_slot: u64,
    expiry: watch::Sender<Option<Instant>>,
    releasing: Arc<AtomicBool>,
    /// Set once a release has deleted the key or handed that to the reaper.
    settled: AtomicBool,
    client: Client,
}

impl std::fmt::Debug for EtcdGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdGrant")
            .field("key", &self.key)
            .field("revision", &self.revision)
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdGrant {
    fn drop(&mut self) {
        self.session.forget(self.session_slot);
        // Dropped unreleased: the guard's release task died with its runtime,
        // or a release was cancelled mid-way. The manager's etcd lease would
        // keep the key (and the lock) while the manager lives; nobody holds
        // it now, so it goes. (Compared on its revision: a key someone else
        // already removed, or a later grant's, is left alone.)
        if !self.settled.load(Ordering::Acquire) && !self.session.is_dead() {
            tracing::debug!(key = %self.key, "a grant dropped without its release; deleting its key");
            // Our own delete: the grant's monitor must not report it lost.
            self.releasing.store(true, Ordering::Release);
            reaper::delete(&self.client, self.key.clone(), Some(self.revision), &self.session);
        }
    }
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend").field("options", &self.options).finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// Connects to the cluster (no request is sent until the first lock).
    ///
    /// # Errors
    ///
    /// [`LockError::Backend`] if no endpoint is given or an endpoint is
    /// malformed or unreachable within the connect timeout.
    pub async fn connect(options: EtcdOptions) -> Result<Self, LockError> {
        if options.endpoints.is_empty() {
            return Err(LockError::Config("an etcd backend needs at least one endpoint (host:port)".to_owned()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.response_timeout)
            .with_keep_alive(Duration::from_secs(10), options.response_timeout)
            .with_require_leader(true);
        if let Some((user, password)) = &options.user {
            // Simple tokens expire (etcd's --auth-token-ttl, 5 min by default): renew them.
            connect = connect.with_user(user.as_str(), password.as_str()).with_auto_token_refresh(true);
        }
        connect = tls_connect_options(&options, connect)?;
        // Connected in lockman's background runtime context: tonic spawns the
        // channel's worker (which drives every request and reconnect) where
        // it connects, and it must outlive a caller runtime that idles or
        // is dropped while the manager is used elsewhere. Also from a
        // multi-thread runtime: there the worker would die with the runtime
        // (and the keep-alive, the grant watches and their renewals with it),
        // and moving a tonic channel later is not possible. The hop costs a
        // thread wake-up per request, small beside etcd's fsynced writes.
        let endpoints = options.endpoints.clone();
        let connecting = lockman_core::in_background(Box::pin(Client::connect(endpoints, Some(connect))))?;
        let client = tokio::time::timeout(options.connect_timeout, connecting)
            .await
            .map_err(|_| {
                LockError::backend(
                    BACKEND,
                    "connecting",
                    None,
                    format!(
                        "no answer from {} within {:?}; check that etcd runs there",
                        options.endpoints.join(","),
                        options.connect_timeout
                    ),
                )
            })?
            .map_err(|e| {
                LockError::backend_caused_by(BACKEND, format!("connecting to {}", options.endpoints.join(",")), None, e)
            })?;
        let sessions = Sessions::new(
            client.clone(),
            options.session_ttl(),
            2 * options.endpoints.len() + 1,
            options.response_timeout,
        );
        Ok(EtcdBackend { client, options, sessions })
    }

    /// The options in use (their `Debug` shows no password or key).
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// How many times a request is sent when members refuse connections.
    pub(crate) fn attempts(&self) -> usize {
        2 * self.options.endpoints.len() + 1
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        retry::unsent_again(self.attempts(), || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    async fn get(&self, key: String, options: GetOptions) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        retry::unsent_again(self.attempts(), || {
            let (mut kv, key, options) = (self.client.kv_client(), key.clone(), options.clone());
            async move { kv.get(key, Some(options)).await }
        })
        .await
    }

    fn keys(&self, resource: &str) -> ResourceKeys {
        ResourceKeys::new(&self.options.prefix, resource)
    }

    fn error(action: &str, resource: &str, e: etcd_client::Error) -> LockError {
        LockError::backend_caused_by(BACKEND, action, Some(resource), e)
    }

    /// Runs `future` (a request) until `deadline` at the latest.
    async fn before<T>(
        deadline: Option<Instant>,
        action: &str,
        resource: &str,
        future: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, LockError> {
        let result = match deadline {
            Some(at) => tokio::time::timeout_at(at, future).await.map_err(|_| {
                LockError::backend(BACKEND, action, Some(resource), "no answer from etcd before the caller's deadline")
            })?,
            None => future.await,
        };
        result.map_err(|e| Self::error(action, resource, e))
    }

    /// How a resource's queue is read: its keys, oldest first (at most
    /// [`QUEUE_READ_LIMIT`]).
    fn queue_read() -> GetOptions {
        GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(QUEUE_READ_LIMIT)
    }

    /// A resource's keys, oldest first: its holders, then its waiters.
    async fn queue(&self, resource: &str) -> Result<Vec<KeyValue>, LockError> {
        let keys = self.keys(resource);
        let mut response = self
            .get(keys.dir.clone(), Self::queue_read())
            .await
            .map_err(|e| Self::error("reading the holders", resource, e))?;
        Ok(response.take_kvs())
    }

    /// Deletes the key of a request that will not be granted (in the
    /// background if etcd does not answer in time).
    async fn withdraw(&self, waiting: WaitingKey<'_>, deadline: Option<Instant>, resource: &str) {
        let Some(key) = waiting.key.clone() else { return };
        let delete = Txn::new().and_then([TxnOp::delete(key.as_str(), None)]);
        let deadline = deadline.map(|at| at.max(Instant::now() + self.options.response_timeout));
        match Self::before(deadline, "withdrawing a request", resource, self.txn(delete)).await {
            Ok(_) => waiting.disarm(),
            Err(e) => {
                tracing::warn!(resource, error = %e, "cannot delete a request's key; trying again in the background");
                drop(waiting);
            }
        }
    }

    /// Waits until the keys of the resource older than `revision` admit
    /// this request's mode (see [`queue`]): none left for an exclusive
    /// request, no exclusive one for a shared request, fewer than n for a
    /// permit of n. `Ok(true)` when granted, `Ok(false)` at the deadline.
    ///
    /// An exclusive or shared waiter watches only the one key it waits for
    /// (the key just before its own, or the last writer before it), so a
    /// release wakes one waiter, not the herd; a permit waiter watches the
    /// deletes of the keys before its own, since any of them frees a permit.
    ///
    /// A request that fails for a passing reason (no leader during an
    /// election, a member going away, a timeout) is sent again after a
    /// backoff, while the deadline allows and the manager's etcd lease —
    /// which keeps the waiting key — lives: a waiter rides through an
    /// election instead of failing its caller.
    async fn wait_turn(
        &self,
        request: &GrantRequest,
        session: &Session,
        keys: &ResourceKeys,
        key: &str,
        revision: i64,
    ) -> Result<bool, LockError> {
        let resource = &*request.resource;
        let deadline = request.deadline.instant();
        let mut backoff = retry::Backoff::new();
        loop {
            // What holds us back, and our key (gone if our lease was lost).
            let before = GetOptions::new().with_prefix().with_max_create_revision(revision - 1);
            let blocking = match request.mode {
                LockMode::Exclusive => TxnOp::get(
                    keys.dir.as_str(),
                    Some(before.with_sort(SortTarget::Create, SortOrder::Descend).with_limit(1)),
                ),
                LockMode::Shared => TxnOp::get(
                    keys.exclusive_prefix(),
                    Some(before.with_sort(SortTarget::Create, SortOrder::Descend).with_limit(1)),
                ),
                LockMode::Permits(n) => TxnOp::get(
                    keys.dir.as_str(),
                    Some(
                        before
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(i64::from(n))
                            .with_keys_only(),
                    ),
                ),
            };
            let txn = Txn::new().and_then([blocking, TxnOp::get(key, None)]);
            let response = match Self::before(deadline, "waiting for the lock", resource, self.txn(txn)).await {
                Ok(response) => response,
                Err(_) if request.deadline.has_passed() => return Ok(false),
                Err(e) if retry::passing(&e) && !session.is_dead() => {
                    tracing::debug!(resource, error = %e, "etcd is not answering a waiter; asking again");
                    if !backoff.pause(deadline).await {
                        return Ok(false);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let read_revision = response.header().map_or(0, |h| h.revision());
            let mut gets = response.op_responses().into_iter().filter_map(|op| match op {
                TxnOpResponse::Get(get) => Some(get),
                _ => None,
            });
            let before = gets.next().map(|g| g.kvs().to_vec()).unwrap_or_default();
            let ours = gets.next().is_some_and(|g| !g.kvs().is_empty());
            if !ours {
                return Err(LockError::backend(
                    BACKEND,
                    "waiting for the lock",
                    Some(resource),
                    "this request's waiting key vanished (the manager's etcd lease ended, or another client \
                     deleted it); try again",
                ));
            }
            let awaited = match request.mode {
                LockMode::Permits(n) if before.len() < n as usize => return Ok(true),
                LockMode::Permits(_) => Awaited::EarlierDelete,
                LockMode::Exclusive | LockMode::Shared => match before.into_iter().next() {
                    Some(kv) => Awaited::Delete(kv),
                    None => return Ok(true),
                },
            };
            if request.deadline.has_passed() {
                return Ok(false);
            }
            // Watched from now, not from the revision of our read: etcd serves a
            // watch that starts at a past revision ("unsynced") only from a
            // loop that runs every 100 ms, which under write load delayed
            // handoffs by up to that. A delete between our read and the
            // watch's start is caught by a check once the watch is created,
            // needed only if etcd's revision moved on in between.
            let (watched_key, watch) = match &awaited {
                Awaited::Delete(kv) => (kv.key().to_vec(), WatchOptions::new()),
                Awaited::EarlierDelete => (
                    keys.dir.clone().into_bytes(),
                    WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut]).with_prev_key(),
                ),
            };
            let watched = Self::before(
                deadline,
                "watching the previous waiter",
                resource,
                retry::unsent_again(self.attempts(), || {
                    let mut client = self.client.watch_client();
                    let (key, watch) = (watched_key.clone(), watch.clone());
                    async move { client.watch(key, Some(watch)).await }
                }),
            )
            .await;
            let mut stream = match watched {
                Ok(stream) => stream,
                Err(_) if request.deadline.has_passed() => return Ok(false),
                Err(e) if retry::passing(&e) && !session.is_dead() => {
                    tracing::debug!(resource, error = %e, "etcd refused a waiter's watch; asking again");
                    if !backoff.pause(deadline).await {
                        return Ok(false);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            backoff.reset();
            loop {
                let message = match deadline {
                    Some(at) => match tokio::time::timeout_at(at, stream.message()).await {
                        Ok(message) => message,
                        Err(_) => return Ok(false),
                    },
                    None => stream.message().await,
                };
                match message {
                    Ok(Some(response)) => {
                        if response.canceled() || response.events().iter().any(|e| awaited.is_met_by(e, revision)) {
                            break;
                        }
                        let moved_on = response.header().is_none_or(|h| h.revision() != read_revision);
                        if response.created() && moved_on {
                            let Awaited::Delete(predecessor) = &awaited else {
                                // Any earlier key may have gone meanwhile: count again.
                                break;
                            };
                            let check = self.is_gone(predecessor);
                            let gone = match deadline {
                                // Out of time: look again, which then gives up.
                                Some(at) => tokio::time::timeout_at(at, check).await.unwrap_or(true),
                                None => check.await,
                            };
                            if gone {
                                break;
                            }
                        }
                    }
                    // The stream broke: look again.
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    /// Whether `kv` is no longer in etcd (deleted, or a new key in its
    /// place); a failed read counts as gone, so the caller looks again.
    async fn is_gone(&self, kv: &KeyValue) -> bool {
        let Ok(key) = kv.key_str() else { return true };
        match self.get(key.to_owned(), GetOptions::new()).await {
            Ok(response) => response.kvs().first().is_none_or(|now| now.create_revision() != kv.create_revision()),
            Err(_) => true,
        }
    }

    fn record(request: &GrantRequest, now: SystemTime) -> Record {
        Record {
            holder: request.holder.as_str().to_owned(),
            host: lockman_core::hostname().to_owned(),
            pid: std::process::id(),
            user: lockman_core::username().map(str::to_owned),
            purpose: request.purpose.as_deref().map(str::to_owned),
            since_ms: keys::unix_ms(now),
            lease_until_ms: request.lease.and_then(|l| now.checked_add(l)).map(keys::unix_ms),
            forced: None,
            mode: request.mode,
        }
    }
}

/// TLS for `https://` endpoints; plain `http://` ones must have none.
#[cfg(feature = "tls")]
fn tls_connect_options(options: &EtcdOptions, connect: ConnectOptions) -> Result<ConnectOptions, LockError> {
    use etcd_client::{Certificate, Identity, TlsOptions};

    let https = options.endpoints.iter().filter(|e| e.starts_with("https://")).count();
    match (&options.tls, https) {
        (None, 0) => Ok(connect),
        (Some(tls), n) if n == options.endpoints.len() => {
            let mut config = TlsOptions::new();
            if let Some(pem) = &tls.ca_pem {
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain.as_str());
            }
            Ok(connect.with_tls(config))
        }
        (None, _) => Err(LockError::Config(format!(
            "the etcd endpoints {} use https:// but no TLS settings were given: give the CA to trust \
             (EtcdOptions::tls, or tls_ca=FILE in an etcds:// URL)",
            options.endpoints.join(",")
        ))),
        (Some(_), _) => Err(LockError::Config(format!(
            "TLS settings were given for the etcd endpoints {}, but not all of them are https://",
            options.endpoints.join(",")
        ))),
    }
}

/// Without the `tls` feature, `https://` endpoints are refused.
#[cfg(not(feature = "tls"))]
fn tls_connect_options(options: &EtcdOptions, connect: ConnectOptions) -> Result<ConnectOptions, LockError> {
    if options.endpoints.iter().any(|e| e.starts_with("https://")) {
        return Err(LockError::Config(format!(
            "the etcd endpoints {} use https://, which needs lockman-etcd's `tls` cargo feature \
             (lockman's `etcd-tls`), left out of this build",
            options.endpoints.join(",")
        )));
    }
    Ok(connect)
}

/// Spawns `task` on lockman's background runtime, where the manager's
/// connection lives (see [`EtcdBackend::connect`]): a task the manager
/// depends on must neither stop while a caller's runtime is blocked nor die
/// with it.
pub(crate) fn spawn_background(task: impl Future<Output = ()> + Send + 'static) -> Result<(), LockError> {
    lockman_core::background_handle()?.spawn(task);
    Ok(())
}

/// What a waiter waits for.
enum Awaited {
    /// The delete of this key (the one just before its own, or the last
    /// writer before it).
    Delete(KeyValue),
    /// The delete of any key older than its own (a permit freed).
    EarlierDelete,
}

impl Awaited {
    /// Whether `event` is what the waiter of the key at `revision` awaits.
    fn is_met_by(&self, event: &etcd_client::Event, revision: i64) -> bool {
        if event.event_type() != EventType::Delete {
            return false;
        }
        match self {
            Awaited::Delete(_) => true,
            // Without the deleted key's earlier version, look again to be sure.
            Awaited::EarlierDelete => event.prev_kv().is_none_or(|kv| kv.create_revision() < revision),
        }
    }
}

/// Deletes a waiting key if its acquire is dropped or gives up.
struct WaitingKey<'a> {
    client: &'a Client,
    session: Arc<Session>,
    key: Option<String>,
}

impl WaitingKey<'_> {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for WaitingKey<'_> {
    fn drop(&mut self) {
        // Until it is gone, the key blocks every later waiter: deleted in
        // the background, again and again if the cluster is electing.
        if let Some(key) = self.key.take() {
            reaper::delete(self.client, key, None, &self.session);
        }
    }
}

impl LockBackend for EtcdBackend {
    type Grant = EtcdGrant;

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
            .with_modes(true, true)
    }

    async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<EtcdGrant>, LockError> {
        let resource = &*request.resource;
        // The caller's deadline bounds every request; a try gets one response timeout.
        let deadline = match request.deadline {
            Deadline::Now => Some(Instant::now() + self.options.response_timeout),
            Deadline::At(at) => Some(at),
            Deadline::Never => None,
        };
        let keys = self.keys(resource);
        // A request that fails for a passing reason (an election, a member
        // going away) is sent again while the caller's deadline allows (a
        // try gets one attempt), with the same key: if the failed attempt
        // was written after all, the request keeps its place in the queue
        // (the transaction writes the key only if it is not there yet).
        let mut backoff = retry::Backoff::new();
        let mut attempt: Option<(WaitingKey<'_>, SystemTime, Record)> = None;
        let (session, key, now, record, waiting, revision, granted, held_by) = loop {
            let session = match deadline {
                Some(at) => tokio::time::timeout_at(at, self.sessions.get()).await.map_err(|_| {
                    LockError::backend(
                        BACKEND,
                        "granting the manager's etcd lease",
                        Some(resource),
                        "no answer from etcd before the caller's deadline; check that the cluster is up and has a \
                         leader",
                    )
                })?,
                None => self.sessions.get().await,
            };
            let session = match session {
                Ok(session) => session,
                Err(e) if request.deadline != Deadline::Now && retry::passing(&e) => {
                    if !backoff.pause(deadline).await {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            // A key of an earlier session is not reused: it goes with that
            // session's lease (or is deleted in the background when dropped).
            let (waiting, now, record) = match attempt.take() {
                Some(earlier) if Arc::ptr_eq(&earlier.0.session, &session) => earlier,
                _ => {
                    let now = SystemTime::now();
                    // Armed before the request is sent: a drop mid-flight deletes the key too.
                    let waiting = WaitingKey {
                        client: &self.client,
                        session: session.clone(),
                        key: Some(keys.grant_key(request.mode)),
                    };
                    (waiting, now, Self::record(request, now))
                }
            };
            let key = waiting.key.clone().unwrap_or_default();
            // The head of the queue: the holder (its mode must agree with
            // ours), or the n oldest keys for a permit of n.
            let head_len = request.mode.permit_count().map_or(1, i64::from);
            let head =
                GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(head_len);
            let mut then = vec![
                TxnOp::put(key.as_str(), record.to_bytes(), Some(PutOptions::new().with_lease(session.id))),
                TxnOp::get(keys.dir.as_str(), Some(head.clone())),
            ];
            if request.mode == LockMode::Shared {
                // A reader is granted when no writer is queued before it.
                let last = GetOptions::new().with_prefix().with_keys_only().with_limit(1);
                then.push(TxnOp::get(keys.exclusive_prefix(), Some(last)));
            }
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then(then)
                .or_else([TxnOp::get(key.as_str(), None), TxnOp::get(keys.dir.as_str(), Some(head))]);
            match Self::before(deadline, "requesting the lock", resource, self.txn(txn)).await {
                Ok(response) => {
                    let written = response.succeeded();
                    let header = response.header().map_or(0, |h| h.revision());
                    let mut gets = response.op_responses().into_iter().filter_map(|op| match op {
                        TxnOpResponse::Get(get) => Some(get),
                        _ => None,
                    });
                    // Written now: the put is the transaction's only write.
                    // Written by an earlier attempt: the key says when.
                    let revision = if written {
                        header
                    } else {
                        gets.next().and_then(|get| get.kvs().first().map(KeyValue::create_revision)).unwrap_or(0)
                    };
                    let head = gets.next().map(|get| get.kvs().to_vec()).unwrap_or_default();
                    let writer_queued = gets.next().is_some_and(|get| !get.kvs().is_empty());
                    let granted = match request.mode {
                        LockMode::Exclusive => head.first().is_some_and(|kv| kv.create_revision() == revision),
                        // A retry's key may be older than the writers it saw: the wait looks.
                        LockMode::Shared => written && !writer_queued,
                        LockMode::Permits(_) => head.iter().any(|kv| kv.create_revision() == revision),
                    };
                    let held_by = head.first().filter(|kv| kv.create_revision() != revision).map(queue::mode_of);
                    break (session, key, now, record, waiting, revision, granted, held_by);
                }
                Err(e) if request.deadline != Deadline::Now && retry::passing(&e) && !session.is_dead() => {
                    tracing::debug!(resource, error = %e, "etcd did not answer a lock request; asking again");
                    attempt = Some((waiting, now, record));
                    if !backoff.pause(deadline).await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(held) = held_by
            && let Err(refused) = request.mode.agrees_with(held, resource, BACKEND)
        {
            self.withdraw(waiting, deadline, resource).await;
            return Err(refused);
        }
        let mut waited = false;
        if !granted {
            let granted = match request.deadline {
                Deadline::Now => false,
                _ => {
                    waited = true;
                    self.wait_turn(request, &session, &keys, &key, revision).await?
                }
            };
            if !granted {
                // One transaction deletes our key and then reads the holder
                // (so the holder is never us): the caller's timeout comes
                // one round trip after its deadline, not two.
                let give_up = Txn::new().and_then([
                    TxnOp::delete(key.as_str(), None),
                    TxnOp::get(keys.dir.as_str(), Some(Self::queue_read())),
                ]);
                let holder = match Self::before(
                    deadline.map(|at| at.max(Instant::now() + self.options.response_timeout)),
                    "giving up the wait",
                    resource,
                    self.txn(give_up),
                )
                .await
                {
                    Ok(response) => {
                        waiting.disarm();
                        response.op_responses().into_iter().find_map(|op| match op {
                            TxnOpResponse::Get(get) => queue::holders_info(resource, get.kvs()),
                            _ => None,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(resource, error = %e, "cannot delete a waiting key; trying again in the background");
                        drop(waiting);
                        None
                    }
                };
                return Ok(Acquired::Busy { holder });
            }
        }
        waiting.disarm();
        let releasing = Arc::new(AtomicBool::new(false));
        // A waiter's lease and hold begin now; its record is brought up to
        // date by the monitor, off the handoff's path.
        let (granted_at, record, refresh) = if waited {
            let granted_at = SystemTime::now();
            let record = Self::record(request, granted_at);
            let refresh = record.to_bytes();
            (granted_at, record, Some(refresh))
        } else {
            (now, record, None)
        };
        let expires_at = request.lease.and_then(|lease| granted_at.checked_add(lease));
        let (expiry, expiry_rx) = watch::channel(request.lease.map(|lease| Instant::now() + lease));
        let session_slot = session.register(request.loss.clone());
        // Beside the connection, like the session's keep-alive: loss must be
        // noticed while the caller's runtime idles, or after it is dropped.
        spawn_background(
            monitor::Monitor {
                client: self.client.clone(),
                key: key.clone(),
                revision,
                loss: request.loss.clone(),
                expiry: expiry_rx,
                releasing: releasing.clone(),
                refresh,
                session: session.clone(),
                response_timeout: self.options.response_timeout,
            }
            .run(self.attempts()),
        )
        // Started when this manager connected, so it is there now.
        .inspect_err(|e| tracing::error!(%key, error = %e, "cannot watch a grant for loss"))
        .ok();
        let grant = EtcdGrant {
            key,
            revision,
            resource: request.resource.clone(),
            record: parking_lot::Mutex::new(record),
            session,
            session_slot,
            expiry,
            releasing,
            settled: AtomicBool::new(false),
            client: self.client.clone(),
        };
        let token = FencingToken::new(u64::try_from(revision).unwrap_or(0));
        Ok(Acquired::Granted(Granted::new(grant, token, expires_at).acquired_at(granted_at).after_waiting(waited)))
    }

    async fn release(&self, grant: &EtcdGrant) -> Result<(), LockError> {
        grant.releasing.store(true, Ordering::Release);
        let txn = Txn::new()
            .when([Compare::create_revision(grant.key.as_str(), CompareOp::Equal, grant.revision)])
            .and_then([TxnOp::delete(grant.key.as_str(), None)]);
        let response = match self.txn(txn).await {
            Ok(response) => response,
            Err(e) => {
                // The key would keep the lock while this manager lives.
                reaper::delete(&self.client, grant.key.clone(), Some(grant.revision), &grant.session);
                grant.settled.store(true, Ordering::Release);
                grant.expiry.send_replace(None);
                return Err(Self::error(
                    "releasing the lock (its key is deleted in the background)",
                    &grant.resource,
                    e,
                ));
            }
        };
        grant.settled.store(true, Ordering::Release);
        grant.expiry.send_replace(None);
        if response.succeeded() {
            Ok(())
        } else {
            Err(LockError::stolen(BACKEND, &*grant.resource, "its etcd key was gone at release"))
        }
    }

    async fn renew(&self, grant: &EtcdGrant, lease: Duration) -> Result<SystemTime, LockError> {
        let resource = &*grant.resource;
        if grant.session.is_dead() {
            return Err(LockError::lost(BACKEND, resource, lockman_core::LostReason::LeaseExpired));
        }
        let sent = Instant::now();
        let now = SystemTime::now();
        let expires = now.checked_add(lease).ok_or_else(|| LockError::Config(format!("lease {lease:?} too long")))?;
        let value = {
            let mut record = grant.record.lock();
            record.lease_until_ms = Some(keys::unix_ms(expires));
            record.to_bytes()
        };
        let txn = Txn::new()
            .when([Compare::create_revision(grant.key.as_str(), CompareOp::Equal, grant.revision)])
            .and_then([TxnOp::put(grant.key.as_str(), value, Some(PutOptions::new().with_ignore_lease()))]);
        let response = self.txn(txn).await.map_err(|e| Self::error("renewing the lease", resource, e))?;
        if !response.succeeded() {
            return Err(LockError::stolen(BACKEND, resource, "its etcd key was gone at renewal"));
        }
        grant.expiry.send_replace(Some(sent + lease));
        Ok(expires)
    }

    async fn inspect(&self, resource: &str) -> Result<LockState, LockError> {
        Ok(queue::state_of(resource, &self.queue(resource).await?))
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let dir = keys::locks_dir(&self.options.prefix);
        let options = GetOptions::new().with_prefix();
        let mut response = self.get(dir.clone(), options).await.map_err(|e| Self::error("listing locks", "*", e))?;
        // Each resource's keys, oldest first, are its queue.
        let mut queues: std::collections::BTreeMap<String, Vec<KeyValue>> = std::collections::BTreeMap::new();
        for kv in response.take_kvs() {
            let Some(resource) = kv.key_str().ok().and_then(|key| keys::resource_of(&dir, key)) else { continue };
            queues.entry(resource).or_default().push(kv);
        }
        Ok(queues
            .into_iter()
            .filter_map(|(resource, mut queue)| {
                queue.sort_by_key(KeyValue::create_revision);
                queue::state_of(&resource, &queue).info().cloned()
            })
            .collect())
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let queue = self.queue(resource).await?;
        let modes: Vec<LockMode> = queue.iter().map(queue::mode_of).collect();
        let mut broken = Vec::new();
        for kv in &queue[..queue::holder_count(&modes)] {
            let key = kv.key().to_vec();
            // First tell the holder why (its monitor sees the put), then delete.
            let mut record = Record::from_bytes(kv.value()).unwrap_or_else(|| Record {
                holder: String::new(),
                host: String::new(),
                pid: 0,
                user: None,
                purpose: None,
                since_ms: 0,
                lease_until_ms: None,
                forced: None,
                mode: queue::mode_of(kv),
            });
            record.forced = Some(reason.to_owned());
            let mark = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, kv.create_revision())])
                .and_then([TxnOp::put(key.clone(), record.to_bytes(), Some(PutOptions::new().with_ignore_lease()))]);
            let marked = self.txn(mark).await.map_err(|e| Self::error("force-releasing", resource, e))?;
            if !marked.succeeded() {
                continue; // released meanwhile
            }
            let delete = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, kv.create_revision())])
                .and_then([TxnOp::delete(key, None)]);
            self.txn(delete).await.map_err(|e| Self::error("force-releasing", resource, e))?;
            broken.push(queue::info_of(resource, kv));
        }
        Ok(LockInfo::of_holders(broken))
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        // etcd deletes the keys of an expired lease itself: nothing is ever stale.
        Ok(Vec::new())
    }
}
