//! A check for a backend's URL option table (a [`ConfigKey`] enum), for
//! the unit tests of the backend's `from_url`.

use std::str::FromStr;

use lockman_core::url_options::ConfigKey;

/// Panics unless every option of `K`'s table parses (with `FromStr`) to its
/// key, round-trips through [`ConfigKey::as_str`], and is listed in
/// `unknown_option_error` — the backend's error for a URL with the unknown
/// option `nosuch`, which must name it too. Parser and message then cannot
/// drift apart.
///
/// ```
/// use lockman_core::url_options::{ConfigKey, UrlOption, UrlQuery};
///
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// enum DemoKey { Lease }
/// impl ConfigKey for DemoKey {
///     const OPTIONS: &'static [UrlOption<Self>] = &[UrlOption::new(DemoKey::Lease, "lease", "lease=DURATION")];
/// }
/// impl std::str::FromStr for DemoKey {
///     type Err = lockman_core::LockError;
///     fn from_str(text: &str) -> Result<Self, Self::Err> { Self::parse(text) }
/// }
///
/// let error = UrlQuery::<DemoKey>::new("demo://h", "a test", [("nosuch", "1")]).finish().unwrap_err();
/// lockman_testkit::url_options::check_config_keys::<DemoKey>(&error.to_string());
/// ```
pub fn check_config_keys<K: ConfigKey + FromStr>(unknown_option_error: &str) {
    assert!(unknown_option_error.contains("`nosuch`"), "the error does not name the option: {unknown_option_error}");
    for option in K::OPTIONS {
        // A prefix option (`flag.`) is written with a name after it.
        let written = if option.is_prefix() { format!("{}x", option.name()) } else { option.name().to_owned() };
        assert!(written.parse::<K>().ok() == Some(*option.key()), "{written:?} does not parse to {:?}", option.key());
        assert_eq!(option.key().as_str(), option.name(), "as_str of {:?}", option.key());
        assert!(unknown_option_error.contains(option.help()), "{unknown_option_error} does not list {}", option.help());
    }
}
