//! The Lua scripts: each lock operation is one script, so one round trip.
//!
//! Keys of one resource share the hash tag `{resource}`, so they land in one
//! Redis Cluster slot: `<prefix>:{<resource>}:lock` (a hash: holder, hold
//! count, fencing token, metadata) and `<prefix>:{<resource>}:fence` (the
//! last token, kept a week so tokens keep increasing between grants).

use std::sync::LazyLock;

use redis::Script;

/// Grants or re-enters the lock; on a busy lock returns its TTL and fields.
///
/// KEYS: lock, fence. ARGV: holder, lease ms, resource, host, pid, purpose,
/// user. Returns `{"1", token, acquired_us}` or `{"0", pttl, field, value, ...}`.
///
/// The token is the last token plus one, floored at the server's `TIME` in
/// microseconds: after a restart that lost every key, tokens still exceed
/// all earlier ones (as long as the server clock does not step back).
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder == ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'count', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local f = redis.call('HMGET', KEYS[1], 'token', 'acquired_us')
  return {'1', f[1], f[2]}
end
if holder then
  local busy = {'0', tostring(redis.call('PTTL', KEYS[1]))}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(busy, v) end
  return busy
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local token = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
if token < now then token = now end
local tok = string.format('%.0f', token)
local at = string.format('%.0f', now)
redis.call('SET', KEYS[2], tok, 'PX', 604800000)
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'count', '1', 'token', tok, 'acquired_us', at,
  'resource', ARGV[3], 'host', ARGV[4], 'pid', ARGV[5], 'purpose', ARGV[6], 'user', ARGV[7], 'lease_ms', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'1', tok, at}
"#,
    )
});

/// Releases one hold if holder and token match; deletes the lock and
/// publishes on the release channel when the count reaches zero.
///
/// KEYS: lock. ARGV: holder, token, channel. Returns -1 (not ours), 0
/// (released) or the remaining count.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local f = redis.call('HMGET', KEYS[1], 'holder', 'token')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return -1 end
local left = redis.call('HINCRBY', KEYS[1], 'count', -1)
if left > 0 then return left end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], 'released')
return 0
"#,
    )
});

/// Sets the lease to ARGV[3] ms from now if holder and token match.
///
/// KEYS: lock. ARGV: holder, token, lease ms. Returns 1, or 0 if not ours.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local f = redis.call('HMGET', KEYS[1], 'holder', 'token')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[1], 'lease_ms', ARGV[3])
return 1
"#,
    )
});

/// Deletes the lock whoever holds it, telling waiters and the holder.
///
/// KEYS: lock. ARGV: channel, reason. Returns the lock's fields and its
/// PTTL last, or an empty array if it was free.
pub(crate) static FORCE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {} end
table.insert(fields, tostring(redis.call('PTTL', KEYS[1])))
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], 'forced:' .. ARGV[2])
return fields
"#,
    )
});

/// The lock's fields and PTTL (last), in one round trip.
///
/// KEYS: lock. Returns an empty array if it is free.
pub(crate) static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {} end
table.insert(fields, tostring(redis.call('PTTL', KEYS[1])))
return fields
"#,
    )
});

/// Undoes a grant whose reply never reached us (timeout, cancellation): the
/// lock is deleted if this holder got it with one hold.
///
/// KEYS: lock. ARGV: holder, channel.
pub(crate) static ABANDON: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local f = redis.call('HMGET', KEYS[1], 'holder', 'count')
if f[1] ~= ARGV[1] or f[2] ~= '1' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'released')
return 1
"#,
    )
});
