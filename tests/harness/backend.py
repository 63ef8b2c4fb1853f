"""A controllable OpenAI-compatible model backend (aiohttp) running in a background thread.

Standalone: `python -m tests.harness.backend --port 8001 [--latency-ms 20] [--stream-chunks 8]`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from tests.harness import backend_responses as responses
from tests.harness.threaded_server import AppServer, serve_until_signalled

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
INFERENCE_PATHS = (CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH)
GARBAGE_BODY = b'{"id": "chatcmpl-garbage", "choices": [ <<not json'


@dataclass(frozen=True)
class BackendControls:
    """Faults and shapes applied to inference requests (/v1/chat/completions, /v1/completions).

    Checked in this order: latency, hang, reset, fixed_status, error_rate, garbage.
    `fixed_status` answers that status with an OpenAI error body. `stream_then_die`
    is the number of chunks a streamed answer sends before the connection is cut.
    """

    latency_ms: int = 0
    error_rate: float = 0.0
    fixed_status: int | None = None
    hang: bool = False
    reset: bool = False
    garbage: bool = False
    stream_then_die: int | None = None
    omit_usage: bool = False
    stream_chunks: int = 4
    chunk_interval_ms: int = 0
    healthy: bool = True  # GET /health answers 503 when False
    # Prompt counting of a real model's tokenizer, worse than the router estimates: every UTF-8 byte a
    # token (the byte-level BPE worst case), plus chat-template tokens per message.
    prompt_tokens_per_byte: bool = False
    template_tokens_per_message: int = 0


class _WholeBody(Protocol):
    def __call__(
        self, meta: responses.ResponseMeta, completion: responses.Completion, *, with_usage: bool
    ) -> responses.JsonObject: ...


class _StreamChunks(Protocol):
    def __call__(
        self,
        meta: responses.ResponseMeta,
        completion: responses.Completion,
        chunk_count: int,
        *,
        with_usage: bool,
    ) -> list[responses.JsonObject]: ...


@dataclass(frozen=True)
class InferenceEndpoint:
    """How one OpenAI inference path turns a request into a completion and its bodies."""

    id_prefix: str
    completion_of: Callable[[responses.JsonObject], responses.Completion]
    whole_body: _WholeBody
    stream_chunks: _StreamChunks


CHAT_ENDPOINT = InferenceEndpoint(
    "chatcmpl-mock",
    responses.chat_completion_of,
    responses.chat_completion_body,
    responses.chat_stream_chunks,
)
COMPLETIONS_ENDPOINT = InferenceEndpoint(
    "cmpl-mock", responses.text_completion_of, responses.text_completion_body, responses.text_stream_chunks
)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # decoded JSON, or None when the body was empty or not JSON
    raw_body: bytes


class RequestLog:
    """Thread-safe request counters plus the last `history` requests."""

    def __init__(self, history: int) -> None:
        self._lock = threading.Lock()
        self._per_path: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[RecordedRequest] = collections.deque(maxlen=history)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._per_path[request.path] += 1
            self._recent.append(request)

    def reset(self) -> None:
        with self._lock:
            self._per_path.clear()
            self._recent.clear()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._per_path.values())

    def count(self, *paths: str) -> int:
        with self._lock:
            return sum(self._per_path[path] for path in paths)

    @property
    def recent(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._recent)


def _drop_connection(request: web.Request) -> None:
    """Close the client connection with a TCP RST (SO_LINGER 0), as a crashed server would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _cut_connection(request: web.Request) -> None:
    """Close the connection mid-answer with a FIN after what was written, as the kernel does for a
    crashed server: what it sent arrives, then the stream ends without its last chunk. (A RST would
    make the receiving kernel drop what its reader had not yet taken, RFC 9293 §3.10.7.4, so a
    client might see a reset before the first byte instead of a stream that died midway.)"""
    if request.transport is not None:
        request.transport.close()


