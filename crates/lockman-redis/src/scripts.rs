//! The Lua scripts: each lock operation is one script, so one round trip.
//!
//! # Keys
//!
//! Keys of one resource share the hash tag `{resource}`, so they land in one
//! Redis Cluster slot:
//!
//! * `<prefix>:{<resource>}:lock` — a hash in one of two layouts:
//!   * **exclusive** (a `holder` field): holder id, hold count, fencing
//!     token, metadata (`acquired_us`, `host`, `pid`, `purpose`, `user`),
//!     `waited` once someone waits, and one `h:<hold id>` field per hold; the
//!     lease is the key's `PEXPIRE`. This is the plain mutex, unchanged by
//!     modes.
//!   * **shared or permits** (a `mode` field, `s` or `p<n>`, and no
//!     `holder`): `n`, the number of grants, and per grant (named by its hold
//!     id) `g:<hold>` = `"<expiry ms> <token> <holder id>"` plus `a:`, `o:`,
//!     `p:`, `u:`, `r:` (acquired-at µs, host, pid, user, purpose). Every
//!     grant has **its own expiry** (server time, ms); the key's `PEXPIRE`
//!     is only the longest of them, so a crashed reader's grant stops
//!     counting when its own lease ends and is pruned by the next script
//!     that looks.
//! * `<prefix>:{<resource>}:fence` — the latest fencing token (see [`ACQUIRE`]).
//! * `<prefix>:{<resource>}:queue` — a sorted set of waiter ids, scored by
//!   arrival (server time, µs), and `<prefix>:{<resource>}:waiters` — a hash
//!   of waiter id → `"<queue lease expiry ms> <mode>"`. Every request that
//!   waits for a busy resource is queued (see [`ACQUIRE`]); a
//!   waiter refreshes its queue lease each time it looks, so a dead waiter's
//!   entry runs out and is skipped (pruned) by the next script that reads the
//!   queue. Both keys expire with the longest queue lease, so a queue whose
//!   waiters all died vanishes by itself.
//!
//! Modes are written `x` (exclusive), `s` (shared) and `p<n>` (one of `n`
//! permits) on the wire.

use std::sync::LazyLock;

use redis::Script;

/// Lua shared by the scripts below (KEYS[1] is always the lock hash).
const PRELUDE: &str = r#"
local function server_now()
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return us, math.floor(us / 1000)
end
local function num(x) return string.format('%.0f', x) end
local function new_token(fence, now_us)
  local token = redis.call('INCR', fence)
  if token == 1 then redis.call('PEXPIRE', fence, 604800000) end
  if token < now_us then token = redis.call('INCRBY', fence, num(now_us - token)) end
  return num(token)
end
local function drop_grant(h)
  return redis.call('HDEL', KEYS[1], 'g:' .. h, 'a:' .. h, 'o:' .. h, 'p:' .. h, 'u:' .. h, 'r:' .. h)
end
local function grant_gone()
  if redis.call('HINCRBY', KEYS[1], 'n', -1) <= 0 then redis.call('DEL', KEYS[1]) end
end
"#;

