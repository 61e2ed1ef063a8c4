//! The Redis backend as seen from the server: what goes over the wire and
//! how the backend behaves when the server or its connections misbehave.
//!
//! * An uncontended acquire + release is exactly two commands (two
//!   `EVALSHA`), observed with `MONITOR`.
//! * A waiter whose pub/sub subscriber was cut off (so it missed the release
//!   message) re-checks as soon as the subscriber reconnects, instead of
//!   sleeping out the holder's lease or its own timeout.
//! * A paused (`SIGSTOP`) server makes `acquire` fail with a `Backend` error
//!   within the caller's timeout, and the manager works again once the server
//!   resumes (the unanswered grant is undone).
//! * A holder whose server is paused past the lease is told the lock is lost,
//!   and the lock can be taken by someone else once the server resumes.
//!
//! Each test runs its own `redis-server` on a free loopback port (never 6379).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lockman_core::{AcquireOptions, LockBackend, LockError, LockManager, LockState, LostReason};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;
use tokio::time::Instant;

/// Bound on every single raw socket operation and on awaiting lockman calls
/// that should answer at once.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How often server state is polled while waiting for something observable.
const POLL: Duration = Duration::from_millis(5);

async fn manager(options: RedisOptions) -> Arc<dyn LockManager> {
    let backend =
        tokio::time::timeout(IO_TIMEOUT, RedisBackend::connect(options)).await.expect("connect hung").expect("connect");
    Arc::new(backend.into_manager())
}

/// One acquire + release of `resource` that must succeed promptly.
async fn cycle(locks: &dyn LockManager, resource: &str) {
    let guard = tokio::time::timeout(IO_TIMEOUT, locks.acquire(resource, AcquireOptions::new().timeout(IO_TIMEOUT)))
        .await
        .expect("acquire hung")
        .expect("acquire");
    tokio::time::timeout(IO_TIMEOUT, guard.release()).await.expect("release hung").expect("release");
}

