"""Connexion error handlers: every error leaves as the contract's ErrorResponse (or OpenAI's shape).

Validation problems, unknown routes, wrong methods and media types, stubs and crashes all
pass through here, so a client never sees problem+json or a bare 500 for bad input.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from router_contract.operations import Operation
from router_contract.stubs import OperationNotImplemented
from starlette.exceptions import HTTPException

from router_impl.errors import ApiError
from router_impl.web.responses import JSON, error_parts

_log = structlog.get_logger("router.errors")
_MAX_MESSAGE = 2000

# Connexion reports these 400s for parameters and bodies that break the contract.
_PROBLEM_CODES = {400: "VALIDATION_ERROR", 401: "AUTH_INVALID"}


def _respond(request: ConnexionRequest, error: ApiError) -> ConnexionResponse:
    body, headers = error_parts(request.scope, error)
    return ConnexionResponse(status_code=error.status_code, mimetype=JSON, body=body, headers=headers)


def on_api_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ApiError)
    return _respond(request, exc)


def on_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    status = exc.status
    if status >= 500:
        _log.error("connexion_problem", status=status, detail=str(exc.detail)[:200])
        return _respond(request, ApiError("INTERNAL_ERROR"))
    code = _PROBLEM_CODES.get(status)
    detail = str(exc.detail or exc.title or "")[:_MAX_MESSAGE] or None
    error = ApiError(code, detail) if code else ApiError.for_status(status, detail)
    return _respond(request, error)


class AllowedMethods:
    """Every documented method of a path. Connexion registers one route per operation, so the
    router alone would only name the first route's methods in a 405's Allow header."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        by_template: dict[str, set[str]] = {}
        for op in operations:
            by_template.setdefault(op.path, set()).add(op.method)
        self._paths = [
            (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"), methods)
            for template, methods in by_template.items()
        ]

    def header(self, path: str) -> str:
        methods: set[str] = set()
        for pattern, documented in self._paths:
            if pattern.match(path):
                methods |= documented
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(sorted(methods))


def _http_exception_handler(
    allowed: AllowedMethods,
) -> Callable[[ConnexionRequest, Exception], ConnexionResponse]:
    def on_http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _respond(request, ApiError("NOT_FOUND", "No operation matches this path."))
        error = ApiError.for_status(exc.status_code)
        if exc.status_code == 405:
            error.headers["Allow"] = allowed.header(request.scope["path"])
        return _respond(request, error)

    return on_http_exception


def on_not_implemented(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, OperationNotImplemented)
    return _respond(request, ApiError("NOT_IMPLEMENTED", f"{exc.operation_id} is not implemented yet."))


def on_unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    _log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
    return _respond(request, ApiError("INTERNAL_ERROR"))


def error_handlers(operations: Iterable[Operation]) -> tuple[tuple[type[Exception], Any], ...]:
    return (
        (ApiError, on_api_error),
        (OperationNotImplemented, on_not_implemented),
        (ProblemException, on_problem),
        (HTTPException, _http_exception_handler(AllowedMethods(operations))),
        (Exception, on_unexpected),
    )
