//! `rediss://` end to end: the Redis backend over TLS against a real
//! `redis-server` (started by the testkit with a throwaway CA and a
//! certificate for `127.0.0.1`), the server's certificate verified.
//!
//! * Two managers exclude each other over TLS, and a waiter is woken by the
//!   release message on its pub/sub subscriber; the server sees every lockman
//!   connection, subscribers included, on its TLS port.
//! * The same with a password (`--requirepass`) in the `rediss://` URL, which
//!   never shows in `Debug` output or errors (also with a wrong password, and
//!   once the server is gone).
//! * A server whose certificate no trusted CA signed is refused.
//! * A server that speaks only TLS 1.2 is reached.
//!
//! The client trusts the test CA through
//! `RedisOptions::tls_root_certificates`, not the platform's trust store.
//!
//! Each test runs its own `redis-server` (loopback, free ports, never 6379).
//! The server's plain port is used only for the test's own checks.
//!
//! Run with `cargo test -p lockman-redis --features tls --test tls`.

#![cfg(feature = "tls")]

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockError, LockManager, LockState};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;
use tokio::time::Instant;

/// Bound on every call that should answer at once.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How often server state is polled while waiting for something observable.
const POLL: Duration = Duration::from_millis(5);

/// The lease of the tests' locks: far longer than a wake-up by the release
/// message may take, so a waiter granted soon was woken by that message.
const LEASE: Duration = Duration::from_secs(30);

/// How soon after the release the waiter must hold the lock.
const WAKE_LIMIT: Duration = Duration::from_secs(3);

/// The password of the `--requirepass` server.
const PASSWORD: &str = "tls-hunter2-secret";

/// Options for `url` trusting only the throwaway CA of `ca_of`.
fn tls_options(url: &str, ca_of: &RedisServer) -> RedisOptions {
    let pem = std::fs::read(ca_of.tls_ca_file()).expect("read the test CA");
    RedisOptions::new(url).tls_root_certificates(pem)
}

/// `url` with `password` for the default user: `rediss://:PASSWORD@host…`.
fn with_password(url: &str, password: &str) -> String {
    url.replacen("://", &format!("://:{password}@"), 1)
}

async fn connect(options: RedisOptions) -> Result<RedisBackend, LockError> {
    tokio::time::timeout(IO_TIMEOUT, RedisBackend::connect(options)).await.expect("connect hung")
}

/// The test's own connection to the server's plain port, for checks.
struct Admin {
    connection: redis::aio::MultiplexedConnection,
}

impl Admin {
    async fn connect(server: &RedisServer, password: Option<&str>) -> Admin {
        let url = password.map_or_else(|| server.url(), |password| with_password(&server.url(), password));
        let client = redis::Client::open(url).expect("admin URL");
        let connection = tokio::time::timeout(IO_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .expect("admin connect hung")
            .expect("admin connect");
        Admin { connection }
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        tokio::time::timeout(IO_TIMEOUT, command.query_async(&mut self.connection.clone()))
            .await
            .expect("admin command hung")
            .unwrap_or_else(|e| panic!("admin command: {e}"))
    }

    /// `CLIENT LIST` without this admin connection: one map of fields per client.
    async fn clients(&self) -> Vec<Vec<(String, String)>> {
        let own_id: i64 = self.query(redis::cmd("CLIENT").arg("ID")).await;
        let list: String = self.query(redis::cmd("CLIENT").arg("LIST")).await;
        list.lines()
            .map(|line| {
                line.split(' ')
                    .filter_map(|field| field.split_once('='))
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect::<Vec<_>>()
            })
            .filter(|fields| !fields.contains(&("id".to_owned(), own_id.to_string())))
            .collect()
    }

    /// How many `EVALSHA` the server has executed.
    async fn evalsha_calls(&self) -> u64 {
        let stats: String = self.query(redis::cmd("INFO").arg("commandstats")).await;
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .map_or(0, |rest| rest.split(',').next().and_then(|n| n.parse().ok()).expect("calls"))
    }
}

/// Whether Redis refused a command because the client did not authenticate
/// (a long command, such as lockman's scripts, is cut short before `NOAUTH`).
fn refused_unauthenticated(error: &LockError) -> bool {
    let text = error.to_string();
    matches!(error, LockError::Backend { .. }) && (text.contains("NOAUTH") || text.contains("unauthenticated"))
}

fn field<'a>(client: &'a [(String, String)], name: &str) -> &'a str {
    client.iter().find(|(field, _)| field == name).map_or("", |(_, value)| value)
}

