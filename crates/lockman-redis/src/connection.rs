//! The backend's one multiplexed Redis connection, and the runtime that
//! drives it.
//!
//! `redis`'s `ConnectionManager` spawns the connection's driver task (and
//! every reconnect's) on whatever runtime is current when it connects. A
//! manager connected on one runtime and then used from another — a runtime
//! that was dropped, a current-thread runtime that sits idle, the blocking
//! API's threads — would wait on a driver nobody runs ("timed out") or that
//! is gone ("broken pipe").
//!
//! So the connection has a *home*:
//!
//! * connected from a **multi-thread** runtime, it lives there: its workers
//!   drive it whatever one caller does, and a command and its driver share
//!   a thread pool (hosting every connection on lockman's one background
//!   thread costs thread wake-ups per command);
//! * connected from a **current-thread** runtime (or none), it lives on
//!   lockman's background runtime, which is always driven.
//!
//! A caller on a **current-thread** runtime, on the thread that drives it,
//! gets a connection of its own, homed on that runtime (one per runtime and
//! thread; at most [`MAX_LOCAL_HOMES`] are tracked): its driver then runs
//! on the caller's thread while the caller awaits the reply, and a command
//! costs no wake-up of the background thread and back — about four context
//! switches per lock cycle, most of the client's CPU in it. Whether the
//! runtime is being driven by the caller's thread is checked before
//! **every** command: a probe task spawned on it must run, on that thread,
//! while the caller steps aside once. Under `Handle::block_on` (from any
//! thread), or in an executor that blocks inside a task, it does not, and
//! the command goes over the shared connection, as every command did
//! before. The runtime's own connection is made while connecting from it,
//! or else by a task on that runtime (meanwhile its commands use the
//! shared one); a failed attempt is retried after [`LOCAL_RETRY_AFTER`],
//! and a runtime that shuts down takes its connection with it.
//!
//! A task left on the home runtime notices when that runtime shuts down
//! (its tasks are dropped); the next command then connects again on the
//! background runtime instead of failing. Every command on the shared
//! connection is polled in the background runtime's context
//! ([`InBackground`]), so a reconnect made while one runs lands there too,
//! never on a caller's runtime. Nothing else may be armed in that context
//! on the command path: the connection's own response timer, armed there,
//! woke the background thread on every command (the uncontended cycle went
//! from about 159 µs to 197–215 µs in bench runs), so commands are bounded
//! by the callers' timeouts instead.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use lockman_core::InBackground;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::runtime::{Handle, RuntimeFlavor};

/// At most this many current-thread runtimes (with the thread driving each)
/// are tracked for connections of their own; callers beyond use the shared
/// one.
const MAX_LOCAL_HOMES: usize = 8;

/// After a failed attempt to connect a runtime's own connection, its callers
/// use the shared one for this long before the next attempt.
const LOCAL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many times a caller yields for its runtime's probe task (see the
/// module docs); it runs after the first when the runtime is driven.
const PROBE_YIELDS: usize = 8;

/// A clone shares the connection.
#[derive(Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
    /// The connection in use, cached: refreshed when its home has gone.
    current: Homed,
}

struct Shared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    background: Handle,
    /// The connection and whether its home runtime has shut down.
    current: Mutex<Homed>,
    /// One move to the background runtime at a time.
    moving: tokio::sync::Mutex<()>,
    /// Dropped with the connection: ends the home runtime's watch task.
    _stop_watch: Option<tokio::sync::oneshot::Sender<()>>,
    /// Connections homed on current-thread callers' runtimes.
    local: Mutex<LocalHomes>,
}

/// Current-thread runtimes (with the thread that drives each) and their own
/// connections.
#[derive(Default)]
struct LocalHomes {
    homes: Vec<LocalHome>,
    /// When connecting a runtime's own connection last failed.
    failed_at: Option<Instant>,
}

