"""How a failed backend call becomes a catalog error, and whether it is safe to try another backend.

Pure code. Messages never carry the backend's URL, host or port: a backend's own error text is
passed on only when it is short, one line and free of anything that looks like an address.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from router_impl.errors import ApiError

FailureReason = Literal[
    "connect",  # refused, unreachable, DNS, TLS: nothing was sent
    "connect_timeout",  # no connection (or no free pool slot) in time: nothing was sent
    "reset",  # the connection broke after the request went out, before any response byte
    "disconnect",  # the connection broke while the answer was being read
    "timeout",  # no (complete) answer in time after the request went out
    "deadline",  # the caller's deadline had passed before anything was sent
    "status",  # the backend answered with an error status
    "bad_response",  # the backend answered 2xx with something unusable
    "closed",  # the client was closed
    "config",  # the backend's configuration is unusable (its bearer token is not set)
]

_INVALID_STATUSES = frozenset({400, 404, 413, 422})
_MAX_BACKEND_MESSAGE = 300
_MAX_RETRY_AFTER = 3600
_ADDRESS_LIKE = re.compile(
    r"""
      [a-z][a-z0-9+.-]*://                 # a URL scheme
    | \b\d{1,3}(?:\.\d{1,3}){3}\b          # an IPv4 address
    | \[?[0-9a-f]{0,4}:[0-9a-f]{0,4}:      # an IPv6 address
    | [a-z0-9.-]+:\d{1,5}\b                # host:port
    | \b(?:[a-z0-9-]+\.)+[a-z]{2,}\b       # a dotted host name
    | (?:^|[\s"'(=])[/\\~]\S               # a path
    | [a-z]:\\                             # a Windows path
    | \S+@\S+                              # user@host
    | traceback | \bfile\s+" | \bline\s+\d+ | exception | \berrno\b
    """,
    re.IGNORECASE | re.VERBOSE,
)


class BackendCallError(ApiError):
    """A backend call that failed, with what the failover logic needs to decide on a retry.

    ``maybe_processed`` is True when the backend may have received (and billed) the request, so
    sending it elsewhere could run it twice; ``retry_safe`` is its negation.
    """

    def __init__(
        self,
        code: str,
        *,
        reason: FailureReason,
        maybe_processed: bool,
        backend_id: str,
        upstream_status: int | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, message, headers=headers)
        self.reason: FailureReason = reason
        self.maybe_processed = maybe_processed
        self.backend_id = backend_id
        self.upstream_status = upstream_status

    @property
    def retry_safe(self) -> bool:
        return not self.maybe_processed


class StreamBroken(Exception):
    """A streamed answer broke after events were relayed; the handler ends its stream, never retries."""

    def __init__(self, backend_id: str, events_relayed: int, reason: str) -> None:
        super().__init__(f"backend stream broke after {events_relayed} events ({reason})")
        self.backend_id = backend_id
        self.events_relayed = events_relayed
        self.reason = reason


def error_for_status(
    backend_id: str, status: int, body: bytes, headers: Mapping[str, str]
) -> BackendCallError:
    """The error for a backend answer with a non-2xx ``status``."""
    if status >= 500:
        return BackendCallError(
            "BACKEND_ERROR",
            reason="status",
            maybe_processed=True,
            backend_id=backend_id,
            upstream_status=status,
        )
    if status == 429:
        retry_after = _retry_after(headers.get("Retry-After"))
        return BackendCallError(
            "BACKEND_UNAVAILABLE",
            reason="status",
            maybe_processed=False,
            backend_id=backend_id,
            upstream_status=status,
            message="The backend is overloaded; try again later.",
            headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
        )
    if status in (401, 403):
        return BackendCallError(
            "BACKEND_ERROR",
            reason="status",
            maybe_processed=False,
            backend_id=backend_id,
            upstream_status=status,
            message=f"The backend refused the router's credentials (HTTP {status}); an operator must "
            "check the backend's api_key_env or api_key_file.",
        )
    if status in _INVALID_STATUSES:
        detail = backend_message(body)
        message = "The backend rejected the request" + (f": {detail}" if detail else ".")
        return BackendCallError(
            "INVALID_REQUEST",
            reason="status",
            maybe_processed=False,
            backend_id=backend_id,
            upstream_status=status,
            message=message,
        )
    return BackendCallError(
        "BACKEND_ERROR",
        reason="status",
        maybe_processed=status < 400,  # 1xx/3xx: the backend did something unexpected with it
        backend_id=backend_id,
        upstream_status=status,
    )


def backend_message(body: bytes) -> str | None:
    """The backend's own error message, when it is safe to show: short, one line, no addresses."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return safe_message(_message_of(document))


def _message_of(document: Any) -> object:
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if isinstance(error, dict):
        return error.get("message")
    if isinstance(error, str):  # TGI
        return error
    return document.get("message")  # vLLM: {"object": "error", "message": ...}


def safe_message(message: object) -> str | None:
    if not isinstance(message, str):
        return None
    text = message.strip()
    if not text or len(text) > _MAX_BACKEND_MESSAGE or not text.isprintable():
        return None
    if _ADDRESS_LIKE.search(text):
        return None
    return text


def _retry_after(value: str | None) -> int | None:
    """A numeric Retry-After, clamped; an HTTP date or anything else is dropped."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    return min(int(value), _MAX_RETRY_AFTER)
