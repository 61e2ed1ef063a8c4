//! A private `redis-server` for tests: started on a free loopback port, with
//! its files in a private temporary directory, and stopped when dropped — the
//! Redis [`ServerFixture`].
//!
//! Tests that need Redis never use a shared server (and never the one that may
//! run on `127.0.0.1:6379`): each starts its own with [`RedisServer::start`].
//! If `redis-server` is not on `PATH`, `start` prints a loud `SKIPPED` line to
//! stderr and returns `None`, so the test passes without running — unless the
//! environment variable `LOCKMAN_REQUIRE_REDIS=1` is set (as in CI), in which
//! case it panics.
//!
//! The server keeps nothing on disk by itself (`--save "" --appendonly no`),
//! so killing and restarting it loses every key — the crash that fault tests
//! want. A test may take a snapshot with [`save`](RedisServer::save): the
//! next [`restart`](RedisServer::restart) loads it, so the store comes back as
//! it was at the snapshot and loses only the writes after it (a restore from
//! an older backup, AOF `everysec` losing its last second, a promoted replica
//! that lagged); [`restart_empty`](RedisServer::restart_empty) loses the
//! snapshot too. Fault tests may also [`pause`](RedisServer::pause) it
//! (`SIGSTOP`): connections are still accepted by the kernel, but nothing
//! answers. [`monitor`](RedisServer::monitor) shows every command the server
//! runs, and [`crate::relay::TcpRelay`] puts a delaying, stalling or cutting
//! relay between a client and the server.
//!
//! [`RedisServer::start_tls`] starts one that also accepts TLS on a second
//! port (`rediss://`), with a throwaway CA and server certificate made by the
//! `openssl` command-line tool in the server's directory; plain connections
//! (and [`command`](RedisServer::command)) keep working on [`port`](RedisServer::port).
//!
//! [`command`](RedisServer::command) and [`monitor`](RedisServer::monitor)
//! speak RESP with a small client of their own, not the `redis` crate: a
//! fixture must not depend on the client under test (nor make every user of
//! the testkit build it).
//!
//! This module is Unix-only (it sends signals to the server).
//!
//! ```no_run
//! use lockman_testkit::redis_server::RedisServer;
//!
//! let Some(mut server) = RedisServer::start() else { return };
//! let url = server.url(); // "redis://127.0.0.1:PORT/0" — give this to the backend
//! assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "OK");
//!
//! server.kill(); // crash: every key is lost
//! assert!(server.command(&["PING"]).is_err());
//! server.restart(); // same port, empty store
//! assert_eq!(server.command(&["GET", "k"]).unwrap(), "(nil)");
//! # drop(url);
//! ```

#![cfg(unix)]

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::fixture::{ServerFixture, ServerProcess, free_port, free_port_but, skip_or_panic};

/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for the
/// server to answer `PING` before failing the test.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeout [`RedisServer::command`] applies to connecting, writing and
/// reading the whole reply.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment variable that turns a missing `redis-server` from a skip
/// into a test failure (set it to `1`).
pub const REQUIRE_ENV: &str = "LOCKMAN_REQUIRE_REDIS";

/// The server program.
const PROGRAM: &str = "redis-server";

/// The server's log, in its directory.
const REDIS_LOG: &str = "redis.log";

/// The snapshot [`RedisServer::save`] writes and a restart loads, in the
/// server's directory.
const SNAPSHOT: &str = "dump.rdb";

/// How many fresh ports [`RedisServer::start`] tries when the chosen port is
/// taken before the server binds it.
const START_ATTEMPTS: usize = 5;

/// How many times [`RedisServer::restart`] retries binding the same port.
const RESTART_ATTEMPTS: usize = 20;

/// The files of a TLS server, in its directory: the CA certificate, and the
/// server's certificate (for `127.0.0.1` and `localhost`) and key.
pub(crate) const CA_CERT: &str = "ca.crt";
pub(crate) const SERVER_CERT: &str = "server.crt";
pub(crate) const SERVER_KEY: &str = "server.key";
/// The client certificate and key made when asked ([`make_certificates`]).
pub(crate) const CLIENT_CERT: &str = "client.crt";
pub(crate) const CLIENT_KEY: &str = "client.key";

/// How long the certificates made by [`RedisServer::start_tls`] are valid.
const CERT_DAYS: &str = "2";

