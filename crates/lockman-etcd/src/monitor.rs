//! One task per grant: reports the grant lost when its key is deleted by
//! someone else (force-release, an expired or revoked lease), and ends the
//! grant at its lease's end — deleting the key, so the next waiter gets the
//! lock then and not only when the manager's etcd lease runs out.
//!
//! The watch breaks when its member goes away, loses its leader or
//! restarts; it is opened again from the revision after the last event
//! seen, so a force-release meanwhile is still reported at once (and if
//! etcd has compacted those events away, the key itself is read).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions, WatchStream};
use lockman_core::{LossSignal, LostReason};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::keys::Record;
use crate::session::Session;

/// What the monitor of one grant needs.
pub(crate) struct Monitor {
    pub(crate) client: Client,
    pub(crate) key: String,
    pub(crate) revision: i64,
    pub(crate) loss: LossSignal,
    /// The lease's end; closed when the grant is dropped.
    pub(crate) expiry: watch::Receiver<Option<Instant>>,
    /// Set before this process deletes the key itself.
    pub(crate) releasing: Arc<AtomicBool>,
    /// A record to write first (a waiter's, dated from its grant).
    pub(crate) refresh: Option<Vec<u8>>,
    /// The manager's etcd lease, which the key is bound to.
    pub(crate) session: Arc<Session>,
    /// How long opening a watch may take.
    pub(crate) response_timeout: std::time::Duration,
}

impl Monitor {
    /// Watches the grant key from revision `from`; `None` (logged) if the
    /// watch cannot be opened now — [`run`](Self::run) tries again later.
    async fn watch(&self, from: i64, attempts: usize) -> Option<WatchStream> {
        let options = WatchOptions::new().with_start_revision(from);
        let watched = crate::retry::unsent_again(attempts, || {
            let (mut client, key, options) = (self.client.watch_client(), self.key.clone(), options.clone());
            async move { client.watch(key, Some(options)).await }
        });
        match tokio::time::timeout(self.response_timeout, watched).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                // Renewals still check the key meanwhile.
                tracing::debug!(key = %self.key, error = %e, "cannot watch a grant key yet");
                None
            }
            Err(_) => {
                tracing::debug!(key = %self.key, "no answer to a watch on a grant key yet");
                None
            }
        }
    }

    /// The grant key is gone, deleted by someone else unless this process
    /// is releasing it: the grant is lost (`forced`: why, if it was
    /// force-released).
    fn deleted(&self, forced: Option<String>) {
        if self.releasing.load(Ordering::Acquire) {
            return;
        }
        self.loss.mark_lost(match forced {
            Some(reason) => LostReason::ForceReleased { reason },
            None => LostReason::Stolen {
                detail: "its etcd key was deleted (lease expired or revoked, or deleted by another client)".to_owned(),
            },
        });
    }

    pub(crate) async fn run(mut self, attempts: usize) {
        if let Some(record) = self.refresh.take() {
            let put = Txn::new()
                .when([Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.revision)])
                .and_then([TxnOp::put(self.key.as_str(), record, Some(PutOptions::new().with_ignore_lease()))]);
            if let Err(e) = self.client.kv_client().txn(put).await {
                tracing::debug!(key = %self.key, error = %e, "cannot date a waiter's record from its grant");
            }
        }
        // The revision the watch goes on from: a watch that ends (its
        // member went away, lost its leader, or restarted) is opened again
        // from there, so no event is missed while it was down.
        let mut next = self.revision + 1;
        let mut stream = self.watch(next, attempts).await;
        let mut backoff = crate::retry::Backoff::new();
        let mut forced: Option<String> = None;
        loop {
            let expiry = *self.expiry.borrow_and_update();
            let lease_end = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let message = async {
                match stream.as_mut() {
                    Some(stream) => Some(stream.message().await),
                    None => {
                        backoff.pause(None).await;
                        None
                    }
                }
            };
            tokio::select! {
                changed = self.expiry.changed() => {
                    if changed.is_err() {
                        return; // the grant is gone
                    }
                }
                () = lease_end => {
                    if self.releasing.load(Ordering::Acquire) {
                        return;
                    }
                    // Told first, so the holder knows before anyone else can get it.
                    self.loss.mark_lost(LostReason::LeaseExpired);
                    let delete = Txn::new()
                        .when([Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.revision)])
                        .and_then([TxnOp::delete(self.key.as_str(), None)]);
                    let deleted = crate::retry::unsent_again(attempts, || {
                        let (mut kv, delete) = (self.client.kv_client(), delete.clone());
                        async move { kv.txn(delete).await }
                    });
                    if let Err(e) = deleted.await {
                        // It would keep the lock while this manager lives.
                        tracing::warn!(key = %self.key, error = %e, "cannot delete an expired grant key; deleting it in the background");
                        crate::reaper::delete(&self.client, self.key.clone(), Some(self.revision), &self.session);
                    }
                    return;
                }
                message = message => match message {
                    // Time to watch again.
                    None => stream = self.watch(next, attempts).await,
                    Some(Ok(Some(response))) if response.canceled() => {
                        tracing::debug!(key = %self.key, reason = response.cancel_reason(), "the watch on a grant key was cancelled; watching again");
                        if response.compact_revision() > 0 {
                            // The events since `next` are gone: look at the key itself.
                            match self.client.kv_client().get(self.key.as_str(), None).await {
                                Ok(got) => match got.kvs().first() {
                                    Some(kv) if kv.create_revision() == self.revision => {
                                        next = got.header().map_or(next, |h| h.revision() + 1);
                                    }
                                    _ => return self.deleted(forced),
                                },
                                Err(e) => tracing::debug!(key = %self.key, error = %e, "cannot read a grant key"),
                            }
                        }
                        stream = None;
                    }
                    Some(Ok(Some(response))) => {
                        backoff.reset();
                        for event in response.events() {
                            if let Some(kv) = event.kv() {
                                next = next.max(kv.mod_revision() + 1);
                            }
                            match event.event_type() {
                                EventType::Put => {
                                    if let Some(reason) = event.kv().and_then(|kv| Record::from_bytes(kv.value())).and_then(|r| r.forced) {
                                        forced = Some(reason);
                                    }
                                }
                                EventType::Delete => return self.deleted(forced),
                            }
                        }
                    }
                    Some(Ok(None) | Err(_)) => {
                        tracing::debug!(key = %self.key, "the watch on a grant key ended; watching again");
                        stream = None;
                    }
                },
            }
        }
    }
}
