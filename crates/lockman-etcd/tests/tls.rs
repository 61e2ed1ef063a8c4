//! `etcds://` end to end: the etcd backend over TLS against a real `etcd`
//! that serves clients only over TLS and requires a client certificate
//! (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`;
//! started by the testkit with a throwaway CA made by the openssl CLI).
//!
//! * Two managers, trusting the test CA and presenting the client
//!   certificate (through an `etcds://` URL's `tls_ca`, `tls_cert`,
//!   `tls_key`), exclude each other; a waiter is woken by the release over
//!   its TLS watch long before any lease could end; flags work.
//! * A client without a certificate, a client trusting another CA, and a
//!   plain `http://` client are refused with a `Backend` error — never a grant.
//!
//! Run with `cargo test -p lockman-etcd --features tls --test tls`.

#![cfg(feature = "tls")]

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use lockman_core::{AcquireOptions, FlagOptions, LockBackend, LockError, LockManager, StatusManager};
use lockman_etcd::{EtcdBackend, EtcdOptions, EtcdStatusManager, EtcdTls, EtcdUrlDefaults};
use lockman_testkit::etcd_server::EtcdServer;
use tokio::time::Instant;

/// Bound on every call that should answer at once.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often etcd is read while waiting for the waiter's key to appear.
const POLL: Duration = Duration::from_millis(5);
/// How soon after the release the waiter must hold the lock: far below the
/// 30 s lease, so it was woken by its watch.
const WAKE_LIMIT: Duration = Duration::from_secs(3);

async fn start_tls() -> Option<EtcdServer> {
    tokio::task::spawn_blocking(EtcdServer::start_tls).await.expect("start")
}

/// `etcds://` with the server's CA and client certificate.
fn tls_url(server: &EtcdServer) -> String {
    format!(
        "{}/?prefix=tls&tls_ca={}&tls_cert={}&tls_key={}",
        server.url(),
        server.tls_ca_file().display(),
        server.tls_client_cert_file().display(),
        server.tls_client_key_file().display()
    )
}

async fn connect(options: EtcdOptions) -> Result<EtcdBackend, LockError> {
    tokio::time::timeout(IO_TIMEOUT, EtcdBackend::connect(options)).await.expect("connect hung")
}

/// The test's own TLS client, for checks.
async fn admin(server: &EtcdServer) -> Client {
    let read = |path: std::path::PathBuf| std::fs::read(path).expect("read a test certificate");
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(server.tls_ca_file())))
        .identity(Identity::from_pem(read(server.tls_client_cert_file()), read(server.tls_client_key_file())));
    Client::connect([server.endpoint()], Some(ConnectOptions::new().with_tls(tls))).await.expect("admin connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_exclude_and_hand_off_over_tls() {
    let Some(server) = start_tls().await else { return };
    assert!(server.url().starts_with("etcds://"), "{}", server.url());
    let options = || EtcdOptions::from_url(&tls_url(&server), "the test", EtcdUrlDefaults::default()).expect("URL");
    assert!(options().endpoints()[0].starts_with("https://"));
    let first = connect(options()).await.expect("connect over TLS");
    let flags = EtcdStatusManager::new(&first);
    let first = first.into_manager();
    let second = connect(options()).await.expect("connect over TLS").into_manager();

    let guard = first.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
    let token = guard.fencing_token();
    assert!(second.try_acquire("inverter_read", AcquireOptions::new()).await.expect("try").is_none());

    let waiter = tokio::spawn(async move {
        let guard = second
            .acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(20)))
            .await
            .expect("wait");
        (Instant::now(), guard)
    });
    // The waiter is queued once its key is in etcd beside the holder's.
    let admin = admin(&server).await;
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let keys = admin.kv_client().get("tls/lock/", Some(GetOptions::new().with_prefix().with_count_only())).await;
        if keys.expect("count keys").count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(POLL).await;
    }
    let released_at = Instant::now();
    guard.release().await.expect("release");
    let (granted_at, handed) =
        tokio::time::timeout(WAKE_LIMIT * 2, waiter).await.expect("waiter hung").expect("waiter");
    assert!(granted_at - released_at < WAKE_LIMIT, "woken after {:?}", granted_at - released_at);
    assert!(handed.fencing_token() > token, "fencing token did not increase");
    handed.release().await.expect("release");

    flags.set(".FCRunning", FlagOptions::new()).await.expect("set a flag over TLS");
    assert!(flags.is_set(".FCRunning").await.expect("read the flag"));
}

/// A request that must fail: at connect, or at the first lock.
async fn refused(options: EtcdOptions) -> LockError {
    let backend =
        match connect(options.connect_timeout(Duration::from_secs(3)).response_timeout(Duration::from_secs(3))).await {
            Ok(backend) => backend,
            Err(e) => return e,
        };
    let locks = backend.into_manager();
    let attempt = tokio::time::timeout(
        IO_TIMEOUT,
        locks.acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(5))),
    )
    .await
    .expect("acquire hung");
    match attempt {
        Ok(_) => panic!("granted a lock on a TLS server it should not reach"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_another_ca_or_plain_http_is_refused() {
    let Some(server) = start_tls().await else { return };
    let Some(other) = start_tls().await else { return };
    let ca = std::fs::read(server.tls_ca_file()).expect("read CA");
    let cert = std::fs::read(server.tls_client_cert_file()).expect("read cert");
    let key = std::fs::read(server.tls_client_key_file()).expect("read key");

    // Trusting the CA but presenting no certificate (the server requires one).
    let mut tls = EtcdTls::default();
    tls.ca_pem = Some(ca.clone());
    let error = refused(EtcdOptions::new([server.endpoint()]).tls(tls)).await;
    assert!(matches!(error, LockError::Backend { .. }), "{error:?}");
    eprintln!("refused as expected: {error}");

    // A valid client certificate, but trusting another server's CA.
    let mut tls = EtcdTls::default();
    tls.ca_pem = Some(std::fs::read(other.tls_ca_file()).expect("read the other CA"));
    tls.identity = Some((cert.clone(), key.clone()));
    let error = refused(EtcdOptions::new([server.endpoint()]).tls(tls)).await;
    assert!(matches!(error, LockError::Backend { .. }), "{error:?}");
    assert!(error.to_string().contains("UnknownIssuer"), "not refused for its certificate: {error}");

    // Plain HTTP/2 to the TLS port.
    let plain = server.endpoint().replace("https://", "http://");
    let error = refused(EtcdOptions::new([plain])).await;
    assert!(matches!(error, LockError::Backend { .. }), "{error:?}");
    eprintln!("refused as expected: {error}");

    // And the same settings, right, are accepted (the refusals were for the reasons above).
    let mut tls = EtcdTls::default();
    tls.ca_pem = Some(ca);
    tls.identity = Some((cert, key));
    let locks = connect(EtcdOptions::new([server.endpoint()]).tls(tls)).await.expect("connect").into_manager();
    locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire").release().await.expect("release");
}