struct LocalHome {
    runtime: tokio::runtime::Id,
    thread: ThreadId,
    /// The thread the last probe task ran on, set once it ran. While it has
    /// not, the runtime is not being driven, and no second probe is spawned.
    probe: Option<Arc<OnceLock<ThreadId>>>,
    connection: LocalConnection,
}

enum LocalConnection {
    None,
    /// A task on the runtime is connecting it.
    Connecting,
    Connected {
        homed: Homed,
        /// Dropped with the connection: ends the home runtime's watch task.
        _stop_watch: tokio::sync::oneshot::Sender<()>,
    },
}

impl LocalHomes {
    fn position(&self, runtime: tokio::runtime::Id, thread: ThreadId) -> Option<usize> {
        self.homes.iter().position(|home| home.runtime == runtime && home.thread == thread)
    }

    /// The entry of `runtime` driven by `thread`, if there is one.
    fn find_mut(&mut self, runtime: tokio::runtime::Id, thread: ThreadId) -> Option<&mut LocalHome> {
        let position = self.position(runtime, thread)?;
        self.homes.get_mut(position)
    }

    /// The entry of `runtime` driven by `thread`, made if there is room (a
    /// runtime that shut down, or one never connected, makes room).
    fn entry(&mut self, runtime: tokio::runtime::Id, thread: ThreadId) -> Option<&mut LocalHome> {
        self.homes.retain(|home| match &home.connection {
            LocalConnection::Connected { homed, .. } => !homed.home_gone.load(Ordering::Acquire),
            _ => true,
        });
        let position = match self.position(runtime, thread) {
            Some(position) => position,
            None => {
                if self.homes.len() >= MAX_LOCAL_HOMES {
                    // An entry with no connection, one whose probe ran before
                    // one whose probe still waits (forgetting that would let
                    // probes pile up on a runtime nobody drives).
                    let unconnected = |home: &&LocalHome| matches!(home.connection, LocalConnection::None);
                    let waiting = |home: &LocalHome| home.probe.as_ref().is_some_and(|ran_on| ran_on.get().is_none());
                    let evict = self
                        .homes
                        .iter()
                        .position(|home| unconnected(&home) && !waiting(home))
                        .or_else(|| self.homes.iter().position(|home| unconnected(&home)))?;
                    self.homes.remove(evict);
                }
                self.homes.push(LocalHome { runtime, thread, probe: None, connection: LocalConnection::None });
                self.homes.len() - 1
            }
        };
        self.homes.get_mut(position)
    }
}

/// Puts a runtime's entry back to "not connected" if its connecting task
/// is dropped unfinished (the runtime shut down meanwhile).
struct ConnectingReset {
    shared: Option<Arc<Shared>>,
    runtime: tokio::runtime::Id,
    thread: ThreadId,
}

impl Drop for ConnectingReset {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else { return };
        let mut local = shared.local.lock();
        if let Some(home) = local.find_mut(self.runtime, self.thread)
            && matches!(home.connection, LocalConnection::Connecting)
        {
            home.connection = LocalConnection::None;
        }
    }
}

