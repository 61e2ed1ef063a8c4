//! Loading `Config`: defaults < `lockman.toml` (or `LOCKMAN_CONFIG`) <
//! environment, the rollout switch, and errors that name the key and where
//! the bad value came from. Every test runs in a figment `Jail` (its own
//! working directory and environment, one test at a time), which is why
//! these tests have a test binary of their own.

#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error, which is large.

use std::time::Duration;

use figment::Jail;
use lockman::{Config, LockError};

/// `Config::load`, with its error as a jail error.
fn load() -> figment::error::Result<Config> {
    Config::load().map_err(|e| figment::Error::from(e.to_string()))
}

fn load_err() -> String {
    match Config::load() {
        Ok(config) => panic!("loaded a bad configuration: {config:?}"),
        Err(LockError::Config(message)) => message,
        Err(other) => panic!("expected a configuration error, got {other}"),
    }
}

#[test]
fn defaults_are_the_memory_backend_waiting_forever() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let config = load()?;
        assert_eq!(config.lock_url().expect("url"), "memory://");
        assert_eq!((config.default_wait, config.lease, config.use_new_locks), (None, None, None));
        assert_eq!(config.bridge_url(), None);
        Ok(())
    });
}

#[test]
fn file_overrides_defaults_and_env_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "lockman.toml",
            r#"
            url = "file:///srv/locks"
            default_wait = "2s"
            lease = "45s"
            [redis]
            prefix = "from-file"
            "#,
        )?;
        let config = load()?;
        assert_eq!(config.url, "file:///srv/locks");
        assert_eq!(config.default_wait, Some(Duration::from_secs(2)));
        assert_eq!(config.redis.prefix.as_deref(), Some("from-file"));
        assert!(config.origin("url").contains("lockman.toml"), "{}", config.origin("url"));

        jail.set_env("LOCKMAN_URL", "redis://127.0.0.1:1/0");
        jail.set_env("LOCKMAN_DEFAULT_WAIT", "500ms");
        jail.set_env("LOCKMAN_REDIS__PREFIX", "from-env");
        let config = load()?;
        assert_eq!(config.url, "redis://127.0.0.1:1/0");
        assert_eq!(config.default_wait, Some(Duration::from_millis(500)));
        assert_eq!(config.lease, Some(Duration::from_secs(45)), "a key the environment does not set stays the file's");
        assert_eq!(config.redis.prefix.as_deref(), Some("from-env"));
        assert_eq!(config.origin("url"), "environment variable LOCKMAN_URL");
        Ok(())
    });
}

#[test]
fn lockman_config_names_another_file_which_must_exist() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("lockman.toml", r#"url = "file:///ignored""#)?;
        jail.create_file("site.toml", r#"url = "legacy-file:///app/GivTCP_1""#)?;
        jail.set_env("LOCKMAN_CONFIG", "site.toml");
        assert_eq!(load()?.url, "legacy-file:///app/GivTCP_1");

        jail.set_env("LOCKMAN_CONFIG", "missing.toml");
        let message = load_err();
        assert!(message.contains("LOCKMAN_CONFIG") && message.contains("missing.toml"), "{message}");
        Ok(())
    });
}

#[test]
fn bad_values_name_the_key_and_where_they_came_from() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("LOCKMAN_LEASE", "soon");
        let message = load_err();
        for expected in ["LEASE", "LOCKMAN_", "soon", "30s"] {
            assert!(message.contains(expected), "{message:?} does not mention {expected:?}");
        }

        jail.clear_env();
        jail.create_file("lockman.toml", "default_wait = \"forever-ish\"\n")?;
        let message = load_err();
        for expected in ["default_wait", "lockman.toml", "forever-ish"] {
            assert!(message.contains(expected), "{message:?} does not mention {expected:?}");
        }

        jail.clear_env();
        jail.create_file("lockman.toml", "")?;
        jail.set_env("USE_NEW_LOCKS", "maybe");
        let message = load_err();
        assert!(message.contains("USE_NEW_LOCKS"), "{message}");
        Ok(())
    });
}