/// Polls `probe` every [`POLL`] until it returns `Some`, failing the test
/// after `limit`.
async fn poll_until<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A raw RESP connection that stays open for the whole test (the testkit's
/// `RedisServer::command` opens a new connection per command, which a
/// lowered `maxclients` refuses, and cannot `MONITOR`).
struct Raw {
    stream: BufReader<TcpStream>,
}

impl Raw {
    fn connect(server: &RedisServer) -> Raw {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("raw connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream: BufReader::new(stream) }
    }

    fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        self.stream.get_mut().write_all(&out).expect("raw send");
    }

    /// One reply line without its CRLF (a read timeout fails the test).
    fn line(&mut self) -> String {
        let mut line = String::new();
        let read = self.stream.read_line(&mut line).expect("raw read (timed out?)");
        assert!(read > 0 && line.ends_with("\r\n"), "connection closed mid-reply: {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    /// One reply: arrays flattened to newline-joined text, errors as `Err`.
    fn reply(&mut self) -> Result<String, String> {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" | ":" => Ok(rest.to_owned()),
            "-" => Err(rest.to_owned()),
            "$" | "*" if rest == "-1" => Ok("(nil)".to_owned()),
            "$" => {
                let len: usize = rest.parse().expect("bulk length");
                let mut data = vec![0; len + 2];
                self.stream.read_exact(&mut data).expect("raw read bulk");
                data.truncate(len);
                Ok(String::from_utf8_lossy(&data).into_owned())
            }
            "*" => {
                let len: usize = rest.parse().expect("array length");
                (0..len).map(|_| self.reply()).collect::<Result<Vec<_>, _>>().map(|items| items.join("\n"))
            }
            _ => panic!("unexpected reply line {line:?}"),
        }
    }

    fn command(&mut self, args: &[&str]) -> Result<String, String> {
        self.send(args);
        self.reply()
    }

    /// A field of `INFO <section>` as a number.
    fn info(&mut self, section: &str, field: &str) -> u64 {
        let info = self.command(&["INFO", section]).expect("INFO");
        let prefix = format!("{field}:");
        let value = info.lines().find_map(|line| line.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {field}"));
        value.trim().parse().unwrap_or_else(|_| panic!("{field} is {value:?}"))
    }

    /// How many `EVALSHA` the server has executed.
    fn evalsha_calls(&mut self) -> u64 {
        let stats = self.command(&["INFO", "commandstats"]).expect("INFO commandstats");
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .map_or(0, |rest| rest.split(',').next().and_then(|n| n.parse().ok()).expect("calls"))
    }

    /// The ids of the connected pub/sub clients.
    fn pubsub_clients(&mut self) -> Vec<String> {
        let list = self.command(&["CLIENT", "LIST", "TYPE", "pubsub"]).expect("CLIENT LIST");
        list.lines().filter_map(|line| line.strip_prefix("id=")?.split(' ').next().map(str::to_owned)).collect()
    }
}

/// The command name of a `MONITOR` line (`<time> [<db> <client>] "NAME" "arg"...`).
fn monitored_command(line: &str) -> Option<String> {
    let (_, after) = line.split_once("] \"")?;
    Some(after.split('"').next()?.to_ascii_uppercase())
}

/// After a warm-up cycle (which loads the scripts), one uncontended acquire
/// plus release costs exactly two round trips: one `EVALSHA` each, and the
/// release publishes nothing (no one waited). Anything
/// else lockman sends (an extra `PTTL`, a `SCRIPT LOAD`, an `INSPECT` before
/// releasing, a `PING`) shows up here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_cycle_sends_exactly_two_commands() {
    const MARKER: &str = "end-marker";
    let Some(server) = RedisServer::start() else { return };
    let locks = manager(RedisOptions::new(server.url())).await;
    let mut admin = Raw::connect(&server);
    // The subscriber connects in the background; its PSUBSCRIBE must not be
    // counted, so wait until it is in.
    poll_until("the release subscriber", IO_TIMEOUT, || (admin.pubsub_clients().len() == 1).then_some(())).await;
    cycle(&*locks, "r").await;

    let mut monitor = Raw::connect(&server);
    assert_eq!(monitor.command(&["MONITOR"]), Ok("OK".to_owned()));
    cycle(&*locks, "r").await;
    server.command(&["ECHO", MARKER]).expect("marker");

    let mut seen = Vec::new();
    loop {
        let line = monitor.line();
        if monitored_command(&line).as_deref() == Some("ECHO") && line.ends_with(&format!("\"{MARKER}\"")) {
            break;
        }
        seen.push(line);
        assert!(seen.len() < 1000, "no marker after 1000 monitor lines");
    }
    let sent: Vec<&String> = seen.iter().filter(|line| !line.contains(" lua]")).collect();
    assert!(
        sent.len() == 2 && sent.iter().all(|line| monitored_command(line).as_deref() == Some("EVALSHA")),
        "expected exactly two EVALSHA from an uncontended acquire + release, the server saw:\n{}",
        seen.join("\n")
    );
    // Nobody waited, so the release tells no subscriber.
    assert!(
        !seen.iter().any(|line| monitored_command(line).as_deref() == Some("PUBLISH")),
        "an uncontended release published a message:\n{}",
        seen.join("\n")
    );
}

/// How many failed reconnect attempts of the cut-off subscriber to wait for
/// before the waiter starts: the subscriber backs off 50, 100, 200, 400 ms…
/// between attempts, so after the fourth failure the next attempt is about
/// 800 ms away — far more than the few milliseconds the test needs to park
/// the waiter, release the lock and lift the block.
const FAILED_RECONNECTS: u64 = 4;

/// A waiter must re-check the lock when the manager's release subscriber
/// reconnects: release messages published while it was disconnected are
/// lost, and without the re-check the waiter would sleep until the holder's
/// lease (30 s) or its own timeout (10 s) ran out.
///
/// To make sure nothing but the reconnect can wake the waiter:
///
/// 1. `CONFIG SET maxclients 1` makes Redis refuse every new connection
///    (Redis 7 keeps the clients it already has, so the holder, the waiter's
///    command connection and our admin connection keep working);
/// 2. the waiter's subscriber is killed (`CLIENT KILL ID`) and its reconnect
///    attempts fail (counted by `rejected_connections`) until the backoff
///    between them is long;
/// 3. only then does the waiter start; its first attempt is seen by the
///    server (`cmdstat_evalsha`) while the lock is still held;
/// 4. the holder releases — the PUBLISH reaches no subscriber of the
///    waiter's — and `maxclients` is restored;
/// 5. the subscriber's next attempt succeeds, and the waiter must get the
///    lock within 3 s of the release.
///
/// The test checks that no reconnect attempt failed between the waiter's
/// start and the restore (a failed attempt also wakes waiters, which would
/// hide a missing re-check on reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_recheck_after_the_subscriber_reconnects() {
    let Some(server) = RedisServer::start() else { return };
    let mut admin = Raw::connect(&server);
    let options = RedisOptions::new(server.url()).default_lease(Duration::from_secs(30));

    let holder = manager(options.clone()).await;
    let holder_subscriber = poll_until("the holder's subscriber", IO_TIMEOUT, || {
        let clients = admin.pubsub_clients();
        (clients.len() == 1).then(|| clients[0].clone())
    })
    .await;
    let guard = tokio::time::timeout(IO_TIMEOUT, holder.acquire("r", AcquireOptions::new().timeout(IO_TIMEOUT)))
        .await
        .expect("acquire hung")
        .expect("holder acquires");

    let waiter = manager(options).await;
    let waiter_subscriber = poll_until("the waiter's subscriber", IO_TIMEOUT, || {
        let clients = admin.pubsub_clients();
        (clients.len() == 2).then(|| clients.into_iter().find(|id| *id != holder_subscriber)).flatten()
    })
    .await;

    // Refuse new connections, then cut the waiter's subscriber off.
    assert_eq!(admin.command(&["CONFIG", "SET", "maxclients", "1"]), Ok("OK".to_owned()));
    let rejected_at_start = admin.info("stats", "rejected_connections");
    assert_eq!(admin.command(&["CLIENT", "KILL", "ID", &waiter_subscriber]), Ok("1".to_owned()));
    let rejected = poll_until("the subscriber's failed reconnect attempts", IO_TIMEOUT, || {
        let rejected = admin.info("stats", "rejected_connections");
        (rejected >= rejected_at_start + FAILED_RECONNECTS).then_some(rejected)
    })
    .await;
    assert_eq!(admin.pubsub_clients(), std::slice::from_ref(&holder_subscriber), "the waiter's subscriber got back in");

    // The waiter starts and makes its first attempt while "r" is held.
    let calls = admin.evalsha_calls();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = waiter.acquire("r", AcquireOptions::new().timeout(Duration::from_secs(10))).await;
            (result, started.elapsed())
        })
    };
    poll_until("the waiter's first attempt", IO_TIMEOUT, || (admin.evalsha_calls() > calls).then_some(())).await;
    assert!(!waiting.is_finished(), "the waiter did not wait for a held lock: {:?}", waiting.await);

    // Released while the waiter's subscriber is away: nobody tells the waiter.
    tokio::time::timeout(IO_TIMEOUT, guard.release())
        .await
        .expect("release hung")
        .expect("the holder's release with maxclients lowered");
    let released = Instant::now();
    assert_eq!(admin.command(&["CONFIG", "SET", "maxclients", "10000"]), Ok("OK".to_owned()));
    assert_eq!(
        admin.info("stats", "rejected_connections"),
        rejected,
        "a reconnect attempt failed while the waiter was waiting; such a failure also wakes waiters, so this run \
         cannot tell whether the reconnect itself made the waiter re-check"
    );

    let (result, waited) = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the waiter did not re-check within 3 s of the release after its subscriber reconnected")
        .expect("waiter task");
    let granted = result.expect("the waiter's acquire");
    assert!(released.elapsed() < Duration::from_secs(3), "granted {:?} after the release", released.elapsed());
    assert_eq!(admin.pubsub_clients().len(), 2, "the waiter was granted but its subscriber is not back");
    tokio::time::timeout(IO_TIMEOUT, granted.release()).await.expect("release hung").expect("waiter's release");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

