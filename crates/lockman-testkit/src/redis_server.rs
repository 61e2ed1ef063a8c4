//! A private `redis-server` for tests: started on a free loopback port, with
//! its files in a private temporary directory, and stopped when dropped.
//!
//! Tests that need Redis never use a shared server (and never the one that may
//! run on `127.0.0.1:6379`): each starts its own with [`RedisServer::start`].
//! If `redis-server` is not on `PATH`, `start` prints a loud `SKIPPED` line to
//! stderr and returns `None`, so the test passes without running — unless the
//! environment variable `LOCKMAN_REQUIRE_REDIS=1` is set (as in CI), in which
//! case it panics.
//!
//! The server keeps nothing on disk (`--save "" --appendonly no`), so killing
//! and restarting it loses every key — the crash that fault tests want. Fault
//! tests may also [`pause`](RedisServer::pause) it (`SIGSTOP`): connections are
//! still accepted by the kernel, but nothing answers.
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
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::{Pid, Signal, kill_process};

/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for the
/// server to answer `PING` before failing the test.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeout [`RedisServer::command`] applies to connecting, writing and
/// reading the whole reply.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment variable that turns a missing `redis-server` from a skip
/// into a test failure (set it to `1`).
pub const REQUIRE_ENV: &str = "LOCKMAN_REQUIRE_REDIS";

/// How many fresh ports [`RedisServer::start`] tries when the chosen port is
/// taken before the server binds it.
const START_ATTEMPTS: usize = 5;

/// How many times [`RedisServer::restart`] retries binding the same port.
const RESTART_ATTEMPTS: usize = 20;

/// The port of the machine's shared Redis, which tests must never use.
const SHARED_REDIS_PORT: u16 = 6379;