/// A script made of [`PRELUDE`] and `body`.
fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// Grants or re-enters the lock in any mode; on a busy lock queues the
/// caller (when it will wait) and returns the lock's fields.
///
/// KEYS: lock, fence, queue, waiters. ARGV: 1 holder, 2 lease ms,
/// 3 acquired-at (µs since the epoch, the client's clock), 4 host, 5 pid,
/// 6 purpose, 7 user, 8 `1` if the caller will wait for a busy lock,
/// 9 the hold id (a string unique to this attempt, so that [`RELEASE`] and
/// [`ABANDON`] take back exactly this hold), 10 the mode (`x`, `s`, `p<n>`),
/// 11 the waiter id (one per acquire call, its name in the queue), 12 the
/// caller's arrival (server µs from an earlier busy reply, `0` if none),
/// 13 the queue lease ms, 14 the release channel, 15 `1` if core renews
/// the lease (only then may a release hand the lock over: see [`RELEASE`]).
///
/// Returns the token alone, as an integer, for a grant on the fast path
/// (below: acquired-at, lease and layout are then the caller's own); else
/// `{"1", token, acquired_us, lease ms left, layout[, hold id]}`
/// (layout `p`: the exclusive hash, `m`: the modes hash; the hold id is
/// given for a lock a release handed this waiter, whose hold is its
/// waiter id), `{"0", ms until the first
/// holder's lease ends (0: unknown), arrival µs, queued 1/0, field, value,
/// ..., pttl, server now ms}` when busy, or `{"E", mode}` when the resource is
/// held or awaited in a mode that disagrees with the request's.
///
/// **The exclusive fast path** (a plain mutex): when the request is
/// exclusive and neither the lock nor a queue exists, one `EXISTS` over both
/// keys decides it and the grant is written at once; when the lock is held
/// by another holder in the plain layout, no queue exists and the caller will
/// not wait (a `try_acquire`), the busy reply follows that `EXISTS`, an
/// `HMGET` and an `EXISTS` on the queue.
/// Both run first ([`ACQUIRE_FAST`]). A
/// caller that will wait for a busy lock goes on to the general path and is
/// queued, so waiters in every process are served by arrival, not by who
/// hears the release first. (A waiter of an older version that got only its
/// arrival time from the fast path is woken by the first request to queue,
/// and joins by when it came.)
///
/// **FIFO across modes**: otherwise the general path prunes expired grants
/// and expired waiters, then grants the request when it is compatible with
/// the live grants *and* with every live waiter queued before it, taken in
/// order as if granted (`LockMode::admits`): the compatible prefix of the
/// queue gets in, so readers queued behind a waiting writer wait, and get in
/// together once it is done. A waiter that is not yet in the queue counts as
/// arriving at its arrival time (`ARGV[12]`), else now.
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
/// per new grant, in the same round trip: under 2 µs of server CPU. Shared
/// and permit grants take their tokens from the same fence, so tokens
/// increase across modes.
///
/// **One shared holder id in two managers** (two processes opting in with
/// `AcquireOptions::shared_holder`; ids given by name are scoped per manager):
/// an exclusive (or shared) acquire re-enters an exclusive grant of the same
/// holder — same token, one more hold — and never shortens its lease: the
/// TTL is raised to this lease if it is shorter, else left as it is, and the
/// lease left is returned, so each guard dates its lease from what the key
/// really has. Shared and permit grants are never shared that way: each
/// acquisition is its own grant, with its own token, lease and permit (one
/// permit per process, or a semaphore would admit more processes than it has
/// permits).
pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{ACQUIRE_FAST}{PRELUDE}{ACQUIRE_GENERAL}")));

/// [`ACQUIRE`]'s fast path, first in the script so that a plain mutex runs
/// nothing else (not even the definitions of the general path's functions):
/// an exclusive request on a free lock nobody queues for, or a try on a
/// plain lock another holder has. It leaves `mode` and `f` (the lock's
/// `holder` and `mode` fields) to the general path.
const ACQUIRE_FAST: &str = r#"
local mode = ARGV[10]
-- Free and nobody queued: one EXISTS over both keys decides it.
if mode == 'x' and redis.call('EXISTS', KEYS[1], KEYS[3]) == 0 then
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local n = redis.call('INCR', KEYS[2])
  if n == 1 then redis.call('PEXPIRE', KEYS[2], 604800000) end
  if n < now_us then n = redis.call('INCRBY', KEYS[2], string.format('%.0f', now_us - n)) end
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'count', '1', 'token', string.format('%.0f', n), 'acquired_us',
    ARGV[3], 'host', ARGV[4], 'pid', ARGV[5], 'purpose', ARGV[6], 'user', ARGV[7], 'h:' .. ARGV[9], '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  -- The token alone, an integer: the rest of a granted reply is what the
  -- caller sent (its acquired-at, its lease, the plain layout).
  return n
end
local f = redis.call('HMGET', KEYS[1], 'holder', 'mode')
-- Held by another holder and the caller will not wait (a try): busy.
if mode == 'x' and f[1] and not f[2] and f[1] ~= ARGV[1] and ARGV[8] ~= '1'
    and redis.call('EXISTS', KEYS[3]) == 0 then
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local arrival = ARGV[12]
  if arrival == '0' then arrival = string.format('%.0f', now_us) end
  local pttl = redis.call('PTTL', KEYS[1])
  local busy = {'0', tostring(math.max(pttl, 0)), arrival, '0'}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(busy, v) end
  table.insert(busy, tostring(pttl))
  table.insert(busy, string.format('%.0f', math.floor(now_us / 1000)))
  return busy
