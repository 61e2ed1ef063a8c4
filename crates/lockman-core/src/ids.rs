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
#[derive(Clone)]
pub struct HolderId(Repr);

#[derive(Clone)]
enum Repr {
    Named(Arc<str>),
    /// Formatted on first use: most anonymous ids are never looked at.
    Anonymous(Arc<Anonymous>),
}

struct Anonymous {
    number: u64,
    text: OnceLock<Box<str>>,
}

impl HolderId {
    /// A holder id chosen by the caller, e.g. a job or worker name.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        HolderId(Repr::Named(id.into()))
    }

    /// A fresh id no other acquisition uses, on this or any other host:
    /// `anon-<process nonce>-<counter>`.
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        HolderId(Repr::Anonymous(Arc::new(Anonymous { number, text: OnceLock::new() })))
    }

    /// The id of the calling thread: `thread-<process nonce>-<thread number>`.
    ///
    /// The blocking API uses it as the default holder, so nested blocking
    /// acquisitions on one thread re-enter like a reentrant mutex.
    pub fn current_thread() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        thread_local! {
            static ID: HolderId = HolderId::new(
                format!("thread-{}-{}", process_nonce(), NEXT.fetch_add(1, Ordering::Relaxed)),
            );
        }
        ID.with(Clone::clone)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Named(id) => id,
            Repr::Anonymous(anonymous) => {
                anonymous.text.get_or_init(|| format!("anon-{}-{}", process_nonce(), anonymous.number).into())
            }
        }
    }
}

impl PartialEq for HolderId {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Anonymous(a), Repr::Anonymous(b)) => a.number == b.number,
            _ => self.as_str() == other.as_str(),
        }
    }
}

impl Eq for HolderId {}

impl std::hash::Hash for HolderId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for HolderId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HolderId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Serialize for HolderId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HolderId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(HolderId::new)
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HolderId {
    /// The id for people: control and bidi characters escaped, since an id
    /// read back from a backend was written by whoever could write there
    /// (see [`display`](crate::display)). [`as_str`](HolderId::as_str) is the
    /// exact id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&crate::display::Escaped(self.as_str()), f)
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
/// paused holder whose lease expired from corrupting data (see "Fencing" in
/// the README, and [`fencing`](crate::fencing) for the stores lockman ships
/// that do this). Re-entering a held lock does not create a new grant
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
        let there = std::thread::spawn(HolderId::current_thread).join().expect("thread panicked");
        assert_ne!(here, there);
    }

    #[test]
    fn display_escapes_a_planted_id_and_as_str_keeps_it() {
        let planted = HolderId::new("h\x1b]0;t\x07\u{202e}");
        assert_eq!(planted.to_string(), "h\\u{1b}]0;t\\u{7}\\u{202e}");
        assert_eq!(planted.as_str(), "h\x1b]0;t\x07\u{202e}");
    }
}
