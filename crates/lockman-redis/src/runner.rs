//! Running commands and scripts within a time budget, and listing keys with `SCAN`.

use std::fmt;
use std::time::Duration;

use crate::connection::Connection;
use lockman_core::LockError;
use lockman_core::backend::Deadline;
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};
use tokio::time::Instant;

/// One run of a script: `EVALSHA <sha1> <number of keys> <keys…>
/// <arguments…>`, written straight into one command as the keys and
/// arguments are added. (`redis`'s `ScriptInvocation` keeps each key and
/// argument in a vector of its own and copies them all into a command when
/// run: about 30 allocations per lock cycle.)
pub(crate) struct ScriptCall {
    script: &'static Script,
    command: Cmd,
    keys: usize,
    keys_added: usize,
    args_added: bool,
}

impl ScriptCall {
    /// A call of `script`, which takes `keys` keys: add them first with
    /// [`key`](Self::key), then the arguments with [`arg`](Self::arg).
    pub(crate) fn new(script: &'static Script, keys: usize) -> Self {
        let mut command = Cmd::with_capacity(keys + 20, 256);
        command.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        ScriptCall { script, command, keys, keys_added: 0, args_added: false }
    }

    /// One key (exactly one argument, so the declared count stays right).
    pub(crate) fn key(&mut self, key: impl AsRef<str>) -> &mut Self {
        debug_assert!(!self.args_added && self.keys_added < self.keys, "keys first, as many as declared");
        self.keys_added += 1;
        self.command.arg(key.as_ref());
        self
    }

    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args_added = true;
        self.command.arg(arg);
        self
    }

    /// Runs the script. A server that does not know it (restarted, or its
    /// scripts flushed) is sent it with `SCRIPT LOAD` and asked again, as
    /// `redis` does.
    pub(crate) async fn invoke<T: FromRedisValue>(&self, connection: &mut impl ConnectionLike) -> RedisResult<T> {
        debug_assert_eq!(self.keys_added, self.keys, "a script call with fewer keys than declared");
        match self.command.query_async(connection).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(connection).await?;
                self.command.query_async(connection).await
            }
            other => other,
        }
    }
}

use crate::{BACKEND, RedisBackend};

impl RedisBackend {
    /// Runs one script, bounded by `deadline` (if any) and the response timeout.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        action: &str,
        resource: Option<&str>,
        deadline: Deadline,
        invocation: &ScriptCall,
    ) -> Result<T, LockError> {
        self.run_raw(deadline, invocation).await.map_err(|e| self.failed(action, resource, &e.detail))
    }

    /// [`run`](Self::run), keeping whether the connection dropped (then the
    /// connection manager reconnects, but does not resend the command).
    pub(crate) async fn run_raw<T: redis::FromRedisValue>(
        &self,
        deadline: Deadline,
        invocation: &ScriptCall,
    ) -> Result<T, RunError> {
        let limit = match deadline {
            Deadline::At(at) => at.saturating_duration_since(Instant::now()).min(self.options.response_timeout),
            Deadline::Now | Deadline::Never => self.options.response_timeout,
        };
        let mut connection = self.connection.clone();
        match tokio::time::timeout(limit, invocation.invoke(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                Err(RunError { dropped: e.is_connection_dropped() || e.is_io_error(), detail: e.to_string() })
            }
            Err(_) => Err(RunError { dropped: false, detail: format!("no answer within {limit:?}") }),
        }
    }

    pub(crate) fn failed(&self, action: &str, resource: Option<&str>, detail: &str) -> LockError {
        LockError::Backend {
            backend: BACKEND.to_owned(),
            action: action.to_owned(),
            resource: resource.map(str::to_owned),
            message: format!(
                "Redis at {}: {detail}; check that Redis is running and reachable",
                self.options.redacted_url()
            ),
            source: None,
        }
    }
}

/// Why a command failed.
pub(crate) struct RunError {
    /// The connection broke (the command may or may not have run).
    pub(crate) dropped: bool,
    pub(crate) detail: String,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Every key matching `pattern`, by `SCAN` (never `KEYS`, which blocks the
/// server), each batch bounded by `timeout`.
pub(crate) async fn scan(connection: &Connection, pattern: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let mut connection = connection.clone();
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut command = redis::cmd("SCAN");
        command.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500);
        let (next, batch): (u64, Vec<String>) = tokio::time::timeout(timeout, command.query_async(&mut connection))
            .await
            .map_err(|_| format!("no answer to SCAN within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return Ok(keys);
        }
    }
}