end
"#;

/// [`ACQUIRE`]'s general path: re-entry, modes, and exclusive requests that
/// meet a queue or shared holders.
const ACQUIRE_GENERAL: &str = r#"
local function reenter()
  local g = redis.call('HMGET', KEYS[1], 'token', 'acquired_us')
  redis.call('HINCRBY', KEYS[1], 'count', 1)
  redis.call('HSET', KEYS[1], 'h:' .. ARGV[9], '1')
  local left = redis.call('PTTL', KEYS[1])
  if left < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    left = ARGV[2]
  end
  return {'1', g[1], g[2], tostring(left), 'p'}
end
-- Handed to this waiter by a release (RELEASE) whose message it missed:
-- ours, not one more hold. It gets a token of now: grants made between the
-- handoff and now (that Redis then lost in a restart from an older
-- snapshot, which brought this one back) have lower tokens than this grant,
-- which its holder learns of only now.
if f[1] and f[1] == ARGV[1] and redis.call('HEXISTS', KEYS[1], 'h:' .. ARGV[11]) == 1 then
  local now_us = server_now()
  local token = new_token(KEYS[2], now_us)
  redis.call('HSET', KEYS[1], 'token', token, 'acquired_us', num(now_us))
  return {'1', token, num(now_us), tostring(math.max(redis.call('PTTL', KEYS[1]), 0)), 'p', ARGV[11]}
end
if f[1] and f[1] == ARGV[1] and (mode == 'x' or mode == 's') then return reenter() end

local function kind(m) if m == 'x' or m == 's' then return 'rw' end return m end
local function admits(m, held)
  if m == 'x' then return #held == 0 end
  if m == 's' then
    for _, h in ipairs(held) do if h ~= 's' then return false end end
    return true
  end
  return #held < tonumber(string.sub(m, 2))
end
local function busy_reply(wait, arrival, queued, now)
  local busy = {'0', num(wait), arrival, queued}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(busy, v) end
  table.insert(busy, tostring(redis.call('PTTL', KEYS[1])))
  table.insert(busy, num(now))
  return busy
end

local now_us, now = server_now()
local lease, ql, wid = tonumber(ARGV[2]), tonumber(ARGV[13]), ARGV[11]
-- Whether to publish (a wait ended or a waiter must look again).
local wake = false
local function finish(reply)
  if wake then redis.call('PUBLISH', ARGV[14], 'released') end
  return reply
end

-- Live grants (pruning expired ones), their modes, and when the first ends.
local held, held_mode, wait, plain = {}, nil, 0, false
if f[1] then
  plain, held_mode = true, 'x'
  table.insert(held, 'x')
  wait = math.max(redis.call('PTTL', KEYS[1]), 0)
elseif f[2] then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'g:' then
      local exp = tonumber(string.match(all[i + 1], '^(%d+) '))
      if exp and exp > now then
        table.insert(held, f[2])
        if wait == 0 or exp - now < wait then wait = exp - now end
      else
        drop_grant(string.sub(all[i], 3))
        wake = true
      end
    end
  end
  if #held == 0 then
    redis.call('DEL', KEYS[1])
  else
    held_mode = f[2]
    if wake then redis.call('HSET', KEYS[1], 'n', tostring(#held)) end -- some were pruned
  end
end
if held_mode and kind(held_mode) ~= kind(mode) then return finish({'E', held_mode}) end

-- Live waiters in arrival order (pruning expired ones); ours, if queued.
local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
local leases = {}
if #entries > 0 then
  local w = redis.call('HGETALL', KEYS[4])
  for i = 1, #w, 2 do leases[w[i]] = w[i + 1] end
end
local queue, mine = {}, nil
for i = 1, #entries, 2 do
  local id, score = entries[i], tonumber(entries[i + 1])
  local exp, m = nil, nil
  if leases[id] then exp, m = string.match(leases[id], '^(%d+) (%S+)$') end
  if exp and tonumber(exp) > now then
    if id == wid then
      mine = score
    else
      if kind(m) ~= kind(mode) then return finish({'E', m}) end
      table.insert(queue, {id, score, m})
    end
  else
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id, 'd:' .. id)
    wake = true
  end
end

local score = mine
if not score then
  if ARGV[12] ~= '0' then score = tonumber(ARGV[12]) else score = now_us end
end
local blocked = false
for _, e in ipairs(queue) do
  if e[2] < score or (e[2] == score and e[1] < wid) then
    if not admits(e[3], held) then
      blocked = true
      break
    end
    table.insert(held, e[3])
  end
end

if not blocked and admits(mode, held) then
  if mine then
    redis.call('ZREM', KEYS[3], wid)
    redis.call('HDEL', KEYS[4], wid, 'd:' .. wid)
  end
  local token = new_token(KEYS[2], now_us)
  if mode == 'x' then
    redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'count', '1', 'token', token, 'acquired_us', ARGV[3],
      'host', ARGV[4], 'pid', ARGV[5], 'purpose', ARGV[6], 'user', ARGV[7], 'h:' .. ARGV[9], '1')
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[1], 'waited', '1') end
    return finish({'1', token, ARGV[3], ARGV[2], 'p'})
  end
  local h = ARGV[9]
  redis.call('HSET', KEYS[1], 'mode', mode, 'g:' .. h, num(now + lease) .. ' ' .. token .. ' ' .. ARGV[1],
    'a:' .. h, ARGV[3], 'o:' .. h, ARGV[4], 'p:' .. h, ARGV[5], 'u:' .. h, ARGV[7], 'r:' .. h, ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'n', 1)
  if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
  return finish({'1', token, ARGV[3], ARGV[2], 'm'})
