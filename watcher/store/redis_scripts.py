"""The Redis store's Lua scripts: one per write, all atomic on the server.

_LIB holds what the scripts share (key names, the lease clock, counters, claiming,
adding a delivery, removing and burying a job); _SCRIPTS maps each operation to its
body, and `register_scripts` registers _LIB + body for each with a client, which then
runs them by SHA.

Every script takes ARGV[1] = the key prefix and ARGV[2] = the lease clock: "" for the
server's TIME, or the caller's `now` (tests with synthetic times). Its own arguments
start at ARGV[3]. KEYS[1] (P:jobs:due) only routes the call in a cluster.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from watcher.store.redis_batch_scripts import BATCH_LIB, BATCH_SCRIPTS
from watcher.store.redis_record_scripts import RECORD_LIB, RECORD_SCRIPTS

_CORE = """
local P = ARGV[1]
local JDUE, JADDED, JFINAL = P..':jobs:due', P..':jobs:added', P..':jobs:final'
local DDUE, DALL, DDEAD = P..':dlvs:due', P..':dlvs:all', P..':dlvs:deadline'
local COUNTS, TOMBS, TOMBWHY = P..':counts', P..':tombs', P..':tombs:why'
local function jkey(id) return P..':job:'..id end
local function dkey(id) return P..':dlv:'..id end
local function dset(job_id) return P..':dlvs:job:'..job_id end
local function bump(field, n) redis.call('HINCRBY', COUNTS, field, n) end
local function job_state(outcome) if outcome == '' then return 'watching' end return outcome end
-- %.17g: Lua's tostring keeps 14 digits and would round epoch fractions.
local function fmt(x) return string.format('%.17g', x) end
-- A pending delivery's due score lives in P:dlvs:due and in its notifier's P:dlvs:due:n:<name>,
-- so a replica claims from the notifiers it knows without wading through the others.
local function ndue(notifier) return P..':dlvs:due:n:'..notifier end
local function dlv_due(id, notifier, score)
  redis.call('ZADD', DDUE, score, id); redis.call('ZADD', ndue(notifier), score, id)
end
local function dlv_undue(id, notifier)
  redis.call('ZREM', DDUE, id); redis.call('ZREM', ndue(notifier), id); redis.call('ZREM', DDEAD, id)
end
local function job_due(id, _, score) redis.call('ZADD', JDUE, score, id) end

-- The one clock every lease is measured by: the server's, so replicas with skewed clocks
-- cannot shorten each other's leases (or the caller's, when it asks for synthetic time).
local clock_now
local function lnow()
  if clock_now == nil then
    if ARGV[2] == '' then
      local t = redis.call('TIME')
      clock_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    else
      clock_now = tonumber(ARGV[2])
    end
  end
  return clock_now
end

-- Invariant: a lease is live while its token is set and lease_until is ahead of the lease
-- clock; a write by a holder needs both (the token alone would let a stale holder in).
local function live(owner, until_s)
  return owner ~= nil and owner ~= false and owner ~= '' and until_s ~= nil and until_s ~= false
    and until_s ~= '' and tonumber(until_s) > lnow()
end
local function holds(token, owner, until_s) return token ~= '' and owner == token and live(owner, until_s) end

local function add_delivery(b)  -- ARGV[b..b+9]: the fields in delivery_args order
  local id, created, next_at, job_id, state = ARGV[b], ARGV[b+3], ARGV[b+4], ARGV[b+6], ARGV[b+7]
  if redis.call('EXISTS', dkey(id)) == 1 then return 0 end
  redis.call('HSET', dkey(id), 'id', id, 'notifier', ARGV[b+1], 'event', ARGV[b+2],
    'created_at', created, 'next_attempt_at', next_at, 'deadline_at', ARGV[b+5],
    'job_id', job_id, 'state', state, 'attempts', ARGV[b+8], 'last_error', ARGV[b+9],
    'owner', '', 'lease_until', '')
  redis.call('ZADD', DALL, created, id)
  if state == 'pending' then
    dlv_due(id, ARGV[b+1], next_at)
    redis.call('ZADD', DDEAD, ARGV[b+5], id)
  end
  if job_id ~= '' then redis.call('SADD', dset(job_id), id) end
  if state == 'dead' then redis.call('ZADD', P..':dlvs:dead', created, id) end
  bump('delivery:'..state, 1)
  return 1
