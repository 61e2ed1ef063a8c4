//! A TCP relay for fault tests: a man in the middle between a client and a
//! server that can delay, stall and cut their traffic on command.
//!
//! [`TcpRelay::start`] listens on a free `127.0.0.1` port and forwards every
//! connection it accepts to the target address, one new server connection per
//! client connection. While it runs, a test can
//!
//! * [`set_delay`](TcpRelay::set_delay): hold every chunk read in one
//!   [`Direction`] for a while before writing it on (a slow network, a reply
//!   that arrives late). The delay counts from when the relay read the chunk,
//!   so delays do not pile up, and order is kept.
//! * [`stall`](TcpRelay::stall) / [`resume`](TcpRelay::resume): hold
//!   everything in one direction until resumed (a request that has left the
//!   client but not reached the server, a reply the server sent that the
//!   client has not seen). [`wait_in_flight`](TcpRelay::wait_in_flight) says
//!   when the relay is holding something.
//! * [`cut`](TcpRelay::cut): reset every open connection (both sides get a
//!   TCP RST), dropping whatever the relay holds for it: the client sees its
//!   connection break. New connections are still accepted.
//!
//! Controls apply to every connection, open and future. The relay runs as
//! tasks on the Tokio runtime that started it and stops — listener and every
//! connection — when the [`TcpRelay`] is dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use lockman_testkit::redis_server::RedisServer;
//! use lockman_testkit::relay::{Direction, TcpRelay};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let Some(server) = RedisServer::start() else { return Ok(()) };
//! let relay = TcpRelay::start(([127, 0, 0, 1], server.port()).into()).await?;
//! let url = format!("redis://{}/0", relay.addr()); // give the client this URL
//! relay.set_delay(Direction::ToClient, Duration::from_millis(300)); // replies arrive 300 ms late
//! relay.stall(Direction::ToServer); // requests stop here...
//! relay.cut(); // ...and are dropped with their connections
//! relay.resume(Direction::ToServer); // the client's reconnection gets through
//! # drop(url); Ok(()) }
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How much the relay reads at once.
const CHUNK: usize = 16 * 1024;

/// One direction of the relayed traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the server: requests.
    ToServer,
    /// From the server to the client: replies.
    ToClient,
}

/// A running relay from a loopback port to a target address; stops when dropped.
#[derive(Debug)]
pub struct TcpRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// What the relay's tasks share with its handle.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    to_server: Lane,
    to_client: Lane,
    /// Bumped by every [`TcpRelay::cut`]; each connection ends when it changes.
    cuts: watch::Sender<u64>,
    /// Connections currently relayed.
    open: watch::Sender<usize>,
    accepted: AtomicU64,
}

/// The controls and counters of one direction.
#[derive(Debug)]
struct Lane {
    delay: Mutex<Duration>,
    stalled: watch::Sender<bool>,
    /// Bytes read and not yet written on, over every connection.
    in_flight: watch::Sender<usize>,
}

impl Lane {
    fn new() -> Lane {
        Lane { delay: Mutex::new(Duration::ZERO), stalled: watch::channel(false).0, in_flight: watch::channel(0).0 }
    }