/// A `redis-server` child process private to one test, listening on
/// `127.0.0.1` at a free port, with its log in a private temporary directory.
///
/// Dropping it kills the server (`SIGKILL`), reaps it and removes the
/// directory, so no server outlives its test (unless the test process itself
/// is killed).
#[derive(Debug)]
pub struct RedisServer {
    /// The running server; `None` after [`kill`](Self::kill) or once it has
    /// been seen to exit.
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// Why one attempt at starting the server failed in a way worth retrying.
enum StartFailure {
    /// The server could not bind its port (another process took it).
    PortTaken,
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
        let dir = make_private_dir();
        let mut server = RedisServer { child: None, port: 0, dir };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => {
                    drop(server);
                    return skip_or_panic();
                }
                Err(error) => panic!("cannot spawn redis-server: {error}"),
            }
            match server.wait_ready() {
                Ok(()) => return Some(server),
                Err(StartFailure::PortTaken) => continue,
            }
        }
        panic!(
            "redis-server could not bind a free loopback port in {START_ATTEMPTS} attempts; log tail:\n{}",
            server.log_tail()
        );
    }

    /// The loopback port the server listens on (never 6379); it stays the
    /// same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database 0 on this server: `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The directory holding the server's files (`redis.log`, `stdio.log`),
    /// removed when the server is dropped.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server with `SIGKILL` (also when it is paused) and reaps it.
    /// Every key is lost. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if the child has already exited; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with `SIGSTOP`: it keeps its port and data, the kernel
    /// still accepts connections, but no command is answered until
    /// [`resume`](Self::resume).
    ///
    /// # Panics
    ///
    /// If the server is not running (killed, or exited).
    pub fn pause(&self) {
        self.signal(Signal::STOP, "pause");
    }

    /// Continues a server stopped by [`pause`](Self::pause) (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// If the server is not running (killed, or exited).
    pub fn resume(&self) {
        self.signal(Signal::CONT, "resume");
    }

    /// Kills the server if it is running, then starts a new one with an empty
    /// store on the *same* port and waits until it answers `PING`.
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
            }
        }
        panic!(
            "redis-server could not bind port {} again after {RESTART_ATTEMPTS} attempts; log tail:\n{}",
            self.port,
            self.log_tail()
        );
    }

    /// Whether the server process is alive (a paused server is). Reaps it if
    /// it has exited.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = &mut self.child else { return false };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.kill();
                false
            }
        }
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

    /// Like [`command`](Self::command), with `timeout` as the deadline for
    /// connecting, sending the command and reading the whole reply.
    ///
    /// # Errors
    ///
    /// As for [`command`](Self::command); a paused server makes it time out.
    pub fn command_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
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

    /// Spawns `redis-server` on `self.port`; `self.child` must be `None`.
    fn spawn(&mut self) -> io::Result<()> {
        debug_assert!(self.child.is_none());
        let stdio_log = OpenOptions::new().create(true).append(true).open(self.dir.join("stdio.log"))?;
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(stdio_log.try_clone()?)
            .stderr(stdio_log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the spawned server answers `PING` on its port.
    ///
    /// Panics (the server is then killed by `Drop`) if it exits for any reason
    /// but a taken port, or does not answer within [`READY_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("wait_ready runs after spawn");
            let pid = child.id();
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    self.child = None;
                    let log = self.log_tail();
                    if log.contains("Address already in use") {
                        return Err(StartFailure::PortTaken);
                    }
                    panic!("redis-server on port {} exited at start ({status}); log tail:\n{log}", self.port);
                }
                Err(error) => panic!("cannot check on redis-server (pid {pid}): {error}"),
            }
            // The server must be ours: if another Redis took the port first,
            // ours fails to bind and exits, which the next turn sees.
            if self.command_with_timeout(&["PING"], Duration::from_millis(250)).as_deref() == Ok("PONG")
                && self.served_by(pid)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; log tail:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answering on the port is the process `pid`.
    fn served_by(&self, pid: u32) -> bool {
        let Ok(info) = self.command_with_timeout(&["INFO", "server"], Duration::from_millis(250)) else {
            return false;
        };
        info.lines().any(|line| line.trim_end() == format!("process_id:{pid}"))
    }

    fn signal(&self, signal: Signal, what: &str) {
        let child = self.child.as_ref().unwrap_or_else(|| panic!("{what}() on a redis-server that is not running"));
        // The child is not reaped until `kill`/`is_running`, so its pid cannot
        // have been reused.
        kill_process(Pid::from_child(child), signal)
            .unwrap_or_else(|error| panic!("{what}(): cannot signal redis-server (pid {}): {error}", child.id()));
    }

    /// The last lines of the server's log and of its stdout/stderr.
    fn log_tail(&self) -> String {
        const LINES: usize = 30;
        let mut out = String::new();
        for name in ["redis.log", "stdio.log"] {
            let path = self.dir.join(name);
            let text = match fs::read(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(error) => format!("(cannot read: {error})"),
            };
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ---\n", path.display()));
            for line in &lines[lines.len().saturating_sub(LINES)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (stopped) server.
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Reports a missing `redis-server`: `None` with a loud line, or a panic when
/// [`REQUIRE_ENV`] is `1`.
fn skip_or_panic() -> Option<RedisServer> {
    if std::env::var_os(REQUIRE_ENV).is_some_and(|value| value == "1") {
        panic!(
            "redis-server not found on PATH and {REQUIRE_ENV}=1: install it (apt-get install redis-server) \
             or unset {REQUIRE_ENV} to skip Redis tests"
        );
    }
    eprintln!(
        "SKIPPED: redis-server not found on PATH; install it (apt-get install redis-server) \
         or set {REQUIRE_ENV}=1 to make this a failure"
    );
    None
}

/// A loopback port that was free a moment ago (and is not 6379).
fn free_port() -> u16 {
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind 127.0.0.1:0 to find a free port");
        let port = listener.local_addr().expect("local address of a bound listener").port();
        if port != SHARED_REDIS_PORT {
            return port;
        }
    }
}

/// Creates a new directory under the system temp dir, private to this server.
fn make_private_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lockman-redis-{}-{count}-{nanos}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
            Err(error) => panic!("cannot create a temporary directory {}: {error}", dir.display()),
        }
    }
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
        assert_ne!(server.port(), SHARED_REDIS_PORT);
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
