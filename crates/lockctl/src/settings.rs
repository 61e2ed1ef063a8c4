//! Which backend to talk to: lockman's configuration, `--config`, `--url`;
//! and the process-wide set-up (logging, the metrics exporter).

use std::net::SocketAddr;
use std::path::Path;

use lockman::{Backends, Config, LockError};

use crate::cli::Global;
use crate::exit::{self, Failure};

/// Loads lockman's configuration as every lockman program does, with
/// `--config` naming the file and `--url` replacing the lock URL, and connects.
pub async fn connect(global: &Global) -> Result<Backends, Failure> {
    let config = load(global)?;
    Ok(lockman::connect_with(&config).await?)
}

/// The configuration `global` selects.
///
/// * `--config PATH`: that TOML file instead of `lockman.toml` or
///   `LOCKMAN_CONFIG`; `LOCKMAN_*` variables still apply on top, as with
///   [`Config::load`].
/// * `--url URL`: the lock URL, over anything configured. It also overrides
///   `USE_NEW_LOCKS=false` (which would otherwise pick the legacy URL and
///   ignore `--url`); a configured legacy bridge and `status_url` still apply.
pub fn load(global: &Global) -> Result<Config, Failure> {
    let mut config = match &global.config {
        Some(path) => load_file(path)?,
        None => Config::load()?,
    };
    if let Some(url) = &global.url {
        // `for_url` records where the URL came from for error messages (the
        // loaded config would say "the default `url`"); the rest is copied.
        let loaded = config;
        config = Config::for_url(url.clone());
        config.status_url = loaded.status_url;
        config.default_wait = loaded.default_wait;
        config.lease = loaded.lease;
        config.legacy_url = loaded.legacy_url;
        config.legacy_bridge = loaded.legacy_bridge;
        config.redis = loaded.redis;
        if loaded.use_new_locks == Some(false) {
            tracing::info!("--url given: ignoring USE_NEW_LOCKS=false, which would pick the legacy lockfiles instead");
        }
    }
    Ok(config)
}

/// [`Config::load`] with `path` as the TOML file.
///
/// The facade reads the file named by `LOCKMAN_CONFIG`, and setting that
/// variable from here would need `unsafe` (`std::env::set_var`), so this
/// layers the same providers in the same order (defaults < file <
/// `LOCKMAN_*` < `USE_NEW_LOCKS`). Replace it with `Config::load_file(path)`
/// once the facade has one; until then error messages for bad values from
/// the file say "the configured `key`" where the facade would name the file.
fn load_file(path: &Path) -> Result<Config, LockError> {
    use figment::Figment;
    use figment::providers::{Env, Format, Serialized, Toml};

    if !path.is_file() {
        return Err(LockError::Config(format!("--config names {}, which is not a readable file", path.display())));
    }
    Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed("LOCKMAN_").ignore(&["CONFIG", "REQUIRE_REDIS"]).split("__"))
        .merge(Env::raw().only(&[lockman::USE_NEW_LOCKS_ENV]))
        .extract()
        .map_err(|e| LockError::Config(format!("bad lockman configuration in {}: {e}", path.display())))
}

/// Logs to stderr: nothing by default, `-v` info, `-vv` debug, `-vvv`
/// trace; `RUST_LOG` wins when set.
pub fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;

    let level = match verbose {
        0 => "off",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Fails only if a subscriber is already set, which nothing else does.
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// Serves Prometheus metrics on `addr` (`/metrics`, or any path). Must be
/// called inside the runtime, before lockman records anything.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), Failure> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| Failure::new(exit::OSERR, format!("cannot serve metrics on {addr}: {e}")))?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}