end

local queued = '0'
if ARGV[8] == '1' then
  queued = '1'
  if not mine then
    redis.call('ZADD', KEYS[3], num(score), wid)
    -- What a release needs to hand the lock to us (RELEASE); only for a
    -- lease core renews, which may start as a short claim lease.
    if mode == 'x' and ARGV[15] == '1' then
      redis.call('HSET', KEYS[4], 'd:' .. wid, cjson.encode({ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7]}))
    end
    -- The first entry of a queue on an exclusive lock someone already waits
    -- for: those waiters are not queued (the fast path does not queue); wake
    -- them, so they join now, by their arrival, before the lock is released.
    if plain and #entries == 0 and redis.call('HEXISTS', KEYS[1], 'waited') == 1 then wake = true end
  end
  redis.call('HSET', KEYS[4], wid, num(now + ql) .. ' ' .. mode)
  for _, k in ipairs({KEYS[3], KEYS[4]}) do
    if redis.call('PTTL', k) < ql then redis.call('PEXPIRE', k, ql) end
  end
  if plain then redis.call('HSET', KEYS[1], 'waited', '1') end
end
return finish(busy_reply(wait, num(score), queued, now))
"#;

/// Releases one hold of an exclusive grant — the one named by the hold id —
/// if holder and token match; deletes the lock when the last hold goes, and
/// then publishes on the release channel if anyone waited for this grant (an
/// uncontended release sends no message, so no subscriber does any work for
/// it).
///
/// KEYS: lock, fence, queue, waiters. ARGV: holder, token, channel, hold
/// id, `1` if this is a retry after the connection dropped (the first
/// attempt may or may not have run), the claim lease ms, and the inbox
/// channels' prefix (a `grant:` or `next:` message goes to the channel of
/// the waiter's manager, which its id `<manager>/<n>` names). Returns -1
/// (not ours), 0 (released) or the remaining count of other holds.
///
/// **Direct handoff.** When the lock is deleted and someone waited, waiters
/// whose queue lease ran out are removed from the head of the queue; a live
/// exclusive waiter at the head that left its grant details (`d:<waiter
/// id>` in the waiters hash: holder, lease, host, pid, purpose, user —
/// written when it queued, only if core renews its lease) is granted the
/// lock here: a new token, its details, the hold `h:<waiter id>`, and a
/// *claim lease* of min(its lease, ARGV[6]) that its first renewal
/// lengthens, so a waiter that died since it last renewed its place holds
/// the lock at most that long. The message is then
/// `grant:<waiter id>:<token>:<server µs>:<claim ms>`; for a live exclusive
/// head without details `next:<waiter id>` (only its manager wakes it);
/// otherwise `released`.
///
/// The only hold of a grant is released without looking at its hold field
/// (the fast path: it can only be ours on a first attempt, as a guard is
/// released once). A retry answers as the first attempt would have, where
/// it can know:
/// * the grant is still ours but our hold is gone: only our release removes
///   it, so the first attempt ran; the remaining count is returned and
///   nothing else is touched (no second hold is taken back);
/// * the lock is held by a grant our first attempt handed over (its `from`
///   field is our token): 0;
/// * the lock is gone and the fence still ends at our token: no grant was
///   made since ours, and nobody broke it ([`FORCE_RELEASE`] moves the
///   fence on) — whether our first attempt or the lease's end removed it,
///   nobody else held the lock after us: 0;
/// * otherwise (another grant followed, or the fence was lost) the first
///   attempt may have run or the lock may have been lost before it: -1, for
///   the caller to report as lost. This costs nothing on the fast path.
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{RELEASE_FAST}{PRELUDE}{RELEASE_HANDOFF}")));

