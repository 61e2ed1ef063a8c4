//! `file://` and `legacy-file://` URLs: each flavour's options, read from
//! one table per flavour that also lists them in errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lockman_core::LockError;
use lockman_core::url_options::{ConfigKey, QueryOption, UrlOption, UrlQuery};

use crate::{FileOptions, FlagDirOptions, LegacyOptions, LegacyPolicy, LegacyResource};

/// The query options of a `file:///dir` URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileConfigKey {
    /// `mode=kernel` (default: kernel locks) or `mode=lease` (lease files, for SMB/NFS).
    Mode,
    /// `lease=30s`: the default lease ([`FileOptions::default_lease`]; lease mode only).
    Lease,
    /// `dir_mode=0700`: [`FileOptions::dir_mode`], also for the flag directory.
    DirMode,
    /// `file_mode=0660`: [`FileOptions::file_mode`], also for flag files.
    FileMode,
    /// `loss_check=1s`: [`FileOptions::loss_check_interval`].
    LossCheck,
    /// `keep_open=64`: [`FileOptions::keep_open`] (kernel locks only).
    KeepOpen,
    /// `flag.NAME=FILE`: keep flag `NAME` in the file `FILE` ([`FlagDirOptions::file_name`]).
    Flag,
}

impl ConfigKey for FileConfigKey {
    const OPTIONS: &'static [UrlOption<Self>] = &[
        UrlOption::new(FileConfigKey::Mode, "mode", "mode=lease|kernel"),
        UrlOption::new(FileConfigKey::Lease, "lease", "lease=DURATION"),
        UrlOption::new(FileConfigKey::DirMode, "dir_mode", "dir_mode=0700"),
        UrlOption::new(FileConfigKey::FileMode, "file_mode", "file_mode=0660"),
        UrlOption::new(FileConfigKey::LossCheck, "loss_check", "loss_check=DURATION"),
        UrlOption::new(FileConfigKey::KeepOpen, "keep_open", "keep_open=N"),
        UrlOption::new(FileConfigKey::Flag, "flag.", "flag.NAME=FILE"),
    ];
}

impl FromStr for FileConfigKey {
    type Err = LockError;

    fn from_str(text: &str) -> Result<Self, LockError> {
        Self::parse(text)
    }
}

/// The query options of a `legacy-file:///dir` URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LegacyConfigKey {
    /// `givtcp=N`: GivTCP's files for inverter `N` ([`LegacyOptions::givtcp`]).
    Givtcp,
    /// `lock.RESOURCE=FILE`: `RESOURCE`'s legacy file ([`LegacyOptions::resource`]).
    Lock,
    /// `policy.RESOURCE=skip|wait`: what a busy `lock.RESOURCE` does ([`LegacyResource::policy`]).
    Policy,
    /// `stale_after=5m`: the default stale age ([`LegacyOptions::stale_after`]).
    StaleAfter,
    /// `stale_after.RESOURCE=60s`: `lock.RESOURCE`'s stale age ([`LegacyResource::stale_after`]).
    ResourceStaleAfter,
    /// `dir_mode=0700`: [`LegacyOptions::dir_mode`], also for the flag directory.
    DirMode,
    /// `file_mode=0660`: [`LegacyOptions::file_mode`], also for flag files.
    FileMode,
    /// `flag.NAME=FILE`: keep flag `NAME` in the file `FILE` ([`FlagDirOptions::file_name`]).
    Flag,
}

impl ConfigKey for LegacyConfigKey {
    const OPTIONS: &'static [UrlOption<Self>] = &[
        UrlOption::new(LegacyConfigKey::Givtcp, "givtcp", "givtcp=N"),
        UrlOption::new(LegacyConfigKey::Lock, "lock.", "lock.RESOURCE=FILE"),
        UrlOption::new(LegacyConfigKey::Policy, "policy.", "policy.RESOURCE=skip|wait"),
        UrlOption::new(LegacyConfigKey::StaleAfter, "stale_after", "stale_after=DURATION"),
        UrlOption::new(LegacyConfigKey::ResourceStaleAfter, "stale_after.", "stale_after.RESOURCE=DURATION"),
        UrlOption::new(LegacyConfigKey::DirMode, "dir_mode", "dir_mode=0700"),
        UrlOption::new(LegacyConfigKey::FileMode, "file_mode", "file_mode=0660"),
        UrlOption::new(LegacyConfigKey::Flag, "flag.", "flag.NAME=FILE"),
    ];
}

impl FromStr for LegacyConfigKey {
    type Err = LockError;

    fn from_str(text: &str) -> Result<Self, LockError> {
        Self::parse(text)
    }
}

