//! A private single-node `etcd` for tests: started on free loopback ports
//! (client and peer, never 2379/2380), with its data in a private temporary
//! directory, and stopped when dropped — the etcd [`ServerFixture`].
//!
//! If `etcd` is not on `PATH`, [`EtcdServer::start`] prints a loud `SKIPPED`
//! line to stderr and returns `None`, so the test passes without running —
//! unless `LOCKMAN_REQUIRE_ETCD=1` is set (as in CI), in which case it panics.
//!
//! etcd writes every change to its write-ahead log before answering, so
//! [`restart`](EtcdServer::restart) (after a [`kill`](EtcdServer::kill) or
//! not) comes back with every acknowledged key and the same revision
//! counter; [`restart_empty`](EtcdServer::restart_empty) deletes the data
//! directory first, as on a new machine (revisions start again from 1).
//!
//! [`EtcdServer::start_tls`] starts one that serves clients only over TLS
//! (`https://`, [`url`](EtcdServer::url) is then `etcds://…`) and requires a
//! client certificate (`--client-cert-auth`); its throwaway CA, server and
//! client certificates are made with the `openssl` command-line tool in the
//! server's directory. Its health is read on a plain metrics port.
//!
//! Readiness is judged by etcd's `/health` endpoint (plain HTTP on the client
//! port) *and* its own log saying it serves clients, so a server that lost
//! its port to another process is never mistaken for ours.
//!
//! This module is Unix-only (it sends signals to the server).
//!
//! ```no_run
//! use lockman_testkit::etcd_server::EtcdServer;
//!
//! let Some(mut server) = EtcdServer::start() else { return };
//! let url = server.url(); // "etcd://127.0.0.1:PORT" — give this to the backend
//! server.kill();
//! server.restart(); // same port, same data
//! # drop(url);
//! ```

#![cfg(unix)]

use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::Duration;

use crate::fixture::{STDIO_LOG, ServerFixture, ServerProcess, free_port_but, skip_or_panic};

/// How long [`EtcdServer::start`] and [`EtcdServer::restart`] wait for the
/// server to be healthy before failing the test.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment variable that turns a missing `etcd` from a skip into a
/// test failure (set it to `1`).
pub const REQUIRE_ENV: &str = "LOCKMAN_REQUIRE_ETCD";

/// The server program (Debian's `etcd-server` package installs it).
const PROGRAM: &str = "etcd";

/// The member's data directory, inside the fixture's directory.
const DATA_DIR: &str = "data";

/// What etcd logs once it accepts client requests (3.4 and later).
const READY_LINE: &str = "ready to serve client requests";

/// How many fresh port pairs [`EtcdServer::start`] tries when a chosen port
/// is taken before the server binds it.
pub(crate) const START_ATTEMPTS: usize = 5;

/// How many times [`EtcdServer::restart`] retries binding the same ports.
pub(crate) const RESTART_ATTEMPTS: usize = 20;

/// An `etcd` child process private to one test: one member, listening on
/// `127.0.0.1` at a free client port and a free peer port, with its data and
/// log in a private temporary directory.
///
/// Dropping it kills the server (`SIGKILL`), reaps it and removes the
/// directory. Its [`ServerFixture`] methods are also inherent methods.
#[derive(Debug)]
pub struct EtcdServer {
    member: Member,
}

/// Why one attempt at starting a member failed without a panic.
pub(crate) enum StartFailure {
    /// The member could not bind a port (another process took it): worth retrying.
    PortTaken,
}

impl EtcdServer {
    /// Starts a private `etcd` on free loopback ports and waits (at most
    /// [`READY_TIMEOUT`]) until it is healthy.
    ///
    /// Returns `None` after printing a `SKIPPED` line to stderr if `etcd` is
    /// not on `PATH`, unless `LOCKMAN_REQUIRE_ETCD=1`.
    ///
    /// # Panics
    ///
    /// If `etcd` is missing and `LOCKMAN_REQUIRE_ETCD=1`; if it cannot be
    /// spawned for another reason; or if it exits or never becomes healthy
    /// (the message includes the tail of its log).
    pub fn start() -> Option<EtcdServer> {
        EtcdServer { member: Member::new("lockman-test") }.start_ports()
    }

