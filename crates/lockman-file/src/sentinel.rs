//! Noticing that a lock we hold was taken from us by another process.
//!
//! Another process cannot take a kernel lock away, but it can delete or
//! replace the lock file (`lockctl release --force`, a cleanup script, a
//! legacy daemon that deletes lockfiles it does not own), after which a newcomer
//! locks a fresh file. One task per backend re-checks every held grant's file
//! at a fixed interval and reports the grant lost when the path no longer
//! names the file we hold. Grants broken by this very process are reported at
//! once instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use lockman_core::{LossSignal, LostReason};
use parking_lot::Mutex;

use crate::flock::SharedTurn;
use crate::fsutil::{FileId, Snapshot};

/// The held grants of one backend, watched for loss.
#[derive(Clone, Debug)]
pub(crate) struct Sentinel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    held: Mutex<HashMap<u64, Watched>>,
    next_id: AtomicU64,
    interval: Duration,
    started: std::sync::Once,
    /// Why a vanished file was lost, for the message.
    detail: &'static str,
}

/// One held grant.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) resource: Arc<str>,
    /// The file to re-check, and what it must still look like.
    pub(crate) path: PathBuf,
    pub(crate) snapshot: Snapshot,
    /// Compare length and modification time too (legacy files), not just identity.
    pub(crate) strict: bool,
    pub(crate) loss: LossSignal,
    /// The grant's place in its manager's queue, given up when it is lost.
    pub(crate) turn: Option<SharedTurn>,
}

impl Watched {
    fn lost(&self, reason: LostReason) {
        tracing::debug!(resource = %self.resource, path = %self.path.display(), %reason, "a held lock file was lost");
        self.loss.mark_lost(reason);
        if let Some(turn) = &self.turn {
            drop(turn.lock().take());
        }
    }
}

impl Sentinel {
    /// A sentinel checking every `interval`; `detail` explains a loss.
    pub(crate) fn new(interval: Duration, detail: &'static str) -> Self {
        Sentinel {
            inner: Arc::new(Inner {
                held: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                interval,
                started: std::sync::Once::new(),
                detail,
            }),
        }
    }

    /// Starts watching a grant; the id stops it.
    pub(crate) fn watch(&self, watched: Watched) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.held.lock().insert(id, watched);
        self.inner.started.call_once(|| {
            let weak = Arc::downgrade(&self.inner);
            if let Err(e) = lockman_core::spawn_background(patrol(weak)) {
                tracing::warn!(error = %e, "cannot watch held lock files for loss");
            }
        });
        id
    }

    /// Stops watching a grant (it is being released).
    pub(crate) fn unwatch(&self, id: u64) {
        self.inner.held.lock().remove(&id);
    }

    /// The grants held on the file `id` at `path`. Ask *before* breaking
    /// that file, and report just these: once it is gone, a grant taken
    /// right after on a fresh file (which may even reuse the inode number)
    /// is not the one broken.
    pub(crate) fn grants_on(&self, path: &Path, id: FileId) -> Vec<u64> {
        let held = self.inner.held.lock();
        held.iter().filter(|(_, w)| w.path == path && w.snapshot.id == id).map(|(id, _)| *id).collect()
    }

    /// Reports the grants `ids` (from [`grants_on`](Self::grants_on)) lost for `reason`.
    pub(crate) fn mark_lost(&self, ids: &[u64], reason: &LostReason) {
        let mut held = self.inner.held.lock();
        for id in ids {
            if let Some(watched) = held.remove(id) {
                watched.lost(reason.clone());
            }
        }
    }
}

async fn patrol(inner: Weak<Inner>) {
    loop {
        let Some(interval) = inner.upgrade().map(|i| i.interval) else { return };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let to_check: Vec<(u64, PathBuf, Snapshot, bool)> =
            inner.held.lock().iter().map(|(id, w)| (*id, w.path.clone(), w.snapshot, w.strict)).collect();
        for (id, path, expected, strict) in to_check {
            let now = match Snapshot::at(&path) {
                Ok(now) => now,
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot re-check a held lock file");
                    continue;
                }
            };
            let intact = match now {
                None => false,
                Some(now) if strict => now == expected,
                Some(now) => now.id == expected.id,
            };
            if !intact && let Some(watched) = inner.held.lock().remove(&id) {
                watched.lost(LostReason::Stolen { detail: format!("{} ({})", inner.detail, path.display()) });
            }
        }
    }
}
