//! Waiters are told, not polling: one subscriber connection per manager
//! listens on every release channel of its prefix (one `PSUBSCRIBE`) and on
//! the manager's own inbox (`<prefix>:inbox:<manager>`, one `SUBSCRIBE`),
//! and wakes the waiters of the resource named by each message. A release
//! that hands the lock to one waiter, or names the one to go next, sends
//! that to the waiter's manager's inbox alone (its waiter ids are
//! `<manager>/<n>`), so the other managers of the fleet do no work for it. A `forced:`
//! message also tells this process's holders of that resource their lock is
//! gone — once the lock key confirms it: anyone who can `PUBLISH` can send
//! such a message, so it is only a hint, and a holder whose holder id, token
//! and hold are still in the key (for a shared or permit grant: its record,
//! with its token) is not told anything. A `next:<waiter id>` message (a
//! release whose queue is headed by a live exclusive waiter) wakes only the
//! manager's waiters if one of them has that id. A `grant:<waiter id>:…`
//! message (a release that handed the lock to that waiter) is taken as the
//! grant by that waiter alone, without asking Redis — that round trip is
//! what the handoff saves. So, unlike `forced:`, it is believed: whoever may
//! `PUBLISH` on the prefix's channels must be trusted like whoever may write
//! its keys (with Redis ACLs, give channel rights `&<prefix>:*` only to
//! lockman's users). A message that comes too late to be sure the claim
//! lease is still running is not believed: the waiter asks. Any other
//! message wakes the resource's waiters. After the subscriber
//! reconnects, every waiter re-checks at once (messages published while it
//! was away are lost).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use lockman_core::{LossSignal, LostReason};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::connection::Connection;

use crate::keys::Keys;
use crate::{Grant, Layout};

/// Waiters and local holders of one manager, by resource.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// This manager's name in waiter ids (`<manager>/<n>`), and its inbox
    /// channel's last part.
    manager: String,
    next_waiter: AtomicU64,
    waiting: Mutex<HashMap<String, ResourceWaiters>>,
    holding: Mutex<HashMap<String, Vec<Held>>>,
    /// Grants releases handed to our waiters, by waiter id, until taken.
    handed: Mutex<HashMap<String, Handed>>,
}

/// A lock a release handed to one of our waiters (a `grant:` message).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Handed {
    token: u64,
    /// When the release ran (server µs).
    acquired_us: u64,
    /// The claim lease it set (ms), which our first renewal lengthens.
    claim_ms: u64,
    received: SystemTime,
}

impl Handed {
    /// Parses `<waiter id>:<token>:<acquired µs>:<claim ms>`.
    fn parse(message: &str) -> Option<(&str, Handed)> {
        let mut parts = message.rsplitn(4, ':');
        let claim_ms = parts.next()?.parse().ok()?;
        let acquired_us = parts.next()?.parse().ok()?;
        let token = parts.next()?.parse().ok()?;
        let waiter = parts.next()?;
        Some((waiter, Handed { token, acquired_us, claim_ms, received: SystemTime::now() }))
    }

    /// The grant, its lease dated conservatively on our clock: `asked` is
    /// when we sent our last attempt and the server's time (ms) in its busy
    /// answer. The release ran after that answer, so its claim lease ends
    /// no earlier than `sent` + (release − answer, server time) + claim;
    /// the server's interval is capped at what our clock saw pass.
    ///
    /// `None` if the release ran before that answer: the message came late
    /// (a slow link), and our last attempt already found the lock busy —
    /// the handed grant had ended (its claim lease ran out) by then.
    pub(crate) fn grant(&self, asked: (SystemTime, u64)) -> Option<Grant> {
        let (sent, answered_ms) = asked;
        let released_ms = self.acquired_us / 1000;
        if released_ms <= answered_ms {
            return None;
        }
        let seen = self.received.duration_since(sent).unwrap_or_default();
        let after = Duration::from_millis(released_ms - answered_ms).min(seen);
        Some(Grant {
            token: self.token,
            acquired_us: self.acquired_us,
            lease_expires_at: sent + after + Duration::from_millis(self.claim_ms),
            layout: Layout::Exclusive,
            handed: None,
        })
    }
}

/// The waiters of one resource in this manager: the notify they wait on,
/// and their waiter ids (their names in the resource's queue in Redis).
type ResourceWaiters = (Arc<Notify>, Vec<String>);

