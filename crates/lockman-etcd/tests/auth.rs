//! etcd user authentication end to end, against a private `etcd` with
//! `auth enable`: a user whose role may read and write only `lockman/`
//! takes and releases locks and sets flags; a wrong password, no user, and
//! a prefix outside the role's keys are refused with a `Backend` error that
//! never shows the password (nor does `Debug` of the options); and a URL's
//! `password_env=` reaches the server.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Permission};
use lockman_core::{AcquireOptions, FlagOptions, LockBackend, LockError, LockManager, StatusManager};
use lockman_etcd::{EtcdBackend, EtcdOptions, EtcdStatusManager, EtcdUrlDefaults};
use lockman_testkit::etcd_server::EtcdServer;

const ROOT_PASSWORD: &str = "root-pw-for-the-test";
const PASSWORD: &str = "app-s3cret-pw";

/// A server with auth enabled: `root`, and `app` with read-write on `lockman/`.
async fn server_with_auth() -> Option<EtcdServer> {
    let server = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start")?;
    let mut admin = Client::connect([server.endpoint()], None).await.expect("admin connect");
    admin.user_add("root", ROOT_PASSWORD, None).await.expect("add root");
    admin.user_grant_role("root", "root").await.expect("root role");
    admin.role_add("locker").await.expect("add role");
    admin.role_grant_permission("locker", Permission::read_write("lockman/").with_prefix()).await.expect("grant");
    admin.user_add("app", PASSWORD, None).await.expect("add app");
    admin.user_grant_role("app", "locker").await.expect("app role");
    admin.auth_enable().await.expect("enable auth");
    // Auth is on: a client without a user is refused now.
    let anonymous = Client::connect([server.endpoint()], None).await.expect("connect");
    assert!(anonymous.kv_client().put("lockman/x", "1", None).await.is_err(), "auth is not enforced");
    Some(server)
}

async fn connect(options: EtcdOptions) -> Result<EtcdBackend, LockError> {
    tokio::time::timeout(Duration::from_secs(10), EtcdBackend::connect(options)).await.expect("connect hung")
}

fn assert_no_password(text: &str) {
    assert!(!text.contains(PASSWORD) && !text.contains("s3cret"), "the password shows: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_a_password_locks_and_others_are_refused_without_showing_it() {
    let Some(server) = server_with_auth().await else { return };
    let options = EtcdOptions::new([server.endpoint()]).user("app", PASSWORD);
    assert_no_password(&format!("{options:?}"));
    let backend = connect(options).await.expect("connect as app");
    assert_no_password(&format!("{backend:?}"));
    let status = EtcdStatusManager::new(&backend);
    let locks = backend.into_manager();
    let guard = locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire as app");
    assert!(locks.try_acquire("inverter_read", AcquireOptions::new().holder("other")).await.expect("try").is_none());
    guard.release().await.expect("release as app");
    status.set(".FCRunning", FlagOptions::new()).await.expect("set a flag as app");
    assert!(status.is_set(".FCRunning").await.expect("read the flag"));

    // The admin sees app's flag, under the prefix app may write.
    let admin = Client::connect([server.endpoint()], Some(ConnectOptions::new().with_user("root", ROOT_PASSWORD)))
        .await
        .expect("admin connect");
    let flags = admin.kv_client().get("lockman/flag/", Some(etcd_client::GetOptions::new().with_prefix())).await;
    assert_eq!(flags.expect("read flags").kvs().len(), 1);

    // A wrong password: refused at connect, without the password.
    let wrong = connect(EtcdOptions::new([server.endpoint()]).user("app", "not-the-s3cret")).await;
    let message = wrong.expect_err("a wrong password was accepted").to_string();
    assert!(message.contains("authentication failed"), "{message}");
    assert!(!message.contains("not-the-s3cret"), "{message}");

    // No user: the first lock is refused (auth is enabled).
    let anonymous = connect(EtcdOptions::new([server.endpoint()])).await.expect("connect").into_manager();
    let refused = anonymous.acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(5))).await;
    assert!(matches!(refused, Err(LockError::Backend { .. })), "{refused:?}");

    // A prefix outside app's role: refused.
    let outside = connect(EtcdOptions::new([server.endpoint()]).user("app", PASSWORD).prefix("elsewhere"))
        .await
        .expect("connect")
        .into_manager();
    let refused = outside.acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_secs(5))).await;
    let message = format!("{:?}", refused.expect_err("a key outside the role was written"));
    assert!(message.contains("permission denied"), "{message}");
    assert_no_password(&message);
}

/// `etcd://app@host?password_env=VAR`: the password comes from the
/// environment variable the URL names, and the URL never holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_names_the_user_and_where_the_password_is() {
    const VARIABLE: &str = "LOCKMAN_ETCD_AUTH_TEST_PASSWORD";
    let Some(server) = server_with_auth().await else { return };
    // SAFETY: this test binary sets this variable only here, before any thread reads it.
    unsafe { std::env::set_var(VARIABLE, PASSWORD) };
    let url = format!("etcd://app@127.0.0.1:{}/?password_env={VARIABLE}", server.port());
    let options = EtcdOptions::from_url(&url, "the test", EtcdUrlDefaults::default()).expect("options");
    assert_eq!(options.user_name(), Some("app"));
    let locks = connect(options).await.expect("connect as app").into_manager();
    locks.acquire("job", AcquireOptions::new()).await.expect("acquire").release().await.expect("release");
}
