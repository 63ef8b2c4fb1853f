"""Reads request bodies once, before any validation: size cap (413), UTF-8 and JSON syntax (400).
Also refuses oversized headers (400): uvicorn's httptools parser sets no limit of its own, and a
body that does not arrive within ``body_timeout_seconds`` (400): uvicorn has no read timeout, so a
slow upload would hold its connection and task for ever.

The body is replayed downstream as a single message with an exact Content-Length, so
chunked uploads work and nothing after this layer sees an oversized or malformed body. The cap is
per route (``route_caps`` by exact path: the OpenAI-compatible routes carry long prompts), and
the JSON document parsed here is kept in the request state, so the body is parsed only once. Its
Content-Type reaches downstream with the media type in lower case; on methods without a body
(GET, HEAD, DELETE) a Content-Type is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router_impl.errors import ApiError
from router_impl.web.json_body import exact_integers
from router_impl.web.request_state import state_of
from router_impl.web.responses import send_error

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# nginx's default large_client_header_buffers: one header line up to 8 KiB; 32 KiB in all.
MAX_HEADER_BYTES = 8 * 1024
MAX_HEADERS_TOTAL_BYTES = 32 * 1024


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _normal_media_type(content_type: bytes) -> bytes:
    """Media types are case-insensitive (RFC 9110 8.3.1): downstream sees ``type/subtype`` in lower
    case, so Connexion finds the body validator for ``APPLICATION/JSON`` as for ``application/json``
    and the fast lane takes both; parameters are kept as sent."""
    media, semicolon, parameters = content_type.partition(b";")
    normal = media.strip().lower()
    return normal + b"; " + parameters.strip() if semicolon else normal


def _headers_too_large(headers: list[tuple[bytes, bytes]]) -> bool:
    total = 0
    for name, value in headers:
        size = len(name) + len(value)
        if size > MAX_HEADER_BYTES:
            return True
        total += size
    return total > MAX_HEADERS_TOTAL_BYTES


class BodyGuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_seconds: float = 30.0,
        route_caps: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds
        self.route_caps = dict(route_caps or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _headers_too_large(scope["headers"]):
            refusal = "Request headers are too large (at most 8 KiB per header and 32 KiB in all)."
            await send_error(scope, send, ApiError("INVALID_REQUEST", refusal))
            return
        if scope["method"] not in _BODY_METHODS:
            # No operation reads a body here: a stray Content-Type is ignored, never parsed.
            if any(name == b"content-type" for name, _ in scope["headers"]):
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            await self.app(scope, receive, send)
            return
        content_type = b""
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else -1
        if declared == -1:
            await send_error(scope, send, ApiError("INVALID_REQUEST", "Invalid Content-Length header."))
            return
        cap = self.route_caps.get(scope["path"], self.max_body_bytes)
        if declared is not None and declared > cap:
            await send_error(scope, send, _too_large(cap), close=True)
            return

        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            async with asyncio.timeout(self.body_timeout_seconds):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > cap:
                        unread = bool(message.get("more_body", False))
                        await send_error(scope, send, _too_large(cap), close=unread)
                        return
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            seconds = f"{self.body_timeout_seconds:g}"
            late = ApiError("INVALID_REQUEST", f"The request body did not arrive within {seconds} s.")
            await send_error(scope, send, late, close=True)
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks

        document: Any = None
        if body and _is_json(content_type):
            error, document = self._parse(body)
            if error is not None:
                await send_error(scope, send, error)
                return

        state = state_of(scope)
        if state is not None:
            state.body = body
            state.document = document
        scope["headers"] = [
            *(
                (k, _normal_media_type(v) if k == b"content-type" else v)
                for k, v in scope["headers"]
                if k not in (b"content-length", b"transfer-encoding")
            ),
            (b"content-length", str(len(body)).encode()),
        ]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _parse(body: bytes) -> tuple[ApiError | None, Any]:
        """orjson checks syntax and UTF-8 (without decoding the body to a str first)."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if _invalid_utf8(body):
                return ApiError("INVALID_REQUEST", "The request body is not valid UTF-8."), None
            return ApiError("INVALID_REQUEST", f"The request body is not valid JSON: {exc.msg}."), None
        return None, exact_integers(body, document)


def _too_large(cap: int) -> ApiError:
    return ApiError("PAYLOAD_TOO_LARGE", f"The request body exceeds {cap} bytes.")


def _invalid_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