#[test]
fn use_new_locks_switches_between_legacy_and_new_with_the_bridge() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("LOCKMAN_URL", "redis://127.0.0.1:1/0");
        jail.set_env("LOCKMAN_LEGACY_BRIDGE", "legacy-file:///app/GivTCP_1?givtcp=1");

        // Unset: the configured URL, bridged.
        let config = load()?;
        assert_eq!(config.lock_url().expect("url"), "redis://127.0.0.1:1/0");
        assert_eq!(config.bridge_url(), Some("legacy-file:///app/GivTCP_1?givtcp=1"));

        // Off: the legacy lockfiles alone, like the old daemon.
        jail.set_env("USE_NEW_LOCKS", "false");
        let config = load()?;
        assert_eq!(config.lock_url().expect("url"), "legacy-file:///app/GivTCP_1?givtcp=1");
        assert_eq!(config.bridge_url(), None);

        // An explicit legacy URL wins over the bridge's.
        jail.set_env("LOCKMAN_LEGACY_URL", "legacy-file:///app/GivTCP_2?givtcp=2");
        assert_eq!(load()?.lock_url().expect("url"), "legacy-file:///app/GivTCP_2?givtcp=2");

        // On: the new backend, bridged.
        jail.set_env("USE_NEW_LOCKS", "true");
        let config = load()?;
        assert_eq!(config.lock_url().expect("url"), "redis://127.0.0.1:1/0");
        assert!(config.bridge_url().is_some());
        Ok(())
    });
}

#[test]
fn switching_off_without_a_legacy_url_says_what_to_set() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("USE_NEW_LOCKS", "false");
        let config = load()?;
        let Err(LockError::Config(message)) = config.lock_url() else { panic!("no error without a legacy URL") };
        for expected in ["USE_NEW_LOCKS", "LOCKMAN_LEGACY_URL", "LOCKMAN_LEGACY_BRIDGE"] {
            assert!(message.contains(expected), "{message:?} does not mention {expected:?}");
        }
        Ok(())
    });
}

#[test]
fn from_env_connects_to_what_the_environment_names() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let dir = jail.directory().join("locks");
        jail.set_env("LOCKMAN_URL", format!("file://{}", dir.display()));
        jail.set_env("LOCKMAN_DEFAULT_WAIT", "250ms");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let backends = lockman::from_env().await.expect("from_env");
            assert_eq!(backends.locks.name(), "file");
            assert!(backends.chosen.starts_with("file://"), "{}", backends.chosen);
            assert_eq!(backends.acquire_options().wait, lockman::Wait::Timeout(Duration::from_millis(250)));
            let guard = backends.locks.acquire("inverter_read", backends.acquire_options()).await.expect("acquire");
            guard.release().await.expect("release");
        });
        assert!(dir.is_dir(), "the lock directory was not created");

        // And from a plain thread, through the blocking facade.
        let backends = lockman::blocking::from_env().expect("blocking from_env");
        backends.locks.lock("inverter_read").expect("lock").release().expect("release");
        Ok(())
    });
}

#[test]
fn a_named_file_and_an_explicit_url_override_the_usual_sources() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("lockman.toml", r#"url = "file:///ignored""#)?;
        jail.create_file("ops.toml", "url = \"file:///from-ops\"\nlease = \"10s\"\n")?;
        jail.set_env("USE_NEW_LOCKS", "false");
        jail.set_env("LOCKMAN_LEGACY_URL", "legacy-file:///app/GivTCP_1");
        let mut config = Config::load_file("ops.toml").map_err(|e| figment::Error::from(e.to_string()))?;
        assert_eq!(config.url, "file:///from-ops");
        assert_eq!(config.lease, Some(Duration::from_secs(10)));
        assert_eq!(config.lock_url().expect("url"), "legacy-file:///app/GivTCP_1", "the switch still applies");

        config.override_url("redis://127.0.0.1:1/0", "--url");
        assert_eq!(config.lock_url().expect("url"), "redis://127.0.0.1:1/0", "an explicit URL beats the switch");
        assert_eq!(config.origin("url"), "--url");

        let Err(LockError::Config(message)) = Config::load_file("missing.toml") else {
            panic!("loaded a missing file")
        };
        assert!(message.contains("missing.toml"), "{message}");
        Ok(())
    });
}

/// A TOML syntax error quotes the offending line; a type error may quote a
/// value: neither shows a password, whatever it holds (`@`, `:`, `%40`,
/// spaces, quotes), and the error still says where the problem is.
#[test]
fn configuration_errors_never_show_a_password() {
    for password in ["s3cr@t:hu%40nter2", "s3cr et\\\"hu@nter2"] {
        Jail::expect_with(|jail| {
            jail.clear_env();
            // No closing quote: a syntax error on line 2.
            jail.create_file("lockman.toml", &format!("lease = \"30s\"\nurl = \"redis://:{password}@cache:6379/0\n"))?;
            let message = load_err();
            assert!(!message.contains("s3cr") && !message.contains("nter2"), "{message}");
            assert!(message.contains("lockman.toml") && message.contains("line 2"), "{message}");
            // A string where a boolean belongs.
            jail.create_file("lockman.toml", &format!("use_new_locks = \"redis://:{password}@cache:6379/0\"\n"))?;
            let message = load_err();
            assert!(!message.contains("s3cr") && !message.contains("nter2"), "{message}");
            assert!(message.contains("use_new_locks"), "{message}");
            Ok(())
        });
    }
}