    /// Like [`start`](Self::start), but clients are served only over TLS
    /// and must present a certificate signed by the server's throwaway CA:
    /// [`url`](Self::url) is `etcds://127.0.0.1:PORT`, trust
    /// [`tls_ca_file`](Self::tls_ca_file), present
    /// [`tls_client_cert_file`](Self::tls_client_cert_file) and
    /// [`tls_client_key_file`](Self::tls_client_key_file). The server's
    /// certificate is for `127.0.0.1` and `localhost`.
    ///
    /// Returns `None` (after a `SKIPPED` line) if `etcd` or `openssl` is not
    /// on `PATH`, unless `LOCKMAN_REQUIRE_ETCD=1`.
    ///
    /// # Panics
    ///
    /// As for [`start`](Self::start), and if `openssl` fails.
    pub fn start_tls() -> Option<EtcdServer> {
        let server = EtcdServer { member: Member::new("lockman-test").with_tls() };
        match crate::redis_server::make_certificates(server.dir(), true) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {
                drop(server);
                return skip_or_panic(
                    REQUIRE_ENV,
                    "openssl not found on PATH (it makes the TLS test certificates); install it (apt-get install openssl)",
                );
            }
            Err(error) => panic!("cannot make the TLS test certificates: {error}"),
        }
        server.start_ports()
    }

    /// Picks free ports and starts the server, a few times if a port is taken.
    fn start_ports(self) -> Option<EtcdServer> {
        let mut server = self;
        for _ in 0..START_ATTEMPTS {
            server.member.pick_ports(&[]);
            let cluster = server.member.cluster_entry();
            match server.member.spawn(&cluster, "lockman-test") {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => {
                    drop(server);
                    return missing_program();
                }
                Err(error) => panic!("cannot spawn etcd: {error}"),
            }
            match server.member.wait_ready() {
                Ok(()) => return Some(server),
                Err(StartFailure::PortTaken) => {
                    // A fresh data directory for the next ports: the member's
                    // peer URL is recorded in it.
                    server.member.remove_data();
                    continue;
                }
            }
        }
        panic!(
            "etcd could not bind free loopback ports in {START_ATTEMPTS} attempts; log tail:\n{}",
            server.member.process.log_tail()
        );
    }

    /// The loopback client port (never 2379); it stays the same across
    /// [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.member.port()
    }

    /// The backend URL of this server: `etcd://127.0.0.1:PORT`
    /// (`etcds://…` for a [`start_tls`](Self::start_tls) server).
    pub fn url(&self) -> String {
        let scheme = if self.member.is_tls() { "etcds" } else { "etcd" };
        format!("{scheme}://127.0.0.1:{}", self.port())
    }

    /// The client endpoint as etcd clients take it: `http://127.0.0.1:PORT`
    /// (`https://…` for a [`start_tls`](Self::start_tls) server).
    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// The PEM file of the throwaway CA that signed a
    /// [`start_tls`](Self::start_tls) server's certificates.
    ///
    /// # Panics
    ///
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn tls_ca_file(&self) -> PathBuf {
        self.tls_file("tls_ca_file", crate::redis_server::CA_CERT)
    }

    /// The PEM client certificate the server accepts.
    ///
    /// # Panics
    ///
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn tls_client_cert_file(&self) -> PathBuf {
        self.tls_file("tls_client_cert_file", crate::redis_server::CLIENT_CERT)
    }

    /// The PEM private key of [`tls_client_cert_file`](Self::tls_client_cert_file).
    ///
    /// # Panics
    ///
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn tls_client_key_file(&self) -> PathBuf {
        self.tls_file("tls_client_key_file", crate::redis_server::CLIENT_KEY)
    }

    fn tls_file(&self, what: &str, name: &str) -> PathBuf {
        assert!(self.member.is_tls(), "{what}() on an etcd not started with start_tls()");
        self.dir().join(name)
    }

    /// The directory holding the server's files (`data/`, `stdio.log`),
    /// removed when the server is dropped.
    pub fn dir(&self) -> &Path {
        self.member.process.dir()
    }

    /// Kills the server with `SIGKILL` (also when it is paused) and reaps it.
    /// Its data directory stays. Does nothing if it is not running.
    pub fn kill(&mut self) {
        self.member.process.kill();
    }

    /// Stops the server with `SIGSTOP` (see [`ServerFixture::pause`]).
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn pause(&self) {
        self.member.process.pause();
    }

    /// Continues a paused server (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn resume(&self) {
        self.member.process.resume();
    }

    /// Whether the server process is alive (a paused one is).
    pub fn is_running(&mut self) -> bool {
        self.member.process.is_running()
    }

    /// Kills the server if it is running and starts it again on the same
    /// ports with the same data directory: every acknowledged write, and
    /// the revision counter, survive.
    ///
    /// # Panics
    ///
    /// If the server cannot be spawned, cannot bind its ports again or
    /// never becomes healthy (with the log tail).
    pub fn restart(&mut self) {
        let cluster = self.member.cluster_entry();
        self.member.restart(&cluster, "lockman-test");
    }

    /// Like [`restart`](Self::restart), but the data directory is deleted
    /// first: the new server is empty and its revisions start again.
    ///
    /// # Panics
    ///
    /// As for [`restart`](Self::restart); if the data cannot be deleted.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.member.remove_data();
        self.restart();
    }
}