    fn delay(&self) -> Duration {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Shared {
    fn lane(&self, direction: Direction) -> &Lane {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }
}

impl TcpRelay {
    /// Starts relaying connections from a free `127.0.0.1` port to `target`,
    /// with no delay and nothing stalled. Must be called within a Tokio
    /// runtime, which runs the relay.
    ///
    /// # Errors
    ///
    /// If no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> io::Result<TcpRelay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            to_server: Lane::new(),
            to_client: Lane::new(),
            cuts: watch::channel(0).0,
            open: watch::channel(0).0,
            accepted: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(TcpRelay { addr, shared, accept })
    }

    /// The address clients connect to (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address every connection is relayed to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Holds every chunk read in `direction` from now on for `delay` before
    /// writing it on (`Duration::ZERO`: no delay). Chunks already read keep
    /// the delay they were read with.
    pub fn set_delay(&self, direction: Direction, delay: Duration) {
        *self.shared.lane(direction).delay.lock().unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// Stops writing anything on in `direction`, on every connection, until
    /// [`resume`](Self::resume); what arrives meanwhile is held (and counted
    /// by [`in_flight`](Self::in_flight)).
    pub fn stall(&self, direction: Direction) {
        self.shared.lane(direction).stalled.send_replace(true);
    }

    /// Writes on what [`stall`](Self::stall) held in `direction`, and
    /// everything after it.
    pub fn resume(&self, direction: Direction) {
        self.shared.lane(direction).stalled.send_replace(false);
    }

    /// Resets every connection open now, on both sides (the sockets are
    /// closed with `SO_LINGER` 0, so the peers see a TCP RST), dropping the
    /// bytes the relay holds for them. Later connections are relayed as
    /// usual; the delay and stall settings stay as they are.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Bytes read in `direction` and not yet written on — held by a delay or
    /// a stall — over every open connection.
    pub fn in_flight(&self, direction: Direction) -> usize {
        *self.shared.lane(direction).in_flight.borrow()
    }

    /// Completes once at least `bytes` are [in flight](Self::in_flight) in
    /// `direction` — e.g. once a stalled request has reached the relay.
    /// Bound it with `tokio::time::timeout`.
    pub async fn wait_in_flight(&self, direction: Direction, bytes: usize) {
        let mut in_flight = self.shared.lane(direction).in_flight.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = in_flight.wait_for(|held| *held >= bytes).await;
    }

    /// How many connections are being relayed now.
    pub fn connections(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// How many connections the relay has accepted since it started.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        // Aborting the accept task drops its `JoinSet`, which aborts every
        // connection task; their sockets close as they are dropped.
        self.accept.abort();
    }
}

/// Accepts connections until aborted, relaying each in a task of its own.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    // Subscribed here, so a cut right after the accept ends this connection too.
                    let cuts = shared.cuts.subscribe();
                    connections.spawn(relay_connection(client, cuts, shared.clone()));
                }
                Err(error) => {
                    // E.g. out of file descriptors: try again shortly rather than spin.
                    tracing::debug!(%error, "relay: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Relays one client connection until both directions are closed, or a cut.
async fn relay_connection(mut client: TcpStream, mut cuts: watch::Receiver<u64>, shared: Arc<Shared>) {
    let generation = *cuts.borrow();
    let connected = tokio::select! {
        connected = TcpStream::connect(shared.target) => connected,
        _ = cuts.changed() => return,
    };
    let mut server = match connected {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%error, target = %shared.target, "relay: cannot reach the target; closing the client");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.open.send_modify(|open| *open += 1);
    let cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = async {
            tokio::join!(
                pump(client_read, server_write, &shared.to_server, &shared.cuts, generation),
                pump(server_read, client_write, &shared.to_client, &shared.cuts, generation),
            )
        };
        // The cut first: a `resume` right after a `cut` must not let held
        // bytes out before the cut is seen.
        tokio::select! {
            biased;
            _ = cuts.changed() => true,
            _ = both => false,
        }
    };
    if cut {
        // Close abortively: the peers get an RST, as from a broken network path.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
    shared.open.send_modify(|open| *open -= 1);
}

/// Copies `from` to `to` through the lane's delay and stall, then shuts down
/// `to`'s write side (passing on an end of stream). Ends early if either side
/// fails, or once the connection (of cut `generation`) has been cut.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    lane: &Lane,
    cuts: &watch::Sender<u64>,
    generation: u64,
) {
    // Bytes of this pump in flight; given back to the lane however it ends.
    let mine = InFlight { lane, bytes: AtomicU64::new(0) };
    let (chunks, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async {
        let mut buffer = vec![0; CHUNK];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            mine.add(n);
            if chunks.send((Instant::now() + lane.delay(), buffer[..n].to_vec())).is_err() {
                break;
            }
        }
        drop(chunks);
    };
    let write = async {
        let mut stalled = lane.stalled.subscribe();
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            let resumed = stalled.wait_for(|stalled| !*stalled).await.is_ok();
            // Nothing held may get out once the connection is cut.
            if !resumed || *cuts.borrow() != generation || to.write_all(&chunk).await.is_err() {
                return;
            }
            mine.sub(chunk.len());
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Counts one pump's bytes in flight into its lane, and takes back what is
/// left when dropped (the connection was cut or failed with bytes held).
struct InFlight<'a> {
    lane: &'a Lane,
    bytes: AtomicU64,
}

impl InFlight<'_> {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.lane.in_flight.send_modify(|held| *held += n);
    }

    fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n as u64, Ordering::Relaxed);
        self.lane.in_flight.send_modify(|held| *held -= n);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let left = usize::try_from(*self.bytes.get_mut()).unwrap_or(usize::MAX);
        if left > 0 {
            self.lane.in_flight.send_modify(|held| *held = held.saturating_sub(left));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free loopback port: writes back what it reads.
    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        (addr, task)
    }