/// A `redis-server` child process private to one test, listening on
/// `127.0.0.1` at a free port, with its log in a private temporary directory.
///
/// Dropping it kills the server (`SIGKILL`), reaps it and removes the
/// directory, so no server outlives its test (unless the test process itself
/// is killed).
///
/// Its [`ServerFixture`] methods are also inherent methods, so tests call
/// them without importing the trait.
#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
    /// The TLS port of a server from [`start_tls`](Self::start_tls).
    tls_port: Option<u16>,
}

/// Why one attempt at starting the server failed without a panic.
enum StartFailure {
    /// The server could not bind its port (another process took it): worth retrying.
    PortTaken,
    /// This `redis-server` was built without TLS (it rejects `--tls-port`).
    NoTls,
}

impl RedisServer {
    /// Starts a private `redis-server` on a free loopback port and waits (at
    /// most [`READY_TIMEOUT`]) until it answers `PING`.
    ///
    /// Returns `None` after printing a `SKIPPED` line to stderr if
    /// `redis-server` is not on `PATH`, unless `LOCKMAN_REQUIRE_REDIS=1`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing and `LOCKMAN_REQUIRE_REDIS=1`; if it cannot
    /// be spawned for another reason; or if it exits or never answers (the
    /// message includes the tail of its log).
    pub fn start() -> Option<RedisServer> {
        RedisServer { process: ServerProcess::new(PROGRAM, &[REDIS_LOG]), tls_port: None }.start_in_dir()
    }

    /// Like [`start`](Self::start), but the server also accepts TLS
    /// connections on a second free loopback port ([`tls_url`](Self::tls_url)),
    /// with a certificate for `127.0.0.1` (and `localhost`) signed by a
    /// throwaway CA ([`tls_ca_file`](Self::tls_ca_file)), both made with the
    /// `openssl` command-line tool in the server's directory. Clients need no
    /// certificate (`--tls-auth-clients no`). The plain [`port`](Self::port)
    /// stays open, for [`command`](Self::command) and the readiness check.
    ///
    /// Returns `None` after printing a `SKIPPED` line to stderr if
    /// `redis-server` or `openssl` is not on `PATH`, or if `redis-server` was
    /// built without TLS — unless `LOCKMAN_REQUIRE_REDIS=1`.
    ///
    /// # Panics
    ///
    /// As for [`start`](Self::start); if `openssl` fails; and, with
    /// `LOCKMAN_REQUIRE_REDIS=1`, if `openssl` is missing or `redis-server`
    /// lacks TLS.
    pub fn start_tls() -> Option<RedisServer> {
        let server = RedisServer { process: ServerProcess::new(PROGRAM, &[REDIS_LOG]), tls_port: Some(0) };
        match make_certificates(server.dir(), false) {
            Ok(()) => server.start_in_dir(),
            Err(error) if error.kind() == ErrorKind::NotFound => {
                drop(server);
                skip_or_panic(
                    REQUIRE_ENV,
                    "openssl not found on PATH (it makes the TLS test certificates); install it (apt-get install openssl)",
                )
            }
            Err(error) => panic!("cannot make the TLS test certificates: {error}"),
        }
    }