end

local function add_deliveries(n, b)
  local added = 0
  for i = 0, n - 1 do added = added + add_delivery(b + i * 10) end
  return added
end
"""

_JOBS = """
-- Delete a job and its deliveries; `keep_pending` keeps those still to be sent (a job watched
-- again must not lose the notification of its previous outcome). `uncount` false (retention)
-- leaves the job in its batch's counts.
local function remove_job(id, keep_pending, now, uncount)
  local v = redis.call('HMGET', jkey(id), 'outcome', 'batch')
  local outcome = v[1]
  if not outcome then return 0 end
  if v[2] and v[2] ~= '' then bleave(v[2], id, outcome, now, uncount) end
  redis.call('DEL', jkey(id))
  redis.call('ZREM', JDUE, id); redis.call('ZREM', JADDED, id); redis.call('ZREM', JFINAL, id)
  bump('job:'..job_state(outcome), -1)
  for _, did in ipairs(redis.call('SMEMBERS', dset(id))) do
    local v = redis.call('HMGET', dkey(did), 'state', 'notifier')
    if not (keep_pending and v[1] == 'pending') then
      if v[1] then redis.call('DEL', dkey(did)); bump('delivery:'..v[1], -1) end
      if v[2] then dlv_undue(did, v[2]) else redis.call('ZREM', DDUE, did); redis.call('ZREM', DDEAD, did) end
      redis.call('ZREM', DALL, did); redis.call('SREM', dset(id), did); redis.call('ZREM', DDIED, did)
    end
  end
  return 1
end