#[derive(Clone)]
struct Homed {
    manager: ConnectionManager,
    home_gone: Arc<AtomicBool>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// Sets its flag when dropped: with the task holding it, when the runtime
/// the task was spawned on shuts down.
struct SetOnDrop(Arc<AtomicBool>);

/// Spawns on `home` a task that sets the returned flag when that runtime
/// shuts down; dropping the returned sender ends the task.
fn watch_home(home: &Handle) -> (Arc<AtomicBool>, tokio::sync::oneshot::Sender<()>) {
    let home_gone = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let flag = SetOnDrop(home_gone.clone());
    home.spawn(async move {
        let _flag = flag;
        let _ = stopped.await;
    });
    (home_gone, stop)
}

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Connection {
    /// Connects, on the caller's runtime if it is a multi-thread one, else
    /// in the background runtime's context.
    pub(crate) async fn open(
        client: redis::Client,
        config: ConnectionManagerConfig,
        background: Handle,
    ) -> redis::RedisResult<Connection> {
        let home = Handle::try_current().ok().filter(|caller| caller.runtime_flavor() == RuntimeFlavor::MultiThread);
        let (manager, home_gone, stop_watch) = match home {
            Some(home) => {
                let manager = client.get_connection_manager_with_config(config.clone()).await?;
                let (home_gone, stop) = watch_home(&home);
                (manager, home_gone, Some(stop))
            }
            None => (
                Self::connect_in_background(&client, &config, &background).await?,
                Arc::new(AtomicBool::new(false)),
                None,
            ),
        };
        let homed = Homed { manager, home_gone };
        let shared = Arc::new(Shared {
            client,
            config,
            background,
            current: Mutex::new(homed.clone()),
            moving: tokio::sync::Mutex::new(()),
            _stop_watch: stop_watch,
            local: Mutex::new(LocalHomes::default()),
        });
        Ok(Connection { shared, current: homed })
    }

    async fn connect_in_background(
        client: &redis::Client,
        config: &ConnectionManagerConfig,
        background: &Handle,
    ) -> redis::RedisResult<ConnectionManager> {
        let (client, config) = (client.clone(), config.clone());
        let connecting = Box::pin(async move { client.get_connection_manager_with_config(config).await });
        InBackground::new(background.clone(), connecting).await
    }

    /// The connection to send on, when the cached one's home runtime has
    /// shut down: the shared one, moved to the background runtime first if
    /// nobody has yet.
    async fn refreshed(&mut self) -> redis::RedisResult<ConnectionManager> {
        let _moving = self.shared.moving.lock().await;
        let homed = self.shared.current.lock().clone();
        if homed.home_gone.load(Ordering::Acquire) {
            tracing::debug!(
                backend = crate::BACKEND,
                "the runtime the Redis connection lived on shut down; reconnecting on lockman's background runtime"
            );
            let manager =
                Self::connect_in_background(&self.shared.client, &self.shared.config, &self.shared.background).await?;
            *self.shared.current.lock() = Homed { manager, home_gone: Arc::new(AtomicBool::new(false)) };
        }
        self.current = self.shared.current.lock().clone();
        Ok(self.current.manager.clone())
    }

    /// Whether the cached connection's home runtime still runs.
    fn cached_is_home(&self) -> bool {
        !self.current.home_gone.load(Ordering::Acquire)
    }

    /// The caller's runtime's own connection, if it has one and is being
    /// driven by the caller's thread right now; `None`: use the shared one.
    /// Starts connecting one for a driven runtime that has none.
    async fn local(&self) -> Option<ConnectionManager> {
        self.local_or_connect(false).await
    }

    /// Makes the caller's runtime's own connection now, if the caller's
    /// thread drives a current-thread runtime: connecting from one, its
    /// first commands then need no hop either.
    pub(crate) async fn home_on_caller(&self) {
        self.local_or_connect(true).await;
    }

    /// [`local`](Self::local); with `wait`, connects a missing connection
    /// before returning instead of in a task of its own.
    async fn local_or_connect(&self, wait: bool) -> Option<ConnectionManager> {
        let caller = Handle::try_current().ok()?;
        if caller.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return None;
        }
        let (runtime, thread) = (caller.id(), std::thread::current().id());
        let probe = {
            let mut local = self.shared.local.lock();
            let home = local.entry(runtime, thread)?;
            if home.probe.as_ref().is_some_and(|ran_on| ran_on.get().is_none()) {
                return None; // an earlier probe still waits to run
            }
            let probe = Arc::new(OnceLock::new());
            home.probe = Some(probe.clone());
            probe
        };
        // Runs on this thread only if this runtime's scheduler runs here
        // while we step aside: not under `Handle::block_on` (nor while
        // another thread drives the runtime), nor in an executor blocking
        // inside a task.
        let ran_on = probe.clone();
        tokio::spawn(async move {
            let _ = ran_on.set(std::thread::current().id());
        });
        for _ in 0..PROBE_YIELDS {
            if probe.get().is_some() {
                break;
            }
            step_aside().await;
        }
        if probe.get() != Some(&thread) {
            return None;
        }
        {
            let mut local = self.shared.local.lock();
            let failed_lately = local.failed_at.is_some_and(|at| at.elapsed() < LOCAL_RETRY_AFTER);
            let home = local.entry(runtime, thread)?;
            match &home.connection {
                LocalConnection::Connected { homed, .. } => return Some(homed.manager.clone()),
                LocalConnection::Connecting => return None,
                LocalConnection::None if failed_lately => return None,
                LocalConnection::None => home.connection = LocalConnection::Connecting,
            }
        }
        // Connected by a task of this runtime, so that its driver lives
        // here; this command and those until it is ready use the shared one.
        let reset = ConnectingReset { shared: Some(self.shared.clone()), runtime, thread };
        if !wait {
            tokio::spawn(Self::connect_local(reset));
            return None;
        }
        Self::connect_local(reset).await;
        let mut local = self.shared.local.lock();
        match &local.entry(runtime, thread)?.connection {
            LocalConnection::Connected { homed, .. } => Some(homed.manager.clone()),
            _ => None,
        }
    }