    /// Starts the server in its directory, on fresh free ports at each attempt.
    fn start_in_dir(mut self) -> Option<RedisServer> {
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            self.process.set_port(port);
            if self.tls_port.is_some() {
                self.tls_port = Some(free_port_but(&[port]));
            }
            match self.spawn() {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => {
                    drop(self);
                    return skip_or_panic(
                        REQUIRE_ENV,
                        "redis-server not found on PATH; install it (apt-get install redis-server)",
                    );
                }
                Err(error) => panic!("cannot spawn redis-server: {error}"),
            }
            match self.wait_ready() {
                Ok(()) => return Some(self),
                Err(StartFailure::PortTaken) => continue,
                Err(StartFailure::NoTls) => {
                    eprintln!("redis-server rejected --tls-port; log tail:\n{}", self.process.log_tail());
                    drop(self);
                    return skip_or_panic(
                        REQUIRE_ENV,
                        "redis-server was built without TLS (it rejects --tls-port); install one built with TLS \
                         (Debian's is)",
                    );
                }
            }
        }
        panic!(
            "redis-server could not bind free loopback ports in {START_ATTEMPTS} attempts; log tail:\n{}",
            self.process.log_tail()
        );
    }

    /// The loopback port the server listens on (never 6379); it stays the
    /// same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The URL of database 0 on this server: `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port())
    }

    /// The loopback port of TLS connections (never 6379) of a server from
    /// [`start_tls`](Self::start_tls), `None` for one from [`start`](Self::start).
    /// It stays the same across [`restart`](Self::restart).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The TLS URL of database 0 on this server: `rediss://127.0.0.1:PORT/0`.
    /// Clients must trust [`tls_ca_file`](Self::tls_ca_file).
    ///
    /// # Panics
    ///
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.expect_tls("tls_url"))
    }

    /// The PEM file of the CA that signed the server's certificate (in
    /// [`dir`](Self::dir)).
    ///
    /// # Panics
    ///
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn tls_ca_file(&self) -> PathBuf {
        self.expect_tls("tls_ca_file");
        self.dir().join(CA_CERT)
    }

    fn expect_tls(&self, what: &str) -> u16 {
        self.tls_port.unwrap_or_else(|| panic!("{what}() on a redis-server not started with start_tls()"))
    }

    /// The directory holding the server's files (`redis.log`, `stdio.log`,
    /// `dump.rdb` after a [`save`](Self::save); `ca.crt`, `server.crt` and
    /// `server.key` for a TLS server), removed when the server is dropped.
    pub fn dir(&self) -> &Path {
        self.process.dir()
    }

    /// Kills the server with `SIGKILL` (also when it is paused) and reaps it.
    /// Every key written since the last [`save`](Self::save) is lost. Does
    /// nothing if it is not running.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the server with `SIGSTOP`: it keeps its port and data, the kernel
    /// still accepts connections, but no command is answered until
    /// [`resume`](Self::resume).
    ///
    /// # Panics
    ///
    /// If the server is not running (killed, or exited).
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Continues a server stopped by [`pause`](Self::pause) (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// If the server is not running (killed, or exited).
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Kills the server if it is running, then starts a new one on the *same*
    /// port(s) and waits until it answers `PING`. The new server's store is
    /// empty, or holds the last snapshot [`save`](Self::save) wrote.
    ///
    /// # Panics
    ///
    /// If the server cannot be spawned, or if it cannot bind the port again
    /// (another process took it) or never answers (with the log tail).
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..RESTART_ATTEMPTS {
            self.spawn().unwrap_or_else(|error| panic!("cannot spawn redis-server again: {error}"));
            match self.wait_ready() {
                Ok(()) => return,
                // Another process holds the port, perhaps only for a moment.
                Err(StartFailure::PortTaken) => thread::sleep(Duration::from_millis(100)),
                Err(StartFailure::NoTls) => panic!("redis-server rejects --tls-port, which it took before"),
            }
        }
        panic!(
            "redis-server could not bind port {} again after {RESTART_ATTEMPTS} attempts; log tail:\n{}",
            self.port(),
            self.process.log_tail()
        );
    }

    /// Like [`restart`](Self::restart), but the last snapshot is deleted
    /// first: the new server's store is empty.
    ///
    /// # Panics
    ///
    /// As for [`restart`](Self::restart); if the snapshot exists but cannot
    /// be deleted.
    pub fn restart_empty(&mut self) {
        self.kill();
        match fs::remove_file(self.dir().join(SNAPSHOT)) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => panic!("cannot delete the redis-server snapshot in {}: {error}", self.dir().display()),
        }
        self.restart();
    }

    /// Writes a snapshot of the whole store (`SAVE`, to `dump.rdb` in
    /// [`dir`](Self::dir)). The next [`restart`](Self::restart) loads it: the
    /// store comes back as it was now, without any write made after.
    ///
    /// # Errors
    ///
    /// As for [`command`](Self::command), e.g. if the server is not running.
    pub fn save(&self) -> Result<(), String> {
        match self.command(&["SAVE"])?.as_str() {
            "OK" => Ok(()),
            other => Err(format!("SAVE answered {other:?}")),
        }
    }

    /// Opens a `MONITOR` connection: from now on, every command the server
    /// runs is reported by [`Monitor::next_line`].
    ///
    /// # Errors
    ///
    /// As for [`command`](Self::command).
    pub fn monitor(&self) -> Result<Monitor, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()));
        let stream =
            TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT).map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        stream.set_write_timeout(Some(COMMAND_TIMEOUT)).map_err(|e| format!("set write timeout: {e}"))?;
        (&stream).write_all(&encode_command(&["MONITOR"])).map_err(|e| format!("send to {addr}: {e}"))?;
        let mut monitor = Monitor { reader: RespReader { stream: BufReader::new(stream), deadline: Instant::now() } };
        match monitor.next_line(COMMAND_TIMEOUT)?.as_str() {
            "OK" => Ok(monitor),
            other => Err(format!("MONITOR answered {other:?}")),
        }
    }

    /// Whether the server process is alive (a paused server is). Reaps it if
    /// it has exited.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Sends one command over a fresh connection, with [`COMMAND_TIMEOUT`],
    /// and returns the reply as text: a simple string, bulk string or integer
    /// as itself, a nil as `(nil)`, an array as its elements joined by
    /// newlines (nested arrays flattened; an error inside an array as its
    /// message).
    ///
    /// # Errors
    ///
    /// The error reply's message (`ERR ...`) if Redis answers with an error;
    /// otherwise a description of the connection failure, timeout or protocol
    /// violation.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        self.command_with_timeout(args, COMMAND_TIMEOUT)
    }

    /// Waits (looking every 5 ms, at most 10 s) until `resource`'s waiter
    /// queue under lockman's default prefix (`lockman:{<resource>}:queue`)
    /// holds `n` waiters.
    ///
    /// # Panics
    ///
    /// If it never does, naming the queue's entries; or if Redis fails.
    pub async fn until_queued(&self, resource: &str, n: usize) {
        let key = format!("lockman:{{{resource}}}:queue");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let queued: usize = self.command(&["ZCARD", &key]).expect("ZCARD").parse().unwrap_or(0);
            if queued == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{resource} never had {n} queued waiters (has {queued}: {:?})",
                self.command(&["ZRANGE", &key, "0", "-1", "WITHSCORES"])
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Like [`command`](Self::command), with `timeout` as the deadline for
    /// connecting, sending the command and reading the whole reply.
    ///
    /// # Errors
    ///
    /// As for [`command`](Self::command); a paused server makes it time out.
    pub fn command_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        command_at(self.port(), args, timeout)
    }

    /// Spawns `redis-server` on its port (and TLS port, if any); it must not
    /// be running.
    fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir();
        let mut command = Command::new(PROGRAM);
        command
            .arg("--port")
            .arg(self.port().to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join(REDIS_LOG));
        if let Some(tls_port) = self.tls_port {
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(dir.join(SERVER_CERT))
                .arg("--tls-key-file")
                .arg(dir.join(SERVER_KEY))
                .arg("--tls-ca-cert-file")
                .arg(dir.join(CA_CERT))
                .args(["--tls-auth-clients", "no"]);
        }
        self.process.spawn(command)
    }

    /// Waits until the spawned server answers `PING` on its (plain) port. It
    /// binds all its ports before it answers, and exits if it cannot bind one.
    ///
    /// Panics (the server is then killed by `Drop`) if it exits for any reason
    /// but a taken port or missing TLS support, or does not answer within
    /// [`READY_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        // The server must be ours: if another Redis took the port first, ours
        // fails to bind and exits, which the next poll sees.
        let answered = self.process.wait_ready(READY_TIMEOUT, |port, pid| {
            command_at(port, &["PING"], Duration::from_millis(250)).as_deref() == Ok("PONG") && served_by(port, pid)
        });
        let Err(status) = answered else { return Ok(()) };
        let log = self.process.log_tail();
        if log.contains("Address already in use") {
            return Err(StartFailure::PortTaken);
        }
        if self.tls_port.is_some() && log.contains("Bad directive") && log.contains("tls-port") {
            return Err(StartFailure::NoTls);
        }
        panic!("redis-server on port {} exited at start ({status}); log tail:\n{log}", self.port());
    }
}