/// [`RELEASE`] up to the lock's deletion, first in the script so that an
/// uncontended release runs nothing else (not even the prelude's function
/// definitions).
const RELEASE_FAST: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'holder', 'token', 'count', 'waited')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then
  if ARGV[5] == '1' then
    if not f[1] and redis.call('GET', KEYS[2]) == ARGV[2] then return 0 end
    -- Our first attempt handed the lock to the next waiter.
    if f[1] and redis.call('HGET', KEYS[1], 'from') == ARGV[2] then return 0 end
  end
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
if not f[4] then return 0 end
"#;

/// [`RELEASE`] when someone waited: skip dead waiters, hand the lock over or
/// name whom to wake, publish.
const RELEASE_HANDOFF: &str = r#"
-- Someone waited for this grant. Waiters whose queue lease ran out are
-- skipped (and removed); a live exclusive waiter at the head that left
-- its grant details is handed the lock here and told so; one without
-- them is named, so only its manager wakes it; anything else (readers,
-- permits) wakes everyone.
local message, channel = 'released', ARGV[3]
local now_us, now = server_now()
while true do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not head then break end
  local exp, m = string.match(redis.call('HGET', KEYS[4], head) or '', '^(%d+) (%S+)$')
  if not exp or tonumber(exp) <= now then
    redis.call('ZREM', KEYS[3], head)
    redis.call('HDEL', KEYS[4], head, 'd:' .. head)
  else
    if m == 'x' then
      local d = redis.call('HGET', KEYS[4], 'd:' .. head)
      if d then
        local g = cjson.decode(d)
        redis.call('ZREM', KEYS[3], head)
        redis.call('HDEL', KEYS[4], head, 'd:' .. head)
        local token = new_token(KEYS[2], now_us)
        local claim = math.min(tonumber(g[2]), tonumber(ARGV[6]))
        redis.call('HSET', KEYS[1], 'holder', g[1], 'count', '1', 'token', token, 'acquired_us', num(now_us),
          'host', g[3], 'pid', g[4], 'purpose', g[5], 'user', g[6], 'h:' .. head, '1', 'from', ARGV[2])
        redis.call('PEXPIRE', KEYS[1], claim)
        if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[1], 'waited', '1') end
        message = 'grant:' .. head .. ':' .. token .. ':' .. num(now_us) .. ':' .. claim
      else
        message = 'next:' .. head
      end
      -- To the waiter's manager alone, on its inbox (`<manager>/<n>`
      -- names it; a waiter id of an older version does not).
      local manager = string.match(head, '^(.+)/%d+$')
      if manager and ARGV[7] then channel = ARGV[7] .. manager end
    end
    break
  end
end
redis.call('PUBLISH', channel, message)
return 0
"#;

/// Releases a shared or permit grant: removes its record if the token
/// matches, deletes the lock with the last grant, and publishes on the
/// release channel when anyone is queued.
///
/// KEYS: lock, queue. ARGV: hold id, token, channel. Returns 0 (released)
/// or -1 (not ours: gone — pruned after its lease ran out, or broken — or
/// its lease had run out, when the record is removed all the same). A retry
/// after a dropped connection cannot tell its own first attempt from a
/// break, so it reports the grant lost (never a silent `Ok`).
pub(crate) static RELEASE_MODES: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local rec = redis.call('HGET', KEYS[1], 'g:' .. ARGV[1])
if not rec then return -1 end
local exp, token = string.match(rec, '^(%d+) (%d+) ')
if token ~= ARGV[2] then return -1 end
local _, now = server_now()
drop_grant(ARGV[1])
grant_gone()
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[3], 'released') end
if tonumber(exp) <= now then return -1 end
return 0
"#,
    )
});

