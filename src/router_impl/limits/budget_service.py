"""Organisation budgets from the external budget service (openapi/external/budget.yaml), cached.

Each answer is cached for the service's ``cache_ttl_seconds``; an unknown organisation (404) means
"no budget" and is remembered for ``negative_ttl``. Concurrent lookups of one organisation share one
request. When the service fails (timeout, connection, 5xx, 401, 429, malformed or inconsistent
answer) the last good answer is served while it is younger than ``stale_window``; otherwise
``BudgetServiceUnavailable`` is raised and the caller applies the organisation's fail policy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Literal

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router_impl.auth.lru import LruCache
from router_impl.config.model import IDENTIFIER
from router_impl.singleflight import SingleFlight

BUDGET_PATH = "/v1/orgs/{org_id}/budget"
MAX_ANSWER_BYTES = 64 * 1024
MAX_TTL_SECONDS = 86_400
# Above this the micro-dollar amount (1e15) would leave the range a double holds exactly (2**53),
# and the Redis counters are compared in Lua doubles: such an answer is refused as malformed.
MAX_USD = 1_000_000_000
MAX_INT64 = 2**63 - 1
# A Retry-After beyond this is treated as this: one bad header must not silence the client for days.
MAX_RETRY_AFTER_SECONDS = 600.0
MICRO_PER_USD = Decimal(1_000_000)
_ORG_ID = re.compile(IDENTIFIER)
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")


class BudgetServiceUnavailable(Exception):
    """No usable answer (connection, timeout, 5xx, 401, 429, malformed body) and none recent enough."""


@dataclass(frozen=True, slots=True)
class ExternalBudgets:
    """An organisation's budgets; None means no budget of that kind. Dollars in integer micro-USD."""

    daily_tokens: int | None
    monthly_tokens: int | None
    daily_micro_usd: int | None
    monthly_micro_usd: int | None


