//! The Lua scripts: each lock operation is one script, so one round trip.
//!
//! Keys of one resource share the hash tag `{resource}`, so they land in one
//! Redis Cluster slot: `<prefix>:{<resource>}:lock` (a hash: holder, hold
//! count, fencing token, metadata, and one `h:<hold id>` field per hold) and
//! `<prefix>:{<resource>}:fence` (the latest token, with a week-long TTL;
//! see [`ACQUIRE`]).

use std::sync::LazyLock;

use redis::Script;

/// Grants or re-enters the lock; on a busy lock returns its TTL and fields.
///
/// KEYS: lock, fence. ARGV: holder, lease ms, acquired-at (µs since the
/// epoch, the client's clock), host, pid, purpose, user, `1` if the caller
/// will wait for a busy lock (it is then marked `waited`, so its release is
/// published), and the hold id: a string unique to this attempt, stored as
/// the field `h:<hold id>` so that [`RELEASE`] and [`ABANDON`] can take back
/// exactly this hold. Returns `{"1", token, acquired_us, lease ms left}` or
/// `{"0", pttl, field, value, ...}`.
///
/// **Tokens.** A new grant's token is `max(last + 1, now)`: `last` is the
/// resource's latest token (the fence key, which lives a week from its
/// creation), `now` the server's `TIME` in microseconds. So a token exceeds
/// every token issued before it, even when the fence came back older or not
/// at all — a restart from an older RDB snapshot, AOF `everysec` losing its
/// last second, a lagging replica promoted, the fence's TTL run out:
/// every earlier token was at most the server clock when it was issued plus
/// `r`, the lead the `+ 1` gives the counter over the clock when grants of
/// one resource come faster than one per microsecond (in practice none: a
/// grant takes a script run, and a release or an expiry lies between two
/// grants). The next token is at least the clock now, which is past all of
/// them once more than `r` microseconds went by. This holds as long as
/// (1) the server's clock never steps back — an NTP step, or after a
/// failover a new primary whose clock is behind the old one's by more than
/// the failover took — and (2) tokens are not issued faster than one per
/// microsecond for long, which would let the counter run ahead of the clock
/// and a lost fence hand out tokens from within that lead again. The cost
/// is a `TIME` and an `INCRBY` (in place, keeping the TTL) beside the `INCR`
/// per new grant, in the same round trip: under 2 µs of server CPU.
///
/// **One shared holder id in two managers** (two processes opting in with
/// `AcquireOptions::shared_holder`; ids given by name are scoped per manager):
/// the second acquire re-enters the first's grant — same token, one more
/// hold — and never shortens its lease: the TTL is raised to this lease if
/// it is shorter, else left as it is, and the lease left is returned, so
/// each guard dates its lease from what the key really has.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder == ARGV[1] then
  local f = redis.call('HMGET', KEYS[1], 'token', 'acquired_us')
  redis.call('HINCRBY', KEYS[1], 'count', 1)
  redis.call('HSET', KEYS[1], 'h:' .. ARGV[9], '1')
  local left = redis.call('PTTL', KEYS[1])
  if left < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    left = ARGV[2]
  end
  return {'1', f[1], f[2], tostring(left)}
end
if holder then
  if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'waited', '1') end
  local busy = {'0', tostring(redis.call('PTTL', KEYS[1]))}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(busy, v) end
  return busy
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local token = redis.call('INCR', KEYS[2])
if token == 1 then redis.call('PEXPIRE', KEYS[2], 604800000) end
if token < now then token = redis.call('INCRBY', KEYS[2], string.format('%.0f', now - token)) end
token = string.format('%.0f', token)
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'count', '1', 'token', token, 'acquired_us', ARGV[3],
  'host', ARGV[4], 'pid', ARGV[5], 'purpose', ARGV[6], 'user', ARGV[7], 'h:' .. ARGV[9], '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'1', token, ARGV[3], ARGV[2]}