/// What a `file://` URL asks for: the lock files' options, which flavour,
/// and the flag directory (the same directory).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FileUrl {
    /// Open with [`FileBackend::open`](crate::FileBackend::open), or
    /// [`LeaseFileBackend::open`](crate::LeaseFileBackend::open) if `lease_mode`.
    pub options: FileOptions,
    /// `mode=lease`: lease files instead of kernel locks.
    pub lease_mode: bool,
    /// Flags beside the locks: open with [`FileStatusManager::open`](crate::FileStatusManager::open).
    pub flags: FlagDirOptions,
}

/// What a `legacy-file://` URL asks for: the legacy options and the flag
/// directory (the same directory, where old daemons read their flags).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LegacyUrl {
    /// Open with [`LegacyFileBackend::open`](crate::LegacyFileBackend::open).
    pub options: LegacyOptions,
    /// Flags beside the legacy files: open with [`FileStatusManager::open`](crate::FileStatusManager::open).
    pub flags: FlagDirOptions,
}

impl FileOptions {
    /// Reads `file:///dir?options` (see [`FileConfigKey`]): the directory,
    /// `mode=lease|kernel`, `lease=DURATION` (lease mode only),
    /// `dir_mode=0700`, `file_mode=0660`, `loss_check=DURATION`,
    /// `keep_open=N` (kernel locks only) and `flag.NAME=FILE`.
    /// `default_lease` applies where the URL gives no `lease` (a configured
    /// default: the URL wins). `origin` says where the URL came from, for
    /// errors.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockman_file::FileOptions;
    ///
    /// let url = url::Url::parse("file:///srv/locks?mode=lease&lease=10s&dir_mode=2770").unwrap();
    /// let file = FileOptions::from_url(&url, "the example", Some(Duration::from_secs(60))).unwrap();
    /// assert!(file.lease_mode);
    /// assert_eq!(file.options.dir(), std::path::Path::new("/srv/locks"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] naming the URL (redacted) and `origin`: no
    /// absolute directory, an unknown option (listing the valid ones), or a
    /// bad value (naming the option).
    pub fn from_url(url: &url::Url, origin: &str, default_lease: Option<Duration>) -> Result<FileUrl, LockError> {
        let dir = dir_of(url, origin)?;
        let query = UrlQuery::<FileConfigKey>::new(url.as_str(), origin, url.query_pairs());
        let mut options = FileOptions::new(&dir);
        let mut flags = FlagDirOptions::new(&dir);
        let mut lease_mode = false;
        let mut lease = None;
        let mut keep_open = None;
        for option in query.options() {
            match option.key {
                FileConfigKey::Mode => {
                    lease_mode = match option.value {
                        "kernel" => false,
                        "lease" => true,
                        other => {
                            return Err(query.bad(option.text, format!("{other:?} is not a mode: use kernel or lease")));
                        }
                    }
                }
                FileConfigKey::Lease => lease = Some(query.duration(&option)?),
                FileConfigKey::DirMode => {
                    let mode = octal_mode(&query, &option)?;
                    options = options.dir_mode(mode);
                    flags = flags.dir_mode(mode);
                }
                FileConfigKey::FileMode => {
                    let mode = octal_mode(&query, &option)?;
                    options = options.file_mode(mode);
                    flags = flags.file_mode(mode);
                }
                FileConfigKey::LossCheck => options = options.loss_check_interval(query.duration(&option)?),
                FileConfigKey::KeepOpen => {
                    let resources = option.value.parse().map_err(|_| {
                        query.bad(
                            option.text,
                            format!("{:?} is not a number of resources (0 keeps none open)", option.value),
                        )
                    })?;
                    keep_open = Some(resources);
                }
                FileConfigKey::Flag => flags = flags.file_name(option.name, option.value),
            }
        }
        if lease.is_some() && !lease_mode {
            // Kernel locks have no lease (they end with the process): accepting
            // the option would promise an expiry that never happens.
            return Err(query.bad(
                "lease",
                "kernel-locked files have no lease (the lock ends with the process); `lease` only applies to \
                 mode=lease: add mode=lease for lease files (SMB/NFS), or remove `lease`",
            ));
        }
        if let Some(resources) = keep_open {
            if lease_mode {
                return Err(query.bad(
                    "keep_open",
                    "lease files are not kept open between grants; `keep_open` only applies to kernel locks \
                     (without mode=lease): remove it",
                ));
            }
            options = options.keep_open(resources);
        }
        if let Some(lease) = lease.or(default_lease) {
            options = options.default_lease(lease);
        }
        query.finish()?;
        Ok(FileUrl { options, lease_mode, flags })
    }
}

