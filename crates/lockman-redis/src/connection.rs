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

use lockman_core::InBackground;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::runtime::{Handle, RuntimeFlavor};

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
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let background = self.shared.background.clone();
        if self.cached_is_home() {
            return Box::pin(InBackground::new(background, self.current.manager.req_packed_command(cmd)));
        }
        Box::pin(async move {
            let mut manager = self.refreshed().await?;
            InBackground::new(background, manager.req_packed_command(cmd)).await
        })
    }

    fn req_packed_commands<'a>(
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

    fn get_db(&self) -> i64 {
        self.current.manager.get_db()
    }
}