/// One local hold of a grant: what the lock key must still name for it to
/// be ours, and how to tell its guard it is not.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) holder: String,
    pub(crate) token: u64,
    /// The hold id (the key's `h:<hold>` or `g:<hold>` field).
    pub(crate) hold: String,
    pub(crate) layout: Layout,
    pub(crate) loss: LossSignal,
}

/// How the subscriber confirms a `forced:` message against the lock key.
pub(crate) struct Confirm {
    pub(crate) connection: Connection,
    pub(crate) timeout: Duration,
}

/// A waiter's registration; leaving (drop) removes the entry when it was the last.
pub(crate) struct Waiting {
    listeners: Arc<Listeners>,
    resource: String,
    pub(crate) waiter: String,
    pub(crate) notify: Arc<Notify>,
}

impl Listeners {
    /// The listeners of a manager named `manager` (unique across processes).
    pub(crate) fn new(manager: String) -> Self {
        Listeners {
            manager,
            next_waiter: AtomicU64::new(1),
            waiting: Mutex::default(),
            holding: Mutex::default(),
            handed: Mutex::default(),
        }
    }

    pub(crate) fn manager(&self) -> &str {
        &self.manager
    }

    /// A new waiter id, `<manager>/<n>`: a release finds the waiter's
    /// manager's inbox from it.
    pub(crate) fn new_waiter_id(&self) -> String {
        use std::fmt::Write as _;
        // One per acquire, waiting or not: built by hand, not by `format!`.
        let mut id = String::with_capacity(self.manager.len() + 21);
        id.push_str(&self.manager);
        id.push('/');
        let _ = write!(id, "{}", self.next_waiter.fetch_add(1, Ordering::Relaxed));
        id
    }

    /// A message on this manager's inbox: `grant:<waiter id>:…` hands that
    /// waiter the lock, `next:<waiter id>` names it to go next; either wakes
    /// the waiters of its resource in this manager (the named one looks).
    fn direct(&self, payload: &str) {
        let (waiter, handed) = match payload.strip_prefix("grant:") {
            Some(grant) => match Handed::parse(grant) {
                Some((waiter, handed)) => (waiter, Some(handed)),
                None => return,
            },
            None => match payload.strip_prefix("next:") {
                Some(waiter) => (waiter, None),
                None => return,
            },
        };
        let waiting = self.waiting.lock();
        let Some((notify, _)) = waiting.values().find(|(_, waiters)| waiters.iter().any(|ours| ours == waiter)) else {
            return; // gone: a late handoff is undone by that acquire's `Pending`
        };
        if let Some(handed) = handed {
            self.handed.lock().insert(waiter.to_owned(), handed);
        }
        notify.notify_waiters();
    }

    /// Registers a waiter for `resource`, named `waiter` in its queue.
    pub(crate) fn wait_for(self: &Arc<Self>, resource: &str, waiter: &str) -> Waiting {
        let mut waiting = self.waiting.lock();
        let entry = waiting.entry(resource.to_owned()).or_insert_with(|| (Arc::new(Notify::new()), Vec::new()));
        entry.1.push(waiter.to_owned());
        Waiting {
            listeners: self.clone(),
            resource: resource.to_owned(),
            waiter: waiter.to_owned(),
            notify: entry.0.clone(),
        }
    }

    /// The grant a release handed `waiter`, if one came.
    pub(crate) fn take_handed(&self, waiter: &str) -> Option<Handed> {
        self.handed.lock().remove(waiter)
    }

    pub(crate) fn hold(&self, resource: &str, held: Held) {
        self.holding.lock().entry(resource.to_owned()).or_default().push(held);
    }

    pub(crate) fn unhold(&self, resource: &str, hold: &str) {
        let mut holding = self.holding.lock();
        if let Some(held) = holding.get_mut(resource) {
            held.retain(|h| h.hold != hold);
            if held.is_empty() {
                holding.remove(resource);
            }
        }
    }

