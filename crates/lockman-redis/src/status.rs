//! Flags in Redis: one hash per flag (`<prefix>:flag:{<name>}`) with the
//! value, whether one was given, and when it was set; the TTL is the key's
//! `PX`. Listing uses `SCAN`, never `KEYS`.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lockman_core::{FlagInfo, FlagOptions, LockError, StatusManager};
use redis::Script;

use crate::runner::ScriptCall;

use crate::{BACKEND, RedisBackend};

/// Sets a flag in one round trip. KEYS: flag. ARGV: has value, value, ttl ms (0: none).
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'has_value', ARGV[1], 'value', ARGV[2],
  'set_us', string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])))
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"#,
    )
});

/// Reads a flag: its fields, then its PTTL. KEYS: flag. (Its own script,
/// not the lock's `INSPECT`, whose reply carries more than a flag needs.)
static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {} end
table.insert(fields, tostring(redis.call('PTTL', KEYS[1])))
return fields
"#,
    )
});

/// Reads and deletes a flag in one step. KEYS: flag.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {} end
table.insert(fields, tostring(redis.call('PTTL', KEYS[1])))
redis.call('DEL', KEYS[1])
return fields
"#,
    )
});

/// Flags kept in Redis, beside (and sharing the connection of) a
/// [`RedisBackend`].
///
/// ```no_run
/// use lockman_core::{FlagOptions, StatusManager};
/// use lockman_redis::{RedisBackend, RedisOptions, RedisStatusManager};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), lockman_core::LockError> {
/// let backend = RedisBackend::connect(RedisOptions::new("redis://127.0.0.1:6379/0")).await?;
/// let flags = RedisStatusManager::new(&backend);
/// flags.set(".FCRunning1", FlagOptions::new().value("job-7\n15:00")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisStatusManager {
    connection: crate::connection::Connection,
    keys: crate::keys::Keys,
    options: crate::RedisOptions,
}

impl RedisStatusManager {
    /// Flags under the same prefix and connection as `backend`.
    pub fn new(backend: &RedisBackend) -> Self {
        RedisStatusManager {
            connection: backend.connection.clone(),
            keys: backend.keys.clone(),
            options: backend.options.clone(),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        action: &str,
        flag: &str,
        invocation: ScriptCall,
    ) -> Result<T, LockError> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.options.response_timeout, invocation.invoke(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failed(action, flag, &e.to_string())),
            Err(_) => Err(self.failed(action, flag, "no answer within the response timeout")),
        }
    }

    fn failed(&self, action: &str, flag: &str, detail: &str) -> LockError {
        LockError::backend(
            BACKEND,
            action,
            Some(flag),
            format!("Redis at {}: {detail}; check that Redis is running and reachable", self.options.redacted_url()),
        )
    }

    fn info(flag: &str, fields: &[String]) -> Option<FlagInfo> {
        let (pttl, fields) = fields.split_last()?;
        let get = |name: &str| fields.chunks(2).find(|pair| pair[0] == name).and_then(|pair| pair.get(1));
        let has_value = get("has_value").is_some_and(|v| v == "1");
        let mut info = FlagInfo::new(flag, &FlagOptions::new(), BACKEND);
        info.value = if has_value { get("value").cloned() } else { None };
        // Written by any client of the server: an unreadable time counts as absent.
        if let Some(at) = get("set_us").and_then(|v| v.parse().ok()).and_then(lockman_core::display::from_unix_micros) {
            info.set_at = at;
        }
        info.expires_at = pttl
            .parse::<i64>()
            .ok()
            .and_then(|ms| u64::try_from(ms).ok())
            .and_then(|ms| SystemTime::now().checked_add(Duration::from_millis(ms)));
        Some(info)
    }
}

#[async_trait]
impl StatusManager for RedisStatusManager {
    fn name(&self) -> &str {
        BACKEND
    }

    async fn set(&self, flag: &str, options: FlagOptions) -> Result<(), LockError> {
        lockman_core::validate_name(flag)?;
        let ttl = options.ttl.map_or(0, crate::millis);
        let mut invocation = ScriptCall::new(&SET, 1);
        invocation
            .key(self.keys.flag(flag))
            .arg(if options.value.is_some() { "1" } else { "0" })
            .arg(options.value.as_deref().unwrap_or(""))
            .arg(ttl);
        let _: i64 = self.run("setting a flag", flag, invocation).await?;
        Ok(())
    }

    async fn clear(&self, flag: &str) -> Result<bool, LockError> {
        lockman_core::validate_name(flag)?;
        let mut connection = self.connection.clone();
        let deleted: i64 = tokio::time::timeout(
            self.options.response_timeout,
            redis::cmd("DEL").arg(self.keys.flag(flag)).query_async(&mut connection),
        )
        .await
        .map_err(|_| self.failed("clearing a flag", flag, "no answer within the response timeout"))?
        .map_err(|e| self.failed("clearing a flag", flag, &e.to_string()))?;
        Ok(deleted > 0)
    }

    async fn get(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        lockman_core::validate_name(flag)?;
        let mut invocation = ScriptCall::new(&GET, 1);
        invocation.key(self.keys.flag(flag));
        let fields: Vec<String> = self.run("reading a flag", flag, invocation).await?;
        Ok(Self::info(flag, &fields))
    }

    async fn take(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        lockman_core::validate_name(flag)?;
        let mut invocation = ScriptCall::new(&TAKE, 1);
        invocation.key(self.keys.flag(flag));
        let fields: Vec<String> = self.run("taking a flag", flag, invocation).await?;
        Ok(Self::info(flag, &fields))
    }

    async fn list(&self) -> Result<Vec<FlagInfo>, LockError> {
        let keys = crate::scan(&self.connection, &self.keys.flag_pattern(), self.options.response_timeout)
            .await
            .map_err(|detail| self.failed("listing flags", "*", &detail))?;
        let names = keys.iter().filter_map(|key| self.keys.flag_of_key(key).map(str::to_owned));
        let mut flags = Vec::new();
        for name in names {
            if let Some(info) = self.get(&name).await? {
                flags.push(info);
            }
        }
        flags.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(flags)
    }
}
