//! The Lua scripts that change a channel's shared log. Each runs atomically on the Redis that
//! owns the channel (all of a channel's keys share the hash tag `{<channel>}`), in one round trip.
//!
//! Keys of a channel (prefix `P`, channel `C`):
//!
//! - `P:{C}:m`: HASH, `e` epoch (16 hex digits), `s` newest offset, `f` fence (the Redis
//!   instance's `run_id` when the log was last written), `o` settings (JSON), and the settings
//!   the scripts enforce: `x` max message bytes, `b` backlog messages, `a` backlog age (ms),
//!   `w` de-duplication window (ms), `k` most `msg_id`s kept;
//! - `P:{C}:s`: STREAM, the backlog; entry id `<offset>-0`, fields `d` data, `t` publish time
//!   (ms), `r` the publisher's connection id (0: none);
//! - `P:{C}:d` / `P:{C}:dz`: HASH `msg_id` -> offset and ZSET `msg_id` -> publish time;
//! - `P:{C}:n`: HASH node -> `<local subscribers>:<valid until, ms>`;
//! - `P:channels`: ZSET of channel names (score 0: listed in byte order).
//!
//! Messages go out on the PUB/SUB channel `P:{C}` as `M <epoch> <offset> <ms> <route> <data>`;
//! a deletion as `D`.
//!
//! **Fence.** A Redis restarted from an older snapshot, or a replica promoted before it had
//! everything, would hand out offsets again that already named other messages. Every script
//! compares the stored fence with the one the gateway read from the instance it talks to
//! (`INFO server` `run_id`, which changes on every restart); when they differ the channel starts
//! a new epoch (its old backlog and `msg_id`s are dropped), so an `(epoch, offset)` never names
//! two messages. An empty fence (`fence = "none"`) skips the check.
//!
//! **Redis Cluster.** A channel's keys share one slot, so each script runs on the master that
//! owns it. The fence `*` makes the script read the `run_id` of the instance it runs on
//! (`INFO server` inside the script): after a failover the slot's new master rotates the epoch
//! even when the gateway did not notice the change (the cluster client follows `MOVED` and
//! retries on its own). The registry `P:channels` lives in another slot: the create and delete
//! scripts are then given no registry key and the gateway updates it with separate commands
//! (see `shard.rs`). Messages go out with `SPUBLISH` (sharded PUB/SUB, same slot as the keys).

/// The prelude every script shares: reads the meta hash, rotates the epoch when the fence
/// differs (ARGV[1] is the fence; `*`: the `run_id` of this instance, read here), and reads
/// Redis's clock (`now`, ms: every node's times come from the same clock). ARGV[2] is a fresh
/// epoch.
const PRELUDE: &str = r#"
local fence = ARGV[1]
if fence == '*' then
  fence = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
  if fence == '' then return redis.error_reply('NOFENCE') end
end
local m = redis.call('HMGET', KEYS[1], 'e', 'f', 's')
local epoch = m[1]
local head = tonumber(m[3]) or 0
local rotated = 0
if epoch and fence ~= '' and m[2] ~= fence then
  epoch = ARGV[2]
  rotated = 1
  head = 0
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0, 'f', fence)
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"#;

/// Creates a channel. KEYS: m s d dz [channels]. ARGV: fence, epoch, settings JSON, (unused),
/// name, max channels (0: no limit), x, b, a, w, k.
/// Returns `{created (0|1), epoch}`; errors `TOOMANY`. Without the registry key (Redis
/// Cluster) neither the limit nor the registry is looked at here.
pub(crate) fn create() -> String {
    format!(
        r#"{PRELUDE}
if epoch then return {{0, epoch}} end
if KEYS[5] and tonumber(ARGV[6]) > 0 and redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[6]) then
  return redis.error_reply('TOOMANY')
end
redis.call('HSET', KEYS[1], 'e', ARGV[2], 's', 0, 'f', fence, 'o', ARGV[3], 't', now,
  'x', ARGV[7], 'b', ARGV[8], 'a', ARGV[9], 'w', ARGV[10], 'k', ARGV[11])
if KEYS[5] then redis.call('ZADD', KEYS[5], 0, ARGV[5]) end
return {{1, ARGV[2]}}
"#
    )
}

