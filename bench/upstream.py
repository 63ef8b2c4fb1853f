"""Zero-latency OpenAI-compatible fake upstream for the benchmark (uvloop + httptools raw protocol).

Same behaviour as ../shared/bench/fake_upstream.py, plus streaming:
  POST .../chat/completions            -> fixed chat.completion JSON (with a usage block)
  POST .../chat/completions, "stream": true -> chunked text/event-stream, `data: [DONE]` last
  GET  .../models                      -> one model
  anything else                        -> 404
Usage: upstream.py --port 18000 [--host 127.0.0.1] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import cast

import httptools
import uvloop

_CREATED = int(time.time())
BODY = json.dumps(
    {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion",
        "created": _CREATED,
        "model": "fake",
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    },
    separators=(",", ":"),
).encode()
MODELS = json.dumps(
    {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "bench"}]}
).encode()
NOT_FOUND = b'{"error":"not found"}'


def _chunk(delta: dict[str, str], finish: str | None, usage: dict[str, int] | None = None) -> bytes:
    event: dict[str, object] = {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": "fake",
        "system_fingerprint": "fp_fake",
        "choices": [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        event["usage"] = usage
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _stream_events(include_usage: bool) -> list[bytes]:
    words = ["Hello", " from", " the", " fake", " upstream", "."]
    events = [_chunk({"role": "assistant", "content": ""}, None)]
    events += [_chunk({"content": word}, None) for word in words]
    events.append(_chunk({}, "stop"))
    if include_usage:
        events.append(_chunk({}, None, {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}))
    events.append(b"data: [DONE]\n\n")
    return events


def _chunked(events: list[bytes]) -> bytes:
    # One HTTP chunk per SSE event, as a real streaming backend sends them.
    return b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events) + b"0\r\n\r\n"


STREAM = _chunked(_stream_events(include_usage=False))
STREAM_USAGE = _chunked(_stream_events(include_usage=True))


def response(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + (b"" if keep_alive else b"Connection: close\r\n")
        + b"\r\n"
        + body
    )


def stream_response(body: bytes, keep_alive: bool) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n" + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n" + body
    )


def _wants_stream(body: bytes) -> bool:
    compact = body.replace(b" ", b"")
    return b'"stream":true' in compact


class FakeUpstream(asyncio.Protocol):
    delay_s = 0.0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(response(b"400 Bad Request", b'{"error":"bad request"}', False), False)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, keep_alive = self.parser.get_method(), self.parser.should_keep_alive()
        path = self.url.split(b"?", 1)[0]
        body = b"".join(self.body)
        self.url, self.body = b"", []
        if method == b"POST" and path.endswith(b"/chat/completions"):
            if _wants_stream(body):
                usage = b'"include_usage":true' in body.replace(b" ", b"")
                out = stream_response(STREAM_USAGE if usage else STREAM, keep_alive)
            else:
                out = response(b"200 OK", BODY, keep_alive)
        elif method == b"GET" and path.endswith(b"/models"):
            out = response(b"200 OK", MODELS, keep_alive)
        elif method == b"POST" and path == b"/v1/traces":
            # An OTLP/HTTP trace sink for routers benchmarked with tracing on: accepted, dropped.
            out = response(b"200 OK", b"{}", keep_alive)
        else:
            out = response(b"404 Not Found", NOT_FOUND, keep_alive)
        if self.delay_s > 0:
            asyncio.get_running_loop().call_later(self.delay_s, self._send, out, keep_alive)
        else:
            self._send(out, keep_alive)

    def _send(self, out: bytes, keep_alive: bool) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(out)
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeUpstream, host, port, backlog=4096, reuse_address=True)
    print(f"fake upstream on http://{host}:{port} delay={FakeUpstream.delay_s * 1000:.0f}ms", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    FakeUpstream.delay_s = args.delay_ms / 1000.0
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