def _sse(payload: object) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class MockBackend(AppServer):
    """An OpenAI-compatible server on a loopback port, controllable from sync and async tests."""

    thread_name = "mock-backend"
    shutdown_timeout_s = 1.0

    def __init__(
        self, port: int = 0, models: tuple[str, ...] = ("mock-model",), history: int = 200, seed: int = 0
    ) -> None:
        super().__init__(port)
        self.models = models
        self.controls = BackendControls()
        self.requests = RequestLog(history)
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def configure(self, **changes: Any) -> None:
        """Replace some controls, e.g. `configure(latency_ms=50, error_rate=0.1)`."""
        self.controls = dataclasses.replace(self.controls, **changes)

    def reset_controls(self) -> None:
        self.controls = BackendControls()

    def reset_counters(self) -> None:
        self.requests.reset()

    @property
    def total_requests(self) -> int:
        return self.requests.total

    @property
    def inference_requests(self) -> int:
        """Requests that would have cost tokens (excludes /health and /v1/models probes)."""
        return self.requests.count(*INFERENCE_PATHS)

    @property
    def last_request(self) -> RecordedRequest | None:
        recent = self.requests.recent
        return recent[-1] if recent else None

    @property
    def last_inference_request(self) -> RecordedRequest | None:
        """The last chat or completions call (health probes may arrive after it)."""
        found = [r for r in self.requests.recent if r.path in INFERENCE_PATHS]
        return found[-1] if found else None

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(CHAT_PATH, self._inference(CHAT_ENDPOINT))
        app.router.add_post(COMPLETIONS_PATH, self._inference(COMPLETIONS_ENDPOINT))
        app.router.add_post(EMBEDDINGS_PATH, self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        return app

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = dict(request.headers)
        self.requests.record(RecordedRequest(request.method, request.path, headers, body, raw))
        return body

    async def _admit(
        self, request: web.Request
    ) -> tuple[dict[str, Any], BackendControls, web.StreamResponse | None]:
        """A model call recorded, with the controls it is answered under; the injected fault or a 400
        when it is not to be answered normally."""
        body = await self._record(request)
        controls = self.controls
        fault = await self._fault(request, controls)
        if fault is not None:
            return {}, controls, fault
        if not isinstance(body, dict):
            return {}, controls, self._error(400, "request body must be a JSON object")
        return body, controls, None

    def _inference(
        self, endpoint: InferenceEndpoint
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body, controls, refusal = await self._admit(request)
            if refusal is not None:
                return refusal
            meta = responses.ResponseMeta(
                response_id=f"{endpoint.id_prefix}-{next(self._ids)}",
                model=str(body.get("model") or self.models[0]),
                created=int(time.time()),
            )
            completion = responses.recount_prompt(
                endpoint.completion_of(body),
                body,
                per_byte=controls.prompt_tokens_per_byte,
                template_per_message=controls.template_tokens_per_message,
            )
            if responses.wants_stream(body):
                with_usage = responses.wants_stream_usage(body) and not controls.omit_usage
                chunks = endpoint.stream_chunks(
                    meta, completion, controls.stream_chunks, with_usage=with_usage
                )
                return await self._stream(request, chunks, controls)
            return web.json_response(
                endpoint.whole_body(meta, completion, with_usage=not controls.omit_usage)
            )

        return handle

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """Deterministic vectors (``dimensions``, default 8) and usage; the faults apply as to inference."""
        body, controls, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        given = body.get("input")
        inputs = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else given
        if not isinstance(inputs, list) or not inputs:
            return self._error(400, "input must be a string, strings or token ids")
        dimensions = int(body.get("dimensions") or 8)
        data, tokens = [], 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += responses.count_tokens(text) if isinstance(item, str) else len(item)
            data.append(
                {"object": "embedding", "index": index, "embedding": responses.vector_of(text, dimensions)}
            )
        answer: dict[str, Any] = {"object": "list", "data": data, "model": str(body.get("model"))}
        if not controls.omit_usage:
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(answer)

    async def _fault(self, request: web.Request, controls: BackendControls) -> web.StreamResponse | None:
        """The injected failure for this request, if any; None means answer normally."""
        if controls.latency_ms > 0:
            await asyncio.sleep(controls.latency_ms / 1000)
        if controls.hang and self._stopping is not None:
            await self._stopping.wait()
            controls = dataclasses.replace(controls, reset=True)
        if controls.reset:
            _drop_connection(request)
            return web.Response(status=500)  # never reaches the client: the socket is gone
        if controls.fixed_status is not None:
            return self._error(
                controls.fixed_status, f"mock backend configured to answer {controls.fixed_status}"
            )
        if controls.error_rate > 0 and self._rng.random() < controls.error_rate:
            return self._error(500, "mock backend injected error")
        if controls.garbage:
            return web.Response(status=200, body=GARBAGE_BODY, content_type="application/json")
        return None

    async def _stream(
        self, request: web.Request, chunks: list[responses.JsonObject], controls: BackendControls
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for sent, chunk in enumerate(chunks):
            if controls.stream_then_die is not None and sent >= controls.stream_then_die:
                _cut_connection(request)
                return response
            if controls.chunk_interval_ms > 0 and sent > 0:
                await asyncio.sleep(controls.chunk_interval_ms / 1000)
            await response.write(_sse(chunk))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response(responses.error_body(status, message), status=status)

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response(responses.models_body(self.models, created=0))

    async def _health(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self.controls.healthy:
            return web.json_response({"status": "unhealthy"}, status=503)
        return web.json_response({"status": "ok"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the mock OpenAI-compatible backend until interrupted.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--stream-chunks", type=int, default=4)
    parser.add_argument("--model", action="append", dest="models", help="repeatable; default mock-model")
    args = parser.parse_args(argv)
    backend = MockBackend(port=args.port, models=tuple(args.models or ["mock-model"]))
    backend.configure(
        latency_ms=args.latency_ms, error_rate=args.error_rate, stream_chunks=args.stream_chunks
    )
    serve_until_signalled(backend, "mock backend")


if __name__ == "__main__":
    main()
