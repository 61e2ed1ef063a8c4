//! Running commands and scripts within a time budget, and listing keys with `SCAN`.

use std::fmt;
use std::time::Duration;

use crate::connection::Connection;
use lockman_core::LockError;
use lockman_core::backend::Deadline;
use tokio::time::Instant;

use crate::{BACKEND, RedisBackend};

impl RedisBackend {
    /// Runs one script, bounded by `deadline` (if any) and the response timeout.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        action: &str,
        resource: Option<&str>,
        deadline: Deadline,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        self.run_raw(deadline, invocation).await.map_err(|e| self.failed(action, resource, &e.detail))
    }

    /// [`run`](Self::run), keeping whether the connection dropped (then the
    /// connection manager reconnects, but does not resend the command).
    pub(crate) async fn run_raw<T: redis::FromRedisValue>(
        &self,
        deadline: Deadline,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RunError> {
        let limit = match deadline {
            Deadline::At(at) => at.saturating_duration_since(Instant::now()).min(self.options.response_timeout),
            Deadline::Now | Deadline::Never => self.options.response_timeout,
        };
        let mut connection = self.connection.clone();
        match tokio::time::timeout(limit, invocation.invoke_async(&mut connection)).await {
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