/// The trait's methods are the inherent ones above.
impl ServerFixture for RedisServer {
    const PROGRAM: &'static str = PROGRAM;
    const REQUIRE_ENV: &'static str = REQUIRE_ENV;

    fn start() -> Option<Self> {
        RedisServer::start()
    }

    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn port(&self) -> u16 {
        RedisServer::port(self)
    }

    fn dir(&self) -> &Path {
        RedisServer::dir(self)
    }

    fn kill(&mut self) {
        RedisServer::kill(self);
    }

    fn pause(&self) {
        RedisServer::pause(self);
    }

    fn resume(&self) {
        RedisServer::resume(self);
    }

    fn is_running(&mut self) -> bool {
        RedisServer::is_running(self)
    }

    /// Keeps the last snapshot [`save`](RedisServer::save) wrote (Redis
    /// persists nothing else).
    fn restart(&mut self) {
        RedisServer::restart(self);
    }

    fn restart_empty(&mut self) {
        RedisServer::restart_empty(self);
    }
}

/// Sends one command to the server on `port`; see [`RedisServer::command`].
fn command_at(port: u16, args: &[&str], timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream.set_write_timeout(Some(timeout)).map_err(|e| format!("set write timeout: {e}"))?;
    (&stream).write_all(&encode_command(args)).map_err(|e| format!("send to {addr}: {e}"))?;
    let mut reader = RespReader { stream: BufReader::new(stream), deadline };
    let reply = reader.read_value(0).map_err(|e| match e.kind() {
        // A read timeout shows up as `WouldBlock` on Unix.
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!("reply from {addr}: timed out after {timeout:?}"),
        _ => format!("reply from {addr}: {e}"),
    })?;
    match reply {
        Reply::Error(message) => Err(message),
        reply => Ok(reply.render()),
    }
}

