//! The manager's etcd lease ("session", as in etcd's `concurrency`
//! package): every key this manager writes is bound to it, and a task keeps
//! it alive with etcd's keep-alive stream.
//!
//! Why our own keep-alive and not core's per-grant renewals: waiting keys
//! need the lease too, and core renews only grants. The lease is the
//! backstop for a crashed or paused process (its keys vanish at most one TTL
//! after its last keep-alive); each grant's own lease length is kept by
//! [`crate::monitor`] in this process. If the lease cannot be kept alive
//! until its end, every grant on it is reported lost and the next acquire
//! starts a new session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::Client;
use lockman_core::{LockError, LossSignal, LostReason};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::BACKEND;

/// Hands out the live session, starting a new one when needed.
pub(crate) struct Sessions {
    client: Client,
    ttl: i64,
    attempts: usize,
    /// How long one keep-alive may take before it is sent again.
    response_timeout: Duration,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// One etcd lease and the grants bound to it.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: i64,
    dead: AtomicBool,
    next_grant: AtomicU64,
    grants: Mutex<HashMap<u64, LossSignal>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Sessions {
    pub(crate) fn new(client: Client, ttl: i64, attempts: usize, response_timeout: Duration) -> Self {
        Sessions { client, ttl, attempts, response_timeout, current: tokio::sync::Mutex::new(None) }
    }

    /// The live session, or a new one (one round trip: `LeaseGrant`).
    pub(crate) async fn get(&self) -> Result<Arc<Session>, LockError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref().filter(|s| !s.dead.load(Ordering::Acquire)) {
            return Ok(session.clone());
        }
        let sent = Instant::now();
        let granted = crate::retry::unsent_again(self.attempts, || {
            let mut leases = self.client.lease_client();
            async move { leases.grant(self.ttl, None).await }
        })
        .await
        .map_err(|e| LockError::backend_caused_by(BACKEND, "granting the manager's etcd lease", None, e))?;
        let session = Arc::new(Session {
            id: granted.id(),
            dead: AtomicBool::new(false),
            next_grant: AtomicU64::new(0),
            grants: Mutex::new(HashMap::new()),
        });
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0));
        tracing::debug!(lease = session.id, ttl = granted.ttl(), "etcd session started");
        // Each keep-alive gets at most a response timeout, and at most a
        // third of the lease, so that several fit in it.
        let attempt = self.response_timeout.min(ttl / 3).max(Duration::from_millis(100));
        // Beside the connection: the lease must be kept alive while a
        // caller's runtime is blocked, and after it is dropped.
        crate::spawn_background(keep_alive(self.client.clone(), Arc::downgrade(&session), sent + ttl, attempt))?;
        *current = Some(session.clone());
        Ok(session)
    }
}

impl Session {
    /// Registers a grant's loss signal, told if the session dies; returns
    /// the id to [`forget`](Self::forget) it by.
    pub(crate) fn register(&self, loss: LossSignal) -> u64 {
        let id = self.next_grant.fetch_add(1, Ordering::Relaxed);
        self.grants.lock().insert(id, loss);
        if self.dead.load(Ordering::Acquire)
            && let Some(loss) = self.grants.lock().remove(&id)
        {
            loss.mark_lost(LostReason::LeaseExpired);
        }
        id
    }

    pub(crate) fn forget(&self, id: u64) {
        self.grants.lock().remove(&id);
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn die(&self, reason: LostReason) {
        self.dead.store(true, Ordering::Release);
        let grants: Vec<LossSignal> = self.grants.lock().drain().map(|(_, loss)| loss).collect();
        tracing::warn!(lease = self.id, %reason, grants = grants.len(), "etcd session lost");
        for loss in grants {
            loss.mark_lost(reason.clone());
        }
    }
}

/// Keeps the session's lease alive every third of its TTL until the session
/// is dropped (then revokes it, freeing its keys at once) or the lease
/// cannot be kept alive before it ends (then the session dies).
///
/// A keep-alive unanswered within `attempt` is sent again on a new stream:
/// the old one may be stuck on a member that forwards it to a leader that
/// is gone (frozen, partitioned), while the others have elected a new one.
async fn keep_alive(client: Client, session: Weak<Session>, mut expires: Instant, attempt: Duration) {
    let Some(id) = session.upgrade().map(|s| s.id) else { return };
    let mut leases = client.lease_client();
    let mut stream = None;
    let mut ttl = Duration::ZERO;
    loop {
        let now = Instant::now();
        if now >= expires {
            if let Some(session) = session.upgrade() {
                session.die(LostReason::BackendUnreachable {
                    detail: format!("the manager's etcd lease {id:x} could not be kept alive before it ended"),
                });
            }
            return;
        }
        let left = expires - now;
        // Renew when two thirds of the lease are left (or at once, after a failure).
        let due = if ttl.is_zero() { now } else { expires.checked_sub(ttl * 2 / 3).unwrap_or(now) };
        tokio::time::sleep_until(due.max(now).min(now + left)).await;
        if session.strong_count() == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(2), leases.revoke(id)).await;
            return;
        }
        if stream.is_none() {
            match tokio::time::timeout_at(expires.min(Instant::now() + attempt), leases.keep_alive(id)).await {
                Ok(Ok(opened)) => stream = Some(opened),
                Ok(Err(e)) => {
                    tracing::warn!(lease = id, error = %e, "etcd lease keep-alive stream failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => continue,
            }
        }
        let Some((keeper, responses)) = stream.as_mut() else { continue };
        let sent = Instant::now();
        let answer = tokio::time::timeout_at(expires.min(sent + attempt), async {
            keeper.keep_alive().await?;
            responses.message().await
        })
        .await;
        match answer {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {
                ttl = Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0));
                expires = sent + ttl;
            }
            Ok(Ok(Some(_))) => {
                if let Some(session) = session.upgrade() {
                    session.die(LostReason::LeaseExpired);
                }
                return;
            }
            Ok(Ok(None) | Err(_)) => {
                tracing::warn!(lease = id, "etcd lease keep-alive stream ended; reopening");
                stream = None;
                ttl = Duration::ZERO;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                // Unanswered: send it again at once, on a new stream.
                tracing::debug!(lease = id, "no answer to an etcd lease keep-alive; reopening its stream");
                stream = None;
                ttl = Duration::ZERO;
            }
        }
    }
}
