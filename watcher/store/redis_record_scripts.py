"""The Redis store's Lua for a holder's records: a poll and a delivery, one or many per script.

RECORD_LIB goes after the store's core helpers (keys, the lease clock, `holds`,
add_deliveries); each record is a function reading its arguments from ARGV at an index,
so the one-record scripts and the batch scripts (many records, one EVALSHA, one round
trip) share the same body and the same fencing.
"""

from __future__ import annotations

RECORD_LIB = """
-- Fencing: a record is written only by the holder of the current token under a live lease
-- (`holds`: token, owner and lease_until against the lease clock); else nothing changes (0).

-- ARGV[b] id, [b+1] token, [b+2] next_poll_at, [b+3] polls, [b+4] transient_errors, [b+5] snapshot
local function record_poll(b)
  local id = ARGV[b]
  local key = jkey(id)
  local cur = redis.call('HMGET', key, 'outcome', 'owner', 'lease_until')
  if cur[1] ~= '' or not holds(ARGV[b+1], cur[2], cur[3]) then return 0 end
  redis.call('HSET', key, 'next_poll_at', ARGV[b+2], 'polls', ARGV[b+3], 'transient_errors', ARGV[b+4],
    'snapshot', ARGV[b+5], 'owner', '', 'lease_until', '')
  redis.call('ZADD', JDUE, ARGV[b+2], id)
  return 1
end

-- ARGV[b] id, [b+1] token, [b+2] state, [b+3] attempts, [b+4] next_attempt_at, [b+5] last_error,
-- [b+6] number of alerts, [b+7..] their fields. Returns the answer and the index after the record;
-- the alerts are inserted only when the delivery's row changed.
local function record_delivery(b)
  local id, state, next_at, nalerts = ARGV[b], ARGV[b+2], ARGV[b+4], tonumber(ARGV[b+6])
  local after = b + 7 + nalerts * 10
  local key = dkey(id)
  local cur = redis.call('HMGET', key, 'state', 'owner', 'lease_until', 'notifier', 'created_at')
  if cur[1] ~= 'pending' or not holds(ARGV[b+1], cur[2], cur[3]) then return 0, after end
  redis.call('HSET', key, 'state', state, 'attempts', ARGV[b+3], 'next_attempt_at', next_at,
    'last_error', ARGV[b+5], 'owner', '', 'lease_until', '')
  if state == 'pending' then
    dlv_due(id, cur[4], next_at)
  else
    dlv_undue(id, cur[4])
    if state == 'dead' then redis.call('ZADD', DDIED, cur[5], id) end
    bump('delivery:pending', -1); bump('delivery:'..state, 1)
  end
  add_deliveries(nalerts, b + 7)
  return 1, after
end
"""

RECORD_SCRIPTS: dict[str, str] = {
    # ARGV[3] number of polls, [4..] 6 fields each (record_poll's)
    "record_polls": """
local out = {}
for i = 0, tonumber(ARGV[3]) - 1 do out[i + 1] = record_poll(4 + i * 6) end
return out
""",
    # ARGV[3] number of records, [4..] each record's fields (record_delivery's), one after another
    "record_deliveries": """
local out, b = {}, 4
for i = 1, tonumber(ARGV[3]) do out[i], b = record_delivery(b) end
return out
""",
}
