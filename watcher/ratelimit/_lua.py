"""The window rule of `window.py` in Lua, for the budget shared through one Redis hash.

Each Lua function mirrors the Python function of the same name, line by line,
on a table `s` with the fields of `WindowState`; change both together (the
parity test in tests/test_ratelimit_parity.py fails otherwise). One call is one
`step`: learn each observation, finish each released request, then take up to
`acquire` slots (`take_many`; 0: only roll the window), atomically for every replica.

KEYS[1] the hash. ARGV: now, interval, early, default_window, same_window,
probe_timeout, ttl_ms, acquire (slots wanted, '0' for none), the number of
observations, the number of finished requests; then 7 values per observation
(limit, blocked_until, remaining, reset_at, seq, later, probe); then one seq per
finished request ('' when unknown). Returns {granted, wait, probe_out, seq,
remaining, count, reset_at} as strings: `seq` is the first of `count` slots granted,
`reset_at` the end of the window they were taken in ('' when unknown).
"""

from __future__ import annotations

#: The hash fields, in WindowState's order.
FIELDS = (
    "tat", "blocked_until", "limit", "remaining", "reset_at", "window", "issued", "seen",
    "rolled", "open", "known", "probe_from", "probe_until",
)  # fmt: skip

#: Values per observation in ARGV.
OBSERVATION_ARGS = 7

SCRIPT = """
local function num(v)
  if v == nil or v == false or v == '' then return nil end
  return tonumber(v)
end
local function fmt(x) return string.format('%.17g', x) end

local FIELDS = {FIELDS}
local key = KEYS[1]
local now = tonumber(ARGV[1])
local p = {interval = tonumber(ARGV[2]), early = tonumber(ARGV[3]), default_window = tonumber(ARGV[4]),
           same_window = tonumber(ARGV[5]), probe_timeout = tonumber(ARGV[6])}
local ttl, want, n_obs, n_fin = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])

local function load()
  local v = redis.call('HMGET', key, unpack(FIELDS))
  local s = {}
  for i, name in ipairs(FIELDS) do s[name] = num(v[i]) end
  s.tat, s.blocked_until = s.tat or 0, s.blocked_until or 0
  s.window = s.window or p.default_window
  s.issued, s.seen, s.rolled, s.open = s.issued or 0, s.seen or 0, s.rolled or 0, s.open or 0
  s.known = s.known == 1
  s.probe_from, s.probe_until = s.probe_from or 0, s.probe_until or 0
  if s.remaining == nil or s.reset_at == nil then s.remaining, s.reset_at = nil, nil end
  return s
end

local function position(issued, seq, later)
  if seq == nil or seq < 0 or seq > issued then return issued - later, later end
  return seq, issued - seq
end

local function learn(s, o)
  if o.limit ~= nil then s.limit = o.limit end
  if o.blocked_until ~= nil then s.blocked_until = math.max(s.blocked_until, o.blocked_until) end
  local probe_from = s.probe_from
  if o.seq == nil or o.seq > probe_from then s.known = true end
  if o.probe then s.known, s.probe_from, s.probe_until = false, s.issued, 0 end
  local o_reset = o.reset_at
  if o.remaining ~= nil and o_reset == nil then
    if s.reset_at ~= nil and s.reset_at > now then o_reset = s.reset_at else o_reset = now + p.default_window end
  end
  if o.remaining ~= nil and o_reset ~= nil and o_reset > now then
    local seq, later = position(s.issued, o.seq, o.later)
    local candidate = math.max(0, o.remaining - later)
    if s.reset_at == nil or s.remaining == nil or o_reset - s.reset_at >= p.same_window then
      if s.reset_at ~= nil and o_reset - s.reset_at >= p.same_window then
        s.window = o_reset - s.reset_at
      end
      s.remaining, s.reset_at = candidate, o_reset
    elseif s.reset_at - o_reset < p.same_window then
      s.remaining = math.min(s.remaining, candidate)
    elseif seq > s.seen then
      s.remaining, s.reset_at = candidate, o_reset
    end
    s.seen = math.max(s.seen, seq)
  end
end

local function finish(s, seq)
  local counted = s.open > 0 and (seq == nil or seq > s.rolled)
  local probe_ended = not s.known and s.probe_until > 0 and (seq == nil or seq > s.probe_from)
  if counted then s.open = s.open - 1 end
  if probe_ended then s.probe_until = 0 end
end

local function roll(s)
  if s.reset_at == nil or now < s.reset_at then return end
  if s.limit == nil then
    s.remaining, s.reset_at, s.known, s.probe_from, s.probe_until = nil, nil, false, s.issued, 0
    return
  end
  local reset_at = s.reset_at + s.window
  if reset_at <= now then reset_at = now + s.window end
  s.remaining, s.reset_at, s.rolled, s.open = math.max(0, s.limit - s.open), reset_at, s.issued, 0
end

local function delay(s)
  local wait = s.blocked_until - now
  if s.remaining ~= nil and s.remaining < 1 and s.reset_at ~= nil then wait = math.max(wait, s.reset_at - now) end
  if p.interval > 0 then wait = math.max(wait, s.tat - p.early - now) end
  local probe_out = not s.known and s.probe_until > now
  if probe_out then wait = math.max(wait, s.probe_until - now) end
  return wait, probe_out
end

local function take(s)
  roll(s)
  local wait, probe_out = delay(s)
  if wait > 0 then return {'0', fmt(wait), probe_out and '1' or '0', '0'} end
  s.issued = s.issued + 1
  s.open = s.open + 1
  if p.interval > 0 then s.tat = math.max(s.tat, now) + p.interval end
  if s.remaining ~= nil then s.remaining = s.remaining - 1 end
  if not s.known then s.probe_until = now + p.probe_timeout end
  return {'1', '0', '0', fmt(s.issued)}
end

local function take_many(s, want)
  local first = take(s)
  local count = first[1] == '1' and 1 or 0
  while first[1] == '1' and count < want do
    if take(s)[1] ~= '1' then break end
    count = count + 1
  end
  first[6] = tostring(count)
  return first
end

local function store(s)
  local set, gone = {}, {}
  for _, name in ipairs(FIELDS) do
    local v = s[name]
    if v == nil then
      gone[#gone + 1] = name
    else
      if v == true then v = 1 elseif v == false then v = 0 end
      set[#set + 1] = name
      set[#set + 1] = fmt(v)
    end
  end
  redis.call('HSET', key, unpack(set))
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  redis.call('PEXPIRE', key, ttl)
end

-- step
local s = load()
local base = 10
for i = 0, n_obs - 1 do
  local a = base + i * {OBSERVATION_ARGS}
  learn(s, {limit = num(ARGV[a + 1]), blocked_until = num(ARGV[a + 2]), remaining = num(ARGV[a + 3]),
            reset_at = num(ARGV[a + 4]), seq = num(ARGV[a + 5]), later = num(ARGV[a + 6]) or 0,
            probe = ARGV[a + 7] == '1'})
end
base = base + n_obs * {OBSERVATION_ARGS}
for i = 1, n_fin do finish(s, num(ARGV[base + i])) end
local answer = {'0', '0', '0', '0', '', '0'}
if want > 0 then answer = take_many(s, want) else roll(s) end
store(s)
answer[5] = s.remaining ~= nil and fmt(s.remaining) or ''
answer[7] = s.reset_at ~= nil and fmt(s.reset_at) or ''
return answer
""".replace("{FIELDS}", "{" + ", ".join(f"'{name}'" for name in FIELDS) + "}").replace(
    "{OBSERVATION_ARGS}", str(OBSERVATION_ARGS)
)