-- Byte order, as Redis orders members of equal score (Lua's `<` would follow the locale).
local function bytes_le(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end

local function bury(id, at, reason)
  redis.call('ZADD', TOMBS, at, id)
  redis.call('HSET', TOMBWHY, id, reason)
end

-- The due candidates for a claim, earliest first: members of `zkey` due at the caller's `now`,
-- or with `nwanted` >= 0 those of the wanted notifiers' own zsets, merged. At most `bound`
-- from each: entries a claim skips (a live lease under clock skew) cannot hide the rest.
local function candidates(zkey, now_s, bound, nwanted)
  if nwanted < 0 then
    return redis.call('ZRANGEBYSCORE', zkey, '-inf', now_s, 'LIMIT', 0, bound)
  end
  local found = {}
  for i = 9, 8 + nwanted do
    local page = redis.call('ZRANGEBYSCORE', ndue(ARGV[i]), '-inf', now_s, 'WITHSCORES', 'LIMIT', 0, bound)
    for j = 1, #page, 2 do found[#found + 1] = {tonumber(page[j + 1]), page[j]} end
  end
  table.sort(found, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] ~= b[2] and bytes_le(a[2], b[2])
  end)
  local ids = {}
  for i, pair in ipairs(found) do ids[i] = pair[2] end
  return ids
end

-- Lease due records whose `field` is still `open`; a leased record's due score becomes its
-- lease expiry (`setdue`). The records come back as one JSON string: redis-py parses that
-- far faster than nested arrays.
-- ARGV[3] now, [4] limit, [5] token prefix, [6] lease seconds, [7] bound,
-- [8] number of wanted notifiers (-1: any), [9..] the notifiers.
local function claim(zkey, keyfn, field, open, setdue)
  local now_s, limit, prefix, lease = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
  if limit <= 0 then return '[]' end
  local out, until_s = {}, fmt(lnow() + lease)
  for _, id in ipairs(candidates(zkey, now_s, tonumber(ARGV[7]), tonumber(ARGV[8]))) do
    local key = keyfn(id)
    local v = redis.call('HMGET', key, field, 'owner', 'lease_until', 'notifier')
    if v[1] ~= open then
      redis.call('ZREM', zkey, id)  -- gone or settled: a stale entry
      if v[4] then redis.call('ZREM', ndue(v[4]), id) end
    elseif not live(v[2], v[3]) then
      local token = prefix..':'..(#out + 1)
      redis.call('HSET', key, 'owner', token, 'lease_until', until_s)
      setdue(id, v[4], until_s)
      out[#out + 1] = redis.call('HGETALL', key)
      if #out >= limit then break end
    end
  end
  if #out == 0 then return '[]' end  -- cjson would encode an empty table as {}
  return cjson.encode(out)
end

-- ARGV[3] lease seconds, [4..] pairs of (id, token): each held one is extended.
local function renew(keyfn, setdue)
  local lease, out = tonumber(ARGV[3]), {}
  local until_s = fmt(lnow() + lease)
  for i = 4, #ARGV, 2 do
    local id = ARGV[i]
    local v = redis.call('HMGET', keyfn(id), 'owner', 'lease_until', 'notifier')
    if holds(ARGV[i + 1], v[1], v[2]) then
      redis.call('HSET', keyfn(id), 'lease_until', until_s)
      setdue(id, v[3], until_s)
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
  return out
end

-- The index in zset `zkey` of the first member after the cursor (score, id), ties by id.
local function zafter(zkey, score_s, id)
  local rank = redis.call('ZRANK', zkey, id)
  if rank and tonumber(redis.call('ZSCORE', zkey, id)) == tonumber(score_s) then return rank + 1 end
  local lo = redis.call('ZCOUNT', zkey, '-inf', '('..score_s)
  local hi = redis.call('ZCOUNT', zkey, '-inf', score_s)
  while lo < hi do  -- binary search within the members of equal score
    local mid = math.floor((lo + hi) / 2)
    if bytes_le(redis.call('ZRANGE', zkey, mid, mid)[1], id) then lo = mid + 1 else hi = mid end
  end
  return lo
end
"""

_LIB = _CORE + BATCH_LIB + _JOBS + RECORD_LIB

_SCRIPTS: dict[str, str] = {
    # ARGV[3] id, [4] labels, [5] notify, [6] now, [7] first_poll_at, [8] again ("1"/"0"), [9] batch,
    # [10] kind, [11] account ("" for the default)
    "add_job": """
local id, again, batch = ARGV[3], ARGV[8] == '1', ARGV[9]
if redis.call('HEXISTS', TOMBWHY, id) == 1 then
  if not again then return 0 end
  redis.call('ZREM', TOMBS, id); redis.call('HDEL', TOMBWHY, id)
end
local outcome = redis.call('HGET', jkey(id), 'outcome')
if outcome then
  if not again or outcome == '' then return 0 end
  remove_job(id, true, ARGV[6], true)  -- a final job asked for again: a fresh watch replaces it
end
redis.call('HSET', jkey(id), 'id', id, 'labels', ARGV[4], 'notify', ARGV[5], 'added_at', ARGV[6],
  'next_poll_at', ARGV[7], 'polls', '0', 'transient_errors', '0', 'snapshot', 'null',
  'outcome', '', 'detected_at', '', 'owner', '', 'lease_until', '', 'batch', batch, 'errors', 'null',
  'stuck_at', '', 'kind', ARGV[10], 'account', ARGV[11])
redis.call('ZADD', JDUE, ARGV[7], id)
redis.call('ZADD', JADDED, ARGV[6], id)
bump('job:watching', 1)
if batch ~= '' then bjoin(batch, id, ARGV[6]) end
return 1
""",
    "claim_jobs": "return claim(JDUE, jkey, 'outcome', '', job_due)",
    "claim_deliveries": "return claim(DDUE, dkey, 'state', 'pending', dlv_due)",
    "claim_expired": "return claim(DDEAD, dkey, 'state', 'pending', dlv_due)",
    "renew_jobs": "return renew(jkey, job_due)",
    "renew_deliveries": "return renew(dkey, dlv_due)",
    # ARGV[3] id, [4] token, [5] outcome, [6] snapshot, [7] polls, [8] detected_at, [9] errors,
    # [10] now, [11] number of deliveries, [12..] their fields
    "record_outcome": """
local id, key, outcome = ARGV[3], jkey(ARGV[3]), ARGV[5]
local cur = redis.call('HMGET', key, 'outcome', 'owner', 'lease_until', 'batch')
if cur[1] ~= '' or not holds(ARGV[4], cur[2], cur[3]) then return 0 end
redis.call('HSET', key, 'outcome', outcome, 'snapshot', ARGV[6], 'polls', ARGV[7],
  'detected_at', ARGV[8], 'errors', ARGV[9], 'owner', '', 'lease_until', '')
redis.call('ZREM', JDUE, id)
redis.call('ZADD', JFINAL, ARGV[8], id)
bump('job:watching', -1); bump('job:'..outcome, 1)
add_deliveries(tonumber(ARGV[11]), 12)
if cur[4] and cur[4] ~= '' then bcount(cur[4], outcome, ARGV[10]) end
return 1
""",
    # ARGV[3] id, [4] token: the token alone, so a stale holder can never free a fresh claim.
    "release_job": """
local id, key = ARGV[3], jkey(ARGV[3])
local cur = redis.call('HMGET', key, 'outcome', 'owner', 'next_poll_at')
if cur[1] ~= '' or ARGV[4] == '' or cur[2] ~= ARGV[4] then return 0 end
redis.call('HSET', key, 'owner', '', 'lease_until', '')
redis.call('ZADD', JDUE, cur[3], id)
return 1
""",
    "release_delivery": """
local id, key = ARGV[3], dkey(ARGV[3])
local cur = redis.call('HMGET', key, 'state', 'owner', 'next_attempt_at', 'notifier')
if cur[1] ~= 'pending' or ARGV[4] == '' or cur[2] ~= ARGV[4] then return 0 end
redis.call('HSET', key, 'owner', '', 'lease_until', '')
dlv_due(id, cur[4], cur[3])
return 1
""",
    # ARGV[3] id, [4] now: the job and its deliveries go, a STOPPED tombstone stays.
    "remove_job": """
if remove_job(ARGV[3], false, ARGV[4], true) == 0 then return 0 end
bury(ARGV[3], ARGV[4], 'stopped')
return 1
""",
    # ARGV[3] now, [4] window, [5] total, [6] moved so far, [7] count, [8] skipped so far.
    # A job under a live lease is skipped: rescheduling it would hide nothing but move its
    # score off the lease expiry.
    "spread": """
local now, window, total, offset = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local ids = redis.call('ZRANGEBYSCORE', JDUE, '-inf', '('..ARGV[3], 'LIMIT', tonumber(ARGV[8]),
  tonumber(ARGV[7]))
local moved, skipped = 0, 0
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', jkey(id), 'outcome', 'owner', 'lease_until')
  if v[1] ~= '' then
    redis.call('ZREM', JDUE, id)
  elseif live(v[2], v[3]) then
    skipped = skipped + 1
  else
    local at = fmt(now + window * (offset + moved) / total)
    redis.call('HSET', jkey(id), 'next_poll_at', at)
    redis.call('ZADD', JDUE, at, id)
    moved = moved + 1
  end
end
return {moved, skipped}
""",
    # ARGV[3] before, [4] now, [5] limit, [6] bound: oldest detected first; a job with a
    # pending delivery is passed over (within the bound) until they settle.
    "purge": """
local now, limit, purged = ARGV[4], tonumber(ARGV[5]), 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', JFINAL, '-inf', '('..ARGV[3], 'LIMIT', 0, tonumber(ARGV[6]))) do
  local outcome = redis.call('HGET', jkey(id), 'outcome')
  local settled = outcome and outcome ~= ''
  if not settled then redis.call('ZREM', JFINAL, id) end
  if settled then
    for _, did in ipairs(redis.call('SMEMBERS', dset(id))) do
      if redis.call('HGET', dkey(did), 'state') == 'pending' then settled = false; break end
    end
  end
  if settled then
    remove_job(id, false, now, false); bury(id, now, 'finished')
    purged = purged + 1
    if purged >= limit then break end
  end
end
return purged
""",
    # ARGV[3] before, [4] limit
    "purge_tombstones": """
local ids = redis.call('ZRANGEBYSCORE', TOMBS, '-inf', '('..ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do redis.call('ZREM', TOMBS, id); redis.call('HDEL', TOMBWHY, id) end
return #ids
""",
    # ARGV[3] number of deliveries, [4..] their fields
    "add_deliveries": "return add_deliveries(tonumber(ARGV[3]), 4)",
    # ARGV[3] key, [4] "1" when a value is expected, [5] expected, [6] value,
    # [7] number of deliveries, [8..] their fields
    "transition_meta": """
local cur = redis.call('HGET', P..':meta', ARGV[3])
if ARGV[4] == '1' then
  if cur ~= ARGV[5] then return 0 end
elseif cur then
  return 0
end
redis.call('HSET', P..':meta', ARGV[3], ARGV[6])
add_deliveries(tonumber(ARGV[7]), 8)
return 1
""",
    # ARGV[3] cursor given ("1"/"0"), [4] cursor score, [5] cursor id, [6] state ("" any),
    # [7] how many wanted, [8] how many members to look at most, [9] batch ("" any: then
    # P:jobs:added, else the batch's own zset by added_at, so a batch's page reads only it).
    # Returns [records, last id looked at, its score, 1 when the end was reached].
    "list_jobs": """
local start, state, want, bound, batch = 0, ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local zkey = JADDED
if batch ~= '' then zkey = bjobs(batch) end
if ARGV[3] == '1' then start = zafter(zkey, ARGV[4], ARGV[5]) end
local out, seen, last_id, last_score, done = {}, 0, '', '', 0
while #out < want and seen < bound do
  local page = redis.call('ZRANGE', zkey, start, start + math.min(bound - seen, 200) - 1, 'WITHSCORES')
  if #page == 0 then done = 1; break end
  for i = 1, #page, 2 do
    local id = page[i]
    seen, start, last_id, last_score = seen + 1, start + 1, id, page[i + 1]
    local v = redis.call('HMGET', jkey(id), 'outcome', 'batch')
    if v[1] and (state == '' or job_state(v[1]) == state) and (batch == '' or v[2] == batch) then
      out[#out + 1] = redis.call('HGETALL', jkey(id))
      if #out >= want then break end
    end
  end
end
if done == 0 and start >= redis.call('ZCARD', zkey) then done = 1 end
if #out == 0 then return cjson.encode({0, last_id, last_score, done}) end
return cjson.encode({out, last_id, last_score, done})
""",
    # ARGV[3] first index in P:dlvs:due, [4] how many: build the indexes a layout-1 store
    # lacks (P:dlvs:deadline and P:dlvs:due:n:<notifier>) for its pending deliveries.
    "index_deliveries": """
local page = redis.call('ZRANGE', DDUE, tonumber(ARGV[3]), tonumber(ARGV[3]) + tonumber(ARGV[4]) - 1, 'WITHSCORES')
for i = 1, #page, 2 do
  local id = page[i]
  local v = redis.call('HMGET', dkey(id), 'state', 'deadline_at', 'notifier')
  if v[1] == 'pending' then
    redis.call('ZADD', DDEAD, v[2], id); redis.call('ZADD', ndue(v[3]), page[i + 1], id)
  end
end
return math.floor(#page / 2)
""",
}


def register_scripts(client: aioredis.Redis) -> dict[str, AsyncScript]:
    """Every script in _SCRIPTS, with _LIB in front, registered with `client` by name."""
    scripts = {**_SCRIPTS, **BATCH_SCRIPTS, **RECORD_SCRIPTS}
    return {name: client.register_script(_LIB + body) for name, body in scripts.items()}