    /// Connects the runtime's own connection (a task on that runtime).
    async fn connect_local(mut reset: ConnectingReset) {
        let Some(shared) = reset.shared.clone() else { return };
        let connected = shared.client.get_connection_manager_with_config(shared.config.clone()).await;
        let connection = match connected {
            Ok(manager) => {
                let (home_gone, stop) = watch_home(&Handle::current());
                LocalConnection::Connected { homed: Homed { manager, home_gone }, _stop_watch: stop }
            }
            Err(e) => {
                tracing::debug!(
                    backend = crate::BACKEND,
                    error = %e,
                    "connecting a runtime's own connection failed; its commands use the shared one"
                );
                LocalConnection::None
            }
        };
        let mut local = shared.local.lock();
        local.failed_at = match connection {
            LocalConnection::Connected { .. } => None,
            _ => Some(Instant::now()),
        };
        if let Some(home) = local.find_mut(reset.runtime, reset.thread) {
            home.connection = connection;
        }
        reset.shared = None; // done: nothing to reset
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.local().await {
                Some(mut manager) => manager.req_packed_command(cmd).await,
                None => self.shared_command(cmd).await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.local().await {
                Some(mut manager) => manager.req_packed_commands(pipeline, offset, count).await,
                None => self.shared_commands(pipeline, offset, count).await,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.current.manager.get_db()
    }
}

impl Connection {
    /// `cmd` on the shared connection.
    fn shared_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let background = self.shared.background.clone();
        if self.cached_is_home() {
            return Box::pin(InBackground::new(background, self.current.manager.req_packed_command(cmd)));
        }
        Box::pin(async move {
            let mut manager = self.refreshed().await?;
            InBackground::new(background, manager.req_packed_command(cmd)).await
        })
    }

    /// `pipeline` on the shared connection.
    fn shared_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let background = self.shared.background.clone();
        if self.cached_is_home() {
            return Box::pin(InBackground::new(
                background,
                self.current.manager.req_packed_commands(pipeline, offset, count),
            ));
        }
        Box::pin(async move {
            let mut manager = self.refreshed().await?;
            InBackground::new(background, manager.req_packed_commands(pipeline, offset, count)).await
        })
    }
}

/// Lets the scheduler run what is queued before the caller continues, where
/// one runs it: wakes itself and returns `Pending` once. Unlike
/// `tokio::task::yield_now`, whose wake-up tokio defers until the caller
/// goes back to the scheduler, this is polled again at once by an executor
/// that blocks inside a task, so the probe loop ends there instead of
/// hanging.
fn step_aside() -> impl std::future::Future<Output = ()> {
    let mut stepped = false;
    std::future::poll_fn(move |cx| {
        if stepped {
            return std::task::Poll::Ready(());
        }
        stepped = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
}
