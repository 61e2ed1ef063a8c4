//! Printing what other processes stored: text and times from lock records
//! are untrusted input.
//!
//! A holder id, host name, user name, purpose, flag value or reason comes from
//! whoever wrote the record (another user sharing the lock directory, any
//! client of the Redis server). Printed raw, an escape sequence in it could
//! clear a terminal, set its title, or fake a line of output; a bidi control
//! could make text read differently from what it is. And a time read from a
//! record can be anything, including years no calendar formatter accepts.
//!
//! Every `Display` in this crate that shows stored data goes through
//! [`Escaped`] and [`Timestamp`], so a program that prints a [`LockInfo`] or a
//! [`LockError`] is safe without doing anything itself; `lockctl` uses the
//! same two for all its output.
//!
//! [`LockInfo`]: crate::LockInfo
//! [`LockError`]: crate::LockError

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second [`Timestamp`] prints as a date: 9999-12-31T23:59:59Z
/// (RFC 3339 has four-digit years).
const LAST_PRINTABLE_SECOND: u64 = 253_402_300_799;

/// Whether `c` must not reach a terminal raw: control characters (C0, DEL,
/// C1: escape sequences, carriage return, bell, newline), the Unicode bidi
/// controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), and the
/// line and paragraph separators U+2028, U+2029 (which some viewers break
/// lines at).
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Writes `c` escaped: `\n`, `\r`, `\t`, else `\u{1b}` (Rust's notation).
fn write_escaped(out: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c => write!(out, "\\u{{{:x}}}", u32::from(c)),
    }
}

/// Displays a string with every character [`needs_escape`] says is unsafe
/// replaced by its escape (`\u{1b}`, `\n`, `\u{202e}`); everything else,
/// including other non-ASCII text, is shown as it is.
///
/// A backslash is not escaped, so the result is for people to read, not to
/// be parsed back (use JSON for that).
///
/// ```
/// use lockman_core::display::Escaped;
/// assert_eq!(Escaped("job\x1b[2J\r\n").to_string(), "job\\u{1b}[2J\\r\\n");
/// assert_eq!(Escaped("zähler").to_string(), "zähler");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write_escaped(f, c)?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// `text` as [`Escaped`] shows it; borrowed when nothing needed escaping.
///
/// ```
/// use lockman_core::display::escape;
/// assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
/// ```
pub fn escape(text: &str) -> Cow<'_, str> {
    if text.contains(needs_escape) { Cow::Owned(Escaped(text).to_string()) } else { Cow::Borrowed(text) }
}

/// `text` with every unsafe character escaped except newlines: for text
/// made of several lines on purpose (a table) whose parts were already
/// escaped, as a last guard.
pub fn escape_keeping_newlines(text: &str) -> Cow<'_, str> {
    if !text.contains(|c| c != '\n' && needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{}", Escaped(line));
    }
    Cow::Owned(out)
}

/// `at` as RFC 3339 to the second (`2025-11-10T12:34:56Z`), or `None` when it
/// is before 1970 or after the year 9999 — which no real lock record holds,
/// so it is corrupt or planted.
pub fn rfc3339(at: SystemTime) -> Option<String> {
    let since_epoch = at.duration_since(UNIX_EPOCH).ok()?;
    (since_epoch.as_secs() <= LAST_PRINTABLE_SECOND).then(|| humantime::format_rfc3339_seconds(at).to_string())
}

/// Displays a time from a record, never failing: RFC 3339 when it is a date
/// between 1970 and 9999, otherwise what it is, flagged, with the raw number
/// of microseconds (`in the far future (corrupt? 300000000000000000µs after
/// the Unix epoch)`).
///
/// (`humantime`'s formatter panics on times before 1970 and returns an error
/// after 9999, which makes `to_string()` panic.)
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use lockman_core::display::Timestamp;
///
/// assert_eq!(Timestamp(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00Z");
/// let planted = UNIX_EPOCH + Duration::from_micros(300_000_000_000_000_000);
/// assert!(Timestamp(planted).to_string().starts_with("in the far future (corrupt?"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.duration_since(UNIX_EPOCH) {
            Ok(after) if after.as_secs() <= LAST_PRINTABLE_SECOND => {
                write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
            }
            Ok(after) => write!(f, "in the far future (corrupt? {}µs after the Unix epoch)", after.as_micros()),
            Err(before) => {
                write!(f, "before 1970 (corrupt? {}µs before the Unix epoch)", before.duration().as_micros())
            }
        }
    }
}

/// `UNIX_EPOCH + us` microseconds, or `None` if this platform cannot
/// represent that time: for backends reading a time from a record.
pub fn from_unix_micros(us: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let hostile = "a\x1b[2J\x1b]0;title\x07\r\n\u{202e}b\u{85}\u{7f}\u{2066}\u{2028}\t";
        let shown = Escaped(hostile).to_string();
        assert_eq!(shown, "a\\u{1b}[2J\\u{1b}]0;title\\u{7}\\r\\n\\u{202e}b\\u{85}\\u{7f}\\u{2066}\\u{2028}\\t");
        assert!(!shown.contains(needs_escape), "{shown:?}");
        assert_eq!(escape(hostile), shown);
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in ["", "job", "zähler/../x", "日本語", "emoji 👍🏽", "back\\slash", "name with spaces"] {
            assert!(matches!(escape(text), Cow::Borrowed(_)), "{text:?}");
            assert_eq!(Escaped(text).to_string(), text);
        }
    }

    #[test]
    fn newlines_can_be_kept_in_multi_line_text() {
        assert_eq!(escape_keeping_newlines("a\x1b[31m\nb\r\n"), "a\\u{1b}[31m\nb\\r\n");
        assert!(matches!(escape_keeping_newlines("a\nb\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_time_displays() {
        let cases = [
            (UNIX_EPOCH, "1970-01-01T00:00:00Z".to_owned()),
            (UNIX_EPOCH + Duration::from_secs(LAST_PRINTABLE_SECOND), "9999-12-31T23:59:59Z".to_owned()),
            (
                UNIX_EPOCH + Duration::from_micros(300_000_000_000_000_000),
                "in the far future (corrupt? 300000000000000000µs after the Unix epoch)".to_owned(),
            ),
            (
                UNIX_EPOCH + Duration::from_micros(u64::MAX),
                format!("in the far future (corrupt? {}µs after the Unix epoch)", u64::MAX),
            ),
            (UNIX_EPOCH - Duration::from_micros(5), "before 1970 (corrupt? 5µs before the Unix epoch)".to_owned()),
        ];
        for (at, expected) in cases {
            assert_eq!(Timestamp(at).to_string(), expected);
        }
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_micros(300_000_000_000_000_000)), None);
        assert_eq!(rfc3339(UNIX_EPOCH).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(from_unix_micros(0), Some(UNIX_EPOCH));
    }
}
