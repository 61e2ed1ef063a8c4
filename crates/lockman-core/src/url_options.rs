//! Reading a backend URL's query options: the pieces every backend shares.
//!
//! Each backend crate owns its options (as object_store's stores own their
//! config keys): an enum of its keys implementing [`ConfigKey`], whose one
//! table of [`UrlOption`]s both parses keys and lists them in the "valid
//! options here: …" error, so the two cannot drift apart. [`UrlQuery`] reads
//! a URL's query against that table and words the errors: each names the
//! option, the URL (passwords redacted) and where the URL came from.
//!
//! This module does not parse URLs (core does not depend on the `url`
//! crate): the backend gives it the query pairs.
//!
//! ```
//! use std::str::FromStr;
//! use lockman_core::url_options::{ConfigKey, UrlOption, UrlQuery};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq)]
//! enum DemoKey { Lease, Tag }
//!
//! impl ConfigKey for DemoKey {
//!     const OPTIONS: &'static [UrlOption<Self>] = &[
//!         UrlOption::new(DemoKey::Lease, "lease", "lease=DURATION"),
//!         UrlOption::new(DemoKey::Tag, "tag.", "tag.NAME=TEXT"),
//!     ];
//! }
//!
//! let pairs = [("lease", "10s"), ("tag.site", "north")];
//! let query = UrlQuery::<DemoKey>::new("demo://:secret@host", "the example", pairs);
//! for option in query.options() {
//!     match option.key {
//!         DemoKey::Lease => assert_eq!(query.duration(&option)?.as_secs(), 10),
//!         DemoKey::Tag => assert_eq!((option.name, option.value), ("site", "north")),
//!     }
//! }
//! query.finish()?;
//!
//! let typo = UrlQuery::<DemoKey>::new("demo://h", "the example", [("leas", "1s")]);
//! let message = typo.finish().unwrap_err().to_string();
//! assert!(message.contains("`leas`") && message.contains("lease=DURATION, tag.NAME=TEXT"));
//! # Ok::<(), lockman_core::LockError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::{LockError, redact_url};

/// One option a backend's URLs accept: a row of its [`ConfigKey::OPTIONS`] table.
#[derive(Clone, Copy, Debug)]
pub struct UrlOption<K> {
    key: K,
    name: &'static str,
    help: &'static str,
}

impl<K> UrlOption<K> {
    /// The option `name` (a whole key such as `mode`, or a prefix ending in
    /// `.` such as `flag.` for keys like `flag.NAME`), parsed as `key`, shown
    /// in help and errors as `help` (`mode=kernel|lease`, `flag.NAME=FILE`).
    pub const fn new(key: K, name: &'static str, help: &'static str) -> Self {
        UrlOption { key, name, help }
    }

    /// The key it parses to.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The key as written, or the prefix (ending in `.`) of a family of keys.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How help and errors show it: `lease=DURATION`.
    pub fn help(&self) -> &'static str {
        self.help
    }

    /// Whether it is a family of keys (`flag.NAME`) rather than one key.
    pub fn is_prefix(&self) -> bool {
        self.name.ends_with('.')
    }

    /// The rest of `text` after the prefix (`""` for a whole key) if `text`
    /// is this option.
    fn matches<'t>(&self, text: &'t str) -> Option<&'t str> {
        if self.is_prefix() {
            text.strip_prefix(self.name).filter(|rest| !rest.is_empty())
        } else {
            (text == self.name).then_some("")
        }
    }
}

