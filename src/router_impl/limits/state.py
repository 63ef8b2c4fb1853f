"""Admin view of an organisation's live limits: what is left (``state``) and clearing it (``reset``).

Both go through the failover store like admission does, so an admin sees (and clears) the counters
the organisation's requests are checked against right now."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog

from router_impl.config.model import OrgLimits, RuntimeConfig
from router_impl.errors import ApiError
from router_impl.limits import store_keys
from router_impl.limits.budgets import PERIODS, UNITS, BudgetLookup
from router_impl.limits.failover import FailoverLimitStore
from router_impl.limits.periods import to_ms, window
from router_impl.limits.plan import bucket_shapes
from router_impl.limits.store import BucketOwner, BucketProbe, LimitStore, Period

# What a reset clears: the rate buckets, the current periods' budget usage, or both.
ResetTarget = Literal["buckets", "budget", "all"]

log = structlog.get_logger("router.limits")


@dataclass(frozen=True)
class BudgetState:
    period: Period
    tokens_used: int
    tokens_limit: int | None
    micro_usd_used: int
    micro_usd_limit: int | None
    reset_at: datetime


@dataclass(frozen=True)
class OrgState:
    requests_remaining: int | None
    tokens_remaining: int | None
    budgets: tuple[BudgetState, ...]
    lockout_until: datetime | None


class LimitsAdmin:
    """State and reset of one organisation's buckets, budget counters and lockout."""

    def __init__(
        self,
        *,
        config: Callable[[], RuntimeConfig],
        stores: FailoverLimitStore,
        budgets: BudgetLookup,
        now: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.stores = stores
        self.budgets = budgets
        self.now = now

    def limits_of(self, org_id: str) -> OrgLimits | None:
        return self.config().org_limits.get(org_id)

    async def state(self, org_id: str) -> OrgState:
        limits = self.limits_of(org_id) or OrgLimits()
        budgets = await self.budgets.budgets(org_id, limits)
        moment = self.now()
        shapes = bucket_shapes(limits.rate_limits)
        probes = tuple(
            BucketProbe(store_keys.bucket_key(org_id, "org", None, kind), capacity, per_ms)
            for kind, capacity, per_ms in shapes
        )
        windows = [window(p, moment) for p in PERIODS]
        keys = tuple(store_keys.counter_key(org_id, w, unit) for w in windows for unit in UNITS)
        store = self.stores.under(limits.failure_mode)
        seen = await store.snapshot(probes, keys, store_keys.lockout_key(org_id), to_ms(moment))
        levels = dict(zip((kind for kind, _, _ in shapes), seen.levels, strict=True))
        states = []
        for i, w in enumerate(windows):
            tokens_used, micro_used = seen.used[2 * i], seen.used[2 * i + 1]
            token_limit = budgets.of(w.period, "tokens") if budgets else None
            micro_limit = budgets.of(w.period, "micro_usd") if budgets else None
            if token_limit is None and micro_limit is None and not tokens_used and not micro_used:
                continue
            states.append(BudgetState(w.period, tokens_used, token_limit, micro_used, micro_limit, w.ends_at))
        lockout = seen.lockout
        return OrgState(
            requests_remaining=_floor(levels.get("requests")),
            tokens_remaining=_floor(levels.get("tokens")),
            budgets=tuple(states),
            lockout_until=datetime.fromtimestamp(lockout.until_ms / 1000, UTC) if lockout else None,
        )

    async def reset(self, org_id: str, target: ResetTarget, key_id: str | None) -> tuple[str, ...]:
        """Clear buckets (the organisation's and its keys', or one key's), the lockout and/or the
        current periods' budget usage. Returns what was cleared, by name."""
        limits = self.limits_of(org_id) or OrgLimits()
        names: dict[str, str] = {}
        moment = self.now()
        if target in ("buckets", "all"):
            owners: list[tuple[BucketOwner, str | None]] = [("key", key_id)] if key_id else [("org", None)]
            for owner, kid in owners:
                for kind in ("requests", "tokens"):
                    names[store_keys.bucket_key(org_id, owner, kid, kind)] = (
                        f"{owner}_bucket" + (f":{kid}" if kid else "") + f":{kind}"
                    )
        if target in ("budget", "all"):
            for period in PERIODS:
                w = window(period, moment)
                for unit in UNITS:
                    names[store_keys.counter_key(org_id, w, unit)] = f"{period.lower()}_budget:{unit}"
        if key_id is None:
            names[store_keys.lockout_key(org_id)] = "lockout"
        every_key = key_id is None and target in ("buckets", "all")
        prefixes = (store_keys.key_bucket_prefix(org_id),) if every_key else ()

        async def clear(store: LimitStore) -> tuple[str, ...]:
            cleared = list(await store.clear(tuple(names)))
            for prefix in prefixes:
                cleared.extend(await store.clear_prefix(prefix))
            return tuple(cleared)

        cleared, shared = await self.stores.under(limits.failure_mode).run(clear)
        if shared:  # whatever this process counted locally during an outage goes too
            await clear(self.stores.local)
        return tuple(dict.fromkeys(names.get(k) or store_keys.key_bucket_name(k) for k in cleared))

    async def limits_changed(self, org_id: str) -> None:
        """New limits lift a lockout set under the old ones."""
        limits = self.limits_of(org_id) or OrgLimits()
        try:
            await self.stores.under(limits.failure_mode).clear((store_keys.lockout_key(org_id),))
        except ApiError:
            log.warning("limits_lockout_not_cleared", organization_id=org_id)


def _floor(level: float | None) -> int | None:
    return None if level is None else max(0, math.floor(level))
