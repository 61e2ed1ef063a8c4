//! Opening the Redis client: the URL, a password from elsewhere, and TLS.

use lockman_core::LockError;

use crate::{BACKEND, RedisOptions};

/// The client for `options`: its URL, its password, and the CA certificates it trusts.
pub(crate) fn open_client(options: &RedisOptions) -> Result<redis::Client, LockError> {
    use redis::IntoConnectionInfo;

    // The redis crate's URL errors never quote the URL.
    let mut info = options.url.as_str().into_connection_info().map_err(|e| {
        LockError::Config(format!(
            "cannot use Redis URL {}: {}; expected redis://[user:password@]host:port/db or rediss://…",
            options.redacted_url(),
            e.detail().unwrap_or("bad URL")
        ))
    })?;
    if let Some(password) = &options.password
        && info.redis_settings().password().is_none()
    {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    #[cfg(feature = "tls")]
    if let Some(pem) = &options.tls_root_certificates {
        if !options.url.starts_with("rediss://") {
            return Err(LockError::Config(format!(
                "Redis URL {}: TLS root certificates need a rediss:// URL",
                options.redacted_url()
            )));
        }
        let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
        // These errors (a bad URL or PEM) never quote the URL.
        return redis::Client::build_with_tls(info, certificates).map_err(|e| {
            LockError::Config(format!(
                "cannot use Redis URL {} with its TLS root certificates: {e}",
                options.redacted_url()
            ))
        });
    }
    redis::Client::open(info).map_err(|e| {
        LockError::Config(format!(
            "cannot use Redis URL {}: {}; expected redis://[user:password@]host:port/db or rediss://…",
            options.redacted_url(),
            e.detail().unwrap_or("bad URL")
        ))
    })
}

/// rustls needs a process-wide crypto provider, which the redis crate does
/// not choose: use ring, unless the application installed one already.
#[cfg(feature = "tls")]
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one first: as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

pub(crate) fn unreachable_error(options: &RedisOptions, action: &str, detail: &str) -> LockError {
    LockError::Backend {
        backend: BACKEND.to_owned(),
        action: action.to_owned(),
        resource: None,
        message: format!(
            "cannot reach Redis at {}: {detail}; check the URL, that redis-server is running, and the network",
            options.redacted_url()
        ),
        source: None,
    }
}
