"""The error catalog: every machine-readable code, its HTTP status and message, and how it renders.

Domain code raises ``ApiError(code)``; the web layer renders it as the contract's
``ErrorResponse`` (or ``LimitErrorResponse``) or, on OpenAI-compatible routes, as
OpenAI's ``{"error": {...}}`` shape. No framework is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class ErrorKind:
    status: int
    message: str
    openai_type: str
    retry_after_seconds: int | None = None  # a Retry-After header unless the raiser gives its own


CATALOG: dict[str, ErrorKind] = {
    "AUTH_INVALID": ErrorKind(401, "Missing or malformed credentials.", "authentication_error"),
    "INVALID_API_KEY": ErrorKind(401, "The API key is unknown, expired or revoked.", "authentication_error"),
    "SIGNATURE_MISSING": ErrorKind(401, "This key requires a request signature.", "authentication_error"),
    "SIGNATURE_INVALID": ErrorKind(401, "The request signature does not match.", "authentication_error"),
    "SIGNATURE_EXPIRED": ErrorKind(
        401, "The signature timestamp is outside the allowed window.", "authentication_error"
    ),
    "SIGNATURE_REPLAYED": ErrorKind(401, "This signature was already used.", "authentication_error"),
    "FORBIDDEN": ErrorKind(403, "The API key lacks the scope this operation needs.", "permission_error"),
    "MODEL_NOT_ALLOWED": ErrorKind(403, "The API key may not use this model.", "permission_error"),
    "INVALID_REQUEST": ErrorKind(400, "The request is malformed.", "invalid_request_error"),
    "VALIDATION_ERROR": ErrorKind(400, "The request does not match the contract.", "invalid_request_error"),
    "PAYLOAD_TOO_LARGE": ErrorKind(413, "The request body is too large.", "invalid_request_error"),
    "HEADERS_TOO_LARGE": ErrorKind(431, "The request head is too large.", "invalid_request_error"),
    "UNSUPPORTED_MEDIA_TYPE": ErrorKind(
        415, "The request content type is not supported.", "invalid_request_error"
    ),
    "NOT_FOUND": ErrorKind(404, "No such resource.", "invalid_request_error"),
    "METHOD_NOT_ALLOWED": ErrorKind(405, "Method not allowed on this resource.", "invalid_request_error"),
    "MODEL_NOT_FOUND": ErrorKind(404, "The model does not exist.", "invalid_request_error"),
    "REQUEST_NOT_FOUND": ErrorKind(404, "No record of this request.", "invalid_request_error"),
    "CONFLICT": ErrorKind(409, "The resource is in a conflicting state.", "invalid_request_error"),
    "IDEMPOTENCY_CONFLICT": ErrorKind(
        409, "This idempotency key was used with a different request.", "invalid_request_error"
    ),
    "REQUEST_IN_PROGRESS": ErrorKind(
        409, "A request with this idempotency key is still in flight.", "invalid_request_error"
    ),
    "RATE_LIMIT_EXCEEDED": ErrorKind(429, "Rate limit exceeded.", "rate_limit_error"),
    "BUDGET_EXCEEDED": ErrorKind(402, "The organisation's budget is exhausted.", "insufficient_quota"),
    "QUOTA_EXCEEDED": ErrorKind(402, "The organisation's quota is exhausted.", "insufficient_quota"),
    # Retry-After: about one breaker cool-down (ROUTER_BREAKER_COOL_DOWN_SECONDS), then backends are retried.
    "BACKEND_UNAVAILABLE": ErrorKind(503, "No backend could be reached.", "api_error", 10),
    "BACKEND_TIMEOUT": ErrorKind(504, "The backend did not answer in time.", "api_error"),
    "BACKEND_ERROR": ErrorKind(502, "The backend failed to answer.", "api_error"),
    "NO_BACKEND_AVAILABLE": ErrorKind(503, "No backend is available for this model.", "api_error", 10),
    "ROUTING_ERROR": ErrorKind(500, "The request could not be routed.", "api_error"),
    "INTERNAL_ERROR": ErrorKind(500, "Internal error.", "api_error"),
    "NOT_IMPLEMENTED": ErrorKind(501, "This operation is not implemented yet.", "api_error"),
    "SERVICE_UNAVAILABLE": ErrorKind(503, "The service is temporarily unavailable.", "api_error"),
    "IDENTITY_UNAVAILABLE": ErrorKind(
        503, "The identity service cannot check this API key now; retry later.", "api_error"
    ),
}

STATUS_FALLBACK: dict[int, str] = {
    400: "INVALID_REQUEST",
    401: "AUTH_INVALID",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    501: "NOT_IMPLEMENTED",
    502: "BACKEND_ERROR",
    503: "SERVICE_UNAVAILABLE",
    504: "BACKEND_TIMEOUT",
}


class ApiError(Exception):
    """An error with a catalog code. ``status_code`` lets Connexion's security layer rank it."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        details: list[dict[str, str]] | None = None,
        retry_after_seconds: int | None = None,
        limit_context: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        kind = CATALOG[code]
        super().__init__(message or kind.message)
        self.code = code
        self.status_code = kind.status
        self.message = message or kind.message
        self.details = details
        self.retry_after_seconds = retry_after_seconds
        self.limit_context = limit_context
        self.headers = dict(headers or {})
        if retry_after_seconds is not None:
            self.headers.setdefault("Retry-After", str(retry_after_seconds))
        elif kind.retry_after_seconds is not None:
            self.headers.setdefault("Retry-After", str(kind.retry_after_seconds))

    @classmethod
    def for_status(cls, status: int, message: str | None = None) -> ApiError:
        return cls(
            STATUS_FALLBACK.get(status, "INTERNAL_ERROR" if status >= 500 else "INVALID_REQUEST"), message
        )


_OPENAI_LIMIT_FIELDS = ("tokens_remaining", "currency_remaining")


def render(error: ApiError, *, trace_id: str, request_id: str | None, openai: bool) -> bytes:
    """The JSON body for ``error``: OpenAI's shape on OpenAI routes, the contract's elsewhere."""
    if openai:
        fields: dict[str, Any] = {
            "message": error.message,
            "type": CATALOG[error.code].openai_type,
            "param": None,
            "code": error.code,
            "trace_id": trace_id,
        }
        for name in _OPENAI_LIMIT_FIELDS:  # a budget refusal says what is left, as limit_context does
            if error.limit_context and name in error.limit_context:
                fields[name] = error.limit_context[name]
        return orjson.dumps({"error": fields})
    body: dict[str, Any] = {"error": error.message, "code": error.code, "trace_id": trace_id}
    if request_id:
        body["request_id"] = request_id
    if error.details:
        body["details"] = error.details
    if error.retry_after_seconds is not None:
        body["retry_after_seconds"] = error.retry_after_seconds
        body["limit_context"] = error.limit_context or {}
    return orjson.dumps(body)