    /// A message on `resource`'s release channel: wakes its waiters, and for
    /// a `forced:` message, tells each local holder whose hold the lock key
    /// no longer has that its lock was broken.
    async fn released(&self, keys: &Keys, confirm: &Confirm, resource: &str, payload: &str) {
        if let Some(reason) = payload.strip_prefix("forced:") {
            let held = self.holding.lock().get(resource).cloned().unwrap_or_default();
            if !held.is_empty() {
                let lost = match still_held(keys, confirm, resource, &held).await {
                    Ok(ours) => held
                        .into_iter()
                        .zip(ours)
                        .filter(|(_, ours)| !ours)
                        .map(|(held, _)| (held, LostReason::ForceReleased { reason: reason.to_owned() }))
                        .collect::<Vec<_>>(),
                    // Unconfirmed either way: believe the message, as
                    // holding on to a lock that may be broken is the unsafe
                    // mistake. (Whoever can make Redis not answer us can
                    // delete the key as well.)
                    Err(detail) => {
                        tracing::warn!(backend = crate::BACKEND, resource, error = %detail, "cannot confirm a force-release message against the lock key; treating the lock as lost");
                        let reason = format!("{reason}; not confirmed, as Redis did not answer the check: {detail}");
                        held.into_iter()
                            .map(|held| (held, LostReason::ForceReleased { reason: reason.clone() }))
                            .collect()
                    }
                };
                for (held, reason) in lost {
                    self.unhold(resource, &held.hold);
                    held.loss.mark_lost(reason);
                }
            }
        }
        if let Some((notify, waiters)) = self.waiting.lock().get(resource) {
            // `next:<waiter id>` names the one waiter to go next (sent here
            // by a release of a version without inboxes): the others would
            // only be told to keep waiting.
            let named = payload.strip_prefix("next:");
            if named.is_none_or(|next| waiters.iter().any(|waiter| waiter == next)) {
                notify.notify_waiters();
            }
        }
    }

    fn wake_all(&self) {
        for (notify, _) in self.waiting.lock().values() {
            notify.notify_waiters();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // A grant handed too late is undone by the acquire's `Pending`.
        self.listeners.handed.lock().remove(&self.waiter);
        let mut waiting = self.listeners.waiting.lock();
        if let Some(entry) = waiting.get_mut(&self.resource) {
            entry.1.retain(|waiter| *waiter != self.waiter);
            if entry.1.is_empty() {
                waiting.remove(&self.resource);
            }
        }
    }
}

/// For each of `held`, whether the lock key still names it: for an
/// exclusive grant the same holder and token and its hold field still there,
/// for a shared or permit grant its record with its token. One `HMGET`,
/// bounded by the response timeout.
async fn still_held(keys: &Keys, confirm: &Confirm, resource: &str, held: &[Held]) -> Result<Vec<bool>, String> {
    let mut command = redis::cmd("HMGET");
    command.arg(keys.lock(resource)).arg("holder").arg("token");
    for h in held {
        match h.layout {
            Layout::Exclusive => command.arg(format!("h:{}", h.hold)),
            Layout::Modes => command.arg(format!("g:{}", h.hold)),
        };
    }
    let mut connection = confirm.connection.clone();
    let fields: Vec<Option<String>> = tokio::time::timeout(confirm.timeout, command.query_async(&mut connection))
        .await
        .map_err(|_| format!("no answer within {:?}", confirm.timeout))?
        .map_err(|e| e.to_string())?;
    let (holder, token) = (fields.first().cloned().flatten(), fields.get(1).cloned().flatten());
    Ok(held
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let field = fields.get(i + 2).cloned().flatten();
            match h.layout {
                Layout::Exclusive => {
                    holder.as_deref() == Some(h.holder.as_str())
                        && token.as_deref().and_then(|t| t.parse::<u64>().ok()) == Some(h.token)
                        && field.is_some()
                }
                // `<expiry> <token> <holder>`
                Layout::Modes => {
                    field.as_deref().and_then(|record| record.split(' ').nth(1)).and_then(|t| t.parse::<u64>().ok())
                        == Some(h.token)
                }
            }
        })
        .collect())
}

/// Keeps one subscription open for as long as the manager lives,
/// reconnecting with bounded backoff.
pub(crate) async fn subscribe(
    client: redis::Client,
    keys: Keys,
    inbox: String,
    confirm: Confirm,
    listeners: Weak<Listeners>,
    subscribed: tokio::sync::oneshot::Sender<Result<(), String>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    tokio::select! {
        () = listen(client, keys, inbox, confirm, listeners, subscribed) => {}
        _ = &mut stopped => {}
    }
}

