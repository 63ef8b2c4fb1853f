"""KeyStore backed by the external identity service, with a bounded cache and fail-static fallback.

Answers are cached (positives for the service's ``cache_ttl_seconds`` capped by ours, negatives
briefly). When the service is unreachable, slow or failing, a key it vouched for within
``stale_window`` keeps working and a key it refused stays refused; any other key gets a retryable
503 ``IDENTITY_UNAVAILABLE`` with ``Retry-After`` (never a 401: only the service says a key is
invalid, and a failed lookup is never remembered as a "no"). Concurrent lookups of one hash share
one request. ``poll_revocations`` follows the revocation feed so revocations bite before TTLs end.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog
from pydantic import ValidationError

from router_impl.auth.identity_wire import Answer, KeyValidation, RevocationList, record_of
from router_impl.auth.keys import ApiKeyRecord
from router_impl.auth.lru import LruCache
from router_impl.auth.secret_box import SecretBox
from router_impl.errors import ApiError
from router_impl.singleflight import SingleFlight

VALIDATE_PATH = "/v1/keys/validate"
REVOCATIONS_PATH = "/v1/keys/revocations"
MAX_ANSWER_BYTES = 256 * 1024
REVOCATION_PAGE = 1000
MAX_REVOCATION_PAGES = 10
_KEY_HASH = re.compile(r"[0-9a-f]{64}")


class IdentityUnavailableError(Exception):
    """The service gave no usable answer (connection, timeout, 5xx, 401/429, malformed body)."""


class IdentityServiceKeyStore:
    def __init__(
        self,
        base_url: str,
        token: str,
        session: aiohttp.ClientSession | None = None,
        *,
        secret_box: SecretBox,
        clock: Callable[[], float] = time.monotonic,
        positive_ttl: float = 60,
        negative_ttl: float = 5,
        stale_window: float = 900,
        timeout: float = 2.0,
        retry_after_failure: float = 1.0,
        max_entries: int = 100_000,
        max_negative_entries: int = 10_000,
        log: Any = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._session = session
        self._owns_session = session is None
        self._box = secret_box
        self._clock = clock
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._stale_window = stale_window
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_after_failure = retry_after_failure
        self._log = log if log is not None else structlog.get_logger("router.auth.identity")
        self._hash_by_id: dict[str, str] = {}
        self._known: LruCache[str, Answer] = LruCache(max_entries, self._forget_id)
        self._unknown: LruCache[str, Answer] = LruCache(max_negative_entries)
        self._inflight: SingleFlight[Answer] = SingleFlight()
        self._down_until = float("-inf")
        self._revocations_since: str | None = None
        self._degraded = False
        # Counters for metrics: answers served stale (fail-static), cache hits, requests, failures.
        self.stale_served = 0
        self.cache_hits = 0
        self.calls = 0
        self.failures = 0
        self.unavailable_answers = 0  # lookups answered 503 because the service could not be asked

    @property
    def degraded(self) -> bool:
        """True from a failed call to the service until a call succeeds again (readiness: warn)."""
        return self._degraded

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ KeyStore

    async def by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        if not _KEY_HASH.fullmatch(key_hash):
            return None  # the service would answer 400, which must not read as an outage
        now = self._clock()
        cached = self._cached(key_hash)
        if cached is not None and now < cached.fresh_until:
            self.cache_hits += 1
            return cached.record
        if now < self._down_until:
            return self._fallback(key_hash, now)
        try:
            answer = await self._inflight.run(key_hash, lambda: self._refresh(key_hash))
        except IdentityUnavailableError:
            return self._fallback(key_hash, self._clock())
        return answer.record

    def unavailable(self) -> ApiError:
        """The answer for a key the service could not check: retry once the hold-off is over."""
        wait = max(1, math.ceil(self._down_until - self._clock()))
        self.unavailable_answers += 1
        return ApiError("IDENTITY_UNAVAILABLE", headers={"Retry-After": str(wait)})

    # -------------------------------------------------------- revocation feed

    async def poll_revocations(self) -> int:
        """Mark cached keys revoked from the feed; returns how many revocations were read."""
        seen = 0
        for _ in range(MAX_REVOCATION_PAGES):
            params = {"limit": str(REVOCATION_PAGE)}
            if self._revocations_since is not None:
                params["since"] = self._revocations_since
            body = await self._request("GET", REVOCATIONS_PATH, params=params, expect_404=False)
            try:
                page = RevocationList.model_validate_json(body or b"")
            except ValidationError as exc:
                raise IdentityUnavailableError("malformed revocation list") from exc
            for revocation in page.revoked:
                self._mark_revoked(revocation.id, revocation.revoked_at)
            seen += len(page.revoked)
            self._revocations_since = page.next_since
            if len(page.revoked) < REVOCATION_PAGE:
                break
        return seen

    async def follow_revocations(self, interval_seconds: float = 5.0) -> None:
        """Poll the feed until cancelled (run it as a lifespan task)."""
        while True:
            try:
                await self.poll_revocations()
            except Exception as exc:  # the loop must outlive any one bad poll
                self._log.warning("identity_revocation_feed_failed", reason=str(exc) or type(exc).__name__)
            await asyncio.sleep(interval_seconds)

    # ----------------------------------------------------------------- internals

    def _cached(self, key_hash: str) -> Answer | None:
        return self._known.get(key_hash) or self._unknown.get(key_hash)

    def _fallback(self, key_hash: str, now: float) -> ApiKeyRecord | None:
        """During an outage: a recently vouched-for key still works, a revoked one stays revoked;
        any other key cannot be checked now (ApiError IDENTITY_UNAVAILABLE, 503)."""
        cached = self._known.peek(key_hash)
        if cached is not None and cached.servable_when_down(now):
            self.stale_served += 1
            return cached.record
        if cached is not None and cached.record is not None and cached.record.revoked:
            return cached.record
        raise self.unavailable()

    async def _refresh(self, key_hash: str) -> Answer:
        try:
            answer = await self._validate(key_hash)
        except IdentityUnavailableError as exc:
            self.failures += 1
            self._down_until = self._clock() + self._retry_after_failure
            if not self._degraded:
                self._log.warning("identity_service_unavailable", reason=str(exc))
            self._degraded = True
            raise
        if self._degraded:
            self._log.info("identity_service_recovered", stale_served=self.stale_served)
        self._degraded = False
        self._store(key_hash, answer)
        return answer

    async def _validate(self, key_hash: str) -> Answer:
        body = await self._request("POST", VALIDATE_PATH, data=orjson.dumps({"key_hash": key_hash}))
        now = self._clock()
        if body is None:  # 404: no such key
            return Answer(None, now + self._negative_ttl, now + self._negative_ttl)
        try:
            validation = KeyValidation.model_validate_json(body)
            record = record_of(key_hash, validation, self._box)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise IdentityUnavailableError("malformed validation answer") from exc
        if record is None:
            ttl = min(self._negative_ttl, validation.cache_ttl_seconds)
            return Answer(None, now + ttl, now + ttl)
        ttl = min(self._positive_ttl, validation.cache_ttl_seconds)
        return Answer(record, now + ttl, now + self._stale_window)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        expect_404: bool = True,
    ) -> bytes | None:
        """The 200 body; None for a 404 when that is an answer; IdentityUnavailableError otherwise."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.calls += 1
        try:
            async with self._session.request(
                method,
                self._base_url + path,
                data=data,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if response.status == 404 and expect_404:
                    return None
                if response.status != 200:
                    raise IdentityUnavailableError(f"status {response.status}")
                return await _read_bounded(response)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise IdentityUnavailableError(type(exc).__name__) from exc

    def _store(self, key_hash: str, answer: Answer) -> None:
        if answer.record is None:
            dropped = self._known.pop(key_hash)
            if dropped is not None:
                self._forget_id(key_hash, dropped)
            self._unknown.put(key_hash, answer)
            return
        self._unknown.pop(key_hash)
        self._known.put(key_hash, answer)
        self._hash_by_id[answer.record.id] = key_hash

    def _forget_id(self, key_hash: str, answer: Answer) -> None:
        if answer.record is None:
            return
        known = self._hash_by_id.get(answer.record.id)
        # Key hashes are compared in constant time everywhere, server-held ones included.
        if known is not None and hmac.compare_digest(known, key_hash):
            del self._hash_by_id[answer.record.id]

    def _mark_revoked(self, key_id: str, revoked_at: Any) -> None:
        key_hash = self._hash_by_id.get(key_id)
        cached = None if key_hash is None else self._known.peek(key_hash)
        if key_hash is None or cached is None or cached.record is None or cached.record.revoked:
            return
        record = cached.record.model_copy(update={"revoked": True, "revoked_at": revoked_at})
        self._known.put(key_hash, Answer(record, cached.fresh_until, cached.stale_until))
        self._log.info("api_key_revoked_by_feed", key_id=key_id)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise IdentityUnavailableError("answer too large")
        chunks.append(chunk)
    return b"".join(chunks)
