//! Who holds a lock, and the number that orders its grants.

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Identifies the party holding a lock.
///
/// Two acquisitions *through one manager* with the same `HolderId` are
/// *reentrant*: the second one succeeds at once while the first is held, and
/// the resource is released when every guard is gone. A holder id is a
/// reentrancy key, not a name that proves who you are: anything in the program
/// that uses the same id gets into the same lock.
///
/// # Scope
///
/// * [`HolderId::new`] (and `"text".into()`, and
///   [`AcquireOptions::holder`](crate::AcquireOptions::holder)) make a
///   **manager-scoped** id: the manager acquiring with it qualifies it as
///   `NAME@SCOPE`, where `SCOPE` is this process's random nonce and the
///   manager's number in the process. So a constant such as `"force-charge"`
///   copied into a daemon re-enters within one manager, but two managers —
///   and so two processes, on any backend — using it exclude each other.
/// * [`HolderId::shared`] (and
///   [`AcquireOptions::shared_holder`](crate::AcquireOptions::shared_holder))
///   make a **shared** id, stored exactly as given: every manager and process
///   using it is the same holder. On a backend declaring
///   [`Capabilities::shared_holders`](crate::Capabilities::shared_holders)
///   (Redis) they share one grant as several holds (same fencing token, freed
///   when every hold is released); other backends still exclude them. Use it
///   only when the parties really are one logical holder.
///
/// What a backend reports ([`LockInfo::holder`](crate::LockInfo::holder))
/// is the id as stored: `force-charge@3f2a9c1b0d4e.1` for a scoped id, so
/// the name given stays readable and the scope shows which process and
/// manager hold it; [`name`](HolderId::name) and [`scope`](HolderId::scope)
/// take it apart.
///
/// ```
/// use lockman_core::HolderId;
///
/// let worker = HolderId::new("poller-1");
/// assert_eq!(worker.as_str(), "poller-1");
/// assert_eq!(worker.scope(), None); // qualified by the manager it acquires through
/// // Every anonymous id is different, so anonymous callers never re-enter.
/// assert_ne!(HolderId::unique(), HolderId::unique());
/// // A shared id is the same holder in every manager and process.
/// assert!(HolderId::shared("nightly-backup").is_shared());
/// ```
#[derive(Clone)]
pub struct HolderId(Repr);

#[derive(Clone)]
enum Repr {
    /// A name the manager acquiring with it qualifies with its scope.
    Local(Arc<str>),
    /// An exact id: shared on purpose, already qualified by a manager, or
    /// read back from a backend.
    Exact(Arc<str>),
    /// Formatted on first use: most anonymous ids are never looked at.
    Anonymous(Arc<Anonymous>),
}

struct Anonymous {
    number: u64,
    text: OnceLock<Box<str>>,
}

/// Separates a scoped id's name from its scope: `NAME@SCOPE`.
const SCOPE_SEPARATOR: char = '@';

