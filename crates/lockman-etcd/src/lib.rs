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
//! * a dropped or timed-out acquire deletes its waiting key.
//!
//! A limit of this first version: the etcd lease is the manager's, so a
//! grant with a shorter lease of its own is ended on time only while its
//! process lives; a crashed or frozen holder's keys last until the manager's
//! lease (the `lease` option, whole seconds) runs out.
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
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use lockman_core::backend::{Acquired, Deadline, GrantRequest, Granted};
use lockman_core::{Capabilities, FencingToken, LockBackend, LockError, LockInfo, LockState, Locks, WakeMechanism};
use tokio::sync::watch;
use tokio::time::Instant;

mod keys;
mod monitor;
mod options;
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

/// A complete lock manager on etcd.
pub type EtcdLockManager = Locks<EtcdBackend>;

/// The etcd backend (see the crate docs for its protocol).
pub struct EtcdBackend {
    client: Client,
    options: EtcdOptions,
    sessions: Sessions,
}

/// A live grant: its key, create revision (the token) and lease.
#[derive(Debug)]
pub struct EtcdGrant {
    key: String,
    revision: i64,
    resource: Arc<str>,
    record: parking_lot::Mutex<Record>,
    session: Arc<Session>,
    session_slot: u64,
    expiry: watch::Sender<Option<Instant>>,
    releasing: Arc<AtomicBool>,
}