/// Whether the server answering on `port` is the process `pid`.
fn served_by(port: u16, pid: u32) -> bool {
    let Ok(info) = command_at(port, &["INFO", "server"], Duration::from_millis(250)) else {
        return false;
    };
    info.lines().any(|line| line.trim_end() == format!("process_id:{pid}"))
}

/// A `MONITOR` connection to a [`RedisServer`], from [`RedisServer::monitor`].
///
/// Redis runs one command at a time and writes to its clients between
/// commands, so once a line has arrived, the command it reports — and the
/// whole script, for a command a script ran — has finished.
#[derive(Debug)]
pub struct Monitor {
    reader: RespReader<TcpStream>,
}

impl Monitor {
    /// The next command the server ran, as `MONITOR` prints it:
    /// `<unix time> [<db> <client address>] "NAME" "arg"…`, with `lua` as the
    /// client address of a command run by a script. Waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// If nothing arrives within `timeout`, or the connection fails.
    pub fn next_line(&mut self, timeout: Duration) -> Result<String, String> {
        self.reader.deadline = Instant::now() + timeout;
        match self.reader.read_value(0) {
            Ok(Reply::Simple(line)) => Ok(line),
            Ok(other) => Err(format!("unexpected MONITOR output {other:?}")),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!("no command within {timeout:?}"))
            }
            Err(e) => Err(format!("MONITOR connection: {e}")),
        }
    }

    /// Reads lines until one satisfies `wanted` and returns it, waiting at
    /// most `timeout` in all.
    ///
    /// # Errors
    ///
    /// As for [`next_line`](Self::next_line), when `timeout` runs out first.
    pub fn wait_for(&mut self, timeout: Duration, mut wanted: impl FnMut(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left).map_err(|e| format!("waiting {timeout:?} for a command: {e}"))?;
            if wanted(&line) {
                return Ok(line);
            }
        }
    }
}