/// Publishes. KEYS: m s d dz. ARGV: fence, epoch (used if the fence rotates), data, (unused),
/// msg_id ('' = none), route, PUB/SUB channel, data length, `PUBLISH` or `SPUBLISH`.
/// Returns `{offset, epoch, duplicate (0|1)}`; errors `NOTFOUND`, `TOOLARGE <max>`.
pub(crate) fn publish() -> String {
    format!(
        r#"{PRELUDE}
if not epoch then return redis.error_reply('NOTFOUND') end
local c = redis.call('HMGET', KEYS[1], 'x', 'b', 'a', 'w', 'k')
if tonumber(ARGV[8]) > tonumber(c[1]) then return redis.error_reply('TOOLARGE ' .. c[1]) end
local id = ARGV[5]
local window = tonumber(c[4])
local keep_ids = tonumber(c[5])
local dedupe = id ~= '' and window > 0 and keep_ids > 0
if dedupe then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - window, 'LIMIT', 0, 64)
  if #expired > 0 then
    redis.call('HDEL', KEYS[3], unpack(expired))
    redis.call('ZREM', KEYS[4], unpack(expired))
  end
  local prev = redis.call('HGET', KEYS[3], id)
  if prev then return {{tonumber(prev), epoch, 1}} end
end
-- The entry first: a script that fails part way takes no offset (Redis does not roll back).
local off = head + 1
local backlog = tonumber(c[2])
redis.call('XADD', KEYS[2], 'MAXLEN', backlog, off .. '-0', 'd', ARGV[3], 't', now, 'r', ARGV[6])
redis.call('HSET', KEYS[1], 's', off)
if backlog > 0 then redis.call('PEXPIRE', KEYS[2], tonumber(c[3])) end
if dedupe then
  redis.call('HSET', KEYS[3], id, off)
  redis.call('ZADD', KEYS[4], now, id)
  local over = redis.call('ZCARD', KEYS[4]) - keep_ids
  if over > 0 then
    local old = redis.call('ZRANGE', KEYS[4], 0, over - 1)
    redis.call('HDEL', KEYS[3], unpack(old))
    redis.call('ZREM', KEYS[4], unpack(old))
  end
  redis.call('PEXPIRE', KEYS[3], window)
  redis.call('PEXPIRE', KEYS[4], window)
end
redis.call(ARGV[9], ARGV[7], 'M ' .. epoch .. ' ' .. off .. ' ' .. now .. ' ' .. ARGV[6] .. ' ' .. ARGV[3])
return {{off, epoch, 0}}
"#
    )
}

