//! One task per grant: reports the grant lost when its key is deleted by
//! someone else (force-release, an expired or revoked lease), and ends the
//! grant at its lease's end — deleting the key, so the next waiter gets the
//! lock then and not only when the manager's etcd lease runs out.

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
}

impl Monitor {
    pub(crate) async fn run(mut self, attempts: usize) {
        if let Some(record) = self.refresh.take() {
            let put = Txn::new()
                .when([Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.revision)])
                .and_then([TxnOp::put(self.key.as_str(), record, Some(PutOptions::new().with_ignore_lease()))]);
            if let Err(e) = self.client.kv_client().txn(put).await {
                tracing::debug!(key = %self.key, error = %e, "cannot date a waiter's record from its grant");
            }
        }
        let options = WatchOptions::new().with_start_revision(self.revision + 1);
        let watched = crate::retry::unsent_again(attempts, || {
            let (mut client, key, options) = (self.client.watch_client(), self.key.clone(), options.clone());
            async move { client.watch(key, Some(options)).await }
        });
        let mut stream: Option<WatchStream> = match watched.await {
            Ok(stream) => Some(stream),
            Err(e) => {
                // Renewals still check the key; only the prompt notice is lost.
                tracing::warn!(key = %self.key, error = %e, "cannot watch a grant key; loss is noticed at renewal");
                None
            }
        };
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
                    Some(stream) => stream.message().await,
                    None => std::future::pending().await,
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
                    Ok(Some(response)) => {
                        for event in response.events() {
                            match event.event_type() {
                                EventType::Put => {
                                    if let Some(reason) = event.kv().and_then(|kv| Record::from_bytes(kv.value())).and_then(|r| r.forced) {
                                        forced = Some(reason);
                                    }
                                }
                                EventType::Delete => {
                                    if !self.releasing.load(Ordering::Acquire) {
                                        self.loss.mark_lost(match forced.take() {
                                            Some(reason) => LostReason::ForceReleased { reason },
                                            None => LostReason::Stolen {
                                                detail: "its etcd key was deleted (lease expired or revoked, or deleted by another client)".to_owned(),
                                            },
                                        });
                                    }
                                    return;
                                }
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!(key = %self.key, "the watch on a grant key ended; loss is noticed at renewal");
                        stream = None;
                    }
                },
            }
        }
    }
}