/// What a missing `etcd` program means: a loud skip, or a panic under
/// [`REQUIRE_ENV`].
pub(crate) fn missing_program<T>() -> Option<T> {
    skip_or_panic(REQUIRE_ENV, "etcd not found on PATH; install it (apt-get install etcd-server)")
}

/// One etcd member process — the single server of an [`EtcdServer`], or
/// one of an [`EtcdCluster`](crate::etcd_cluster::EtcdCluster)'s: its
/// name, client and peer ports, private directory (data in `data/`) and
/// readiness check.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) process: ServerProcess,
    name: String,
    peer_port: u16,
    /// For a TLS member: the plain port of its `/health` endpoint
    /// (`--listen-metrics-urls`); 0 until ports are picked.
    metrics_port: Option<u16>,
    /// Where this spawn's log lines begin (a restart appends to the same log).
    log_offset: u64,
    /// Whether this spawn has logged [`READY_LINE`].
    said_ready: bool,
}

impl Member {
    /// A member called `name`, not yet spawned, with a new private directory.
    pub(crate) fn new(name: &str) -> Member {
        Member {
            process: ServerProcess::new(PROGRAM, &[]),
            name: name.to_owned(),
            peer_port: 0,
            metrics_port: None,
            log_offset: 0,
            said_ready: false,
        }
    }

    /// This member serves clients over TLS only (certificates in its
    /// directory, see [`EtcdServer::start_tls`]).
    pub(crate) fn with_tls(mut self) -> Member {
        self.metrics_port = Some(0);
        self
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.metrics_port.is_some()
    }

    /// Chooses fresh free client and peer ports (and a metrics port for a
    /// TLS member), none of them in `taken`; returns the client and peer ports.
    pub(crate) fn pick_ports(&mut self, taken: &[u16]) -> [u16; 2] {
        let port = free_port_but(taken);
        self.process.set_port(port);
        let mut avoid = taken.to_vec();
        avoid.push(port);
        self.peer_port = free_port_but(&avoid);
        if self.metrics_port.is_some() {
            avoid.push(self.peer_port);
            self.metrics_port = Some(free_port_but(&avoid));
        }
        [port, self.peer_port]
    }

    /// The plain port `/health` answers on.
    fn health_port(&self) -> u16 {
        self.metrics_port.unwrap_or_else(|| self.port())
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The client port.
    pub(crate) fn port(&self) -> u16 {
        self.process.port()
    }

    /// `http://127.0.0.1:CLIENT_PORT` (`https://…` for a TLS member).
    pub(crate) fn endpoint(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port())
    }

    /// `NAME=http://127.0.0.1:PEER_PORT`, this member's part of `--initial-cluster`.
    pub(crate) fn cluster_entry(&self) -> String {
        format!("{}=http://127.0.0.1:{}", self.name, self.peer_port)
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.process.dir().join(DATA_DIR)
    }

