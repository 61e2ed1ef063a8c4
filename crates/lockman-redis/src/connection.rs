//! The backend's one multiplexed Redis connection, driven on lockman's
//! background runtime.
//!
//! `redis`'s `ConnectionManager` spawns the connection's driver task (and
//! every reconnect's) on whatever runtime is current when it connects. A
//! manager connected on one runtime and then used from another — a runtime
//! that was dropped, a current-thread runtime that sits idle, the blocking
//! API's threads — then waits on a driver nobody runs ("timed out") or that
//! is gone ("broken pipe"). So connecting, and every command, is polled in
//! the background runtime's context ([`lockman_core::InBackground`]): the
//! driver and its reconnects live there, while the caller still awaits the
//! reply on its own task.

use std::fmt;

use lockman_core::InBackground;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::runtime::Handle;

/// A clone shares the connection.
#[derive(Clone)]
pub(crate) struct Connection {
    inner: ConnectionManager,
    background: Handle,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects in the background runtime's context.
    pub(crate) async fn open(
        client: redis::Client,
        config: ConnectionManagerConfig,
        background: Handle,
    ) -> redis::RedisResult<Connection> {
        let connecting = Box::pin(async move { client.get_connection_manager_with_config(config).await });
        let inner = InBackground::new(background.clone(), connecting).await?;
        Ok(Connection { inner, background })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let background = self.background.clone();
        Box::pin(InBackground::new(background, self.inner.req_packed_command(cmd)))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let background = self.background.clone();
        Box::pin(InBackground::new(background, self.inner.req_packed_commands(pipeline, offset, count)))
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