/// A paused server (`SIGSTOP`: connections stay open, nothing answers) makes
/// `acquire` fail with a `Backend` error within its timeout — never a grant,
/// never a hang. Once the server resumes, the same manager takes the same
/// resource again: the grant whose answer never came must have been undone,
/// or it would block the resource for the 30 s default lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_gives_backend_error_within_the_timeout() {
    let Some(server) = RedisServer::start() else { return };
    let locks = manager(RedisOptions::new(server.url())).await;
    cycle(&*locks, "r").await;

    server.pause();
    let started = Instant::now();
    let outcome =
        tokio::time::timeout(IO_TIMEOUT, locks.acquire("r", AcquireOptions::new().timeout(Duration::from_millis(300))))
            .await;
    let took = started.elapsed();
    server.resume();
    let outcome = outcome.expect("acquire hung with the server paused");
    match outcome {
        Err(LockError::Backend { .. }) => {}
        Err(e) => panic!("expected a Backend error with the server paused, got: {e}"),
        Ok(guard) => panic!("granted {:?} with the server paused", guard.info()),
    }
    assert!(took < Duration::from_millis(450), "a 300 ms acquire took {took:?} with the server paused");

    let deadline = Instant::now() + Duration::from_secs(10);
    let guard = loop {
        match locks.acquire("r", AcquireOptions::new().timeout(Duration::from_secs(1))).await {
            Ok(guard) => break guard,
            Err(e) => assert!(Instant::now() < deadline, "never acquired again after resume: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let state = tokio::time::timeout(IO_TIMEOUT, locks.state("r")).await.expect("state hung").expect("state");
    assert!(matches!(&state, LockState::Held(info) if info.fencing_token == guard.fencing_token()), "{state:?}");
    tokio::time::timeout(IO_TIMEOUT, guard.release()).await.expect("release hung").expect("release after resume");
}

/// A holder whose server stays paused past the lease (600 ms, renewed every
/// 200 ms) is told its lock is lost; after the server resumes the lease has
/// run out, another manager takes the resource, and the old guard's
/// `release()` reports the loss without touching the new holder's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_lock_with_server_paused_past_the_lease_is_lost() {
    const LEASE: Duration = Duration::from_millis(600);
    let Some(server) = RedisServer::start() else { return };
    let options = RedisOptions::new(server.url()).default_lease(LEASE);
    let holder = manager(options.clone()).await;
    let other = manager(options).await;
    let guard = tokio::time::timeout(IO_TIMEOUT, holder.acquire("r", AcquireOptions::new().timeout(IO_TIMEOUT)))
        .await
        .expect("acquire hung")
        .expect("acquire");
    let lost = guard.lost();

    server.pause();
    let paused = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(3), lost).await;
    let noticed = paused.elapsed();
    // Keep it paused past the lease even if the loss was reported early.
    tokio::time::sleep_until(paused + LEASE + Duration::from_millis(200)).await;
    server.resume();
    let reason = reason.expect("the holder was not told within 3 s that its lease ran out with the server paused");
    assert!(
        matches!(reason, LostReason::BackendUnreachable { .. } | LostReason::LeaseExpired),
        "lost for the wrong reason: {reason:?}"
    );
    assert!(guard.is_lost(), "lost() completed {noticed:?} after the pause but is_lost() is false");

    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        match other.acquire("r", AcquireOptions::new().timeout(Duration::from_secs(1))).await {
            Ok(guard) => break guard,
            Err(e) => assert!(Instant::now() < deadline, "nobody could take the lost lock after resume: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(taken.fencing_token() > guard.fencing_token());

    let err = tokio::time::timeout(IO_TIMEOUT, guard.release())
        .await
        .expect("release hung")
        .expect_err("released a lock that was lost");
    assert!(err.is_lost(), "expected a Lost error, got: {err}");
    let state = tokio::time::timeout(IO_TIMEOUT, other.state("r")).await.expect("state hung").expect("state");
    assert!(
        matches!(&state, LockState::Held(info) if info.fencing_token == taken.fencing_token()),
        "the old guard's release disturbed the new holder: {state:?}"
    );
    tokio::time::timeout(IO_TIMEOUT, taken.release()).await.expect("release hung").expect("new holder's release");
}

/// A guard whose auto-renewed lease has run out while its renewal waits
/// for an answer says so at the lease's end, not when the response timeout
/// (2 s by default, longer than this 600 ms lease) gives up: by then a
/// client that can still reach Redis may hold the lock. Both the `lost()`
/// future (the watchdog bounds each renewal by the lease) and `is_lost()`
/// (it reads the clock) must agree by 100 ms past the expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_reports_the_loss_once_its_lease_has_run_out() {
    let Some(server) = RedisServer::start() else { return };
    let locks = manager(RedisOptions::new(server.url()).default_lease(Duration::from_millis(600))).await;
    let guard = tokio::time::timeout(IO_TIMEOUT, locks.acquire("r", AcquireOptions::new().timeout(IO_TIMEOUT)))
        .await
        .expect("acquire hung")
        .expect("acquire");
    server.pause();
    // Wait until 100 ms past the lease's expiry, as the guard itself reports
    // it; a renewal answered just before the pause may move it once.
    let mut expires_at = guard.info().lease_expires_at.expect("a lease");
    for _ in 0..5 {
        let left = expires_at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(left + Duration::from_millis(100)).await;
        let now = guard.info().lease_expires_at.expect("a lease");
        if now == expires_at {
            break;
        }
        expires_at = now;
    }
    // Before is_lost() (which itself marks a lease past its end lost): the
    // watchdog must already have reported it.
    let told = tokio::time::timeout(Duration::from_millis(20), guard.lost()).await.is_ok();
    let lost = guard.is_lost();
    let checked = guard.check();
    let overdue = SystemTime::now().duration_since(expires_at).unwrap_or_default();
    server.resume();
    assert!(
        told && lost && checked.is_err(),
        "{overdue:?} after the lease expired (per the guard's own info()), lost() fired: {told}, is_lost() is \
         {lost} and check() is {checked:?}"
    );
}
