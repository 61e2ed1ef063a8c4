//! Deleting, in the background, a key this manager wrote and could not
//! delete when it meant to — a release, an expired grant or an abandoned
//! wait whose request failed (during an election, a timeout, a member
//! going away).
//!
//! Such a key is bound to the manager's etcd lease, and that lease is kept
//! alive as long as the manager lives: left alone, the key would keep the
//! lock (a grant key) or block every later waiter (a waiting key) until the
//! process exits. So the delete is sent again, with a backoff growing to
//! one second, until it succeeds or the lease is over (the key then goes
//! with it).

use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::session::Session;

/// The first pause between attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Deletes `key` (only while its create revision is `revision`, if given)
/// in a background task, retrying until it is done or `session`'s lease,
/// which the key is bound to, is over.
pub(crate) fn delete(client: &Client, key: String, revision: Option<i64>, session: &Arc<Session>) {
    let (client, session) = (client.clone(), Arc::downgrade(session));
    if let Err(e) = crate::spawn_background(delete_until_done(client, key.clone(), revision, session)) {
        tracing::warn!(%key, error = %e, "cannot delete a lock key; it goes with the manager's etcd lease");
    }
}

async fn delete_until_done(client: Client, key: String, revision: Option<i64>, session: Weak<Session>) {
    let mut pause = FIRST_PAUSE;
    loop {
        let txn = match revision {
            Some(revision) => Txn::new().when([Compare::create_revision(key.as_str(), CompareOp::Equal, revision)]),
            None => Txn::new(),
        }
        .and_then([TxnOp::delete(key.as_str(), None)]);
        let error = match client.kv_client().txn(txn).await {
            Ok(_) => return,
            Err(error) => error,
        };
        if session.upgrade().is_none_or(|session| session.is_dead()) {
            tracing::debug!(%key, %error, "cannot delete a lock key; it goes with the manager's etcd lease, which is over");
            return;
        }
        tracing::warn!(%key, %error, ?pause, "cannot delete a lock key yet; trying again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
