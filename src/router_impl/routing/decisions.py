"""The recent routing decisions of this process: a bounded ring buffer read by the admin API."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Literal


@dataclass(frozen=True, slots=True)
class RoutingDecisionRecord:
    request_id: str
    timestamp: datetime
    model: str
    organization_id: str
    api_key_id: str
    backend_id: str
    decision: Literal["PRIMARY", "FAILOVER", "OVERRIDE"]
    attempts: int
    latency_ms: int
    warning: str | None = None


class DecisionLog:
    def __init__(self, capacity: int = 1000) -> None:
        self._records: deque[RoutingDecisionRecord] = deque(maxlen=capacity)

    def record(self, decision: RoutingDecisionRecord) -> None:
        self._records.append(decision)

    def recent(
        self, *, model: str | None = None, organization_id: str | None = None, limit: int = 100
    ) -> list[RoutingDecisionRecord]:
        """Newest first, filtered."""
        found: list[RoutingDecisionRecord] = []
        for decision in reversed(self._records):
            if model is not None and decision.model != model:
                continue
            if organization_id is not None and decision.organization_id != organization_id:
                continue
            found.append(decision)
            if len(found) >= limit:
                break
        return found