/// `LOCKMAN_REDIS_PASSWORD` and `redis.password_file` are read, and `Debug`
/// shows neither the password nor a bad configuration's secrets.
#[test]
fn the_redis_password_can_come_from_the_environment_or_a_file_key() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("lockman.toml", "[redis]\npassword_file = \"/run/secrets/redis\"\n")?;
        jail.set_env("LOCKMAN_REDIS_PASSWORD", "p@ss:w%40rd");
        let config = load()?;
        assert_eq!(config.redis.password.as_deref(), Some("p@ss:w%40rd"));
        assert_eq!(config.redis.password_file.as_deref(), Some(std::path::Path::new("/run/secrets/redis")));
        let debug = format!("{config:?}");
        assert!(!debug.contains("w%40rd") && debug.contains("/run/secrets/redis"), "{debug}");
        Ok(())
    });
}

/// The `[etcd]` section: from the file, the environment over it (endpoints
/// as one comma-separated string), the password from `LOCKMAN_ETCD_PASSWORD`
/// only, and `Debug` without it.
#[test]
fn the_etcd_section_comes_from_the_file_and_the_environment() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "lockman.toml",
            r#"
            url = "etcd://"
            lease = "15s"
            [etcd]
            endpoints = ["10.0.0.1:2379", "10.0.0.2:2379"]
            prefix = "givtcp"
            connect_timeout = "1s"
            response_timeout = "3s"
            user = "givtcp"
            password_file = "/run/secrets/etcd"
            tls_ca = "/etc/etcd/ca.pem"
            "#,
        )?;
        let config = load()?;
        let etcd = &config.etcd;
        assert_eq!(etcd.endpoints, Some(vec!["10.0.0.1:2379".to_owned(), "10.0.0.2:2379".to_owned()]));
        assert_eq!(etcd.prefix.as_deref(), Some("givtcp"));
        assert_eq!(
            (etcd.connect_timeout, etcd.response_timeout),
            (Some(Duration::from_secs(1)), Some(Duration::from_secs(3)))
        );
        assert_eq!(etcd.user.as_deref(), Some("givtcp"));
        assert_eq!(etcd.password_file.as_deref(), Some(std::path::Path::new("/run/secrets/etcd")));
        assert_eq!(etcd.tls_ca.as_deref(), Some(std::path::Path::new("/etc/etcd/ca.pem")));
        assert_eq!(etcd.password, None);
        assert_eq!(config.lease, Some(Duration::from_secs(15)));

        jail.set_env("LOCKMAN_ETCD__ENDPOINTS", "a:1, b:2,c:3");
        jail.set_env("LOCKMAN_ETCD__PREFIX", "from-env");
        jail.set_env("LOCKMAN_ETCD__RESPONSE_TIMEOUT", "500ms");
        jail.set_env("LOCKMAN_ETCD_PASSWORD", "etcd-s3cret");
        let config = load()?;
        let etcd = &config.etcd;
        assert_eq!(etcd.endpoints, Some(vec!["a:1".to_owned(), "b:2".to_owned(), "c:3".to_owned()]));
        assert_eq!(etcd.prefix.as_deref(), Some("from-env"));
        assert_eq!(etcd.response_timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            etcd.connect_timeout,
            Some(Duration::from_secs(1)),
            "a key the environment does not set stays the file's"
        );
        assert_eq!(etcd.password.as_deref(), Some("etcd-s3cret"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("etcd-s3cret") && debug.contains("from-env"), "{debug}");

        // The password is never read from the file.
        jail.clear_env();
        jail.create_file("lockman.toml", "[etcd]\npassword = \"in-the-file\"\n")?;
        assert_eq!(load()?.etcd.password, None);
        Ok(())
    });
}

#[test]
fn bad_etcd_values_name_the_key_and_where_they_came_from() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("LOCKMAN_ETCD__CONNECT_TIMEOUT", "soonish");
        let message = load_err();
        for expected in ["CONNECT_TIMEOUT", "soonish"] {
            assert!(message.contains(expected), "{message:?} does not mention {expected:?}");
        }
        jail.clear_env();
        jail.create_file("lockman.toml", "[etcd]\nendpoints = \"a:1,,b:2\"\n")?;
        let message = load_err();
        for expected in ["endpoints", "lockman.toml", "empty endpoint"] {
            assert!(message.contains(expected), "{message:?} does not mention {expected:?}");
        }
        Ok(())
    });
}
