"""The Redis store's Lua scripts: one per write, all atomic on the server.

_LIB holds what the scripts share (key names, counters, claiming, adding a delivery,
removing a job); _SCRIPTS maps each operation to its body, and `register_scripts`
registers _LIB + body for each with a client, which then runs them by SHA.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

# Shared by every script. ARGV[1] is always the prefix; KEYS[1] (P:jobs:due) only routes.
_LIB = """
local P = ARGV[1]
local JDUE, JADDED, JFINAL = P..':jobs:due', P..':jobs:added', P..':jobs:final'
local DDUE, DALL, COUNTS = P..':dlvs:due', P..':dlvs:all', P..':counts'
local function jkey(id) return P..':job:'..id end
local function dkey(id) return P..':dlv:'..id end
local function dset(job_id) return P..':dlvs:job:'..job_id end
local function bump(field, n) redis.call('HINCRBY', COUNTS, field, n) end
local function holds(owner, cur) return cur and cur ~= '' and cur == owner end
local function job_state(outcome) if outcome == '' then return 'watching' end return outcome end

local function add_delivery(b)  -- ARGV[b..b+9]: the fields in _delivery_args order
  local id, created, next_at, job_id, state = ARGV[b], ARGV[b+3], ARGV[b+4], ARGV[b+6], ARGV[b+7]
  if redis.call('EXISTS', dkey(id)) == 1 then return 0 end
  redis.call('HSET', dkey(id), 'id', id, 'notifier', ARGV[b+1], 'event', ARGV[b+2],
    'created_at', created, 'next_attempt_at', next_at, 'deadline_at', ARGV[b+5],
    'job_id', job_id, 'state', state, 'attempts', ARGV[b+8], 'last_error', ARGV[b+9],
    'owner', '', 'lease_until', '')
  redis.call('ZADD', DALL, created, id)
  if state == 'pending' then redis.call('ZADD', DDUE, next_at, id) end
  if job_id ~= '' then redis.call('SADD', dset(job_id), id) end
  bump('delivery:'..state, 1)
  return 1
end

local function remove_job(id)
  local outcome = redis.call('HGET', jkey(id), 'outcome')
  if not outcome then return 0 end
  redis.call('DEL', jkey(id))
  redis.call('ZREM', JDUE, id); redis.call('ZREM', JADDED, id); redis.call('ZREM', JFINAL, id)
  bump('job:'..job_state(outcome), -1)
  for _, did in ipairs(redis.call('SMEMBERS', dset(id))) do
    local state = redis.call('HGET', dkey(did), 'state')
    if state then redis.call('DEL', dkey(did)); bump('delivery:'..state, -1) end
    redis.call('ZREM', DDUE, did); redis.call('ZREM', DALL, did)
  end
  redis.call('DEL', dset(id))
  return 1
end

