//! A Redis key written only with a fencing token at least as high as the
//! last one written to it.

use std::sync::LazyLock;

use lockman_core::FencingToken;
use lockman_core::fencing::FenceError;
use redis::Script;

use crate::runner::ScriptCall;

use crate::RedisBackend;

/// Sets the key if the token is not lower than the stored one.
/// KEYS: value key, token key. ARGV: token (decimal), value.
/// Returns `{1}` when written, `{0, last}` when refused.
///
/// Tokens are compared as decimal strings (shorter is lower, then
/// lexicographically): Lua numbers are doubles and would round tokens above
/// 2^53.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local last = redis.call('GET', KEYS[2])
local token = ARGV[1]
if last and (#token < #last or (#token == #last and token < last)) then
  return {0, last}
end
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], ARGV[2])
return {1}
"#,
    )
});

/// A Redis key written only by holders whose fencing token is at least the
/// last one written — the Redis counterpart of `lockman::fencing::FencedFile`.
///
/// The value is a plain string at `key` (readers use `GET`); the last
/// accepted token is at `<key>:fence`. One Lua script compares and writes
/// both, so two writers cannot interleave. Every writer of the key must go
/// through `FencedKey`: a plain `SET` does not check or move the token. On
/// Redis Cluster, give the key a hash tag (`{regcache}`) so its token key
/// lands in the same slot.
///
/// ```no_run
/// use lockman_core::{AcquireOptions, LockBackend, LockManager};
/// use lockman_redis::{FencedKey, RedisBackend, RedisOptions};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = RedisBackend::connect(RedisOptions::new("redis://127.0.0.1:6379/0")).await?;
/// let cache = FencedKey::new(&backend, "regcache");
/// let locks = backend.into_manager();
/// let guard = locks.acquire("inverter_read", AcquireOptions::new()).await?;
/// cache.write(guard.fencing_token(), b"{\"soc\": 81}").await?; // refused if a later holder wrote
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FencedKey {
    connection: crate::connection::Connection,
    key: String,
    fence: String,
    options: crate::RedisOptions,
}

impl FencedKey {
    /// The fenced key `key` (used as given, without the backend's prefix),
    /// on `backend`'s connection.
    pub fn new(backend: &RedisBackend, key: impl Into<String>) -> Self {
        let key = key.into();
        FencedKey {
            connection: backend.connection.clone(),
            fence: format!("{key}:fence"),
            key,
            options: backend.options.clone(),
        }
    }

    /// The key the value is written to.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Sets the key to `value` if `token` is at least the last accepted token.
    ///
    /// # Errors
    ///
    /// [`FenceError::Stale`] (nothing written) if a higher token already
    /// wrote; [`FenceError::Store`] if Redis could not be reached or did not
    /// answer within the response timeout (the write may then have happened).
    pub async fn write(&self, token: FencingToken, value: &[u8]) -> Result<(), FenceError> {
        let mut invocation = ScriptCall::new(&WRITE, 2);
        invocation.key(&self.key).key(&self.fence).arg(token.get().to_string()).arg(value);
        let mut connection = self.connection.clone();
        let answer: Vec<String> =
            match tokio::time::timeout(self.options.response_timeout, invocation.invoke(&mut connection)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => return Err(self.failed(&e.to_string())),
                Err(_) => return Err(self.failed("no answer within the response timeout; the write may have happened")),
            };
        match answer.as_slice() {
            [written] if written == "1" => Ok(()),
            [refused, last] if refused == "0" => {
                let last = last.parse().map(FencingToken::new).map_err(|_| FenceError::Store {
                    store: self.store(),
                    detail: format!(
                        "{} holds {:?}, not a fencing token; only FencedKey should write it",
                        self.fence,
                        lockman_core::display::escape(last)
                    ),
                })?;
                tracing::debug!(key = %self.key, %token, %last, "refused a write with a stale fencing token");
                Err(FenceError::Stale { store: self.store(), token, last })
            }
            other => Err(self.failed(&format!("unexpected answer {other:?} from the fenced-write script"))),
        }
    }

    /// The token of the last accepted write, `None` before the first.
    ///
    /// # Errors
    ///
    /// [`FenceError::Store`] if Redis could not be reached or the token key
    /// does not hold a token.
    pub async fn last_token(&self) -> Result<Option<FencingToken>, FenceError> {
        let mut connection = self.connection.clone();
        let get = redis::cmd("GET").arg(&self.fence).to_owned();
        let last: Option<String> =
            match tokio::time::timeout(self.options.response_timeout, get.query_async(&mut connection)).await {
                Ok(Ok(last)) => last,
                Ok(Err(e)) => return Err(self.failed(&e.to_string())),
                Err(_) => return Err(self.failed("no answer within the response timeout")),
            };
        last.map(|l| {
            l.parse().map(FencingToken::new).map_err(|_| FenceError::Store {
                store: self.store(),
                detail: format!("{} does not hold a fencing token", self.fence),
            })
        })
        .transpose()
    }

    fn store(&self) -> String {
        format!("Redis key {:?}", self.key)
    }

    fn failed(&self, detail: &str) -> FenceError {
        FenceError::Store {
            store: self.store(),
            detail: format!(
                "Redis at {}: {detail}; check that Redis is running and reachable",
                self.options.redacted_url()
            ),
        }
    }
}
