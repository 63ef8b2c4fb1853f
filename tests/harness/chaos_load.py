"""A bounded load generator for chaos tests: at most ``concurrency`` requests in flight and ``rate``
started per second from a thread of its own, each attempt bounded by a client timeout and optionally
retried (same headers, so the same Idempotency-Key); every outcome is recorded, and ``summary``
prints one tabulable line per scenario.

The backend chaos rig has a load generator of its own (``run_load`` in tests/harness/chaos_backend.py):
it is not paced but sends as fast as its clients are answered, one connection per client, reads
streams to their end and keeps one response per kind of answer for the contract check; this one paces
starts by the clock, retries, and records when each request began, for outage windows.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import orjson

from tests.harness.errors import error_code

CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Shot:
    """One request to send; ``label`` groups outcomes (e.g. by organisation)."""

    label: str
    request_id: str
    body: Mapping[str, Any]
    headers: Mapping[str, str]
    path: str = CHAT


@dataclass(frozen=True)
class Retry:
    """Send a shot again, same headers and body, after a transport error or one of ``statuses``."""

    statuses: frozenset[int] = frozenset({409, 503})
    give_up_after_s: float = 20.0
    pause_s: float = 0.2


@dataclass(frozen=True)
class Outcome:
    """The fate of one shot. Times are seconds since the load began; ``latency_s`` is the longest
    single attempt, ``elapsed_s`` the whole request with its retries."""

    label: str
    request_id: str
    started_s: float
    elapsed_s: float
    latency_s: float
    attempts: int
    status: int | None  # None: no HTTP answer (client timeout, connection refused or reset)
    code: str | None  # the error code of a non-2xx answer, or the client-side error's class name
    backend: str | None  # X-Routing-Backend
    replayed: bool  # Idempotent-Replayed
    first_failure: str | None  # why the first attempt failed, when it was retried


class BoundedLoad:
    """At most ``concurrency`` requests in flight and ``rate`` started per second, from a thread of
    its own (the test may block meanwhile); each attempt ends within ``timeout_s``.

    ``shots(n)`` makes the n-th request. Use as a context manager; ``outcomes`` grows as requests end.
    """

    def __init__(
        self,
        base_url: str,
        shots: Callable[[int], Shot],
        *,
        concurrency: int = 12,
        rate: float = 150.0,
        timeout_s: float = 5.0,
        retry: Retry | None = None,
    ) -> None:
        self.base_url = base_url
        self.shots = shots
        self.concurrency = concurrency
        self.interval_s = concurrency / rate  # per client
        self.timeout_s = timeout_s
        self.retry = retry
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._numbers = itertools.count()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self.crashed: BaseException | None = None

    def __enter__(self) -> Self:
        self._began = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        longest = self.timeout_s + (self.retry.give_up_after_s if self.retry else 0.0)
        self._thread.join(longest + 10.0)
        assert not self._thread.is_alive(), "the load generator did not stop"
        if self.crashed is not None:
            raise AssertionError("the load generator crashed") from self.crashed

    def now(self) -> float:
        """Seconds since the load began, on the clock of ``Outcome`` times."""
        return time.monotonic() - self._began

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def between(self, start_s: float, end_s: float, label: str | None = None) -> list[Outcome]:
        """Outcomes of requests started in [start_s, end_s), of one label or all."""
        return [
            o for o in self.outcomes if start_s <= o.started_s < end_s and (label is None or o.label == label)
        ]

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.crashed = exc

    async def _main(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        async with aiohttp.ClientSession(self.base_url, connector=connector) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval_s * index / self.concurrency  # spread the starts
        while not self._stop.is_set():
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + self.interval_s, loop.time())
            if self._stop.is_set():
                return
            outcome = await self._send(session, self.shots(next(self._numbers)))
            with self._lock:
                self._outcomes.append(outcome)

    async def _send(self, session: aiohttp.ClientSession, shot: Shot) -> Outcome:
        started = self.now()
        attempts, longest, first_failure = 0, 0.0, None
        while True:
            attempts += 1
            began = time.monotonic()
            status, code, headers = await self._attempt(session, shot)
            longest = max(longest, time.monotonic() - began)
            retryable = status is None or status in (self.retry.statuses if self.retry else ())
            if (
                self.retry is None
                or not retryable
                or self.now() - started + self.retry.pause_s > self.retry.give_up_after_s
            ):
                return Outcome(
                    label=shot.label,
                    request_id=shot.request_id,
                    started_s=started,
                    elapsed_s=self.now() - started,
                    latency_s=longest,
                    attempts=attempts,
                    status=status,
                    code=code,
                    backend=headers.get("X-Routing-Backend"),
                    replayed=headers.get("Idempotent-Replayed") == "true",
                    first_failure=first_failure,
                )
            first_failure = first_failure or (code if status is None else f"{status} {code}")
            await asyncio.sleep(self.retry.pause_s)

    async def _attempt(
        self, session: aiohttp.ClientSession, shot: Shot
    ) -> tuple[int | None, str | None, Mapping[str, str]]:
        try:
            async with session.post(
                shot.path,
                data=orjson.dumps(shot.body),
                headers={"Content-Type": "application/json", **shot.headers},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                raw = await response.read()
                code = None
                if response.status >= 400:
                    try:
                        code = error_code(orjson.loads(raw)) or "NO_CODE"
                    except orjson.JSONDecodeError:
                        code = "NOT_JSON"
                return response.status, code, response.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, type(exc).__name__, {}


def tally(outcomes: Sequence[Outcome]) -> Counter[str]:
    """Counts by fate: ``served`` (200), ``denied_429``, ``refused_503``, ``errors`` (no HTTP answer),
    ``other`` (any other status)."""
    found: Counter[str] = Counter()
    for o in outcomes:
        if o.status == 200:
            found["served"] += 1
        elif o.status == 429:
            found["denied_429"] += 1
        elif o.status == 503:
            found["refused_503"] += 1
        elif o.status is None:
            found["errors"] += 1
        else:
            found["other"] += 1
    return found


def summary(name: str, outcomes: Sequence[Outcome], **extra: object) -> str:
    """One line per scenario, printed so that runs can be tabulated."""
    counts = tally(outcomes)
    longest = max((o.latency_s for o in outcomes), default=0.0)
    parts = [
        f"served={counts['served']}",
        f"denied_429={counts['denied_429']}",
        f"refused_503={counts['refused_503']}",
        f"errors={counts['errors']}",
        f"other={counts['other']}",
        f"max_latency={longest:.2f}s",
        *(f"{key}={value}" for key, value in extra.items()),
    ]
    return f"CHAOS {name}: " + ", ".join(parts)
