"""The one renderer of limit answers: ``LimitDenied`` refusals and the ``RateLimit-*`` headers.

A rate refusal is 429 ``RATE_LIMIT_EXCEEDED`` with ``Retry-After`` from the bucket's refill rate; a
budget refusal is 402 ``BUDGET_EXCEEDED`` with the period's end and what is left of it. Pure: the
figures come in, the error (or headers) go out; nothing was taken from any store."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from router_impl.errors import ApiError
from router_impl.limits.store import BucketSpec, Period
from router_impl.usage.cost import micro_to_usd

LimitState = Literal["RATE_LIMITED", "BUDGET_EXCEEDED"]
# No Retry-After or reset beyond a month (31 days): a longer one is a mistake, not a plan.
_MAX_SECONDS = 2_678_400


class LimitDenied(ApiError):
    """A request refused by a rate limit or a budget; ``limit_state`` goes to usage and audit.

    ``scope`` is the contract's ``limit_context.scope``: whose limit refused (``org`` or ``key``)."""

    def __init__(
        self, code: str, message: str, *, limit_state: LimitState, scope: str, **kwargs: Any
    ) -> None:
        super().__init__(code, message, **kwargs)
        self.limit_state = limit_state
        self.scope = scope


def _seconds_to_full(bucket: BucketSpec, level: float) -> int:
    return min(max(0, math.ceil((bucket.capacity - level) / bucket.per_ms / 1000)), _MAX_SECONDS)


def rate_limit_headers(bucket: BucketSpec, level: float) -> dict[str, str]:
    """``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` of one request bucket at ``level``."""
    return {
        "RateLimit-Limit": str(int(bucket.capacity)),
        "RateLimit-Remaining": str(max(0, math.floor(level))),
        "RateLimit-Reset": str(_seconds_to_full(bucket, level)),
    }


def admitted_headers(buckets: Iterable[BucketSpec], levels: Iterable[float]) -> dict[str, str]:
    """The headers of an admitted request: of the tightest request bucket (fewest requests left)."""
    tightest: tuple[float, BucketSpec] | None = None
    for bucket, level in zip(buckets, levels, strict=True):
        if bucket.kind == "requests" and (tightest is None or level < tightest[0]):
            tightest = (level, bucket)
    return {} if tightest is None else rate_limit_headers(tightest[1], tightest[0])


def rate_limited(bucket: BucketSpec, level: float) -> LimitDenied:
    """429: ``bucket`` (at ``level``) has no room for its cost."""
    retry_after = max(1, math.ceil((bucket.cost - level) / bucket.per_ms / 1000))
    remaining = max(0, math.floor(level))
    what = "request" if bucket.kind == "requests" else "token"
    owner = "organisation" if bucket.owner == "org" else "API key"
    return LimitDenied(
        "RATE_LIMIT_EXCEEDED",
        f"The {owner}'s {what} rate limit is exhausted; retry after {retry_after} s.",
        limit_state="RATE_LIMITED",
        scope=bucket.owner,
        retry_after_seconds=min(retry_after, _MAX_SECONDS),
        limit_context={
            "scope": bucket.owner,
            "limit": int(bucket.capacity),
            "remaining": remaining,
            "reset_seconds": _seconds_to_full(bucket, level),
        },
        headers=rate_limit_headers(bucket, level) if bucket.kind == "requests" else {},
    )


def budget_exhausted(
    period: Period,
    reset_ms: int,
    now_ms: int,
    *,
    tokens_remaining: int | None = None,
    micro_usd_remaining: int | None = None,
) -> LimitDenied:
    """402: the organisation's budget of ``period`` refuses until ``reset_ms``; what is left of it
    when known (None: not known, or no such budget)."""
    context: dict[str, Any] = {
        "period": period,
        "reset_at": _iso(datetime.fromtimestamp(reset_ms / 1000, UTC)),
    }
    if tokens_remaining is not None:
        context["tokens_remaining"] = tokens_remaining
    if micro_usd_remaining is not None:
        context["currency_remaining"] = micro_to_usd(micro_usd_remaining)
    retry_after = max(1, math.ceil((reset_ms - now_ms) / 1000))
    label = "daily" if period == "DAILY" else "monthly"
    return LimitDenied(
        "BUDGET_EXCEEDED",
        f"The organisation's {label} budget is exhausted until {context['reset_at']}.",
        limit_state="BUDGET_EXCEEDED",
        scope="org",
        retry_after_seconds=min(retry_after, _MAX_SECONDS),
        limit_context=context,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
