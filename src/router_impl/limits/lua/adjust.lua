-- Settle or refund after a call (store.LimitStore.adjust), atomically, ending its lease. KEYS: the
-- lease's sorted set and hash when leased, then each bucket, each counter: one {org} slot.
-- ARGV[1], JSON (store_redis.adjust_plan):
--   now, margin  as for admit.lua
--   lease        the lease id; absent without one
--   buckets      [{cap, per, delta, reserved}] in KEYS order
--   counters     [{delta, reserved, expires}] in KEYS order
-- A lease already reaped had its reservation given back: the reserved amounts are charged again, so
-- the actual figures count in full.
local p = cjson.decode(ARGV[1])
local now, margin, lease = clock(p.now), p.margin, p.lease
local nl, late = 0, false
if lease then
  nl = 2
  late = not redis.call('ZSCORE', KEYS[1], lease)
end
local nb = #p.buckets
local levels, stamps, used = {}, {}, {}
for i, b in ipairs(p.buckets) do
  local level, ts = bucket_at(KEYS[nl + i], b.cap, b.per, now)
  local delta = b.delta
  if late then delta = delta - b.reserved end
  level = level + delta
  if level > b.cap then level = b.cap end
  levels[i], stamps[i] = level, ts
end
for j, c in ipairs(p.counters) do
  local delta = c.delta
  if late then delta = delta + c.reserved end
  local after = used_at(KEYS[nl + nb + j], now) + delta
  if after < 0 then after = 0 end
  used[j] = after
end
for i, b in ipairs(p.buckets) do
  put_bucket(KEYS[nl + i], levels[i], stamps[i], b.cap, b.per, margin)
end
for j, c in ipairs(p.counters) do
  redis.call('SET', KEYS[nl + nb + j], string.format('%d', used[j]), 'PXAT', string.format('%d', c.expires))
end
if lease and not late then
  redis.call('ZREM', KEYS[1], lease)
  redis.call('HDEL', KEYS[2], lease)
end
return 1