/// Renews an exclusive grant's lease if holder and token match: sets it to
/// ARGV[3] ms from now — except that a grant shared with another hold (one
/// holder id in two managers) is never shortened, as the other hold may
/// rely on the longer lease.
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

/// Renews a shared or permit grant's own lease to ARGV[3] ms from now, if
/// its record is there with our token and has not run out (one that has is
/// removed: it stopped counting when its lease ended). The key's TTL is
/// raised to the lease if shorter.
///
/// KEYS: lock. ARGV: hold id, token, lease ms. Returns the lease in ms, or -1.
pub(crate) static RENEW_MODES: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local rec = redis.call('HGET', KEYS[1], 'g:' .. ARGV[1])
if not rec then return -1 end
local exp, token, holder = string.match(rec, '^(%d+) (%d+) (.*)$')
if token ~= ARGV[2] then return -1 end
local _, now = server_now()
if tonumber(exp) <= now then
  drop_grant(ARGV[1])
  grant_gone()
  return -1
end
local lease = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'g:' .. ARGV[1], num(now + lease) .. ' ' .. token .. ' ' .. holder)
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return lease
"#,
    )
});

/// Deletes the lock whoever holds it — every holder, in either layout —
/// telling waiters and the holders, and moves the fence on by one, so that
/// a holder's retried [`RELEASE`] can tell its lock was broken. Queued
/// waiters stay queued.
///
/// KEYS: lock, fence. ARGV: channel, reason. Returns the lock's fields, its
/// PTTL and the server's time (ms), or an empty array if it was free.
pub(crate) static FORCE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {} end
local _, now = server_now()
table.insert(fields, tostring(redis.call('PTTL', KEYS[1])))
table.insert(fields, num(now))
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[2]) end
redis.call('PUBLISH', ARGV[1], 'forced:' .. ARGV[2])
return fields
"#,
    )
});

/// The lock's fields, PTTL and the server's time (ms), in one round trip.
///
/// KEYS: lock. Returns an empty array if it is free.
pub(crate) static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {} end
local _, now = server_now()
table.insert(fields, tostring(redis.call('PTTL', KEYS[1])))
table.insert(fields, num(now))
return fields
"#,
    )
});

/// Undoes an acquire attempt whose reply never reached us (timeout,
/// cancellation, dropped connection), and takes a waiter out of the queue
/// (gave up, cancelled): takes back the hold that attempt added, if it added
/// one — a new exclusive grant or re-entry (`h:<hold>`), or a shared or
/// permit grant (`g:<hold>`) — deleting the lock if that was the last, and
/// removes the waiter's queue entry. It names the hold by the attempt's
/// unique hold id, not by holder: with one holder id in two managers, the
/// other manager's hold (same holder, same token) is never touched. Anything
/// removed is published, so the waiters behind look again.
///
/// KEYS: lock, queue, waiters. ARGV: hold id (empty: none), channel, waiter
/// id (empty: none). Returns 1 if anything was removed.
pub(crate) static ABANDON: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local changed = 0
if ARGV[1] ~= '' then
  if redis.call('HDEL', KEYS[1], 'h:' .. ARGV[1]) == 1 then
    changed = 1
    if redis.call('HINCRBY', KEYS[1], 'count', -1) <= 0 then redis.call('DEL', KEYS[1]) end
  elseif drop_grant(ARGV[1]) > 0 then
    changed = 1
    grant_gone()
  end
end
if ARGV[3] ~= '' then
  if redis.call('ZREM', KEYS[2], ARGV[3]) == 1 then changed = 1 end
  redis.call('HDEL', KEYS[3], ARGV[3], 'd:' .. ARGV[3])
  -- Handed the lock by a release (RELEASE) before it gave up: pass it on.
  if redis.call('HDEL', KEYS[1], 'h:' .. ARGV[3]) == 1 then
    changed = 1
    if redis.call('HINCRBY', KEYS[1], 'count', -1) <= 0 then redis.call('DEL', KEYS[1]) end
  end
end
if changed == 1 then redis.call('PUBLISH', ARGV[2], 'released') end
return changed
"#,
    )
});
