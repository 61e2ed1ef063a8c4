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
//! thread, at most [`MAX_LOCAL_HOMES`]): while a task awaits a command, the
//! runtime it runs on is being driven, so the driver needs no other thread,
//! and a command costs no wake-up of the background thread and back — four
//! context switches per lock cycle, most of its client CPU. Before a
//! runtime gets one, a probe task spawned on it must run while the caller
//! yields: under `Handle::block_on` from a foreign thread, or an executor
//! that blocks inside a task, it never runs, and such callers keep using the
//! shared connection. (A thread that was seen driving a runtime and later
//! blocks inside it that way would wait on a driver nobody runs: blocking a
//! runtime's thread inside a task is already a bug for tokio.)
//!
//! A task left on the home runtime notices when that runtime shuts down
//! (its tasks are dropped); the next command then connects again on the
//! background runtime instead of failing. Every command is polled in the
//! background runtime's context ([`InBackground`]), so a reconnect made
//! while one runs lands there too, never on a caller's runtime. Nothing
//! else may be armed in that context on the command path: the connection's
//! own response timer, armed there, woke the background thread on every
//! command (the uncontended cycle went from about 159 µs to 197–215 µs in
//! bench runs), so commands are bounded by the callers' timeouts instead.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use lockman_core::InBackground;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::runtime::{Handle, RuntimeFlavor};

/// At most this many current-thread runtimes (with the thread driving each)
/// get a connection of their own; callers beyond use the shared one.
const MAX_LOCAL_HOMES: usize = 8;

/// After a failed attempt to connect a runtime's own connection, its callers
/// use the shared one for this long before the next attempt.
const LOCAL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many times a caller yields for the probe task of a runtime it may
/// home a connection on (see the module docs).
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

#[derive(Default)]
struct LocalHomes {
    homes: Vec<LocalHome>,
    /// Runtimes (with their thread) found not to run the probe task.
    undriven: Vec<(tokio::runtime::Id, ThreadId)>,
    /// When connecting a runtime's own connection last failed.
    failed_at: Option<Instant>,
}

struct LocalHome {
    runtime: tokio::runtime::Id,
    thread: ThreadId,
    homed: Homed,
    /// Dropped with the connection: ends the home runtime's watch task.
    _stop_watch: tokio::sync::oneshot::Sender<()>,
}

/// Where a caller's command goes.
enum Route {
    /// Its runtime's own connection.
    Local(ConnectionManager),
    /// Its runtime may get one: connect it first.
    NewLocal(tokio::runtime::Id, ThreadId),
    /// The shared connection.
    Shared,
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
        let home_gone = Arc::new(AtomicBool::new(false));
        let (manager, stop_watch) = match home {
            Some(home) => {
                let manager = client.get_connection_manager_with_config(config.clone()).await?;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let flag = SetOnDrop(home_gone.clone());
                home.spawn(async move {
                    let _flag = flag;
                    let _ = stopped.await;
                });
                (manager, Some(stop))
            }
            None => (Self::connect_in_background(&client, &config, &background).await?, None),
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

    /// Where the caller's commands go (see the module docs).
    fn route(&self) -> Route {
        let Ok(caller) = Handle::try_current() else { return Route::Shared };
        if caller.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return Route::Shared;
        }
        let (runtime, thread) = (caller.id(), std::thread::current().id());
        let mut local = self.shared.local.lock();
        local.homes.retain(|home| !home.homed.home_gone.load(Ordering::Acquire));
        if let Some(home) = local.homes.iter().find(|home| home.runtime == runtime && home.thread == thread) {
            return Route::Local(home.homed.manager.clone());
        }
        let retry_later = local.failed_at.is_some_and(|at| at.elapsed() < LOCAL_RETRY_AFTER);
        if retry_later || local.homes.len() >= MAX_LOCAL_HOMES || local.undriven.contains(&(runtime, thread)) {
            return Route::Shared;
        }
        Route::NewLocal(runtime, thread)
    }

    /// Connects a connection homed on the caller's runtime, if a task
    /// spawned there runs while the caller yields; `None` to use the shared
    /// one.
    async fn connect_local(&self, runtime: tokio::runtime::Id, thread: ThreadId) -> Option<ConnectionManager> {
        let probed = Arc::new(AtomicBool::new(false));
        let probe = probed.clone();
        tokio::spawn(async move { probe.store(true, Ordering::Release) });
        for _ in 0..PROBE_YIELDS {
            if probed.load(Ordering::Acquire) {
                break;
            }
            tokio::task::yield_now().await;
        }
        if !probed.load(Ordering::Acquire) {
            tracing::debug!(
                backend = crate::BACKEND,
                "this current-thread runtime does not run its tasks while the caller waits; commands from it use the \
                 shared connection"
            );
            let mut local = self.shared.local.lock();
            if local.undriven.len() >= MAX_LOCAL_HOMES {
                local.undriven.remove(0);
            }
            local.undriven.push((runtime, thread));
            return None;
        }
        let manager = match self.shared.client.get_connection_manager_with_config(self.shared.config.clone()).await {
            Ok(manager) => manager,
            Err(e) => {
                tracing::debug!(backend = crate::BACKEND, error = %e, "connecting this runtime's own connection failed; using the shared one");
                self.shared.local.lock().failed_at = Some(Instant::now());
                return None;
            }
        };
        let home_gone = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let flag = SetOnDrop(home_gone.clone());
        tokio::spawn(async move {
            let _flag = flag;
            let _ = stopped.await;
        });
        let mut local = self.shared.local.lock();
        local.failed_at = None;
        // Another task of this runtime may have connected meanwhile.
        if let Some(home) = local.homes.iter().find(|home| home.runtime == runtime && home.thread == thread) {
            return Some(home.homed.manager.clone());
        }
        if local.homes.len() >= MAX_LOCAL_HOMES {
            return None;
        }
        local.homes.push(LocalHome {
            runtime,
            thread,
            homed: Homed { manager: manager.clone(), home_gone },
            _stop_watch: stop,
        });
        Some(manager)
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self.route() {
            Route::Local(mut manager) => Box::pin(async move { manager.req_packed_command(cmd).await }),
            Route::NewLocal(runtime, thread) => Box::pin(async move {
                match self.connect_local(runtime, thread).await {
                    Some(mut manager) => manager.req_packed_command(cmd).await,
                    None => self.shared_command(cmd).await,
                }
            }),
            Route::Shared => self.shared_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self.route() {
            Route::Local(mut manager) => {
                Box::pin(async move { manager.req_packed_commands(pipeline, offset, count).await })
            }
            Route::NewLocal(runtime, thread) => Box::pin(async move {
                match self.connect_local(runtime, thread).await {
                    Some(mut manager) => manager.req_packed_commands(pipeline, offset, count).await,
                    None => self.shared_commands(pipeline, offset, count).await,
                }
            }),
            Route::Shared => self.shared_commands(pipeline, offset, count),
        }
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
