//! Key names and the record stored in a lock key's value.
//!
//! A lock's keys are `PREFIX/lock/<resource>/<kind><grant id>`: `<resource>`
//! is the name with `%` and `/` percent-encoded, so one resource's directory
//! never contains another's; `<kind>` is `x` (exclusive), `s` (shared) or
//! `p` (a permit), so a reader finds the writers before it with one
//! prefix read, as etcd's reader-writer recipe does; `<grant id>` is a
//! fresh UUID per request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockman_core::{FencingToken, HolderId, LockInfo, LockMode};
use serde::{Deserialize, Serialize};

use crate::BACKEND;

/// The keys of one resource.
#[derive(Clone, Debug)]
pub(crate) struct ResourceKeys {
    /// `PREFIX/lock/<resource>/`: every grant key of the resource starts so.
    pub(crate) dir: String,
}

impl ResourceKeys {
    pub(crate) fn new(prefix: &str, resource: &str) -> Self {
        ResourceKeys { dir: format!("{}{}/", locks_dir(prefix), encode(resource)) }
    }

    /// A fresh grant key for a request in `mode`.
    pub(crate) fn grant_key(&self, mode: LockMode) -> String {
        let kind = match mode {
            LockMode::Exclusive => 'x',
            LockMode::Shared => 's',
            LockMode::Permits(_) => 'p',
        };
        format!("{}{kind}{}", self.dir, uuid::Uuid::new_v4().simple())
    }

    /// The prefix of the resource's exclusive keys (the writers).
    pub(crate) fn exclusive_prefix(&self) -> String {
        format!("{}x", self.dir)
    }
}

/// `PREFIX/lock/`: every lock key starts so.
pub(crate) fn locks_dir(prefix: &str) -> String {
    format!("{prefix}/lock/")
}

/// `PREFIX/flag/`: every flag key starts so.
pub(crate) fn flags_dir(prefix: &str) -> String {
    format!("{prefix}/flag/")
}

/// `name` with `%` and `/` percent-encoded (injective, no `/` left).
pub(crate) fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`encode`]; `None` for text `encode` never makes.
pub(crate) fn decode(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3)? {
            "%25" => out.push('%'),
            "%2F" => out.push('/'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    if rest.contains('/') {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

/// The resource a lock key belongs to (`PREFIX/lock/<resource>/<id>`).
pub(crate) fn resource_of(locks_dir: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(locks_dir)?;
    let (resource, id) = rest.rsplit_once('/')?;
    if id.is_empty() {
        return None;
    }
    decode(resource)
}

/// What a grant key's value holds: who asked, and (once a force-release
/// began) why the lock was broken.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) holder: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) purpose: Option<String>,
    /// When the request was made, in Unix milliseconds.
    pub(crate) since_ms: u64,
    /// When the grant's lease ends, in Unix milliseconds (set at the grant
    /// and by each renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lease_until_ms: Option<u64>,
    /// Set by `force_release` just before it deletes the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) forced: Option<String>,
    /// How the request holds the resource (left out when exclusive).
    #[serde(default, skip_serializing_if = "is_exclusive")]
    pub(crate) mode: LockMode,
}

fn is_exclusive(mode: &LockMode) -> bool {
    *mode == LockMode::Exclusive
}

impl Record {
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Record> {
        serde_json::from_slice(bytes).ok()
    }

    /// The lock info this record shows for `resource`, granted at `token`.
    pub(crate) fn info(&self, resource: &str, token: FencingToken) -> LockInfo {
        let mut info = LockInfo::local(resource, HolderId::shared(self.holder.as_str()), token, BACKEND);
        info.hostname.clone_from(&self.host);
        info.pid = self.pid;
        info.user.clone_from(&self.user);
        info.purpose.clone_from(&self.purpose);
        info.acquired_at = from_ms(self.since_ms).unwrap_or(UNIX_EPOCH);
        info.lease_expires_at = self.lease_until_ms.and_then(from_ms);
        info.hold_count = 1;
        info.mode = self.mode;
        info
    }
}

/// `at` in Unix milliseconds.
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_ms(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// The info of a grant key whose value does not parse: the key's name and
/// revision are still known.
pub(crate) fn unreadable(resource: &str, token: FencingToken) -> LockInfo {
    let mut info = LockInfo::local(resource, HolderId::shared("(unreadable record)"), token, BACKEND);
    info.hostname = String::new();
    info.pid = 0;
    info.user = None;
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_injectively_without_slashes() {
        for name in ["a", "a/b", "a%2Fb", "../../etc/passwd", "%", "%25", "ünï/cödé", ""] {
            let encoded = encode(name);
            assert!(!encoded.contains('/'), "{encoded}");
            assert_eq!(decode(&encoded).as_deref(), Some(name));
        }
        assert_ne!(encode("a/b"), encode("a%2Fb"));
        assert_eq!(decode("%2"), None);
        assert_eq!(decode("%41"), None);
        let dir = locks_dir("p");
        assert_eq!(resource_of(&dir, &format!("{dir}a%2Fb/123")).as_deref(), Some("a/b"));
        assert_eq!(resource_of(&dir, "p/flag/x/1"), None);
    }

    #[test]
    fn a_corrupt_record_is_none() {
        assert!(Record::from_bytes(b"{not json").is_none());
        assert!(Record::from_bytes(b"{\"holder\":5}").is_none());
    }
}