-- Hand out due members of zkey whose `field` is still `open`, leasing each one. The records
-- come back as one JSON string: redis-py parses that far faster than nested arrays.
local function claim(zkey, keyfn, field, open)
  local now_s, limit, owner, until_s = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
  local now, out = tonumber(now_s), {}
  if limit <= 0 then return '[]' end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zkey, '-inf', now_s, 'LIMIT', 0, limit)) do
    local key = keyfn(id)
    local v = redis.call('HMGET', key, field, 'owner', 'lease_until')
    if v[1] ~= open then
      redis.call('ZREM', zkey, id)  -- gone or settled: a stale entry
    elseif v[2] and v[2] ~= '' and tonumber(v[3]) > now then
      redis.call('ZADD', zkey, v[3], id)  -- live lease: defensive, the score says so already
    else
      redis.call('HSET', key, 'owner', owner, 'lease_until', until_s)
      redis.call('ZADD', zkey, until_s, id)
      out[#out + 1] = redis.call('HGETALL', key)
    end
  end
  if #out == 0 then return '[]' end  -- cjson would encode an empty table as {}
  return cjson.encode(out)
end
"""

# One script per operation, each prefixed with _LIB; redis-py caches them by SHA.
_SCRIPTS: dict[str, str] = {
    "add_job": """
local id = ARGV[2]
if redis.call('EXISTS', jkey(id)) == 1 then return 0 end
redis.call('HSET', jkey(id), 'id', id, 'labels', ARGV[3], 'notify', ARGV[4], 'added_at', ARGV[5],
  'next_poll_at', ARGV[6], 'polls', '0', 'transient_errors', '0', 'snapshot', 'null',
  'outcome', '', 'detected_at', '', 'owner', '', 'lease_until', '')
redis.call('ZADD', JDUE, ARGV[6], id)
redis.call('ZADD', JADDED, ARGV[5], id)
bump('job:watching', 1)
return 1
""",
    "claim_jobs": "return claim(JDUE, jkey, 'outcome', '')",
    "claim_deliveries": "return claim(DDUE, dkey, 'state', 'pending')",
    "record_poll": """
local id, key = ARGV[2], jkey(ARGV[2])
local cur = redis.call('HMGET', key, 'outcome', 'owner')
if cur[1] ~= '' or not holds(ARGV[3], cur[2]) then return 0 end
redis.call('HSET', key, 'next_poll_at', ARGV[4], 'polls', ARGV[5], 'transient_errors', ARGV[6],
  'snapshot', ARGV[7], 'owner', '', 'lease_until', '')
redis.call('ZADD', JDUE, ARGV[4], id)
return 1
""",
    "record_outcome": """
local id, key, outcome = ARGV[2], jkey(ARGV[2]), ARGV[4]
local cur = redis.call('HMGET', key, 'outcome', 'owner')
if cur[1] ~= '' or not holds(ARGV[3], cur[2]) then return 0 end
redis.call('HSET', key, 'outcome', outcome, 'snapshot', ARGV[5], 'polls', ARGV[6],
  'detected_at', ARGV[7], 'owner', '', 'lease_until', '')
redis.call('ZREM', JDUE, id)
redis.call('ZADD', JFINAL, ARGV[7], id)
bump('job:watching', -1); bump('job:'..outcome, 1)
for i = 0, tonumber(ARGV[8]) - 1 do add_delivery(9 + i * 10) end
return 1
""",
    "release_job": """
local id, key = ARGV[2], jkey(ARGV[2])
local cur = redis.call('HMGET', key, 'outcome', 'owner', 'next_poll_at')
if cur[1] ~= '' or not holds(ARGV[3], cur[2]) then return 0 end
redis.call('HSET', key, 'owner', '', 'lease_until', '')
redis.call('ZADD', JDUE, cur[3], id)
return 1
""",
    "remove_job": "return remove_job(ARGV[2])",
    "spread": """
local now, window, total, offset = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5])
local ids = redis.call('ZRANGEBYSCORE', JDUE, '-inf', '('..ARGV[2], 'LIMIT', 0, tonumber(ARGV[6]))
for i, id in ipairs(ids) do
  -- %.17g: Lua's default tostring keeps 14 digits and would round epoch fractions.
  local at = string.format('%.17g', now + window * (offset + i - 1) / total)
  redis.call('HSET', jkey(id), 'next_poll_at', at)
  redis.call('ZADD', JDUE, at, id)
end
return #ids
""",
    "purge": """
local before, purged = tonumber(ARGV[2]), 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local v = redis.call('HMGET', jkey(id), 'outcome', 'detected_at')
  local settled = v[1] and v[1] ~= '' and tonumber(v[2]) < before
  if settled then
    for _, did in ipairs(redis.call('SMEMBERS', dset(id))) do
      if redis.call('HGET', dkey(did), 'state') == 'pending' then settled = false; break end
    end
  end
  if settled then purged = purged + remove_job(id) end
end
return purged
""",
    "add_deliveries": """
local added = 0
for i = 0, tonumber(ARGV[2]) - 1 do added = added + add_delivery(3 + i * 10) end
return added
""",
    "record_delivery": """
local id, key, state, next_at = ARGV[2], dkey(ARGV[2]), ARGV[4], ARGV[6]
local cur = redis.call('HMGET', key, 'owner', 'state')
if not holds(ARGV[3], cur[1]) then return 0 end
redis.call('HSET', key, 'state', state, 'attempts', ARGV[5], 'next_attempt_at', next_at,
  'last_error', ARGV[7], 'owner', '', 'lease_until', '')
if state == 'pending' then redis.call('ZADD', DDUE, next_at, id)
else redis.call('ZREM', DDUE, id) end
if cur[2] ~= state then bump('delivery:'..cur[2], -1); bump('delivery:'..state, 1) end
return 1
""",
}


def register_scripts(client: aioredis.Redis) -> dict[str, AsyncScript]:
    """Every script in _SCRIPTS, with _LIB in front, registered with `client` by name."""
    return {name: client.register_script(_LIB + body) for name, body in _SCRIPTS.items()}
