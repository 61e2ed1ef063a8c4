//! The Lua scripts: each lock operation is one script, so one round trip.
//!
//! Keys of one resource share the hash tag `{resource}`, so they land in one
//! Redis Cluster slot: `<prefix>:{<resource>}:lock` (a hash: holder, hold
//! count, fencing token, metadata) and `<prefix>:{<resource>}:fence` (the
//! fencing counter, with a week-long TTL; see [`ACQUIRE`]).

use std::sync::LazyLock;

use redis::Script;

/// Grants or re-enters the lock; on a busy lock returns its TTL and fields.
///
/// KEYS: lock, fence. ARGV: holder, lease ms, acquired-at (µs since the
/// epoch, the client's clock), host, pid, purpose, user, and `1` if the
/// caller will wait for a busy lock (it is then marked `waited`, so its
/// release is published). Returns `{"1", token, acquired_us}` or
/// `{"0", pttl, field, value, ...}`.
///
/// The token is the fence counter plus one (`INCR`). When the counter is
/// missing — a new resource, its week-long TTL ran out, or a restart lost
/// every key — it restarts at the server's `TIME` in microseconds. That is
/// above every earlier token as long as the server clock does not step back:
/// the counter itself started at that clock and grew by one per grant, and
/// two grants of one resource are always more than a microsecond apart (each
/// is a script run, with a release or an expiry between them).
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
  if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'waited', '1') end
  local busy = {'0', tostring(redis.call('PTTL', KEYS[1]))}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(busy, v) end
  return busy
end
local token = redis.call('INCR', KEYS[2])
if token == 1 then
  local t = redis.call('TIME')
  token = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[2], token, 'PX', 604800000)
else
  token = string.format('%.0f', token)
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'count', '1', 'token', token, 'acquired_us', ARGV[3],
  'host', ARGV[4], 'pid', ARGV[5], 'purpose', ARGV[6], 'user', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'1', token, ARGV[3]}
"#,
    )
});

/// Releases one hold if holder and token match; deletes the lock when the
/// count reaches zero, and then publishes on the release channel if anyone
/// waited for this grant (an uncontended release sends no message, so no
/// subscriber does any work for it).
///
/// KEYS: lock. ARGV: holder, token, channel. Returns -1 (not ours), 0
/// (released) or the remaining count.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local f = redis.call('HMGET', KEYS[1], 'holder', 'token', 'count', 'waited')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return -1 end
if f[3] ~= '1' then return redis.call('HINCRBY', KEYS[1], 'count', -1) end
redis.call('DEL', KEYS[1])
if f[4] then redis.call('PUBLISH', ARGV[3], 'released') end
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
