"""The Redis store's Lua for batches: the helpers the job scripts count with, and the batch scripts.

Keys under the prefix P (batch names cannot hold a space, and "batch:" / "batchjobs:" / "batches:"
differ before any name starts, so keys never collide):
  P:batch:<name>      hash: name, phase, jobs, final, o:<outcome> counts, started_at, quiet_since,
                      finished_at, summaries, last_summary_id, owner, lease_until
  P:batchjobs:<name>  zset of its jobs by added_at (batch_jobs, list_jobs(batch=...) pages)
  P:batches:all       zset of every batch by started_at; P:batches:open / :finished by phase
  P:batches:settled   zset by quiet_since of open batches whose jobs are all final (claims read it)
  P:dlvs:dead         zset of dead deliveries by created_at (digests)

BATCH_LIB goes between the store's core helpers (keys, lease clock, add_deliveries) and its job
helpers (remove_job), which call it. The counting rules are those of watcher.store.memory_batches.
"""

from __future__ import annotations

BATCH_LIB = """
local BALL, BOPEN, BFIN = P..':batches:all', P..':batches:open', P..':batches:finished'
local BSETTLED, DDIED = P..':batches:settled', P..':dlvs:dead'
local function bkey(name) return P..':batch:'..name end
local function bjobs(name) return P..':batchjobs:'..name end

-- Keep P:batches:settled in step: a member exactly while open with every job final.
local function bindex(name)
  local v = redis.call('HMGET', bkey(name), 'phase', 'jobs', 'final', 'quiet_since')
  if v[1] == 'open' and tonumber(v[2]) > 0 and tonumber(v[3]) >= tonumber(v[2]) then
    redis.call('ZADD', BSETTLED, v[4], name)
  else
    redis.call('ZREM', BSETTLED, name)
  end
end

local function bphase(name, phase)
  local started = redis.call('HGET', bkey(name), 'started_at')
  redis.call('HSET', bkey(name), 'phase', phase)
  if phase == 'open' then
    redis.call('ZREM', BFIN, name); redis.call('ZADD', BOPEN, started, name)
  else
    redis.call('ZREM', BOPEN, name); redis.call('ZADD', BFIN, started, name)
  end
end

-- Any change to members or outcomes: quiet from now, and a claim on the batch revoked, so a
-- summary in progress is never written over a batch that moved under it.
local function bchanged(name, now)
  redis.call('HSET', bkey(name), 'quiet_since', now, 'owner', '', 'lease_until', '')
  bindex(name)
end

local function bjoin(name, id, now)
  local key = bkey(name)
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'name', name, 'phase', 'open', 'jobs', '0', 'final', '0', 'started_at', now,
      'quiet_since', now, 'finished_at', '', 'summaries', '0', 'last_summary_id', '', 'owner', '', 'lease_until', '')
    redis.call('ZADD', BALL, now, name)
  end
  redis.call('HINCRBY', key, 'jobs', 1)
  redis.call('ZADD', bjobs(name), now, id)
  bphase(name, 'open')  -- a finished batch reopens; its summaries and last_summary_id stay
  bchanged(name, now)
end

local function bcount(name, outcome, now)
  local key = bkey(name)
  if redis.call('EXISTS', key) == 0 then return end
  redis.call('HINCRBY', key, 'final', 1); redis.call('HINCRBY', key, 'o:'..outcome, 1)
  bchanged(name, now)
end

-- `uncount` false for retention: the job leaves batch_jobs but stays in the counts.
local function bleave(name, id, outcome, now, uncount)
  redis.call('ZREM', bjobs(name), id)
  local key = bkey(name)
  if not uncount or redis.call('EXISTS', key) == 0 then return end
  local jobs = redis.call('HINCRBY', key, 'jobs', -1)
  if outcome ~= '' then
    if redis.call('HINCRBY', key, 'final', -1) < 0 then redis.call('HSET', key, 'final', '0') end
    if redis.call('HINCRBY', key, 'o:'..outcome, -1) <= 0 then redis.call('HDEL', key, 'o:'..outcome) end
  end
  if jobs <= 0 then
    if tonumber(redis.call('HGET', key, 'summaries')) == 0 then  -- never summarised: forgotten
      redis.call('DEL', key, bjobs(name))
      redis.call('ZREM', BALL, name); redis.call('ZREM', BOPEN, name); redis.call('ZREM', BFIN, name)
      redis.call('ZREM', BSETTLED, name)
      return
    end
    redis.call('HSET', key, 'jobs', '0')
    bphase(name, 'finished')
  end
  bchanged(name, now)
end
"""