    const BOUND: Duration = Duration::from_secs(5);

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut reply = vec![0; message.len()];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    }

    #[tokio::test]
    async fn relays_both_ways_and_counts_connections() {
        let (echo, _server) = echo_server().await;
        let relay = TcpRelay::start(echo).await.unwrap();
        assert_eq!(relay.target(), echo);
        assert!(relay.addr().ip().is_loopback());
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let reply = tokio::time::timeout(BOUND, round_trip(&mut stream, b"hello")).await.unwrap().unwrap();
        assert_eq!(reply, b"hello");
        assert_eq!((relay.accepted(), relay.connections()), (1, 1));
        assert_eq!(relay.in_flight(Direction::ToServer) + relay.in_flight(Direction::ToClient), 0);
        // An end of stream is passed on both ways, and the connection ends.
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(BOUND, stream.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
        let mut open = relay.shared.open.subscribe();
        tokio::time::timeout(BOUND, open.wait_for(|n| *n == 0)).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn delays_replies_by_the_set_delay() {
        let (echo, _server) = echo_server().await;
        let relay = TcpRelay::start(echo).await.unwrap();
        let delay = Duration::from_millis(200);
        relay.set_delay(Direction::ToClient, delay);
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let sent = Instant::now();
        let reply = tokio::time::timeout(BOUND, round_trip(&mut stream, b"late")).await.unwrap().unwrap();
        assert_eq!(reply, b"late");
        assert!(sent.elapsed() >= delay, "the reply came after {:?}", sent.elapsed());
        relay.set_delay(Direction::ToClient, Duration::ZERO);
        let sent = Instant::now();
        tokio::time::timeout(BOUND, round_trip(&mut stream, b"prompt")).await.unwrap().unwrap();
        assert!(sent.elapsed() < delay, "no delay set, yet the reply took {:?}", sent.elapsed());
    }

    #[tokio::test]
    async fn stall_holds_until_resume() {
        let (echo, _server) = echo_server().await;
        let relay = TcpRelay::start(echo).await.unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        relay.stall(Direction::ToServer);
        stream.write_all(b"held").await.unwrap();
        tokio::time::timeout(BOUND, relay.wait_in_flight(Direction::ToServer, 4)).await.unwrap();
        let mut reply = [0; 4];
        assert!(tokio::time::timeout(Duration::from_millis(100), stream.read_exact(&mut reply)).await.is_err());
        relay.resume(Direction::ToServer);
        tokio::time::timeout(BOUND, stream.read_exact(&mut reply)).await.unwrap().unwrap();
        assert_eq!(&reply, b"held");
        assert_eq!(relay.in_flight(Direction::ToServer), 0);
    }

    #[tokio::test]
    async fn cut_resets_open_connections_and_drops_held_bytes() {
        let (echo, _server) = echo_server().await;
        let relay = TcpRelay::start(echo).await.unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        relay.stall(Direction::ToClient);
        stream.write_all(b"lost").await.unwrap();
        tokio::time::timeout(BOUND, relay.wait_in_flight(Direction::ToClient, 4)).await.unwrap();
        relay.cut();
        let mut reply = Vec::new();
        let read = tokio::time::timeout(BOUND, stream.read_to_end(&mut reply)).await.unwrap();
        assert!(read.is_err() || reply.is_empty(), "the held reply got through a cut: {reply:?}");
        let mut in_flight = relay.shared.to_client.in_flight.subscribe();
        tokio::time::timeout(BOUND, in_flight.wait_for(|n| *n == 0)).await.unwrap().unwrap();
        // New connections still work once resumed.
        relay.resume(Direction::ToClient);
        let mut again = TcpStream::connect(relay.addr()).await.unwrap();
        let reply = tokio::time::timeout(BOUND, round_trip(&mut again, b"again")).await.unwrap().unwrap();
        assert_eq!(reply, b"again");
        assert_eq!(relay.accepted(), 2);
    }

    /// On a current-thread runtime nothing runs between `cut` and `resume`,
    /// so the connection sees both at once.
    #[tokio::test]
    async fn resume_right_after_cut_lets_nothing_held_through() {
        let (echo, _server) = echo_server().await;
        let relay = TcpRelay::start(echo).await.unwrap();
        for round in 0..100 {
            let stream = TcpStream::connect(relay.addr()).await.unwrap();
            let (mut read_half, mut write_half) = stream.into_split();
            relay.stall(Direction::ToClient);
            write_half.write_all(b"held").await.unwrap();
            tokio::time::timeout(BOUND, relay.wait_in_flight(Direction::ToClient, 4)).await.unwrap();
            // A reader already waiting, as a client's connection driver is.
            let reading = tokio::spawn(async move {
                let mut reply = Vec::new();
                let _ = read_half.read_to_end(&mut reply).await;
                reply
            });
            relay.cut();
            relay.resume(Direction::ToClient);
            let reply = tokio::time::timeout(BOUND, reading).await.unwrap().unwrap();
            assert!(reply.is_empty(), "round {round}: held bytes got through a cut: {reply:?}");
        }
    }

    #[tokio::test]
    async fn dropping_the_relay_stops_it() {
        let (echo, _server) = echo_server().await;
        let relay = TcpRelay::start(echo).await.unwrap();
        let addr = relay.addr();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(BOUND, round_trip(&mut stream, b"x")).await.unwrap().unwrap();
        drop(relay);
        // The open connection is closed, and nothing listens any more.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut rest)).await.unwrap();
        let deadline = Instant::now() + BOUND;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "the relay still accepts after drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
