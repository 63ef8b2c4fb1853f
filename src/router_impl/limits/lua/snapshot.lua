-- The current state, changing nothing (store.LimitStore.snapshot). KEYS: the lockout, each bucket, each
-- counter: one {org} slot. ARGV[1], JSON: {now (absent: Redis's clock), buckets: [{cap, per}]}.
-- Returns the lockout's until_ms (0: none), its period, each bucket's level, each counter's usage.
local p = cjson.decode(ARGV[1])
local now = clock(p.now)
local lock_until, period = lockout_at(KEYS[1], now)
local out = {lock_until or 0, period or ''}
for i, b in ipairs(p.buckets) do
  out[#out + 1] = string.format('%.17g', (bucket_at(KEYS[1 + i], b.cap, b.per, now)))
end
for j = 2 + #p.buckets, #KEYS do
  out[#out + 1] = used_at(KEYS[j], now)
end
return out