impl LegacyOptions {
    /// Reads `legacy-file:///dir?options` (see [`LegacyConfigKey`]): the
    /// directory, `givtcp=N`, `lock.RESOURCE=FILE`,
    /// `policy.RESOURCE=skip|wait`, `stale_after=DURATION`,
    /// `stale_after.RESOURCE=DURATION`, `dir_mode=0700`, `file_mode=0660` and
    /// `flag.NAME=FILE`. `origin` says where the URL came from, for errors.
    ///
    /// ```
    /// use lockman_file::LegacyOptions;
    ///
    /// let url = url::Url::parse("legacy-file:///app/GivTCP_1?givtcp=1&lock.cache=.cache_lock&policy.cache=skip").unwrap();
    /// let legacy = LegacyOptions::from_url(&url, "the example").unwrap();
    /// assert_eq!(legacy.flags.dir(), std::path::Path::new("/app/GivTCP_1"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] naming the URL (redacted) and `origin`: no
    /// absolute directory, an unknown option (listing the valid ones), a bad
    /// value (naming the option), or a per-resource option without its
    /// `lock.RESOURCE`.
    pub fn from_url(url: &url::Url, origin: &str) -> Result<LegacyUrl, LockError> {
        let dir = dir_of(url, origin)?;
        let query = UrlQuery::<LegacyConfigKey>::new(url.as_str(), origin, url.query_pairs());
        let mut options = LegacyOptions::new(&dir);
        let mut flags = FlagDirOptions::new(&dir);
        let (mut dir_mode, mut file_mode, mut stale_after) = (None, None, None);
        let mut mappings: BTreeMap<&str, LegacyResource> = BTreeMap::new();
        // Applied once every `lock.RESOURCE` is known, whatever the order.
        let mut per_resource: Vec<(QueryOption<'_, LegacyConfigKey>, PerResource)> = Vec::new();
        for option in query.options() {
            match option.key {
                LegacyConfigKey::Givtcp => {
                    let n = option
                        .value
                        .parse()
                        .map_err(|_| query.bad(option.text, format!("{:?} is not an inverter number", option.value)))?;
                    options = LegacyOptions::givtcp(&dir, n);
                }
                LegacyConfigKey::Lock => {
                    mappings.insert(option.name, LegacyResource::new(option.value));
                }
                LegacyConfigKey::Policy => {
                    let policy = match option.value {
                        "skip" => LegacyPolicy::SkipIfBusy,
                        "wait" => LegacyPolicy::Wait,
                        other => return Err(query.bad(option.text, format!("{other:?} is not skip or wait"))),
                    };
                    per_resource.push((option, PerResource::Policy(policy)));
                }
                LegacyConfigKey::StaleAfter => stale_after = Some(query.duration(&option)?),
                LegacyConfigKey::ResourceStaleAfter => {
                    per_resource.push((option, PerResource::StaleAfter(query.duration(&option)?)));
                }
                LegacyConfigKey::DirMode => dir_mode = Some(octal_mode(&query, &option)?),
                LegacyConfigKey::FileMode => file_mode = Some(octal_mode(&query, &option)?),
                LegacyConfigKey::Flag => flags = flags.file_name(option.name, option.value),
            }
        }
        for (option, setting) in per_resource {
            let mapping = mappings.remove(option.name).ok_or_else(|| {
                query.bad(
                    option.text,
                    format!("there is no `lock.{0}=FILE` to apply it to (name the legacy file first)", option.name),
                )
            })?;
            let mapping = match setting {
                PerResource::Policy(policy) => mapping.policy(policy),
                PerResource::StaleAfter(age) => mapping.stale_after(age),
            };
            mappings.insert(option.name, mapping);
        }
        // Set after `givtcp`, which starts the options afresh.
        if let Some(mode) = dir_mode {
            options = options.dir_mode(mode);
            flags = flags.dir_mode(mode);
        }
        if let Some(mode) = file_mode {
            options = options.file_mode(mode);
            flags = flags.file_mode(mode);
        }
        if let Some(age) = stale_after {
            options = options.stale_after(age);
        }
        for (resource, mapping) in mappings {
            options = options.resource(resource, mapping);
        }
        query.finish()?;
        Ok(LegacyUrl { options, flags })
    }
}

/// A per-resource legacy option, applied to its `lock.RESOURCE` mapping.
enum PerResource {
    Policy(LegacyPolicy),
    StaleAfter(Duration),
}

/// The directory a `file:///dir` or `legacy-file:///dir` URL names.
fn dir_of(url: &url::Url, origin: &str) -> Result<PathBuf, LockError> {
    let dir = url.to_file_path().ok().filter(|path| path.as_os_str().len() > 1);
    dir.ok_or_else(|| {
        LockError::Config(format!(
            "{} (from {origin}) does not name a directory: write {}:///absolute/path/to/dir",
            lockman_core::redact_url(url.as_str()),
            url.scheme()
        ))
    })
}

/// `dir_mode=0700`, `file_mode=0660`: an octal permission mode.
fn octal_mode<K: ConfigKey>(query: &UrlQuery<K>, option: &QueryOption<'_, K>) -> Result<u32, LockError> {
    u32::from_str_radix(option.value.trim_start_matches("0o"), 8).ok().filter(|mode| *mode <= 0o7777).ok_or_else(|| {
        let example = if option.text == "dir_mode" { "0700" } else { "0660" };
        query.bad(option.text, format!("{:?} is not an octal mode like {example}", option.value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).expect("a URL")
    }

    fn file_error(text: &str) -> String {
        FileOptions::from_url(&url(text), "the test", None).expect_err("accepted").to_string()
    }

    fn legacy_error(text: &str) -> String {
        LegacyOptions::from_url(&url(text), "the test").expect_err("accepted").to_string()
    }

    /// Every key of each table parses, round-trips through `as_str`, and is
    /// listed in the unknown-option error: parser and message cannot drift.
    #[test]
    fn every_option_parses_and_is_listed() {
        use lockman_testkit::url_options::check_config_keys;

        let message = file_error("file:///tmp/d?nosuch=1");
        assert!(message.contains("the test"), "{message}");
        check_config_keys::<FileConfigKey>(&message);
        check_config_keys::<LegacyConfigKey>(&legacy_error("legacy-file:///tmp/d?nosuch=1"));
    }

    /// A URL setting every option of the table is accepted.
    #[test]
    fn every_option_is_read() {
        let all = "mode=lease&lease=5s&dir_mode=2770&file_mode=0660&loss_check=200ms&flag.fc=.FCRunning1";
        let file = FileOptions::from_url(&url(&format!("file:///tmp/d?{all}")), "t", None).expect("file");
        assert!(file.lease_mode);
        let kernel = FileOptions::from_url(&url("file:///tmp/d?keep_open=0"), "t", None).expect("keep_open");
        assert!(!kernel.lease_mode);
        let all = "givtcp=2&lock.cache=.c&policy.cache=wait&stale_after=1m&stale_after.cache=10s&dir_mode=0700\
                   &file_mode=0600&flag.fc=.FCRunning2";
        LegacyOptions::from_url(&url(&format!("legacy-file:///tmp/d?{all}")), "t").expect("legacy");
    }

    #[test]
    fn a_bad_value_names_the_option() {
        for (message, key) in [
            (file_error("file:///tmp/d?mode=fast"), "`mode`"),
            (file_error("file:///tmp/d?mode=lease&lease=soon"), "`lease`"),
            (file_error("file:///tmp/d?dir_mode=rwx"), "`dir_mode`"),
            (file_error("file:///tmp/d?file_mode=9"), "`file_mode`"),
            (file_error("file:///tmp/d?loss_check=5"), "`loss_check`"),
            (file_error("file:///tmp/d?keep_open=many"), "`keep_open`"),
            (file_error("file:///tmp/d?mode=lease&keep_open=8"), "`keep_open`"),
            (file_error("file:///tmp/d?lease=5s"), "`lease`"),
            (legacy_error("legacy-file:///tmp/d?givtcp=x"), "`givtcp`"),
            (legacy_error("legacy-file:///tmp/d?lock.c=f&policy.c=maybe"), "`policy.c`"),
            (legacy_error("legacy-file:///tmp/d?policy.c=skip"), "`policy.c`"),
            (legacy_error("legacy-file:///tmp/d?stale_after.c=1s"), "`stale_after.c`"),
            (legacy_error("legacy-file:///tmp/d?stale_after=x"), "`stale_after`"),
        ] {
            assert!(message.contains(key) && message.contains("the test"), "{key}: {message}");
        }
    }

    #[test]
    fn the_url_wins_over_the_default_lease() {
        let lease = Some(Duration::from_secs(60));
        let file = FileOptions::from_url(&url("file:///tmp/d?mode=lease&lease=5s"), "t", lease).expect("file");
        assert_eq!(file.options.default_lease, Duration::from_secs(5));
        let file = FileOptions::from_url(&url("file:///tmp/d?mode=lease"), "t", lease).expect("file");
        assert_eq!(file.options.default_lease, Duration::from_secs(60));
    }
}
