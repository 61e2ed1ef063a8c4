//! Resource names to file names: injective, safe on every file system, and
//! bounded in length.
//!
//! A name becomes `<readable prefix>-<hash>` plus a suffix. The prefix keeps
//! only lowercase ASCII letters, digits, `_` and `-` (so `ls` still shows what
//! a file is for); the hash is SHA-256 of the exact bytes, truncated to 128
//! bits. Names that differ anywhere — including only in case — get different
//! hashes, so they never share a file, even on case-insensitive file systems,
//! and no name can contain a path separator or `..` after encoding.

use sha2::{Digest, Sha256};

/// The most readable characters kept from a name.
const PREFIX_MAX: usize = 40;

/// The encoded file name for `name`, ending in `suffix` (e.g. `".lock"`).
pub(crate) fn encoded_file_name(name: &str, suffix: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut out = String::with_capacity(PREFIX_MAX + 34 + suffix.len());
    for c in name.chars() {
        if out.len() >= PREFIX_MAX {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out.push('-');
    out.push_str(&hex(&digest[..16]));
    out.push_str(suffix);
    out
}

/// `bytes` in lowercase hexadecimal, two digits a byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Whether `file_name` is one [`encoded_file_name`] could have made with
/// `suffix`: `<prefix>-<32 lowercase hex><suffix>`, the prefix at most
/// [`PREFIX_MAX`] of `[a-z0-9_-]`. Listing and cleanup look at nothing else,
/// so a shared directory's other files (`yarn.lock`, `LCK..ttyS0`) are never
/// touched.
pub(crate) fn is_encoded_file_name(file_name: &str, suffix: &str) -> bool {
    let Some(stem) = file_name.strip_suffix(suffix) else { return false };
    let Some((prefix, hash)) = stem.len().checked_sub(33).and_then(|at| stem.split_at_checked(at)) else {
        return false;
    };
    let Some(hash) = hash.strip_prefix('-') else { return false };
    prefix.len() <= PREFIX_MAX
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && hash.len() == 32
        && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One file of a resource's family in kernel-lock mode (see
/// [`crate::kernel`]): `<stem>.lock` (the lock), `<stem>.gate` (the
/// turnstile), `<stem>.queue` (the arrival queue), `<stem>.slot-<i>` (permit `i` of a semaphore) and
/// `<stem>.reader-<32 hex>` (one shared holder's record), where `<stem>` is
/// [`encoded_file_name`] of the resource with no suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Member {
    Lock,
    Gate,
    Queue,
    Slot(u32),
    Reader,
}

impl Member {
    /// Whether this is one holder's own file (a permit or a reader record).
    pub(crate) fn is_holder_file(self) -> bool {
        matches!(self, Member::Slot(_) | Member::Reader)
    }
}

/// The stem and member `file_name` names, if it is exactly as
/// [`member_file_name`] makes them (so foreign files are never touched,
/// and `slot-01` is not taken for `slot-1`).
pub(crate) fn parse_member(file_name: &str) -> Option<(&str, Member)> {
    let (stem, member) = file_name.split_once('.')?;
    if !is_encoded_file_name(stem, "") {
        return None;
    }
    let member = match member {
        "lock" => Member::Lock,
        "gate" => Member::Gate,
        "queue" => Member::Queue,
        _ => {
            if let Some(index) = member.strip_prefix("slot-") {
                let slot: u32 = index.parse().ok()?;
                if slot.to_string() != index {
                    return None;
                }
                Member::Slot(slot)
            } else {
                let id = member.strip_prefix("reader-")?;
                if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return None;
                }
                Member::Reader
            }
        }
    };
    Some((stem, member))
}

/// The file name of `member` in the family of `stem`; a reader record gets
/// a fresh random id.
pub(crate) fn member_file_name(stem: &str, member: Member) -> String {
    match member {
        Member::Lock => format!("{stem}.lock"),
        Member::Gate => format!("{stem}.gate"),
        Member::Queue => format!("{stem}.queue"),
        Member::Slot(slot) => format!("{stem}.slot-{slot}"),
        Member::Reader => format!("{stem}.reader-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// Whether `name` can be used verbatim as a file name in a directory: one
/// path component of ASCII letters, digits, `.`, `_` and `-`, not `.` or
/// `..`, and not one of lockman's own internal names.
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.starts_with(crate::fsutil::INTERNAL_PREFIX)
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_safe_and_bounded() {
        for name in ["../../etc/passwd", "..", "/", "a/b", "a\\b", "x".repeat(1024).as_str(), "zürich-🔒", "con"] {
            let encoded = encoded_file_name(name, ".lock");
            assert!(encoded.len() <= PREFIX_MAX + 1 + 32 + 5, "{encoded} is too long");
            assert!(!encoded.contains('/') && !encoded.contains('\\') && !encoded.starts_with('.'), "{encoded}");
            assert!(encoded.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b)));
        }
    }

    #[test]
    fn names_differing_only_in_case_or_punctuation_get_distinct_files() {
        let names = ["Inverter_Read", "inverter_read", "a/b", "a_b", "a%2Fb", "a\\b", "Zürich", "zürich"];
        let mut files: Vec<String> = names.iter().map(|n| encoded_file_name(n, ".lock").to_lowercase()).collect();
        files.sort();
        files.dedup();
        assert_eq!(files.len(), names.len(), "two names share a file (compared case-insensitively)");
    }

    #[test]
    fn encoding_is_stable_across_versions() {
        // Other processes (and older lockman builds) must find the same file.
        assert_eq!(encoded_file_name("inverter_read", ".lock"), "inverter_read-0f31e7d22c525e215b910d4411a7eeb8.lock");
    }

    #[test]
    fn only_encoded_names_are_recognised() {
        for name in ["inverter_read", "", "x".repeat(1024).as_str(), "zürich-🔒", "a-b-c"] {
            assert!(is_encoded_file_name(&encoded_file_name(name, ".lock"), ".lock"), "{name:?}");
            assert!(!is_encoded_file_name(&encoded_file_name(name, ".lock"), ".lease"), "{name:?}");
        }
        for foreign in [
            "yarn.lock",
            "Cargo.lock",
            "x.lock",
            "LCK..ttyS0",
            "foo-0f31e7d22c525e215b910d4411a7eeb.lock",
            "Foo-0f31e7d22c525e215b910d4411a7eeb8.lock",
            "foo-0F31E7D22C525E215B910D4411A7EEB8.lock",
            "foo_0f31e7d22c525e215b910d4411a7eeb8.lock",
            ".x-0f31e7d22c525e215b910d4411a7eeb8.lock",
        ] {
            assert!(!is_encoded_file_name(foreign, ".lock"), "{foreign:?}");
        }
    }

    #[test]
    fn family_members_round_trip_and_nothing_else_parses() {
        let stem = encoded_file_name("inverter_read", "");
        for member in [Member::Lock, Member::Gate, Member::Queue, Member::Slot(0), Member::Slot(41), Member::Reader] {
            let name = member_file_name(&stem, member);
            assert_eq!(parse_member(&name), Some((stem.as_str(), member)), "{name}");
        }
        assert_eq!(member_file_name(&stem, Member::Lock), encoded_file_name("inverter_read", ".lock"));
        for foreign in [
            format!("{stem}.slot-01"),
            format!("{stem}.slot-"),
            format!("{stem}.slot-x"),
            format!("{stem}.reader-1234"),
            format!("{stem}.lease"),
            format!("{stem}.gate.x"),
            "yarn.lock".to_owned(),
            "x.gate".to_owned(),
        ] {
            assert_eq!(parse_member(&foreign), None, "{foreign}");
        }
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_file_name(".FCRunning1"));
        assert!(is_plain_file_name(".tpcRunning_2"));
        for bad in ["", ".", "..", "a/b", "a b", "é", ".lockman-tmp-x"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }
}