BATCH_SCRIPTS: dict[str, str] = {
    # ARGV[3] cutoff (now - settle, the caller's clock), [4] limit, [5] token prefix, [6] lease
    # seconds, [7] bound: settled batches without a live lease (the lease clock), oldest quiet first.
    "claim_batches": """
local limit = tonumber(ARGV[4])
if limit <= 0 then return '[]' end
local out, until_s = {}, fmt(lnow() + tonumber(ARGV[6]))
for _, name in ipairs(redis.call('ZRANGEBYSCORE', BSETTLED, '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[7]))) do
  local v = redis.call('HMGET', bkey(name), 'phase', 'jobs', 'final', 'owner', 'lease_until')
  if v[1] ~= 'open' or tonumber(v[2]) <= 0 or tonumber(v[3]) < tonumber(v[2]) then
    redis.call('ZREM', BSETTLED, name)  -- gone or changed: a stale entry
  elseif not live(v[4], v[5]) then
    redis.call('HSET', bkey(name), 'owner', ARGV[5]..':'..(#out + 1), 'lease_until', until_s)
    out[#out + 1] = redis.call('HGETALL', bkey(name))
    if #out >= limit then break end
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
""",
    # ARGV[3] name, [4] token, [5] now, [6] summary id, [7] number of deliveries, [8..] their fields
    "finish_batch": """
local name, key = ARGV[3], bkey(ARGV[3])
local v = redis.call('HMGET', key, 'phase', 'jobs', 'final', 'owner', 'lease_until')
if v[1] ~= 'open' or tonumber(v[3]) < tonumber(v[2]) or not holds(ARGV[4], v[4], v[5]) then return 0 end
redis.call('HSET', key, 'finished_at', ARGV[5], 'last_summary_id', ARGV[6], 'owner', '', 'lease_until', '')
redis.call('HINCRBY', key, 'summaries', 1)
bphase(name, 'finished')
redis.call('ZREM', BSETTLED, name)
add_deliveries(tonumber(ARGV[7]), 8)
return 1
""",
    # ARGV[3] lease seconds, [4..] pairs of (name, token): fenced like renew_jobs; no due score to move.
    "renew_batches": "return renew(bkey, function() end)",
    # ARGV[3] name, [4] token: the token alone, so a stale holder can never free a fresh claim.
    "release_batch": """
local key = bkey(ARGV[3])
if ARGV[4] == '' or redis.call('HGET', key, 'owner') ~= ARGV[4] then return 0 end
redis.call('HSET', key, 'owner', '', 'lease_until', '')
return 1
""",
    # ARGV[3] which zset ("all", "open", "finished"), [4] cursor given ("1"/"0"), [5] cursor
    # started_at, [6] cursor name, [7] how many.
    "list_batches": """
local zkey = P..':batches:'..ARGV[3]
local start = 0
if ARGV[4] == '1' then start = zafter(zkey, ARGV[5], ARGV[6]) end
local out = {}
for i, name in ipairs(redis.call('ZRANGE', zkey, start, start + tonumber(ARGV[7]) - 1)) do
  out[i] = redis.call('HGETALL', bkey(name))
end
if #out == 0 then return '[]' end
return cjson.encode(out)
""",
    # ARGV[3] id, [4] token, [5] now, [6] number of deliveries, [7..] their fields
    "mark_stuck": """
local key = jkey(ARGV[3])
local cur = redis.call('HMGET', key, 'outcome', 'owner', 'lease_until', 'stuck_at')
if cur[1] ~= '' or not holds(ARGV[4], cur[2], cur[3]) or (cur[4] and cur[4] ~= '') then return 0 end
redis.call('HSET', key, 'stuck_at', ARGV[5])
add_deliveries(tonumber(ARGV[6]), 7)
return 1
""",
}