impl HolderId {
    /// A holder id chosen by the caller, e.g. a job or worker name, scoped to
    /// the manager that acquires with it (see [Scope](#scope)): it re-enters
    /// within that manager and is excluded by every other manager and process
    /// using the same name.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        HolderId(Repr::Local(id.into()))
    }

    /// A holder id shared by every manager and process that uses it, stored
    /// exactly as given (see [Scope](#scope)). On backends declaring
    /// [`Capabilities::shared_holders`](crate::Capabilities::shared_holders)
    /// two managers acquiring with it share one grant; elsewhere they exclude
    /// each other as with any id.
    ///
    /// Do not end it in `@` and something that looks like a scope
    /// (`@<12 hex digits>.<number>`): [`name`](HolderId::name) would split it.
    pub fn shared(id: impl Into<Arc<str>>) -> Self {
        HolderId(Repr::Exact(id.into()))
    }

    /// A fresh id no other acquisition uses, on this or any other host:
    /// `anon-<process nonce>-<counter>`.
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        HolderId(Repr::Anonymous(Arc::new(Anonymous { number, text: OnceLock::new() })))
    }

    /// The id of the calling thread: `thread-<thread number>`, scoped like
    /// [`new`](HolderId::new) to the manager acquiring with it.
    ///
    /// The blocking API uses it as the default holder, so nested blocking
    /// acquisitions on one thread re-enter like a reentrant mutex.
    pub fn current_thread() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        thread_local! {
            static ID: HolderId = HolderId::new(
                format!("thread-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            );
        }
        ID.with(Clone::clone)
    }

    /// Whether this id was generated in this process: an anonymous or thread
    /// id made here, or any id carrying this process's nonce (also one read
    /// back from a backend). A lock that times out behind such a holder is
    /// held by the caller's own process.
    pub fn is_from_this_process(&self) -> bool {
        matches!(self.0, Repr::Anonymous(_)) || self.as_str().contains(process_nonce())
    }

    /// The id as text: exactly what a backend stores (for a scoped id taken
    /// from a backend or a guard, `NAME@SCOPE`).
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Local(id) | Repr::Exact(id) => id,
            Repr::Anonymous(anonymous) => anonymous.text.get_or_init(|| {
                use std::fmt::Write as _;
                // Built by hand: a backend that stores holders asks for this
                // once per grant, and `format!` took about twice as long.
                let nonce = process_nonce();
                let mut text = String::with_capacity(nonce.len() + 26);
                text.push_str("anon-");
                text.push_str(nonce);
                text.push('-');
                let _ = write!(text, "{}", anonymous.number);
                text.into()
            }),
        }
    }

    /// The name the holder was given: the id without its scope.
    ///
    /// ```
    /// use lockman_core::HolderId;
    /// let stored = HolderId::shared("force-charge@3f2a9c1b0d4e.1");
    /// assert_eq!(stored.name(), "force-charge");
    /// assert_eq!(stored.scope(), Some("3f2a9c1b0d4e.1"));
    /// ```
    pub fn name(&self) -> &str {
        split_scope(self.as_str()).0
    }

    /// The scope a manager qualified the id with (`<process nonce>.<manager
    /// number>`), if it has one; `None` for shared, anonymous and not yet
    /// qualified ids.
    pub fn scope(&self) -> Option<&str> {
        split_scope(self.as_str()).1
    }

    /// Whether every manager and process using this id is the same holder:
    /// made with [`shared`](HolderId::shared) (or read back from a backend)
    /// and carrying no scope.
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Exact(_)) && self.scope().is_none()
    }

    /// This id as the manager with `scope` stores it: a manager-scoped name
    /// becomes `NAME@SCOPE`; shared, anonymous and already qualified ids are
    /// kept.
    ///
    /// The last id scoped on each thread is kept, so a thread acquiring
    /// with the same name again (the blocking API's thread holder, a
    /// worker's fixed name) does not format and allocate it anew.
    pub(crate) fn scoped_to(self, scope: &Arc<str>) -> Self {
        type Last = std::cell::RefCell<Option<(Arc<str>, Arc<str>, HolderId)>>;
        thread_local! {
            static LAST: Last = const { std::cell::RefCell::new(None) };
        }
        let Repr::Local(name) = self.0 else { return self };
        let scoped = |name: &str| HolderId(Repr::Exact(format!("{name}{SCOPE_SEPARATOR}{scope}").into()));
        LAST.try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else { return scoped(&name) };
            if let Some((kept_name, kept_scope, id)) = &*last
                && Arc::ptr_eq(kept_scope, scope)
                && **kept_name == *name
            {
                return id.clone();
            }
            let id = scoped(&name);
            *last = Some((name.clone(), scope.clone(), id.clone()));
            id
        })
        .unwrap_or_else(|_| scoped(&name))
    }
}

/// A new scope for a manager: `<process nonce>.<number>`, unique across
/// processes, hosts and the managers of this process.
pub(crate) fn new_manager_scope() -> Arc<str> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{}.{}", process_nonce(), NEXT.fetch_add(1, Ordering::Relaxed)).into()
}

/// Splits `NAME@<12 hex digits>.<number>` into name and scope.
fn split_scope(id: &str) -> (&str, Option<&str>) {
    let Some((name, scope)) = id.rsplit_once(SCOPE_SEPARATOR) else { return (id, None) };
    let looks_like_scope = scope.split_once('.').is_some_and(|(nonce, number)| {
        nonce.len() == 12
            && nonce.bytes().all(|b| b.is_ascii_hexdigit())
            && !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
    });
    if looks_like_scope { (name, Some(scope)) } else { (id, None) }
}

impl PartialEq for HolderId {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Anonymous(a), Repr::Anonymous(b)) => a.number == b.number,
            // The same text (a thread's or a worker's id, cloned): no compare.
            (Repr::Local(a) | Repr::Exact(a), Repr::Local(b) | Repr::Exact(b)) if Arc::ptr_eq(a, b) => true,
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
        // A stored id is exact: it was scoped (or shared) when it was written.
        String::deserialize(deserializer).map(HolderId::shared)
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
    fn scoped_ids_keep_their_name_and_show_their_scope() {
        let scope = new_manager_scope();
        let scoped = HolderId::new("job@host").scoped_to(&scope);
        assert_eq!(scoped.as_str(), format!("job@host@{scope}"));
        assert_eq!((scoped.name(), scoped.scope()), ("job@host", Some(&*scope)));
        assert!(!scoped.is_shared());
        assert_ne!(scoped, HolderId::new("job@host").scoped_to(&new_manager_scope()));
        let shared = HolderId::shared("job").scoped_to(&scope);
        assert_eq!((shared.as_str(), shared.is_shared()), ("job", true));
    }

    #[test]
    fn display_escapes_a_planted_id_and_as_str_keeps_it() {
        let planted = HolderId::new("h\x1b]0;t\x07\u{202e}");
        assert_eq!(planted.to_string(), "h\\u{1b}]0;t\\u{7}\\u{202e}");
        assert_eq!(planted.as_str(), "h\x1b]0;t\x07\u{202e}");
    }

    #[test]
    fn anonymous_ids_read_anon_nonce_number_and_differ() {
        let (first, second) = (HolderId::unique(), HolderId::unique());
        let expected_start = format!("anon-{}-", process_nonce());
        for id in [&first, &second] {
            let number = id.as_str().strip_prefix(&expected_start).expect("anon-<nonce>-<number>");
            assert!(number.parse::<u64>().is_ok(), "{id:?}");
            assert!(id.is_from_this_process());
        }
        assert_ne!(first.as_str(), second.as_str());
    }
}
