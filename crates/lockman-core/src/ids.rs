//! Who holds a lock, and the number that orders its grants.

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Identifies the party holding a lock.
///
/// Two acquisitions with the same `HolderId` are *reentrant*: the second one
/// succeeds at once while the first is held, and the resource is released when
/// every guard is gone. Ids are plain strings so that they cross process and
/// machine boundaries unchanged (the Redis and file backends store them).
///
/// ```
/// use lockman_core::HolderId;
///
/// let worker = HolderId::new("poller-1");
/// assert_eq!(worker.as_str(), "poller-1");
/// // Every anonymous id is different, so anonymous callers never re-enter.
/// assert_ne!(HolderId::unique(), HolderId::unique());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HolderId(Arc<str>);

impl HolderId {
    /// A holder id chosen by the caller, e.g. a job or worker name.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        HolderId(id.into())
    }

    /// A fresh id no other acquisition uses, on this or any other host:
    /// `anon-<process nonce>-<counter>`.
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        HolderId(format!("anon-{}-{n}", process_nonce()).into())
    }

    /// The id of the calling thread: `thread-<process nonce>-<thread number>`.
    ///
    /// The blocking API uses it as the default holder, so nested blocking
    /// acquisitions on one thread re-enter like a reentrant mutex.
    pub fn current_thread() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        thread_local! {
            static ID: HolderId = HolderId(
                format!("thread-{}-{}", process_nonce(), NEXT.fetch_add(1, Ordering::Relaxed)).into(),
            );
        }
        ID.with(Clone::clone)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for HolderId {
    fn from(id: &str) -> Self {
        HolderId::new(id)
    }
}

impl From<String> for HolderId {
    fn from(id: String) -> Self {
        HolderId::new(id)
    }
}

/// A short random nonce naming this process, so generated holder ids are
/// unique across hosts and pid reuse.
fn process_nonce() -> &'static str {
    static NONCE: OnceLock<String> = OnceLock::new();
    NONCE.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
}

/// A number that strictly increases with every new grant of a resource.
///
/// Hand it to the storage you protect and have the storage refuse writes
/// carrying a token lower than one it has already seen: that is what keeps a
/// paused holder whose lease expired from corrupting data (see the docs on
/// fencing in the README). Re-entering a held lock does not create a new grant
/// and keeps the token.
///
/// ```
/// use lockman_core::FencingToken;
/// assert!(FencingToken::new(2) > FencingToken::new(1));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token value.
    pub const fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// The raw token value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencingToken({})", self.0)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_thread_is_stable_per_thread_and_distinct_across_threads() {
        let here = HolderId::current_thread();
        assert_eq!(here, HolderId::current_thread());
        let there = std::thread::spawn(HolderId::current_thread)
            .join()
            .expect("thread panicked");
        assert_ne!(here, there);
    }
}