/// One acquire + release of `"r"` that must succeed promptly.
async fn cycle(locks: &dyn LockManager) {
    let guard = tokio::time::timeout(IO_TIMEOUT, locks.acquire("r", AcquireOptions::new().timeout(IO_TIMEOUT)))
        .await
        .expect("acquire hung")
        .expect("acquire");
    tokio::time::timeout(IO_TIMEOUT, guard.release()).await.expect("release hung").expect("release");
}

/// Polls `probe` every [`POLL`] until it returns `Some`, failing the test
/// after [`IO_TIMEOUT`].
async fn poll_until<T, F: Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {IO_TIMEOUT:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Two managers on `url` exclude each other, the state of the lock shows the
/// holder, and a waiter is woken by the release message; every lockman
/// connection (two per manager: commands and release subscriber) is on the
/// server's TLS port.
async fn exclusion_and_wakeup_over_tls(server: &RedisServer, url: &str, admin: &Admin) {
    let tls_addr = format!("127.0.0.1:{}", server.tls_port().expect("a TLS server"));
    let options = tls_options(url, server).default_lease(LEASE);
    let first: Arc<dyn LockManager> = Arc::new(connect(options.clone()).await.expect("first connects").into_manager());
    let second: Arc<dyn LockManager> = Arc::new(connect(options).await.expect("second connects").into_manager());

    // Both release subscribers are in (connections of earlier managers gone).
    let clients = poll_until("two managers' connections, subscribers included", || async move {
        let clients = admin.clients().await;
        let subscribers = clients.iter().filter(|client| field(client, "psub") == "1").count();
        (clients.len() == 4 && subscribers == 2).then_some(clients)
    })
    .await;
    assert!(
        clients.iter().all(|client| field(client, "laddr") == tls_addr),
        "a lockman connection is not on the TLS port {tls_addr}: {clients:#?}"
    );

    let guard = tokio::time::timeout(
        IO_TIMEOUT,
        first.acquire("r", AcquireOptions::new().purpose("over TLS").timeout(IO_TIMEOUT)),
    )
    .await
    .expect("acquire hung")
    .expect("the first manager acquires");
    let state = tokio::time::timeout(IO_TIMEOUT, second.state("r")).await.expect("state hung").expect("state");
    let holder = state.info().unwrap_or_else(|| panic!("the second manager sees {state:?}"));
    assert_eq!(holder.purpose.as_deref(), Some("over TLS"));
    assert_eq!(holder.fencing_token, guard.fencing_token());
    let taken = tokio::time::timeout(IO_TIMEOUT, second.try_acquire("r", AcquireOptions::new()))
        .await
        .expect("try_acquire hung")
        .expect("try_acquire");
    assert!(taken.is_none(), "both managers hold \"r\"");

    // The second manager waits; its first attempt is seen while "r" is held.
    let calls = admin.evalsha_calls().await;
    let waiting = {
        let second = second.clone();
        tokio::spawn(async move {
            second.acquire("r", AcquireOptions::new().purpose("waiter").timeout(Duration::from_secs(20))).await
        })
    };
    poll_until("the waiter's first attempt", || async move { (admin.evalsha_calls().await > calls).then_some(()) })
        .await;
    assert!(!waiting.is_finished(), "the waiter did not wait for a held lock: {:?}", waiting.await);

    // Released: only the release message can wake the waiter this soon (the
    // lease and its timeout are far longer).
    tokio::time::timeout(IO_TIMEOUT, guard.release()).await.expect("release hung").expect("the first releases");
    let released = Instant::now();
    let granted = tokio::time::timeout(WAKE_LIMIT, waiting)
        .await
        .unwrap_or_else(|_| panic!("the waiter was not woken within {WAKE_LIMIT:?} of the release"))
        .expect("waiter task")
        .expect("the waiter acquires");
    assert!(released.elapsed() < WAKE_LIMIT, "granted {:?} after the release", released.elapsed());
    assert!(granted.fencing_token() > holder.fencing_token, "fencing token did not increase");

    let state = tokio::time::timeout(IO_TIMEOUT, first.state("r")).await.expect("state hung").expect("state");
    assert_eq!(state.info().and_then(|info| info.purpose.as_deref()), Some("waiter"), "{state:?}");
    tokio::time::timeout(IO_TIMEOUT, granted.release()).await.expect("release hung").expect("the waiter releases");
    let state = tokio::time::timeout(IO_TIMEOUT, first.state("r")).await.expect("state hung").expect("state");
    assert!(matches!(state, LockState::Available), "{state:?}");

    // Nothing went around TLS meanwhile.
    let clients = admin.clients().await;
    assert!(
        clients.iter().all(|client| field(client, "laddr") == tls_addr),
        "a lockman connection is not on the TLS port {tls_addr}: {clients:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_exclude_each_other_and_wake_waiters_over_tls() {
    let Some(server) = RedisServer::start_tls() else { return };
    let admin = Admin::connect(&server, None).await;
    exclusion_and_wakeup_over_tls(&server, &server.tls_url(), &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_rediss_url_works_and_never_shows() {
    const WRONG: &str = "tls-wrong-password";
    let Some(mut server) = RedisServer::start_tls() else { return };
    assert_eq!(server.command(&["CONFIG", "SET", "requirepass", PASSWORD]).as_deref(), Ok("OK"));
    let url = with_password(&server.tls_url(), PASSWORD);
    let redacted = with_password(&server.tls_url(), "***");
    let admin = Admin::connect(&server, Some(PASSWORD)).await;

    // Without the password, nothing is granted: the server does require it.
    match connect(tls_options(&server.tls_url(), &server)).await {
        Err(error) => assert!(refused_unauthenticated(&error), "{error}"),
        Ok(backend) => {
            let error =
                tokio::time::timeout(IO_TIMEOUT, backend.into_manager().try_acquire("r", AcquireOptions::new()))
                    .await
                    .expect("try_acquire hung")
                    .expect_err("granted without the password");
            assert!(refused_unauthenticated(&error), "{error}");
        }
    }

    exclusion_and_wakeup_over_tls(&server, &url, &admin).await;

    let options = tls_options(&url, &server).connect_timeout(Duration::from_millis(500));
    assert_eq!(options.redacted_url(), redacted);
    let backend = connect(options.clone()).await.expect("connects with the password");
    for debug in [format!("{options:?}"), format!("{backend:?}")] {
        assert!(!debug.contains(PASSWORD) && debug.contains(&redacted), "{debug}");
    }
    let locks = backend.into_manager();
    assert!(!format!("{locks:?}").contains(PASSWORD), "{locks:?}");

    // A wrong password is refused, and not shown either.
    let wrong = tls_options(&with_password(&server.tls_url(), WRONG), &server);
    let error = match connect(wrong).await {
        Err(error) => error,
        Ok(backend) => tokio::time::timeout(IO_TIMEOUT, backend.into_manager().try_acquire("r", AcquireOptions::new()))
            .await
            .expect("try_acquire hung")
            .expect_err("granted with a wrong password"),
    };
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(WRONG) && text.contains(&redacted), "{text}");
    }

    // Errors once the server is gone do not show it.
    server.kill();
    let error =
        tokio::time::timeout(IO_TIMEOUT, locks.acquire("r", AcquireOptions::new().timeout(Duration::from_secs(1))))
            .await
            .expect("acquire hung")
            .expect_err("granted by a dead server");
    assert!(matches!(error, LockError::Backend { .. }), "{error:?}");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(PASSWORD) && text.contains(&redacted), "{text}");
    }
    let error = connect(tls_options(&url, &server).connect_timeout(Duration::from_millis(500)))
        .await
        .expect_err("connected to a dead server");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(PASSWORD) && text.contains(&redacted), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let Some(server) = RedisServer::start_tls() else { return };
    let Some(stranger) = RedisServer::start_tls() else { return };

    // Trusting only another server's CA: the handshake fails (before the
    // password is sent, which the error does not show either).
    let error = connect(tls_options(&with_password(&server.tls_url(), PASSWORD), &stranger))
        .await
        .expect_err("connected to a server signed by an untrusted CA");
    assert!(matches!(error, LockError::Backend { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("certificate") && !text.contains(PASSWORD), "{text}");

    // Trusting its own CA, the same server is fine: the CA was the problem.
    let backend = connect(tls_options(&server.tls_url(), &server)).await.expect("connects once the CA is trusted");
    cycle(&backend.into_manager()).await;
}

/// Servers that speak only TLS 1.2 (older builds, some managed services)
/// are reached too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_only_server_is_reached() {
    let Some(server) = RedisServer::start_tls() else { return };
    assert_eq!(server.command(&["CONFIG", "SET", "tls-protocols", "TLSv1.2"]).as_deref(), Ok("OK"));
    let backend = connect(tls_options(&server.tls_url(), &server)).await.expect("connects over TLS 1.2");
    cycle(&backend.into_manager()).await;
}