class OrgBudget(BaseModel):
    """The service's answer. Strict numbers: ``true`` or ``"5"`` is not a budget."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    organization_id: str = Field(pattern=IDENTIFIER)
    daily_tokens: int | None = Field(None, strict=True, ge=0, le=MAX_INT64)
    monthly_tokens: int | None = Field(None, strict=True, ge=0, le=MAX_INT64)
    daily_usd: float | None = Field(None, strict=True, ge=0, le=MAX_USD, allow_inf_nan=False)
    monthly_usd: float | None = Field(None, strict=True, ge=0, le=MAX_USD, allow_inf_nan=False)
    currency: Literal["USD"]
    updated_at: datetime
    cache_ttl_seconds: int = Field(strict=True, ge=0, le=MAX_TTL_SECONDS)

    def budgets(self) -> ExternalBudgets:
        return ExternalBudgets(
            daily_tokens=self.daily_tokens,
            monthly_tokens=self.monthly_tokens,
            daily_micro_usd=micro_usd(self.daily_usd),
            monthly_micro_usd=micro_usd(self.monthly_usd),
        )


def micro_usd(value: float | None) -> int | None:
    """Dollars to integer micro-dollars, exactly as written (``1.005`` -> 1_005_000, not 1_004_999).

    ``str`` of a float is its shortest round-trip text, i.e. the number as the service wrote it.
    Fractions of a micro-dollar are dropped: a budget is never rounded up.
    """
    if value is None:
        return None
    return int((Decimal(str(value)) * MICRO_PER_USD).to_integral_value(rounding=ROUND_FLOOR))


@dataclass(frozen=True, slots=True)
class _Entry:
    """One good answer (``budgets`` None: the organisation is unknown, so it has no budget).

    Fresh until ``fresh_until``; while the service fails it is still served until ``stale_until``
    (measured from when the service gave it).
    """

    budgets: ExternalBudgets | None
    fresh_until: float
    stale_until: float


class BudgetServiceClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 2.0,
        negative_ttl: float = 30.0,
        stale_window: float = 900.0,
        max_entries: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
        retry_after_failure: float = 1.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._negative_ttl = negative_ttl
        self._stale_window = stale_window
        self._clock = monotonic
        self._retry_after_failure = retry_after_failure
        self._log = structlog.get_logger("router.limits.budget_service")
        self._session: aiohttp.ClientSession | None = None
        self._cache: LruCache[str, _Entry] = LruCache(max_entries)
        self._inflight: SingleFlight[_Entry] = SingleFlight()
        # No call before this instant: set by a 429's Retry-After, or briefly after any failure so
        # an outage costs one timeout per retry_after_failure, not one per lookup.
        self._down_until = float("-inf")
        self._degraded = False
        # Counters for metrics.
        self.stale_served = 0
        self.cache_hits = 0
        self.calls = 0
        self.failures = 0

    @property
    def degraded(self) -> bool:
        """True from a failed call to the service until a call succeeds again (readiness: warn)."""
        return self._degraded

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def budgets(self, org_id: str) -> ExternalBudgets | None:
        """The organisation's budgets; None when the service does not know it (no budget).

        Raises ``BudgetServiceUnavailable`` when the service cannot answer and no answer younger
        than the stale window is at hand; ``ValueError`` for an id that is not an identifier.
        """
        if not _ORG_ID.fullmatch(org_id):
            raise ValueError("not an organisation id")
        now = self._clock()
        cached = self._cache.get(org_id)
        if cached is not None and now < cached.fresh_until:
            self.cache_hits += 1
            return cached.budgets
        if now < self._down_until:
            return self._fallback(org_id, now)
        try:
            entry = await self._inflight.run(org_id, lambda: self._refresh(org_id))
        except BudgetServiceUnavailable:
            return self._fallback(org_id, self._clock())
        return entry.budgets

    # ----------------------------------------------------------------- internals

    def _fallback(self, org_id: str, now: float) -> ExternalBudgets | None:
        cached = self._cache.peek(org_id)
        if cached is None or now >= cached.stale_until:
            raise BudgetServiceUnavailable("budget service unavailable and no recent answer")
        self.stale_served += 1
        return cached.budgets

    async def _refresh(self, org_id: str) -> _Entry:
        try:
            entry = await self._fetch(org_id)
        except BudgetServiceUnavailable as exc:
            self.failures += 1
            self._down_until = max(self._down_until, self._clock() + self._retry_after_failure)
            if not self._degraded:
                self._log.warning("budget_service_unavailable", org_id=org_id, reason=str(exc))
            self._degraded = True
            raise
        if self._degraded:
            self._log.info("budget_service_recovered", stale_served=self.stale_served)
        self._degraded = False
        self._cache.put(org_id, entry)
        return entry

    async def _fetch(self, org_id: str) -> _Entry:
        body = await self._request(org_id)
        now = self._clock()
        if body is None:  # 404: unknown organisation
            return _Entry(None, now + self._negative_ttl, now + self._stale_window)
        try:
            answer = OrgBudget.model_validate_json(body)
        except ValidationError as exc:
            raise BudgetServiceUnavailable("malformed answer") from exc
        if answer.organization_id != org_id:
            raise BudgetServiceUnavailable("answer for another organisation")
        # A TTL of 0 forbids serving the answer as fresh; it still backs fail-static.
        return _Entry(answer.budgets(), now + answer.cache_ttl_seconds, now + self._stale_window)

    async def _request(self, org_id: str) -> bytes | None:
        """The 200 body; None for a 404; BudgetServiceUnavailable otherwise."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.calls += 1
        # The id matched IDENTIFIER, whose characters are all safe in a path segment.
        url = self._base_url + BUDGET_PATH.format(org_id=org_id)
        try:
            async with self._session.get(
                url, headers=self._headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status == 404:
                    return None
                if response.status == 429:
                    self._hold_off(response.headers.get("Retry-After"))
                if response.status != 200:
                    raise BudgetServiceUnavailable(f"status {response.status}")
                return await _read_bounded(response)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BudgetServiceUnavailable(type(exc).__name__) from exc

    def _hold_off(self, retry_after: str | None) -> None:
        seconds = _retry_after_seconds(retry_after)
        if seconds is not None:
            self._down_until = max(self._down_until, self._clock() + seconds)


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds, as the contract says), capped."""
    if value is None or not _DELTA_SECONDS.fullmatch(value.strip()):
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_SECONDS)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise BudgetServiceUnavailable("answer too large")
        chunks.append(chunk)
    return b"".join(chunks)
