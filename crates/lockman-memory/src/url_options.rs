//! `memory://` and `memory://NAME` URLs: which map, and its one option.

use std::str::FromStr;

use lockman_core::LockError;
use lockman_core::url_options::{ConfigKey, UrlOption, UrlQuery};

use crate::MemoryBackend;

/// The query options of a `memory://` URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryConfigKey {
    /// `private=1`: a map of its own, for tests that run in parallel in one
    /// process (only for `memory://`, not `memory://NAME`).
    Private,
}

impl ConfigKey for MemoryConfigKey {
    const OPTIONS: &'static [UrlOption<Self>] = &[UrlOption::new(MemoryConfigKey::Private, "private", "private=1")];
}

impl FromStr for MemoryConfigKey {
    type Err = LockError;

    fn from_str(text: &str) -> Result<Self, LockError> {
        Self::parse(text)
    }
}

impl MemoryBackend {
    /// The map a `memory://` URL names: `memory://` the process-wide map
    /// named `""`, `memory://NAME` the one named `NAME` (see
    /// [`MemoryBackend::named`]), `memory://?private=1` a private map
    /// ([`MemoryBackend::new`]). `origin` says where the URL came from, for
    /// errors.
    ///
    /// ```
    /// use lockman_memory::MemoryBackend;
    ///
    /// let url = url::Url::parse("memory://poller").unwrap();
    /// let backend = MemoryBackend::from_url(&url, "the example").unwrap();
    /// assert_eq!(backend.map_name(), Some("poller"));
    /// let private = url::Url::parse("memory://?private=1").unwrap();
    /// assert_eq!(MemoryBackend::from_url(&private, "the example").unwrap().map_name(), None);
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] naming the URL (redacted) and `origin`: an
    /// unknown option (listing the valid ones), a bad value, a user,
    /// password, port or path, a map name with other characters than
    /// letters, digits, `-`, `_` and `.`, or a name together with `private`.
    pub fn from_url(url: &url::Url, origin: &str) -> Result<MemoryBackend, LockError> {
        let query = UrlQuery::<MemoryConfigKey>::new(url.as_str(), origin, url.query_pairs());
        let mut private = false;
        for option in query.options() {
            match option.key {
                MemoryConfigKey::Private => private = query.flag(&option)?,
            }
        }
        query.finish()?;
        let name = map_name(url, &query)?;
        if private && !name.is_empty() {
            return Err(LockError::Config(format!(
                "{} names the shared map {name:?} and asks for a private one: write memory://{name} to share it, \
                 or memory://?private=1 for a map of its own",
                query.context()
            )));
        }
        Ok(if private { MemoryBackend::new() } else { MemoryBackend::named(&name) })
    }
}

/// The map name of `memory://NAME` (`""` for `memory://`).
fn map_name(url: &url::Url, query: &UrlQuery<MemoryConfigKey>) -> Result<String, LockError> {
    let bad = |problem: &str| {
        LockError::Config(format!(
            "{} {problem}: write memory:// or memory://NAME (letters, digits, `-`, `_`, `.`)",
            query.context()
        ))
    };
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(bad("has a user, password or port, which a memory map has not"));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(bad("has a path after the map name"));
    }
    let name = url.host_str().unwrap_or_default();
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(bad("has a map name with characters other than letters, digits, `-`, `_` and `.`"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str) -> String {
        let url = url::Url::parse(url).expect("a URL");
        match MemoryBackend::from_url(&url, "the test") {
            Ok(_) => panic!("{url} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    /// Every key of the table parses, round-trips through `as_str`, and is
    /// listed in the unknown-option error: parser and message cannot drift.
    #[test]
    fn every_option_parses_and_is_listed() {
        let message = error("memory://?nosuch=1");
        assert!(message.contains("the test"), "{message}");
        lockman_testkit::url_options::check_config_keys::<MemoryConfigKey>(&message);
    }

    #[test]
    fn a_bad_value_names_the_option() {
        let message = error("memory://?private=maybe");
        assert!(message.contains("`private`") && message.contains("not a yes or no"), "{message}");
    }

    #[test]
    fn names_and_private_maps() {
        let named = MemoryBackend::from_url(&url::Url::parse("memory://a.b-c_1/").expect("URL"), "t").expect("ok");
        assert_eq!(named.map_name(), Some("a.b-c_1"));
        assert!(error("memory://x?private=1").contains("asks for a private one"));
        assert!(error("memory://u:hunter2@x").contains("memory://u:***@x"));
    }
}