/// Makes, in `dir`, a throwaway CA ([`CA_CERT`]) and a server certificate
/// for `127.0.0.1` and `localhost` signed by it ([`SERVER_CERT`],
/// [`SERVER_KEY`]), with the `openssl` command-line tool: P-256 keys, valid
/// for [`CERT_DAYS`] days; with `client`, also a client certificate (`CN=lockman-test-client`,
/// [`CLIENT_CERT`], [`CLIENT_KEY`]) signed by the same CA. The CA's key and
/// the other scratch files are removed. (The etcd fixture's TLS server uses
/// it too.)
///
/// An error of kind `NotFound` means `openssl` is not on `PATH`.
pub(crate) fn make_certificates(dir: &Path, client: bool) -> io::Result<()> {
    const NEW_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )?;
    // A name of its own, so that another server's CA is not mistaken for it.
    let ca_name = format!("/CN=lockman test CA {}", dir.file_name().unwrap_or_default().to_string_lossy());
    #[rustfmt::skip]
    let steps: [&[&[&str]]; 3] = [
        &[&["req", "-x509"], &NEW_KEY, &["-days", CERT_DAYS, "-subj", &ca_name,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca.key", "-out", CA_CERT]],
        &[&["req", "-new"], &NEW_KEY, &["-subj", "/CN=127.0.0.1", "-keyout", SERVER_KEY, "-out", "server.csr"]],
        &[&["x509", "-req", "-in", "server.csr", "-CA", CA_CERT, "-CAkey", "ca.key", "-set_serial", "2",
            "-days", CERT_DAYS, "-extfile", "server.ext", "-out", SERVER_CERT]],
    ];
    fs::write(
        dir.join("client.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = clientAuth\n",
    )?;
    #[rustfmt::skip]
    let client_steps: [&[&[&str]]; 2] = [
        &[&["req", "-new"], &NEW_KEY, &["-subj", "/CN=lockman-test-client", "-keyout", CLIENT_KEY, "-out", "client.csr"]],
        &[&["x509", "-req", "-in", "client.csr", "-CA", CA_CERT, "-CAkey", "ca.key", "-set_serial", "3",
            "-days", CERT_DAYS, "-extfile", "client.ext", "-out", CLIENT_CERT]],
    ];
    let steps = steps.iter().chain(client_steps.iter().filter(|_| client));
    let log_path = dir.join("openssl.log");
    for step in steps {
        let args = step.concat();
        let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
        let status = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        if !status.success() {
            let output = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(io::Error::other(format!("openssl {} failed ({status}):\n{output}", args.join(" "))));
        }
    }
    for scratch in ["ca.key", "server.csr", "server.ext", "client.csr", "client.ext", "openssl.log"] {
        match fs::remove_file(dir.join(scratch)) {
            Err(error) if error.kind() != ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Encodes `args` as a RESP array of bulk strings.
fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One RESP2 reply.
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(String),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    fn render(&self) -> String {
        match self {
            Reply::Simple(text) | Reply::Error(text) | Reply::Bulk(text) => text.clone(),
            Reply::Integer(n) => n.to_string(),
            Reply::Nil => "(nil)".to_owned(),
            Reply::Array(items) => items.iter().map(Reply::render).collect::<Vec<_>>().join("\n"),
        }
    }
}

/// Reads RESP2 replies, failing once `deadline` has passed.
#[derive(Debug)]
struct RespReader<R> {
    stream: BufReader<R>,
    deadline: Instant,
}

/// Something whose read timeout can be set (a [`TcpStream`]).
trait SetReadTimeout {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl SetReadTimeout for TcpStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        TcpStream::set_read_timeout(self, Some(timeout))
    }
}

#[cfg(test)]
impl SetReadTimeout for &[u8] {
    fn set_read_timeout(&self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

impl<R: Read + SetReadTimeout> RespReader<R> {
    /// Arms the read timeout with the time left before the deadline.
    fn arm(&mut self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(ErrorKind::TimedOut, "timed out"));
        }
        self.stream.get_ref().set_read_timeout(left)
    }

    /// One line, without its `\r\n`.
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            self.arm()?;
            if self.stream.read_until(b'\n', &mut line)? == 0 {
                return Err(io::Error::new(ErrorKind::UnexpectedEof, "connection closed mid-reply"));
            }
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| invalid("reply line is not UTF-8"))
    }

    fn read_value(&mut self, depth: usize) -> io::Result<Reply> {
        if depth > 32 {
            return Err(invalid("arrays nested too deeply"));
        }
        let line = self.read_line()?;
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| invalid("empty reply line"))?;
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => Ok(Reply::Integer(parse_int(rest)?)),
            "$" => match parse_int(rest)? {
                -1 => Ok(Reply::Nil),
                len => {
                    let len = usize::try_from(len).map_err(|_| invalid("negative bulk length"))?;
                    let mut data = vec![0; len + 2];
                    let mut filled = 0;
                    while filled < data.len() {
                        self.arm()?;
                        match self.stream.read(&mut data[filled..])? {
                            0 => return Err(io::Error::new(ErrorKind::UnexpectedEof, "connection closed mid-reply")),
                            n => filled += n,
                        }
                    }
                    if !data.ends_with(b"\r\n") {
                        return Err(invalid("bulk string not followed by CRLF"));
                    }
                    data.truncate(len);
                    Ok(Reply::Bulk(String::from_utf8_lossy(&data).into_owned()))
                }
            },
            "*" => match parse_int(rest)? {
                -1 => Ok(Reply::Nil),
                len => {
                    let len = usize::try_from(len).map_err(|_| invalid("negative array length"))?;
                    (0..len).map(|_| self.read_value(depth + 1)).collect::<io::Result<_>>().map(Reply::Array)
                }
            },
            _ => Err(invalid(&format!("unknown reply type in {line:?}"))),
        }
    }
}

