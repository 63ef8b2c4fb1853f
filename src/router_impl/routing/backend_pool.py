"""One backend's pooled aiohttp session: connection limits, keep-alive, timeouts, fixed headers, URLs."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import aiohttp
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from router_impl.config.model import BackendConfig

_MAX_CACHED_URLS = 64
# aiohttp rounds timeouts over 5 s up to a whole second of loop time; a deadline is a promise
# to the caller, so timers here fire when asked.
_EXACT = float("inf")
# When the deadline bounds the connect phase, the connect timeout fires this much earlier than
# the total one, so running out while connecting usually reads as "nothing was sent" (CONNECTED
# settles it when a stall lets the total timer fire first).
_CONNECT_MARGIN_S = 0.002


# Whether the current call holds a connection yet (set by the pool's connector; the caller resets it
# before each call). The total timeout and the pool wait both end at a deadline, on two timers that
# aiohttp starts a few statements apart: on a busy machine either may fire first. Which phase the
# call was in, not which timer fired, says whether the backend can have received the request.
CONNECTED: ContextVar[bool] = ContextVar("backend_call_connected", default=False)


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector that records in ``CONNECTED`` that the calling task got its connection."""

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 -- aiohttp's signature
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        CONNECTED.set(True)
        return connection


@dataclass(frozen=True)
class PoolSettings:
    """Connection-pool tuning shared by every backend."""

    # Below the 5 s idle timeout of uvicorn-based backends (vLLM, many others), so we drop an idle
    # connection before the backend does and never write a request into a closing socket.
    keepalive_s: float = 4.0
    dns_ttl_s: int = 30
    read_bufsize: int = 64 * 1024


def pool_key(config: BackendConfig) -> tuple[object, ...]:
    """The fields a session is built from; a change in any of them means a new session."""
    return (
        config.base_url,
        config.timeout_ms,
        config.connect_timeout_ms,
        config.max_in_flight,
        config.api_key_env,
        config.api_key_file,
    )


def bearer_token(config: BackendConfig, environ: Mapping[str, str]) -> str | None:
    """The backend's bearer token from its variable or mounted file; None when unset or unreadable."""
    if config.api_key_env is not None:
        return environ.get(config.api_key_env) or None
    if config.api_key_file is not None:
        try:
            with open(config.api_key_file, encoding="utf-8") as file:  # a few bytes from a local mount
                return file.read(16 * 1024).strip() or None
        except (OSError, UnicodeDecodeError):
            return None
    return None


class BackendPool:
    """A backend's session and the calls now using it; retired pools close once idle."""

    def __init__(self, config: BackendConfig, *, secrets: Mapping[str, str], settings: PoolSettings) -> None:
        self.config = config
        self.key = pool_key(config)
        self.in_flight = 0
        self.retired = False
        self.total_s = config.timeout_ms / 1000
        self.connect_s = min(
            config.connect_timeout_ms / 1000, max(self.total_s - _CONNECT_MARGIN_S, self.total_s / 2)
        )
        self.timeout = aiohttp.ClientTimeout(
            total=self.total_s, connect=self.connect_s, ceil_threshold=_EXACT
        )
        # Set explicitly rather than dropped with skip_auto_headers: the same lean request (no
        # aiohttp version in User-Agent, no compression asked for: compressing JSON on a LAN costs
        # both sides CPU), and aiohttp skips rebuilding its skip-list per request (~5 us/call).
        fixed = {
            "Accept-Encoding": "identity",
            "User-Agent": "api-router",
            "Content-Type": "application/json",
        }
        token = bearer_token(config, secrets)
        # Which credential is missing (a name, never a value); None when none is or none is needed.
        self.missing_secret = config.credential if config.credential is not None and not token else None
        if token:
            fixed["Authorization"] = f"Bearer {token}"
        self.json_headers = {**fixed, "Accept": "application/json"}
        self.stream_headers = {**fixed, "Accept": "text/event-stream"}
        self._base = config.base_url.rstrip("/")
        self._urls: dict[str, URL] = {}
        connector = _Connector(
            limit=config.max_in_flight,
            limit_per_host=0,
            keepalive_timeout=settings.keepalive_s,
            ttl_dns_cache=settings.dns_ttl_s,
            timeout_ceil_threshold=_EXACT,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self.timeout,
            # A backend that compresses although we asked for identity is still decoded; the check
            # costs nothing on identity responses (measured: no difference).
            auto_decompress=True,
            trust_env=False,
            requote_redirect_url=False,
            read_bufsize=settings.read_bufsize,
        )

    def matches(self, config: BackendConfig) -> bool:
        """Whether ``config`` can use this session; remembers it so the next check is by identity."""
        if config is self.config:
            return True
        if pool_key(config) != self.key:
            return False
        self.config = config
        return True

    def url(self, path: str) -> URL:
        """``path`` (e.g. "/chat/completions") under the backend's base URL."""
        url = self._urls.get(path)
        if url is None:
            if not path.startswith("/"):
                raise ValueError("a backend path starts with '/'")
            url = URL(self._base + path)
            if len(self._urls) < _MAX_CACHED_URLS:
                self._urls[path] = url
        return url

    def call_timeout(self, remaining_s: float | None) -> tuple[aiohttp.ClientTimeout, bool]:
        """The timeout for one call given the time left before the caller's deadline, and whether
        the deadline (rather than the backend's own timeouts) bounds the connect phase."""
        if remaining_s is None or remaining_s >= self.total_s:
            return self.timeout, False
        connect_s, deadline_bound = self._connect_within(remaining_s)
        timeout = aiohttp.ClientTimeout(total=remaining_s, connect=connect_s, ceil_threshold=_EXACT)
        return timeout, deadline_bound

    def stream_timeout(self, first_event_s: float) -> tuple[aiohttp.ClientTimeout, bool]:
        """Timeouts for a streamed call: no total (a long answer may take minutes), each read waits
        at most the backend's timeout; the time to the first event is bounded by the caller."""
        connect_s, deadline_bound = self._connect_within(first_event_s)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_s, sock_read=self.total_s, ceil_threshold=_EXACT
        )
        return timeout, deadline_bound and first_event_s < self.total_s

    def _connect_within(self, budget_s: float) -> tuple[float, bool]:
        """The connect timeout within ``budget_s``, and whether the budget (not ours) set it."""
        limit = max(budget_s - _CONNECT_MARGIN_S, budget_s / 2)
        return (self.connect_s, False) if self.connect_s <= limit else (limit, True)

    async def close(self) -> None:
        await self.session.close()