"#,
    )
});

/// Releases one hold — the one named by the hold id — if holder and token
/// match; deletes the lock when the last hold goes, and then publishes on
/// the release channel if anyone waited for this grant (an uncontended
/// release sends no message, so no subscriber does any work for it).
///
/// KEYS: lock, fence. ARGV: holder, token, channel, hold id, and `1` if this
/// is a retry after the connection dropped (the first attempt may or may
/// not have run). Returns -1 (not ours), 0 (released) or the remaining
/// count of other holds.
///
/// The only hold of a grant is released without looking at its hold field
/// (the fast path: it can only be ours on a first attempt, as a guard is
/// released once). A retry answers as the first attempt would have, where
/// it can know:
/// * the grant is still ours but our hold is gone: only our release removes
///   it, so the first attempt ran; the remaining count is returned and
///   nothing else is touched (no second hold is taken back);
/// * the lock is gone and the fence still ends at our token: no grant was
///   made since ours, and nobody broke it ([`FORCE_RELEASE`] moves the
///   fence on) — whether our first attempt or the lease's end removed it,
///   nobody else held the lock after us: 0;
/// * otherwise (another grant followed, or the fence was lost) the first
///   attempt may have run or the lock may have been lost before it: -1, for
///   the caller to report as lost. This costs nothing on the fast path.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local f = redis.call('HMGET', KEYS[1], 'holder', 'token', 'count', 'waited')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then
  if ARGV[5] == '1' and not f[1] and redis.call('GET', KEYS[2]) == ARGV[2] then return 0 end
  return -1
end
if f[3] ~= '1' or ARGV[5] == '1' then
  if redis.call('HDEL', KEYS[1], 'h:' .. ARGV[4]) == 0 then
    if ARGV[5] == '1' then return tonumber(f[3]) end
    return -1
  end
  if f[3] ~= '1' then return redis.call('HINCRBY', KEYS[1], 'count', -1) end
end
redis.call('DEL', KEYS[1])
if f[4] then redis.call('PUBLISH', ARGV[3], 'released') end
return 0
"#,
    )
});

/// Renews the lease if holder and token match: sets it to ARGV[3] ms from
/// now — except that a grant shared with another hold (one holder id in two
/// managers) is never shortened, as the other hold may rely on the longer
/// lease.
///
/// KEYS: lock. ARGV: holder, token, lease ms. Returns the lease left in ms
/// (≥ 0), or -1 if not ours.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local f = redis.call('HMGET', KEYS[1], 'holder', 'token', 'count')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return -1 end
if f[3] ~= '1' then
  local left = redis.call('PTTL', KEYS[1])
  if left >= tonumber(ARGV[3]) then return left end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tonumber(ARGV[3])
"#,
    )
});

/// Deletes the lock whoever holds it, telling waiters and the holder, and
/// moves the fence on by one, so that a holder's retried [`RELEASE`] can tell
/// its lock was broken.
///
/// KEYS: lock, fence. ARGV: channel, reason. Returns the lock's fields and
/// its PTTL last, or an empty array if it was free.
pub(crate) static FORCE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {} end
table.insert(fields, tostring(redis.call('PTTL', KEYS[1])))
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[2]) end
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

/// Undoes an acquire attempt whose reply never reached us (timeout,
/// cancellation, dropped connection): takes back the hold that attempt
/// added, if it added one — a new grant or a re-entry — and deletes the lock
/// if that was the last hold. It names the hold by the attempt's unique hold
/// id, not by holder: with one holder id in two managers, the other
/// manager's hold (same holder, same token) is never touched.
///
/// KEYS: lock. ARGV: hold id, channel. Returns 1 if a hold was taken back.
pub(crate) static ABANDON: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HDEL', KEYS[1], 'h:' .. ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], 'count', -1) > 0 then return 1 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'released')
return 1
"#,
    )
});