/// A backend's URL option keys, with the one table that parses them and
/// lists them in errors.
///
/// Implement it on an enum of the keys, and `FromStr` with
/// [`ConfigKey::parse`] (`FromStr` cannot be implemented here for every
/// `ConfigKey`).
pub trait ConfigKey: Copy + PartialEq + fmt::Debug + 'static {
    /// Every option, in the order help lists them.
    const OPTIONS: &'static [UrlOption<Self>];

    /// The option `text` names, and for a prefix option (`flag.NAME`) the
    /// rest of the key (`NAME`; `""` for a whole key).
    fn find(text: &str) -> Option<(Self, &str)> {
        Self::OPTIONS.iter().find_map(|option| option.matches(text).map(|rest| (option.key, rest)))
    }

    /// The key `text` names, or an error listing the valid ones.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] for a key not in [`OPTIONS`](Self::OPTIONS).
    fn parse(text: &str) -> Result<Self, LockError> {
        Self::find(text)
            .map(|(key, _)| key)
            .ok_or_else(|| LockError::Config(format!("unknown option `{text}`; valid options: {}", Self::valid())))
    }

    /// The key as written (`mode`), or its prefix (`flag.`).
    fn as_str(self) -> &'static str {
        Self::OPTIONS.iter().find(|option| option.key == self).map_or("", |option| option.name)
    }

    /// Every option as help shows it: `mode=kernel|lease, lease=DURATION, …`.
    fn valid() -> String {
        Self::OPTIONS.iter().map(|option| option.help).collect::<Vec<_>>().join(", ")
    }
}

/// One option of a URL's query, found in the backend's table.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct QueryOption<'q, K> {
    /// Which option.
    pub key: K,
    /// The key as written in the URL (`policy.cache`), for messages.
    pub text: &'q str,
    /// For a prefix option, the rest of the key (`cache` in `policy.cache`);
    /// `""` for a whole key.
    pub name: &'q str,
    /// The value.
    pub value: &'q str,
}

/// A URL's query options, read against the backend's [`ConfigKey`] table.
///
/// A key given twice keeps its last value. [`options`](Self::options) yields
/// the known ones in key order; [`finish`](Self::finish) refuses any other
/// (a typo, another backend's option), listing the valid ones.
pub struct UrlQuery<K> {
    values: BTreeMap<String, String>,
    /// The URL (redacted) and where it came from, for messages.
    context: String,
    keys: std::marker::PhantomData<K>,
}

impl<K: ConfigKey> UrlQuery<K> {
    /// The query `pairs` of `url`, which came from `origin` (`environment
    /// variable LOCKMAN_URL`). `url` is only shown, redacted.
    pub fn new<Key: Into<String>, Value: Into<String>>(
        url: &str,
        origin: &str,
        pairs: impl IntoIterator<Item = (Key, Value)>,
    ) -> Self {
        UrlQuery {
            values: pairs.into_iter().map(|(key, value)| (key.into(), value.into())).collect(),
            context: format!("{} (from {origin})", redact_url(url)),
            keys: std::marker::PhantomData,
        }
    }

    /// The known options, in key order.
    pub fn options(&self) -> impl Iterator<Item = QueryOption<'_, K>> {
        self.values
            .iter()
            .filter_map(|(text, value)| K::find(text).map(|(key, name)| QueryOption { key, text, name, value }))
    }

    /// `option`'s value as a duration (`500ms`, `30s`, `5m`).
    ///
    /// # Errors
    ///
    /// [`bad`](Self::bad) with what is wrong with the text.
    pub fn duration(&self, option: &QueryOption<'_, K>) -> Result<Duration, LockError> {
        parse_duration(option.value).map_err(|problem| self.bad(option.text, problem))
    }

    /// `option`'s value as a yes or no (`1`, `true`, `yes`, an empty value;
    /// `0`, `false`, `no`).
    ///
    /// # Errors
    ///
    /// [`bad`](Self::bad) for anything else.
    pub fn flag(&self, option: &QueryOption<'_, K>) -> Result<bool, LockError> {
        match option.value {
            "" | "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            other => Err(self.bad(option.text, format!("{other:?} is not a yes or no: write {}=1", option.text))),
        }
    }

    /// A bad value (or combination) of the option `key`: "option `key` of
    /// URL (from ORIGIN): PROBLEM".
    pub fn bad(&self, key: &str, problem: impl fmt::Display) -> LockError {
        LockError::Config(format!("option `{key}` of {}: {problem}", self.context))
    }

    /// "URL (from ORIGIN)", with the password redacted, for other messages
    /// about the URL.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Refuses an option not in the table, listing every valid one.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`]: "unknown option `x` in URL (from ORIGIN);
    /// valid options here: …".
    pub fn finish(&self) -> Result<(), LockError> {
        match self.values.keys().find(|text| K::find(text).is_none()) {
            None => Ok(()),
            Some(text) => Err(LockError::Config(format!(
                "unknown option `{text}` in {}; valid options here: {}",
                self.context,
                K::valid()
            ))),
        }
    }
}

