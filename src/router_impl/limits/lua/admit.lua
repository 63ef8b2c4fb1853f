-- Admit one plan (store.AdmitPlan): take every bucket's cost and reserve every counter's amount, or
-- nothing and say which refused first. KEYS: the lockout, each bucket, each counter (plan order), then
-- the lease's sorted set and hash when leased: all hash-tagged {org}, so one Redis Cluster slot.
-- ARGV[1], the plan as JSON (store_redis.admit_plan):
--   now       the caller's now_ms; absent: Redis's clock
--   margin    ms a bucket outlives its refill to full
--   buckets   [{cap, per, cost}] in KEYS order
--   counters  [{limit, amount, expires, period}] in KEYS order
--   lease     absent without a lease; {id, term (ms after now: its deadline on this script's clock),
--             held (JSON, '' when nothing), batch, keep}
-- Returns {'ok', levels..., usages...}, {'bucket', i, level}, {'counter', j, used} or
-- {'locked', until_ms, period}.
local p = cjson.decode(ARGV[1])
local now, margin, lease = clock(p.now), p.margin, p.lease
local buckets, counters = p.buckets, p.counters
local nb, nc = #buckets, #counters
local lease_key, held_key = KEYS[2 + nb + nc], KEYS[3 + nb + nc]
if lease then reap(lease_key, held_key, now, margin, lease.batch) end
local lock_until, period = lockout_at(KEYS[1], now)
if lock_until then return {'locked', lock_until, period} end
local levels, stamps = {}, {}
for i, b in ipairs(buckets) do
  local level, ts = bucket_at(KEYS[1 + i], b.cap, b.per, now)
  if level < b.cost then return {'bucket', i, string.format('%.17g', level)} end
  levels[i], stamps[i] = level - b.cost, ts
end
local used = {}
for j, c in ipairs(counters) do
  local before = used_at(KEYS[1 + nb + j], now)
  if before + c.amount > c.limit then
    if before >= c.limit then
      redis.call('SET', KEYS[1], c.period, 'PXAT', string.format('%d', c.expires))
    end
    return {'counter', j, before}
  end
  used[j] = before + c.amount
end
local out = {'ok'}
for i, b in ipairs(buckets) do
  put_bucket(KEYS[1 + i], levels[i], stamps[i], b.cap, b.per, margin)
  out[#out + 1] = string.format('%.17g', levels[i])
end
for j, c in ipairs(counters) do
  redis.call('SET', KEYS[1 + nb + j], string.format('%d', used[j]), 'PXAT', string.format('%d', c.expires))
  out[#out + 1] = used[j]
end
if lease and lease.held ~= '' then
  redis.call('ZADD', lease_key, string.format('%d', now + lease.term), lease.id)
  redis.call('HSET', held_key, lease.id, lease.held)
  redis.call('PEXPIRE', lease_key, string.format('%d', lease.keep))
  redis.call('PEXPIRE', held_key, string.format('%d', lease.keep))
end
return out