    pub(crate) fn remove_data(&self) {
        match fs::remove_dir_all(self.data_dir()) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => panic!("cannot delete the etcd data in {}: {error}", self.process.dir().display()),
        }
    }

    /// Spawns this member of the cluster `initial_cluster` (every member's
    /// [`cluster_entry`](Self::cluster_entry), comma-separated) named by
    /// `token`; it must not be running. A member that finds data in its
    /// directory ignores the initial cluster and rejoins with that data.
    pub(crate) fn spawn(&mut self, initial_cluster: &str, token: &str) -> io::Result<()> {
        self.spawn_with(initial_cluster, token, &[])
    }

    /// Like [`spawn`](Self::spawn), with `extra` arguments for `etcd`.
    pub(crate) fn spawn_with(&mut self, initial_cluster: &str, token: &str, extra: &[&str]) -> io::Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(PROGRAM);
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", token])
            .args(extra);
        if let Some(metrics_port) = self.metrics_port {
            let dir = self.process.dir();
            command
                .arg("--cert-file")
                .arg(dir.join(crate::redis_server::SERVER_CERT))
                .arg("--key-file")
                .arg(dir.join(crate::redis_server::SERVER_KEY))
                .arg("--trusted-ca-file")
                .arg(dir.join(crate::redis_server::CA_CERT))
                .arg("--client-cert-auth")
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{metrics_port}"));
        }
        // Only this spawn's lines count when judging readiness.
        self.log_offset = fs::metadata(self.process.dir().join(STDIO_LOG)).map_or(0, |m| m.len());
        self.said_ready = false;
        self.process.spawn(command)
    }

    /// Whether the member spawned last has said it serves clients and
    /// answers `/health` as healthy (which needs a cluster leader).
    pub(crate) fn is_ready(&mut self) -> bool {
        if !self.said_ready {
            self.said_ready = log_since(self.process.dir(), &mut self.log_offset).contains(READY_LINE);
        }
        self.said_ready && healthy(self.health_port())
    }

    /// Why the member spawned last exited: a taken port (worth retrying), or
    /// a panic with its log tail.
    pub(crate) fn exit_failure(&self, status: Option<ExitStatus>) -> StartFailure {
        let log = self.process.log_tail();
        if log.contains("address already in use") {
            return StartFailure::PortTaken;
        }
        let status = status.map_or_else(|| "exited".to_owned(), |status| status.to_string());
        panic!("etcd member {} on port {} exited at start ({status}); log tail:\n{log}", self.name, self.port());
    }

    /// Waits until the member spawned last is ready. Panics if it exits for
    /// any reason but a taken port, or is not ready within [`READY_TIMEOUT`].
    pub(crate) fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let health_port = self.metrics_port;
        let Member { process, log_offset, said_ready, .. } = self;
        let dir = process.dir().to_owned();
        let answered = process.wait_ready(READY_TIMEOUT, |port, _pid| {
            if !*said_ready {
                *said_ready = log_since(&dir, log_offset).contains(READY_LINE);
            }
            *said_ready && healthy(health_port.unwrap_or(port))
        });
        match answered {
            Ok(()) => Ok(()),
            Err(status) => Err(self.exit_failure(Some(status))),
        }
    }

    /// Kills the member if it is running and spawns it again on the same
    /// ports with the same data, retrying while a port is briefly taken,
    /// and waits until it is ready.
    pub(crate) fn restart(&mut self, initial_cluster: &str, token: &str) {
        self.process.kill();
        for _ in 0..RESTART_ATTEMPTS {
            self.spawn(initial_cluster, token).unwrap_or_else(|error| panic!("cannot spawn etcd again: {error}"));
            match self.wait_ready() {
                Ok(()) => return,
                // Another process holds a port, perhaps only for a moment.
                Err(StartFailure::PortTaken) => thread::sleep(Duration::from_millis(100)),
            }
        }
        panic!(
            "etcd could not bind ports {} and {} again after {RESTART_ATTEMPTS} attempts; log tail:\n{}",
            self.port(),
            self.peer_port,
            self.process.log_tail()
        );
    }
}

/// The trait's methods are the inherent ones above.
impl ServerFixture for EtcdServer {
    const PROGRAM: &'static str = PROGRAM;
    const REQUIRE_ENV: &'static str = REQUIRE_ENV;

    fn start() -> Option<Self> {
        EtcdServer::start()
    }

    fn url(&self) -> String {
        EtcdServer::url(self)
    }

    fn port(&self) -> u16 {
        EtcdServer::port(self)
    }

    fn dir(&self) -> &Path {
        EtcdServer::dir(self)
    }

    fn kill(&mut self) {
        EtcdServer::kill(self);
    }

    fn pause(&self) {
        EtcdServer::pause(self);
    }

    fn resume(&self) {
        EtcdServer::resume(self);
    }

    fn is_running(&mut self) -> bool {
        EtcdServer::is_running(self)
    }

    /// Keeps everything etcd acknowledged (its write-ahead log is fsynced).
    fn restart(&mut self) {
        EtcdServer::restart(self);
    }

    fn restart_empty(&mut self) {
        EtcdServer::restart_empty(self);
    }
}

/// The server's stdout/stderr written since `offset` (which moves on).
fn log_since(dir: &Path, offset: &mut u64) -> String {
    let Ok(bytes) = fs::read(dir.join(STDIO_LOG)) else { return String::new() };
    let start = usize::try_from(*offset).unwrap_or(usize::MAX).min(bytes.len());
    *offset = bytes.len() as u64;
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Whether etcd on `port` answers `GET /health` with `"health":"true"`.
pub(crate) fn healthy(port: u16) -> bool {
    http(port, "GET", "/health", "").is_some_and(|reply| reply.contains("\"health\":\"true\""))
}

/// One plain HTTP/1.0 request to etcd's client port (its `/health` and
/// its gRPC gateway, `/v3/...`), with 500 ms timeouts: the whole reply, or
/// `None` if the member is down, paused or silent.
pub(crate) fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let timeout = Duration::from_millis(500);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_restarts_and_loses_data_on_request() {
        let Some(mut server) = EtcdServer::start() else { return };
        let port = server.port();
        assert_ne!(port, 2379);
        assert!(healthy(port));
        server.pause();
        server.resume();
        server.restart();
        assert_eq!(server.port(), port);
        assert!(server.member.data_dir().join("member").is_dir());
        server.restart_empty();
        assert!(healthy(port));
        let dir = server.dir().to_owned();
        drop(server);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
