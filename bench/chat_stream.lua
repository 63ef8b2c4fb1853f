-- wrk script: chat.lua with "stream": true (the upstream answers a chunked text/event-stream).
BENCH_STREAM = true
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "chat.lua")