/// Publishes several messages to one channel, in order, as [`publish`] would one after another
/// (one round trip for all). KEYS: m s d dz. ARGV: fence, epoch (used if the fence rotates),
/// PUB/SUB channel, `PUBLISH` or `SPUBLISH`, n, then per message: data, msg_id ('' = none),
/// route, data length. Returns `{epoch, a1, b1, a2, b2, …}`: per message `a` its offset and `b`
/// 1 if it was a duplicate (else 0), or `a` 0 and `b` the most bytes a message may have (it was
/// refused as too large); errors `NOTFOUND` (nothing published).
pub(crate) fn publish_many() -> String {
    format!(
        r#"{PRELUDE}
if not epoch then return redis.error_reply('NOTFOUND') end
local c = redis.call('HMGET', KEYS[1], 'x', 'b', 'a', 'w', 'k')
local max = tonumber(c[1])
local backlog = tonumber(c[2])
local window = tonumber(c[4])
local keep_ids = tonumber(c[5])
local out = {{epoch}}
local expired = false
local wrote = false
local ids = false
for i = 0, tonumber(ARGV[5]) - 1 do
  local at = 5 + 4 * i
  local data, id, route = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  if tonumber(ARGV[at + 4]) > max then
    out[#out + 1] = 0
    out[#out + 1] = max
  else
    local dedupe = id ~= '' and window > 0 and keep_ids > 0
    local prev = false
    if dedupe then
      if not expired then
        expired = true
        local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - window, 'LIMIT', 0, 64)
        if #old > 0 then
          redis.call('HDEL', KEYS[3], unpack(old))
          redis.call('ZREM', KEYS[4], unpack(old))
        end
      end
      prev = redis.call('HGET', KEYS[3], id)
    end
    if prev then
      out[#out + 1] = tonumber(prev)
      out[#out + 1] = 1
    else
      -- The entry first, then the head, message by message: a script that fails part way
      -- leaves every offset it took named by its entry (Redis does not roll back).
      local off = head + 1
      redis.call('XADD', KEYS[2], 'MAXLEN', backlog, off .. '-0', 'd', data, 't', now, 'r', route)
      redis.call('HSET', KEYS[1], 's', off)
      head = off
      wrote = true
      if dedupe then
        ids = true
        redis.call('HSET', KEYS[3], id, off)
        redis.call('ZADD', KEYS[4], now, id)
        local over = redis.call('ZCARD', KEYS[4]) - keep_ids
        if over > 0 then
          local old = redis.call('ZRANGE', KEYS[4], 0, over - 1)
          redis.call('HDEL', KEYS[3], unpack(old))
          redis.call('ZREM', KEYS[4], unpack(old))
        end
      end
      redis.call(ARGV[4], ARGV[3], 'M ' .. epoch .. ' ' .. off .. ' ' .. now .. ' ' .. route .. ' ' .. data)
      out[#out + 1] = off
      out[#out + 1] = 0
    end
  end
end
if wrote and backlog > 0 then redis.call('PEXPIRE', KEYS[2], tonumber(c[3])) end
if ids then
  redis.call('PEXPIRE', KEYS[3], window)
  redis.call('PEXPIRE', KEYS[4], window)
end
return out
"#
    )
}

/// A channel's place in the log, after the fence check: KEYS m s d dz; ARGV fence, epoch (used
/// if the fence rotates). Returns `{epoch, head, settings JSON}`; errors `NOTFOUND`. The
/// entries are read beside it with plain `XRANGE`/`XREVRANGE` pages, bounded in bytes (a
/// script building a large reply would hold Redis's only thread).
pub(crate) fn meta() -> String {
    format!(
        r#"{PRELUDE}
if not epoch then return redis.error_reply('NOTFOUND') end
return {{epoch, head, redis.call('HGET', KEYS[1], 'o') or ''}}
"#
    )
}

/// Deletes a channel. KEYS: m s d dz n [channels]. ARGV: name, PUB/SUB channel, `PUBLISH` or
/// `SPUBLISH`. Returns 1, or 0 when it did not exist. Without the registry key (Redis
/// Cluster) the name stays in the registry: the gateway removes it after.
pub(crate) const DELETE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if KEYS[6] then redis.call('ZREM', KEYS[6], ARGV[1]) end
redis.call(ARGV[3], ARGV[2], 'D')
return 1
"#;

/// A channel's description for a listing or its head. KEYS: m s n. ARGV: now ms.
/// Returns `{epoch, head, backlog messages, first kept offset, subscribers}` or nil.
pub(crate) const INFO: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'e', 's')
if not m[1] then return false end
local head = tonumber(m[2])
local len = redis.call('XLEN', KEYS[2])
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local first_kept = head + 1
if #first > 0 then first_kept = tonumber(string.match(first[1][1], '^(%d+)')) end
local subs = 0
local now = tonumber(ARGV[1])
local nodes = redis.call('HGETALL', KEYS[3])
for i = 1, #nodes, 2 do
  local n, untill = string.match(nodes[i + 1], '^(%d+):(%d+)$')
  if n and tonumber(untill) > now then subs = subs + tonumber(n) else redis.call('HDEL', KEYS[3], nodes[i]) end
end
return {m[1], head, len, first_kept, subs}
"#;