fn parse_int(text: &str) -> io::Result<i64> {
    text.parse().map_err(|_| invalid(&format!("bad integer {text:?}")))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Reply> {
        let far = Instant::now() + Duration::from_secs(60);
        RespReader { stream: BufReader::new(bytes), deadline: far }.read_value(0)
    }

    #[test]
    fn resp_reader_parses_every_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Simple("OK".into()));
        assert_eq!(parse(b"-ERR bad\r\n").unwrap(), Reply::Error("ERR bad".into()));
        assert_eq!(parse(b":-42\r\n").unwrap(), Reply::Integer(-42));
        assert_eq!(parse(b"$5\r\na\r\nbc\r\n").unwrap(), Reply::Bulk("a\r\nbc".into()));
        assert_eq!(parse(b"$0\r\n\r\n").unwrap(), Reply::Bulk(String::new()));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Nil);
        assert_eq!(parse(b"*-1\r\n").unwrap(), Reply::Nil);
        let nested = parse(b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n+y\r\n").unwrap();
        assert_eq!(
            nested,
            Reply::Array(vec![
                Reply::Integer(1),
                Reply::Array(vec![Reply::Bulk("x".into()), Reply::Nil]),
                Reply::Simple("y".into()),
            ])
        );
        assert_eq!(nested.render(), "1\nx\n(nil)\ny");
        assert_eq!(parse(b"*0\r\n").unwrap().render(), "");
    }

    #[test]
    fn resp_reader_rejects_malformed_replies() {
        for bad in [&b""[..], b"+OK", b"?x\r\n", b":x\r\n", b"$3\r\nab", b"$2\r\nabc\r\n", b"$-2\r\n", b"*2\r\n:1\r\n"]
        {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(encode_command(&["SET", "k", ""]), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn start_ping_set_get() {
        let Some(server) = RedisServer::start() else { return };
        assert_ne!(server.port(), 6379);
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}/0", server.port()));
        assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
        assert_eq!(server.command(&["SET", "greeting", "hello world"]).unwrap(), "OK");
        assert_eq!(server.command(&["GET", "greeting"]).unwrap(), "hello world");
        assert_eq!(server.command(&["GET", "missing"]).unwrap(), "(nil)");
        assert_eq!(server.command(&["INCR", "n"]).unwrap(), "1");
        assert_eq!(server.command(&["RPUSH", "list", "a", "b"]).unwrap(), "2");
        assert_eq!(server.command(&["LRANGE", "list", "0", "-1"]).unwrap(), "a\nb");
        assert!(server.command(&["NOSUCHCOMMAND"]).unwrap_err().starts_with("ERR"));
        // Nothing is persisted, and only loopback is bound.
        assert_eq!(server.command(&["CONFIG", "GET", "save"]).unwrap(), "save\n");
        assert_eq!(server.command(&["CONFIG", "GET", "appendonly"]).unwrap(), "appendonly\nno");
        assert_eq!(server.command(&["CONFIG", "GET", "bind"]).unwrap(), "bind\n127.0.0.1");
        assert!(server.dir().join("redis.log").exists());
    }

    #[test]
    fn start_tls_serves_tls_beside_the_plain_port() {
        let Some(mut server) = RedisServer::start_tls() else { return };
        let tls_port = server.tls_port().expect("a TLS port");
        assert!(tls_port != server.port() && tls_port != 6379, "TLS port {tls_port}");
        assert_eq!(server.tls_url(), format!("rediss://127.0.0.1:{tls_port}/0"));
        assert_eq!(server.command(&["CONFIG", "GET", "tls-port"]).unwrap(), format!("tls-port\n{tls_port}"));
        assert_eq!(server.command(&["CONFIG", "GET", "tls-auth-clients"]).unwrap(), "tls-auth-clients\nno");
        assert_eq!(server.command(&["CONFIG", "GET", "bind"]).unwrap(), "bind\n127.0.0.1");
        // The server's certificate is signed by the CA; the CA's key is gone.
        let ca = server.tls_ca_file();
        assert_eq!(ca, server.dir().join(CA_CERT));
        let verified = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca)
            .arg(server.dir().join(SERVER_CERT))
            .output()
            .expect("openssl verify");
        assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
        let files: Vec<_> = fs::read_dir(server.dir()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert!(!files.iter().any(|name| name == "ca.key"), "{files:?}");
        // A TCP connection to the TLS port is accepted.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, tls_port));
        TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT).expect("connect to the TLS port");

        server.restart();
        assert_eq!(server.tls_port(), Some(tls_port));
        assert_eq!(server.command(&["CONFIG", "GET", "tls-port"]).unwrap(), format!("tls-port\n{tls_port}"));
    }

    #[test]
    fn a_plain_server_has_no_tls() {
        let Some(server) = RedisServer::start() else { return };
        assert_eq!(server.tls_port(), None);
        assert_eq!(server.command(&["CONFIG", "GET", "tls-port"]).unwrap(), "tls-port\n0");
    }

    #[test]
    fn kill_then_restart_on_the_same_port_loses_data() {
        let Some(mut server) = RedisServer::start() else { return };
        let port = server.port();
        assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "OK");
        assert!(server.is_running());

        server.kill();
        assert!(!server.is_running());
        assert!(server.command(&["PING"]).is_err());
        server.kill(); // a second kill is harmless

        server.restart();
        assert!(server.is_running());
        assert_eq!(server.port(), port);
        assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
        assert_eq!(server.command(&["GET", "k"]).unwrap(), "(nil)");

        // Restarting a running server also works.
        server.restart();
        assert_eq!(server.port(), port);
        assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
    }

    #[test]
    fn restart_loads_the_last_snapshot() {
        let Some(mut server) = RedisServer::start() else { return };
        assert_eq!(server.command(&["SET", "k", "saved"]).unwrap(), "OK");
        server.save().unwrap();
        assert_eq!(server.command(&["SET", "k", "after the snapshot"]).unwrap(), "OK");
        assert_eq!(server.command(&["SET", "later", "x"]).unwrap(), "OK");
        server.kill();
        server.restart();
        assert_eq!(server.command(&["GET", "k"]).unwrap(), "saved");
        assert_eq!(server.command(&["GET", "later"]).unwrap(), "(nil)");
    }

    #[test]
    fn restart_empty_loses_the_snapshot_too() {
        let Some(mut server) = RedisServer::start() else { return };
        let port = server.port();
        assert_eq!(server.command(&["SET", "k", "saved"]).unwrap(), "OK");
        server.save().unwrap();
        assert!(server.dir().join(SNAPSHOT).exists());
        // Through the trait, as a harness generic over fixtures calls it.
        ServerFixture::restart_empty(&mut server);
        assert_eq!(server.port(), port);
        assert_eq!(server.command(&["GET", "k"]).unwrap(), "(nil)");
        // With no snapshot at all, too.
        ServerFixture::restart_empty(&mut server);
        assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
    }

    #[test]
    fn monitor_reports_commands_and_script_commands() {
        let Some(server) = RedisServer::start() else { return };
        let mut monitor = server.monitor().unwrap();
        assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "OK");
        let line = monitor.wait_for(COMMAND_TIMEOUT, |line| line.contains("\"SET\"")).unwrap();
        assert!(line.ends_with("\"SET\" \"k\" \"v\""), "{line}");
        assert_eq!(server.command(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"]).unwrap(), "v");
        let line = monitor.wait_for(COMMAND_TIMEOUT, |line| line.contains(" lua] ")).unwrap();
        assert!(line.ends_with("\"GET\" \"k\""), "{line}");
        let error = monitor.next_line(Duration::from_millis(100)).unwrap_err();
        assert!(error.contains("no command within"), "{error}");
    }

    #[test]
    fn pause_makes_commands_time_out_until_resume() {
        let Some(mut server) = RedisServer::start() else { return };
        assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "OK");

        server.pause();
        assert!(server.is_running());
        let started = Instant::now();
        let error = server.command_with_timeout(&["PING"], Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "timeout not honoured: {:?}", started.elapsed());
        assert!(error.contains("timed out"), "{error}");

        server.resume();
        assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
        assert_eq!(server.command(&["GET", "k"]).unwrap(), "v");
    }

    #[test]
    fn drop_leaves_no_server_and_no_files() {
        let Some(server) = RedisServer::start() else { return };
        let port = server.port();
        let dir = server.dir().to_owned();
        assert!(dir.exists());
        drop(server);

        let deadline = Instant::now() + Duration::from_secs(5);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            assert!(Instant::now() < deadline, "a server still listens on port {port} after drop");
            thread::sleep(Duration::from_millis(20));
        }
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn dropping_a_paused_server_kills_it() {
        let Some(server) = RedisServer::start() else { return };
        let port = server.port();
        server.pause();
        drop(server);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    }
}