/// `PSUBSCRIBE` to every release channel of the prefix and `SUBSCRIBE` to
/// this manager's inbox, saying which was refused.
async fn subscribe_both(pubsub: &mut redis::aio::PubSub, keys: &Keys, inbox: &str) -> Result<(), String> {
    pubsub
        .psubscribe(keys.release_pattern())
        .await
        .map_err(|e| format!("PSUBSCRIBE {} was refused: {e}", keys.release_pattern()))?;
    pubsub.subscribe(inbox).await.map_err(|e| format!("SUBSCRIBE {inbox} was refused: {e}"))
}

/// Messages are handled one at a time, in order (a `forced:` one costs a
/// round trip when this manager holds that resource): a flood of forged
/// messages is paced by Redis, not turned into unbounded work here.
/// `subscribed` hears how the first subscription went (`connect` waits for it).
async fn listen(
    client: redis::Client,
    keys: Keys,
    inbox: String,
    confirm: Confirm,
    listeners: Weak<Listeners>,
    subscribed: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut subscribed = Some(subscribed);
    let mut backoff = Duration::from_millis(50);
    loop {
        if listeners.strong_count() == 0 {
            return;
        }
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match subscribe_both(&mut pubsub, &keys, &inbox).await {
                Ok(()) => {
                    if let Some(subscribed) = subscribed.take() {
                        let _ = subscribed.send(Ok(()));
                    }
                    backoff = Duration::from_millis(50);
                    // Anything released while we were away was not heard: look again.
                    if let Some(listeners) = listeners.upgrade() {
                        listeners.wake_all();
                    }
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let Some(listeners) = listeners.upgrade() else { return };
                        let channel = message.get_channel_name();
                        let payload: String = message.get_payload().unwrap_or_default();
                        if channel == inbox {
                            listeners.direct(&payload);
                        } else if let Some(resource) = keys.resource_of_channel(channel) {
                            listeners.released(&keys, &confirm, resource, &payload).await;
                        }
                    }
                    tracing::warn!(backend = crate::BACKEND, "release subscription lost; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(backend = crate::BACKEND, error = %e, "cannot subscribe to release messages");
                    if let Some(subscribed) = subscribed.take() {
                        let _ = subscribed.send(Err(e));
                    }
                }
            },
            Err(e) => {
                tracing::debug!(backend = crate::BACKEND, error = %e, "release subscriber cannot connect");
                if let Some(subscribed) = subscribed.take() {
                    let _ = subscribed.send(Err(format!("the release subscriber cannot connect: {e}")));
                }
            }
        }
        if let Some(listeners) = listeners.upgrade() {
            listeners.wake_all();
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `grant:<waiter>:<token>:<released µs>:<claim ms>`; waiter ids may hold colons.
    #[test]
    fn a_grant_message_names_its_waiter_token_time_and_claim() {
        let (waiter, handed) = Handed::parse("w:1:2:1700000000123456:3000").expect("parsed");
        assert_eq!(waiter, "w:1");
        assert_eq!((handed.token, handed.acquired_us, handed.claim_ms), (2, 1_700_000_000_123_456, 3000));
        assert!(Handed::parse("w:x:1:3000").is_none());
    }

    /// A handed grant dates its claim lease from our last busy answer; one
    /// released before that answer is refused (a late message: that answer
    /// found the lock no longer ours).
    #[test]
    fn a_grant_released_before_our_last_busy_answer_is_refused() {
        let sent = SystemTime::now();
        let handed =
            Handed { token: 9, acquired_us: 10_500_000, claim_ms: 3000, received: sent + Duration::from_millis(700) };
        let grant = handed.grant((sent, 10_000)).expect("released 500 ms after our answer");
        assert_eq!(grant.lease_expires_at, sent + Duration::from_millis(500 + 3000));
        // The server's interval is capped at what our clock saw pass.
        let grant = handed.grant((sent, 9_000)).expect("released after our answer");
        assert_eq!(grant.lease_expires_at, sent + Duration::from_millis(700 + 3000));
        assert!(handed.grant((sent, 10_500)).is_none(), "released in the ms of our busy answer");
        assert!(handed.grant((sent, 11_000)).is_none(), "released before our busy answer");
    }
}