impl<K> fmt::Debug for UrlQuery<K> {
    /// Keys only: a value may be a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlQuery").field("context", &self.context).field("keys", &self.values.keys()).finish()
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h 30m` (humantime); the error says how to
/// write one, and for a bare number which unit to add.
///
/// ```
/// use std::time::Duration;
/// use lockman_core::url_options::parse_duration;
///
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert!(parse_duration("5").unwrap_err().contains("add a unit, e.g. 5s"));
/// ```
///
/// # Errors
///
/// What is wrong with `text`, quoting it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    humantime::parse_duration(trimmed).map_err(|e| {
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            // A bare number is the common slip: say which unit to add.
            format!("{text:?} has no unit: add a unit, e.g. {trimmed}s (or {trimmed}ms, {trimmed}m)")
        } else {
            format!("{text:?} is not a duration ({e}); write it like 500ms, 30s or 5m")
        }
    })
}

/// A secret (a password) kept in the file at `path`, without one trailing
/// newline (`\n` or `\r\n`). `what` names the file in errors ("the Redis
/// password file"); an error names the file and the problem, never the
/// contents. Files over 64 KiB, empty files and non-UTF-8 files are refused.
///
/// # Errors
///
/// The problem, as text for a [`LockError::Config`].
pub fn read_secret_file(path: &std::path::Path, what: &str) -> Result<String, String> {
    use std::io::Read;

    // A password is short; anything longer is not a password file.
    const LIMIT: u64 = 64 * 1024;
    let shown = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {what} {shown}: {e}"))?;
    if bytes.len() as u64 > LIMIT {
        return Err(format!("{what} {shown} is larger than {LIMIT} bytes: is it the right file?"));
    }
    let mut secret = String::from_utf8(bytes).map_err(|_| format!("{what} {shown} is not UTF-8 text"))?;
    if secret.ends_with('\n') {
        secret.pop();
        if secret.ends_with('\r') {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(format!("{what} {shown} is empty: write the password in it"));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Key {
        Lease,
        Flag,
    }

    impl ConfigKey for Key {
        const OPTIONS: &'static [UrlOption<Self>] = &[
            UrlOption::new(Key::Lease, "lease", "lease=DURATION"),
            UrlOption::new(Key::Flag, "flag.", "flag.NAME=FILE"),
        ];
    }

    fn query(pairs: &[(&str, &str)]) -> UrlQuery<Key> {
        UrlQuery::new("demo://:hunter2@h/0", "the test", pairs.iter().copied())
    }

    #[test]
    fn prefixes_need_a_name_and_whole_keys_match_whole() {
        assert_eq!(Key::find("flag.x"), Some((Key::Flag, "x")));
        assert_eq!(Key::find("flag."), None);
        assert_eq!(Key::find("leases"), None);
        assert_eq!(Key::Flag.as_str(), "flag.");
        assert!(Key::parse("lase").unwrap_err().to_string().contains("lease=DURATION, flag.NAME=FILE"));
    }

    #[test]
    fn errors_name_the_option_the_redacted_url_and_the_origin() {
        let query = query(&[("lease", "5"), ("zzz", "1")]);
        let option = query.options().next().expect("lease");
        let message = query.duration(&option).unwrap_err().to_string();
        assert!(
            message.contains("`lease`") && message.contains("add a unit") && message.contains("the test"),
            "{message}"
        );
        let message = query.finish().unwrap_err().to_string();
        assert!(message.contains("`zzz`") && message.contains("demo://:***@h/0"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn the_last_of_a_repeated_key_wins() {
        let query = query(&[("lease", "1s"), ("lease", "2s")]);
        let values: Vec<&str> = query.options().map(|option| option.value).collect();
        assert_eq!(values, ["2s"]);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("soon").unwrap_err().contains("500ms, 30s or 5m"));
    }
}
