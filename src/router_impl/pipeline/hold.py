"""The idempotency stage: a hold on the request's key, taken on entry and given back on exit.

``begin`` on entry: a retry of a finished request gets its stored reply (``replay``) and goes no
further; a key still held or reused with another body is refused. On exit the hold ``store``s the
reply the request ``keep``s, or ``release``s the key (a failure, a broken stream, nothing kept), so
the retry runs again. Without an idempotency key every step is a no-op.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from types import TracebackType

import structlog

from router_impl.errors import ApiError
from router_impl.limits.idempotency import (
    IdempotencyStore,
    IdempotencyUnavailable,
    Proceed,
    Replay,
    StoredReply,
)
from router_impl.pipeline.call import Call, FinalReply

log = structlog.get_logger("router.pipeline")

_REPLAYED = ("Idempotent-Replayed", "true")
_COMPLETED_RECORD_IDS = uuid.UUID("5c1e8f3a-7d7b-4c55-9a8e-2f0b7f6d4e21")  # uuid5 namespace


class IdempotencyHold:
    """``async with IdempotencyHold(...) as hold``: check ``hold.replay`` first, ``hold.keep(reply)``
    once the reply may be replayed. ``within_seconds``: the request ends by then, so a retry may take
    the key over afterwards (None: the store's own lease)."""

    __slots__ = ("_kept", "_now", "_store", "_token", "_within", "call", "replay")

    def __init__(
        self,
        store: IdempotencyStore,
        call: Call,
        now: Callable[[], datetime],
        within_seconds: float | None = None,
    ) -> None:
        self._store = store
        self.call = call
        self._now = now
        self._within = within_seconds
        self._token: str | None = None
        self._kept: FinalReply | None = None
        self.replay: FinalReply | None = None

    async def __aenter__(self) -> IdempotencyHold:
        call = self.call
        if call.idempotency_key is None:
            return self
        now = self._now()
        deadline = None if self._within is None else now + timedelta(seconds=self._within)
        try:
            began = await self._store.begin(
                call.principal.organization_id, call.idempotency_key, call.fingerprint, now, deadline
            )
        except IdempotencyUnavailable as exc:
            log.error("idempotency_unavailable", error=str(exc)[:200])
            raise ApiError("SERVICE_UNAVAILABLE", "Idempotency store unavailable; retry later.") from exc
        if isinstance(began, Replay):
            self.replay = _replayed(began.reply)
        elif isinstance(began, Proceed):
            self._token = began.token
        else:
            raise began.error()
        return self

    def keep(self, reply: FinalReply) -> None:
        """Store ``reply`` for retries when the hold ends without an error."""
        self._kept = reply

    @property
    def record_id(self) -> uuid.UUID | None:
        """The usage record id of a completed idempotent request: derived from its key, so that when
        the key's stored reply is lost (the router died between committing the record and storing
        the reply, or the store failed) the retry that runs again yields the same record_id, which
        consumers de-duplicate: billed once. Denials, failures and broken streams keep random ids
        (each is billed on its own, and the key is released for the retry)."""
        call = self.call
        if call.idempotency_key is None:
            return None
        scope = f"{call.principal.organization_id}\x00{call.idempotency_key}\x00{call.fingerprint}"
        return uuid.uuid5(_COMPLETED_RECORD_IDS, scope)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        key = self.call.idempotency_key
        if token is None or key is None:
            return
        if exc is None and self._kept is not None:
            await self._store_reply(key, token, self._kept)
        else:
            await self._release(key, token)

    async def _store_reply(self, key: str, token: str, reply: FinalReply) -> None:
        stored = StoredReply(
            status=reply.status,
            body=reply.body,
            content_type=reply.content_type,
            headers=tuple(reply.headers.items()),
        )
        try:
            await self._store.complete(self.call.principal.organization_id, key, token, stored, self._now())
        except IdempotencyUnavailable as exc:
            # The client still gets its (billed) reply; a retry after the lease would run again.
            log.error("idempotency_complete_failed", error=str(exc)[:200])

    async def _release(self, key: str, token: str) -> None:
        try:
            await self._store.release(self.call.principal.organization_id, key, token)
        except IdempotencyUnavailable as exc:  # the lease expires by itself
            log.warning("idempotency_release_failed", error=str(exc)[:200])


def _replayed(reply: StoredReply) -> FinalReply:
    headers = dict(reply.headers)
    headers[_REPLAYED[0]] = _REPLAYED[1]
    backend, decision = headers.get("X-Routing-Backend"), headers.get("X-Routing-Decision")
    served_by = (backend, decision) if backend is not None and decision is not None else None
    return FinalReply(reply.status, reply.body, reply.content_type, headers, served_by)
