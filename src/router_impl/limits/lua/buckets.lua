-- Shared by every limit script (limits/store_redis.py prepends it): the bucket math of store.refilled,
-- counters and lockouts, judged at the script's `now`.

-- The script's now: the caller's now_ms, or Redis's own clock (TIME, whole ms) when absent.
local function clock(now_ms)
  if now_ms ~= nil then return now_ms end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A bucket's level at now, and the stamp to store (never earlier than the stored one).
local function bucket_at(key, cap, per, now)
  local state = redis.call('HMGET', key, 'level', 'ts_ms')
  if not state[1] then return cap, now end
  local level, ts = tonumber(state[1]), tonumber(state[2])
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  level = level + elapsed * per
  if level > cap then level = cap end
  if ts < now then ts = now end
  return level, ts
end

-- The level is written with %.17g so the double round-trips exactly; the bucket expires once full.
local function put_bucket(key, level, ts, cap, per, margin)
  redis.call('HSET', key, 'level', string.format('%.17g', level), 'ts_ms', string.format('%d', ts))
  local ttl = math.ceil((cap - level) / per) + margin
  if ttl > 70368744177664 then ttl = 70368744177664 end
  redis.call('PEXPIRE', key, string.format('%d', ttl))
end

-- A counter's usage at now: one whose expiry is at or before now reads as absent (0).
local function used_at(key, now)
  local expires = redis.call('PEXPIRETIME', key)
  if expires == -2 or (expires >= 0 and expires <= now) then return 0 end
  local used = tonumber(redis.call('GET', key))
  if not used then error('limit store counter ' .. key .. ' is not a number') end
  return used
end

local function lockout_at(key, now)
  local lock_until = redis.call('PEXPIRETIME', key)
  if lock_until > now then return lock_until, redis.call('GET', key) end
  return nil, nil
end