impl Drop for EtcdGrant {
    fn drop(&mut self) {
        self.session.forget(self.session_slot);
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
        let client = tokio::time::timeout(options.connect_timeout, Client::connect(&options.endpoints, Some(connect)))
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
        let sessions = Sessions::new(client.clone(), options.session_ttl(), 2 * options.endpoints.len() + 1);
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

    /// The oldest key of a resource (the holder), and the header revision.
    async fn owner(&self, resource: &str) -> Result<Option<KeyValue>, LockError> {
        let keys = self.keys(resource);
        let options = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let mut response =
            self.get(keys.dir.clone(), options).await.map_err(|e| Self::error("reading the holder", resource, e))?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// Waits until no key of the resource older than `revision` is left.
    /// `Ok(true)` when granted, `Ok(false)` at the deadline.
    async fn wait_turn(
        &self,
        request: &GrantRequest,
        keys: &ResourceKeys,
        key: &str,
        revision: i64,
    ) -> Result<bool, LockError> {
        let resource = &*request.resource;
        let deadline = request.deadline.instant();
        loop {
            // The key just before ours, and ours (gone if our lease was lost).
            let before = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_max_create_revision(revision - 1)
                .with_limit(1);
            let txn = Txn::new().and_then([TxnOp::get(keys.dir.as_str(), Some(before)), TxnOp::get(key, None)]);
            let response = match Self::before(deadline, "waiting for the lock", resource, self.txn(txn)).await {
                Ok(response) => response,
                Err(_) if request.deadline.has_passed() => return Ok(false),
                Err(e) => return Err(e),
            };
            let read_revision = response.header().map_or(0, |h| h.revision());
            let mut gets = response.op_responses().into_iter().filter_map(|op| match op {
                TxnOpResponse::Get(get) => Some(get),
                _ => None,
            });
            let predecessor = gets.next().and_then(|g| g.kvs().first().cloned());
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
            let Some(predecessor) = predecessor else { return Ok(true) };
            if request.deadline.has_passed() {
                return Ok(false);
            }
            // Watched from now, not from the revision of our read: etcd serves a
            // watch that starts at a past revision ("unsynced") only from a
            // loop that runs every 100 ms, which under write load delayed
            // handoffs by up to that. A delete between our read and the
            // watch's start is caught by a check once the watch is created,
            // needed only if etcd's revision moved on in between.
            let watch = WatchOptions::new();
            let watched = Self::before(
                deadline,
                "watching the previous waiter",
                resource,
                retry::unsent_again(self.attempts(), || {
                    let mut client = self.client.watch_client();
                    let (key, watch) = (predecessor.key().to_vec(), watch.clone());
                    async move { client.watch(key, Some(watch)).await }
                }),
            )
            .await;
            let mut stream = match watched {
                Ok(stream) => stream,
                Err(_) if request.deadline.has_passed() => return Ok(false),
                Err(e) => return Err(e),
            };
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
                        if response.canceled() || response.events().iter().any(|e| e.event_type() == EventType::Delete)
                        {
                            break;
                        }
                        let moved_on = response.header().is_none_or(|h| h.revision() != read_revision);
                        if response.created() && moved_on {
                            let check = self.is_gone(&predecessor);
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
        }
    }

    fn info_of(resource: &str, kv: &KeyValue) -> LockInfo {
        let token = FencingToken::new(u64::try_from(kv.create_revision()).unwrap_or(0));
        match Record::from_bytes(kv.value()) {
            Some(record) => record.info(resource, token),
            None => {
                tracing::warn!(resource, key = %String::from_utf8_lossy(kv.key()), "unreadable etcd lock record");
                keys::unreadable(resource, token)
            }
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

/// Deletes a waiting key if its acquire is dropped or gives up.
struct WaitingKey<'a> {
    client: &'a Client,
    key: Option<String>,
}

impl WaitingKey<'_> {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for WaitingKey<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut kv = self.client.kv_client();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = kv.delete(key.as_str(), None).await {
                        tracing::warn!(%key, error = %e, "cannot delete an abandoned waiting key; it goes with the manager's etcd lease");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%key, "no runtime to delete an abandoned waiting key; it goes with the manager's etcd lease")
            }
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
    }

    async fn acquire(&self, request: &GrantRequest) -> Result<Acquired<EtcdGrant>, LockError> {
        let resource = &*request.resource;
        // The caller's deadline bounds every request; a try gets one response timeout.
        let deadline = match request.deadline {
            Deadline::Now => Some(Instant::now() + self.options.response_timeout),
            Deadline::At(at) => Some(at),
            Deadline::Never => None,
        };
        let session = match deadline {
            Some(at) => tokio::time::timeout_at(at, self.sessions.get()).await.map_err(|_| {
                LockError::backend(
                    BACKEND,
                    "granting the manager's etcd lease",
                    Some(resource),
                    "no answer from etcd before the caller's deadline; check that the cluster is up and has a leader",
                )
            })??,
            None => self.sessions.get().await?,
        };
        let keys = self.keys(resource);
        let key = keys.grant_key();
        let now = SystemTime::now();
        let record = Self::record(request, now);
        // Armed before the request is sent: a drop mid-flight deletes the key too.
        let waiting = WaitingKey { client: &self.client, key: Some(key.clone()) };
        let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let txn = Txn::new().and_then([
            TxnOp::put(key.as_str(), record.to_bytes(), Some(PutOptions::new().with_lease(session.id))),
            TxnOp::get(keys.dir.as_str(), Some(first)),
        ]);
        let response = Self::before(deadline, "requesting the lock", resource, self.txn(txn)).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let owner = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        let mut waited = false;
        if owner.as_ref().is_none_or(|kv| kv.create_revision() != revision) {
            let granted = match request.deadline {
                Deadline::Now => false,
                _ => {
                    waited = true;
                    self.wait_turn(request, &keys, &key, revision).await?
                }
            };
            if !granted {
                // One transaction deletes our key and then reads the holder
                // (so the holder is never us): the caller's timeout comes
                // one round trip after its deadline, not two.
                let first =
                    GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
                let give_up = Txn::new()
                    .and_then([TxnOp::delete(key.as_str(), None), TxnOp::get(keys.dir.as_str(), Some(first))]);
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
                            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| Self::info_of(resource, kv)),
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
        tokio::spawn(
            monitor::Monitor {
                client: self.client.clone(),
                key: key.clone(),
                revision,
                loss: request.loss.clone(),
                expiry: expiry_rx,
                releasing: releasing.clone(),
                refresh,
            }
            .run(self.attempts()),
        );
        let grant = EtcdGrant {
            key,
            revision,
            resource: request.resource.clone(),
            record: parking_lot::Mutex::new(record),
            session,
            session_slot,
            expiry,
            releasing,
        };
        let token = FencingToken::new(u64::try_from(revision).unwrap_or(0));
        Ok(Acquired::Granted(Granted::new(grant, token, expires_at).acquired_at(granted_at).after_waiting(waited)))
    }

    async fn release(&self, grant: &EtcdGrant) -> Result<(), LockError> {
        grant.releasing.store(true, Ordering::Release);
        let txn = Txn::new()
            .when([Compare::create_revision(grant.key.as_str(), CompareOp::Equal, grant.revision)])
            .and_then([TxnOp::delete(grant.key.as_str(), None)]);
        let response = self.txn(txn).await.map_err(|e| Self::error("releasing the lock", &grant.resource, e))?;
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
        Ok(match self.owner(resource).await? {
            Some(kv) => LockState::Held(Self::info_of(resource, &kv)),
            None => LockState::Available,
        })
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let dir = keys::locks_dir(&self.options.prefix);
        let options = GetOptions::new().with_prefix();
        let mut response = self.get(dir.clone(), options).await.map_err(|e| Self::error("listing locks", "*", e))?;
        // The holder of each resource is its key with the lowest create revision.
        let mut holders: std::collections::BTreeMap<String, KeyValue> = std::collections::BTreeMap::new();
        for kv in response.take_kvs() {
            let Some(resource) = kv.key_str().ok().and_then(|key| keys::resource_of(&dir, key)) else { continue };
            match holders.get(&resource) {
                Some(held) if held.create_revision() <= kv.create_revision() => {}
                _ => {
                    holders.insert(resource, kv);
                }
            }
        }
        Ok(holders.iter().map(|(resource, kv)| Self::info_of(resource, kv)).collect())
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        let Some(kv) = self.owner(resource).await? else { return Ok(None) };
        let info = Self::info_of(resource, &kv);
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
        });
        record.forced = Some(reason.to_owned());
        let mark = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, kv.create_revision())])
            .and_then([TxnOp::put(key.clone(), record.to_bytes(), Some(PutOptions::new().with_ignore_lease()))]);
        let marked = self.txn(mark).await.map_err(|e| Self::error("force-releasing", resource, e))?;
        if !marked.succeeded() {
            return Ok(None); // released meanwhile
        }
        let delete = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, kv.create_revision())])
            .and_then([TxnOp::delete(key, None)]);
        self.txn(delete).await.map_err(|e| Self::error("force-releasing", resource, e))?;
        Ok(Some(info))
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        // etcd deletes the keys of an expired lease itself: nothing is ever stale.
        Ok(Vec::new())
    }
}
