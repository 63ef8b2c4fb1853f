-- Gives back what the leases due by now hold (at most `batch`, oldest first), then drops them. Reads
-- everything before it writes, so a key of the wrong type fails it with nothing changed. A counter past
-- its period is left alone (its exact key was leased, so yesterday's reservation never lands in today).
-- A lease's record (store_redis._held): [[[bucket key, capacity, per_ms, cost]...], [[counter key, amount]...]].
local function reap(lease_key, held_key, now, margin, batch)
  local due = redis.call('ZRANGEBYSCORE', lease_key, '-inf', now, 'LIMIT', 0, batch)
  if #due == 0 then return end
  local records = redis.call('HMGET', held_key, unpack(due))
  local buckets, bucket_order, counters, counter_order = {}, {}, {}, {}
  for n = 1, #due do
    if records[n] then
      local held = cjson.decode(records[n])
      for _, b in ipairs(held[1]) do
        local key, cap, per = b[1], tonumber(b[2]), tonumber(b[3])
        local s = buckets[key]
        if not s then
          local level, ts = bucket_at(key, cap, per, now)
          s = {level = level, ts = ts}
          buckets[key] = s
          bucket_order[#bucket_order + 1] = key
        end
        s.level = s.level + tonumber(b[4])
        if s.level > cap then s.level = cap end
        s.cap, s.per = cap, per
      end
      for _, c in ipairs(held[2]) do
        local key = c[1]
        if counters[key] == nil then
          local expires = redis.call('PEXPIRETIME', key)
          if expires == -2 or (expires >= 0 and expires <= now) then
            counters[key] = false
          else
            counters[key] = used_at(key, now)
          end
          counter_order[#counter_order + 1] = key
        end
        if counters[key] then
          local used = counters[key] - tonumber(c[2])
          if used < 0 then used = 0 end
          counters[key] = used
        end
      end
    end
  end
  for _, key in ipairs(bucket_order) do
    local s = buckets[key]
    put_bucket(key, s.level, s.ts, s.cap, s.per, margin)
  end
  for _, key in ipairs(counter_order) do
    if counters[key] then redis.call('SET', key, string.format('%d', counters[key]), 'KEEPTTL') end
  end
  redis.call('ZREM', lease_key, unpack(due))
  redis.call('HDEL', held_key, unpack(due))
end
