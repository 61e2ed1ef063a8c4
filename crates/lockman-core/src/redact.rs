//! Hiding passwords in backend URLs, for everything lockman prints: errors,
//! `Debug`, logs. One implementation, used by every crate.

/// `url` with any password replaced by `***`; the user name stays.
///
/// The userinfo of a URL ends at the *last* `@` before the host (as the
/// URL standard and the `url` crate read it), so a password containing `@`,
/// `:` or `%40` is hidden whole. A string that does not parse as a URL, or
/// whose parse leaves an `@` after `://` unexplained (a password holding a
/// `/`, which would make the parser see a path), has everything between
/// `://` and its last `@` hidden: `redis://***@host:6379/0`. Over-hiding is
/// the safe mistake.
///
/// ```
/// use lockman_core::redact_url;
///
/// assert_eq!(redact_url("redis://:hunter2@cache:6379/0"), "redis://:***@cache:6379/0");
/// assert_eq!(redact_url("redis://alice:p@ss:w@rd@cache/0"), "redis://alice:***@cache/0");
/// assert_eq!(redact_url("redis://:pa/ss@cache/0"), "redis://***@cache/0");
/// assert_eq!(redact_url("file:///run/locks"), "file:///run/locks");
/// ```
pub fn redact_url(url: &str) -> String {
    // Read by hand, not with the `url` crate: that would pull an IDNA/ICU
    // stack into every build of lockman for one function. The reading
    // follows the URL standard where it matters here: the authority ends at
    // the first `/`, `?` or `#` (or `\`), and its userinfo at the last `@`.
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_userinfo(url);
    };
    let authority_end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            // A user name alone is not a secret, unless an `@` further on
            // suggests the password ran on past a `/`, `?` or `#`.
            None if tail.contains('@') => redact_userinfo(url),
            None => url.to_owned(),
        },
        // An `@` after a host: the password may hold a `/`, `?` or `#` that
        // ended the authority early. (A `file:///dir@x` path has no host.)
        None if !authority.is_empty() && tail.contains('@') => redact_userinfo(url),
        None => url.to_owned(),
    }
}

/// Everything between `://` (or the start) and the last `@` replaced by `***`.
fn redact_userinfo(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_with_at_colon_and_escapes_are_hidden_whole() {
        for (url, expected) in [
            ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
            ("rediss://alice:hunter2@h/1", "rediss://alice:***@h/1"),
            ("redis://:p@ss@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://u:p@ss:w@rd@h/0?prefix=x", "redis://u:***@h/0?prefix=x"),
            ("redis://:p%40ss%3Aw@h/0", "redis://:***@h/0"),
            ("redis://:p:a:s:s@h/0", "redis://:***@h/0"),
            ("redis://u:12/x@h/0", "redis://***@h/0"),
            ("redis://:pa#ss@h/0", "redis://***@h/0"),
            ("redis://:pa ss@h/0", "redis://:***@h/0"),
            ("not a url :secret@host", "***@host"),
            ("redis://alice@h/0", "redis://alice@h/0"),
            ("redis://h:6379", "redis://h:6379"),
            ("file:///home/me@corp/locks", "file:///home/me@corp/locks"),
            ("memory://", "memory://"),
        ] {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }
}
