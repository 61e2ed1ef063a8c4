//! Which backend to talk to: lockman's configuration, `--config`, `--url`;
//! and the process-wide set-up (logging, the metrics exporter).

use std::net::SocketAddr;

use lockman::{Backends, Config};

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
        Some(path) => Config::load_file(path)?,
        None => Config::load()?,
    };
    if let Some(url) = &global.url {
        config.override_url(url.clone(), "--url");
    }
    Ok(config)
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
