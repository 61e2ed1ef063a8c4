//! Waiters are told, not polling: one subscriber connection per manager
//! listens on every release channel of its prefix (one `PSUBSCRIBE`), and
//! wakes the waiters of the resource named by each message. A `forced:`
//! message also tells this process's holder of that resource its lock is
//! gone. After the subscriber reconnects, every waiter re-checks at once
//! (messages published while it was away are lost).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use lockman_core::{LossSignal, LostReason};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::keys::Keys;

/// Waiters and local holders of one manager, by resource.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    waiting: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    holding: Mutex<HashMap<String, Vec<(u64, LossSignal)>>>,
}

/// A waiter's registration; leaving (drop) removes the entry when it was the last.
pub(crate) struct Waiting {
    listeners: Arc<Listeners>,
    resource: String,
    pub(crate) notify: Arc<Notify>,
}

impl Listeners {
    pub(crate) fn wait_for(self: &Arc<Self>, resource: &str) -> Waiting {
        let mut waiting = self.waiting.lock();
        let entry = waiting.entry(resource.to_owned()).or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Waiting { listeners: self.clone(), resource: resource.to_owned(), notify: entry.0.clone() }
    }

    pub(crate) fn hold(&self, resource: &str, token: u64, loss: LossSignal) {
        self.holding.lock().entry(resource.to_owned()).or_default().push((token, loss));
    }

    pub(crate) fn unhold(&self, resource: &str, token: u64) {
        let mut holding = self.holding.lock();
        if let Some(held) = holding.get_mut(resource) {
            held.retain(|(t, _)| *t != token);
            if held.is_empty() {
                holding.remove(resource);
            }
        }
    }

    fn released(&self, resource: &str, payload: &str) {
        if let Some(reason) = payload.strip_prefix("forced:") {
            let held = self.holding.lock().remove(resource).unwrap_or_default();
            for (_, loss) in held {
                loss.mark_lost(LostReason::ForceReleased { reason: reason.to_owned() });
            }
        }
        if let Some((notify, _)) = self.waiting.lock().get(resource) {
            notify.notify_waiters();
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
        let mut waiting = self.listeners.waiting.lock();
        if let Some(entry) = waiting.get_mut(&self.resource) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.remove(&self.resource);
            }
        }
    }
}

/// Keeps one subscription open for as long as the manager lives,
/// reconnecting with bounded backoff.
pub(crate) async fn subscribe(
    client: redis::Client,
    keys: Keys,
    listeners: Weak<Listeners>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    tokio::select! {
        () = listen(client, keys, listeners) => {}
        _ = &mut stopped => {}
    }
}

async fn listen(client: redis::Client, keys: Keys, listeners: Weak<Listeners>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if listeners.strong_count() == 0 {
            return;
        }
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.psubscribe(keys.release_pattern()).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    // Anything released while we were away was not heard: look again.
                    if let Some(listeners) = listeners.upgrade() {
                        listeners.wake_all();
                    }
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let Some(listeners) = listeners.upgrade() else { return };
                        if let Some(resource) = keys.resource_of_channel(message.get_channel_name()) {
                            let payload: String = message.get_payload().unwrap_or_default();
                            listeners.released(resource, &payload);
                        }
                    }
                    tracing::warn!(backend = crate::BACKEND, "release subscription lost; reconnecting");
                }
                Err(e) => tracing::warn!(backend = crate::BACKEND, error = %e, "cannot subscribe to release messages"),
            },
            Err(e) => tracing::debug!(backend = crate::BACKEND, error = %e, "release subscriber cannot connect"),
        }
        if let Some(listeners) = listeners.upgrade() {
            listeners.wake_all();
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
