"""Zero-latency OpenAI-compatible fake upstream for the benchmark (uvloop + httptools raw protocol).

Same behaviour as ../shared/bench/fake_upstream.py, plus streaming:
  POST .../chat/completions            -> fixed chat.completion JSON (with a usage block)
  POST .../chat/completions, "stream": true -> chunked text/event-stream, `data: [DONE]` last
  GET  .../models                      -> one model
  anything else                        -> 404
Usage: upstream.py --port 18000 [--host 127.0.0.1] [--delay-ms 0] [--stream-chunks 8] [--stream-gap-ms 0]

A stream is `--stream-chunks` chat.completion.chunk events (the role, N - 2 words, the finish reason),
then the usage event when the request asked for it, then `data: [DONE]`. With `--stream-gap-ms 0` the
whole stream is written at once (one segment, as a fast backend's burst); above 0 each event is written
that many milliseconds after the one before, as a model emitting tokens does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
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


DEFAULT_STREAM_CHUNKS = 8  # the role, six words, the finish reason
WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


def _stream_events(include_usage: bool, chunks: int = DEFAULT_STREAM_CHUNKS) -> list[bytes]:
    words = [WORDS[n % len(WORDS)] for n in range(max(0, chunks - 2))]
    events = [_chunk({"role": "assistant", "content": ""}, None)]
    events += [_chunk({"content": word}, None) for word in words]
    events.append(_chunk({}, "stop"))
    if include_usage:
        completion = len(words) + 1
        events.append(
            _chunk(
                {},
                None,
                {"prompt_tokens": 9, "completion_tokens": completion, "total_tokens": 9 + completion},
            )
        )
    events.append(b"data: [DONE]\n\n")
    return events


def _chunked(events: list[bytes]) -> list[bytes]:
    # One HTTP chunk per SSE event, as a real streaming backend sends them; the terminating chunk last.
    return [b"%x\r\n%s\r\n" % (len(event), event) for event in events] + [b"0\r\n\r\n"]


def build_streams(chunks: int) -> tuple[list[bytes], list[bytes]]:
    """(without usage, with usage): the HTTP chunks of one streamed answer."""
    return _chunked(_stream_events(False, chunks)), _chunked(_stream_events(True, chunks))


STREAM, STREAM_USAGE = build_streams(DEFAULT_STREAM_CHUNKS)


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


def stream_head(keep_alive: bool) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n" + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n"
    )


def _wants_stream(body: bytes) -> bool:
    compact = body.replace(b" ", b"")
    return b'"stream":true' in compact


class FakeUpstream(asyncio.Protocol):
    delay_s = 0.0
    stream_gap_s = 0.0
    streams = (STREAM, STREAM_USAGE)

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
                parts = self.streams[1] if usage else self.streams[0]
                if self.stream_gap_s > 0:
                    spaced = [stream_head(keep_alive) + parts[0], *parts[1:]]
                    self._after_delay(lambda: self._send_spaced(spaced, keep_alive))
                    return
                out = stream_head(keep_alive) + b"".join(parts)
            else:
                out = response(b"200 OK", BODY, keep_alive)
        elif method == b"GET" and path.endswith(b"/models"):
            out = response(b"200 OK", MODELS, keep_alive)
        elif method == b"POST" and path == b"/v1/traces":
            # An OTLP/HTTP trace sink for routers benchmarked with tracing on: accepted, dropped.
            out = response(b"200 OK", b"{}", keep_alive)
        else:
            out = response(b"404 Not Found", NOT_FOUND, keep_alive)
        self._after_delay(lambda: self._send(out, keep_alive))

    def _after_delay(self, send: Callable[[], None]) -> None:
        if self.delay_s > 0:
            asyncio.get_running_loop().call_later(self.delay_s, send)
        else:
            send()

    def _send_spaced(self, parts: list[bytes], keep_alive: bool) -> None:
        """The first part now, each further one `stream_gap_s` later; closed after the last if asked."""
        if self.closed or self.transport is None:
            return
        self.transport.write(parts[0])
        if len(parts) > 1:
            asyncio.get_running_loop().call_later(self.stream_gap_s, self._send_spaced, parts[1:], keep_alive)
        elif not keep_alive:
            self.transport.close()

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
    parser.add_argument("--stream-chunks", type=int, default=DEFAULT_STREAM_CHUNKS)
    parser.add_argument("--stream-gap-ms", type=float, default=0.0)
    args = parser.parse_args()
    if args.stream_chunks < 2:
        parser.error("--stream-chunks must be at least 2 (the role and the finish reason)")
    FakeUpstream.delay_s = args.delay_ms / 1000.0
    FakeUpstream.stream_gap_s = args.stream_gap_ms / 1000.0
    FakeUpstream.streams = build_streams(args.stream_chunks)
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
