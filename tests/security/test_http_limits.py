"""Issue 16 finding 2, unauthenticated DoS: the HTTP server's limits, on real routers over loopback.

A request head is capped in size and field count while it arrives, and in time; a connection idle
before its first byte is closed; past the connection cap the connection waiting longest for a head
makes room. Measured: a thousand slow or idle connections leave legitimate traffic's latency within
twice an idle server's, and the router's memory returns near its baseline once they go.

Needs about 1,200 file descriptors in this process and in the router (``ulimit -n``; the test lifts
its soft limit to the hard one and skips, saying so, when even that is too low).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import resource
import select
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import orjson
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router_impl.web.http_protocol import LimitedHttpToolsProtocol
from tests.e2e.conftest import KEYS, MODEL, auth
from tests.harness.bodies import chat_body
from tests.harness.router_proc import RouterProcess
from tests.harness.stall import StallMeter

FLOOD = 1000
NEAR_KIB = 16 * 1024  # "near the baseline": what the allocator may keep of a thousand connections
# A second thousand may add this much at most: 2 KiB a connection, were it a leak (measured: a
# thousand leave +6 MiB, +3.4 after malloc_trim; each further thousand +0.2 to 0.3 MiB, all of it
# from the requests served meanwhile; Python's traced heap holds nothing per connection: docs/security.md)
PLATEAU_KIB = 2 * 1024
CHAT = chat_body(MODEL, "still there?")
HEAD = b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture(scope="module")
def strict_router(start_router: Callable[..., RouterProcess]) -> RouterProcess:
    """Short head and idle timeouts, default size caps."""
    return start_router(env={"ROUTER_HEADER_TIMEOUT_SECONDS": "1", "ROUTER_KEEP_ALIVE_SECONDS": "1"})


def address(router: RouterProcess) -> tuple[str, int]:
    host, port = router.base_url.removeprefix("http://").split(":")
    return host, int(port)


def rss_kib(router: RouterProcess) -> int:
    assert router.pid is not None
    with open(f"/proc/{router.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_descriptors(router: RouterProcess) -> int:
    return len(os.listdir(f"/proc/{router.pid}/fd"))


def read_to_end(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the server hangs up; a server that keeps the connection fails (timeout)."""
    sock.settimeout(timeout)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def error_of(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head.lower(), head
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), orjson.loads(body)["code"]


# ---------------------------------------------------------------- the request head


def test_a_head_over_the_size_cap_is_431_and_the_connection_closed(strict_router):
    with socket.create_connection(address(strict_router), timeout=5) as sock:
        sock.sendall(HEAD + b"X-Long: " + b"a" * (16 * 1024))  # no end of line: still reading
        assert error_of(read_to_end(sock)) == (431, "HEADERS_TOO_LARGE")


def test_an_endless_header_line_is_cut_off_at_the_cap_without_growing_memory(strict_router):
    before = rss_kib(strict_router)
    sent = 0
    with socket.create_connection(address(strict_router), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX: ")
        try:
            while sent < 48 << 20:  # what the issue sent (+70 MB RSS, never returned)
                sock.sendall(b"a" * 16384)
                sent += 16384
                if select.select([sock], [], [], 0)[0]:  # answered (431) or hung up
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        with contextlib.suppress(ConnectionResetError):  # the unread rest of our bytes: a reset
            read_to_end(sock)  # the server must hang up (a timeout here fails the test)
    assert sent < 4 << 20, f"the router read {sent} bytes of one header line"
    assert rss_kib(strict_router) - before < 8 * 1024


def test_a_head_within_the_caps_is_served(strict_router):
    fields = b"".join(b"X-F%d: %s\r\n" % (n, b"v" * 100) for n in range(90))
    with socket.create_connection(address(strict_router), timeout=5) as sock:
        sock.sendall(HEAD + fields + b"Connection: close\r\n\r\n")
        assert read_to_end(sock).startswith(b"HTTP/1.1 200 ")


def test_more_header_fields_than_the_cap_is_431(strict_router):
    fields = b"".join(b"X-F%d: v\r\n" % n for n in range(101))
    with socket.create_connection(address(strict_router), timeout=5) as sock:
        sock.sendall(HEAD + fields + b"\r\n")
        assert error_of(read_to_end(sock)) == (431, "HEADERS_TOO_LARGE")


def test_a_head_that_does_not_arrive_in_time_is_refused_and_closed(strict_router):
    # The repro: a connection that sends half a head and waits (it held one for 10 minutes).
    with socket.create_connection(address(strict_router), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX: ")
        started = time.monotonic()
        answer = read_to_end(sock)
        waited = time.monotonic() - started
    assert error_of(answer) == (400, "INVALID_REQUEST")
    assert b"did not arrive within 1 s" in answer
    assert 0.8 < waited < 4.0


def test_trickling_a_head_does_not_extend_its_deadline(strict_router):
    with socket.create_connection(address(strict_router), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        closed_after = None
        for n in range(40):  # a header line a tenth of a second, for up to four seconds
            try:
                sock.sendall(b"X-%d: v\r\n" % n)
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            if select.select([sock], [], [], 0.1)[0]:
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None and closed_after < 3.0, closed_after


def test_a_connection_that_never_sends_is_closed_after_the_idle_timeout(strict_router):
    with socket.create_connection(address(strict_router), timeout=5) as sock:
        started = time.monotonic()
        assert read_to_end(sock) == b""
        assert 0.8 < time.monotonic() - started < 4.0


def test_a_kept_alive_connection_serves_several_requests_then_idles_out(strict_router):
    with socket.create_connection(address(strict_router), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(HEAD + b"\r\n")
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += sock.recv(65536)
        assert read_to_end(sock).count(b"HTTP/1.1") == 0  # then closed, idle


# ---------------------------------------------------------------- the connection cap


def test_past_the_connection_cap_the_longest_waiting_connection_makes_room(start_router, mock):
    router = start_router(env={"ROUTER_MAX_CONNECTIONS": "16", "ROUTER_KEEP_ALIVE_SECONDS": "60"})
    with ExitStack() as stack:
        idle = [stack.enter_context(socket.create_connection(address(router), timeout=5)) for _ in range(16)]
        answer = httpx.post(
            router.base_url + "/v1/chat/completions", json=CHAT, headers=auth(KEYS["user"]), trust_env=False
        )
        assert answer.status_code == 200, answer.text
        assert read_to_end(idle[0]) == b"", "the oldest idle connection was not closed"
        idle[-1].sendall(HEAD + b"Connection: close\r\n\r\n")  # the newest ones still work
        assert read_to_end(idle[-1]).startswith(b"HTTP/1.1 200 ")


def test_at_the_connection_cap_with_every_connection_busy_a_new_one_gets_503(start_router, mock):
    router = start_router(env={"ROUTER_MAX_CONNECTIONS": "16"})
    mock.configure(latency_ms=5000)  # each of the 16 is inside a request: none may be cut
    body = orjson.dumps(CHAT)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + KEYS["user"].secret.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with ExitStack() as stack:
        busy = [stack.enter_context(socket.create_connection(address(router), timeout=5)) for _ in range(16)]
        for sock in busy:
            sock.sendall(request)
        deadline = time.monotonic() + 10
        while mock.inference_requests < 16:  # all 16 reached the backend: busy
            assert time.monotonic() < deadline, f"{mock.inference_requests} of 16 reached the backend"
            time.sleep(0.02)
        with socket.create_connection(address(router), timeout=5) as extra:
            answer = read_to_end(extra)
        assert error_of(answer) == (503, "SERVICE_UNAVAILABLE")
        assert b"\r\nretry-after: 1\r\n" in answer.lower()
        assert select.select(busy, [], [], 0)[0] == [], "a busy connection was cut"


# ---------------------------------------------------------------- measured: a thousand slow clients


def _enough_file_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed <= hard or (soft < needed and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the router inherits it
    elif soft < needed:
        pytest.skip(f"ulimit -n is {hard} (hard); this test needs {needed} file descriptors")


def _p99_ms(client: httpx.Client, meter: StallMeter, requests: int = 50) -> float:
    """The round's p99 (its slowest of 50) less what the machine took away during the round: the
    router's and this process's run-queue wait and the hypervisor's steal (an idle machine: ~0)."""
    began = time.monotonic()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = client.post("/v1/chat/completions", json=CHAT, headers=auth(KEYS["user"]))
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text
    slowest = sorted(times)[int(0.99 * len(times)) - 1] if len(times) >= 100 else max(times)
    return max(min(times), slowest - meter.between(began, time.monotonic()) * 1000)


def _median_p99_ms(client: httpx.Client, meter: StallMeter, rounds: int = 5) -> float:
    """The median over rounds of each round's p99: one hiccup of a busy 2-core machine moves one
    round, not the figure; a busy stretch is taken out by the stall meter (a test-date run measured
    idle 4.8 ms, flooded 11.9 ms and after the flood 18.6 ms: the machine, not the flood)."""
    return statistics.median(_p99_ms(client, meter) for _ in range(rounds))


@pytest.fixture
def flood_router(start_router: Callable[..., RouterProcess]) -> Iterator[RouterProcess]:
    _enough_file_descriptors(FLOOD + 300)
    # Timeouts far off: the thousand connections stay for the whole measurement (the worst case).
    yield start_router(
        env={
            "ROUTER_KEEP_ALIVE_SECONDS": "300",
            "ROUTER_HEADER_TIMEOUT_SECONDS": "300",
            "ROUTER_BODY_TIMEOUT_SECONDS": "300",
        }
    )


def _flood(stack: ExitStack, router: RouterProcess) -> int:
    """FLOOD connections, a third each idle, in a head that never ends, in a body that never arrives;
    returns the router's open descriptors once it holds them (not queued in the listen backlog)."""
    for n in range(FLOOD):
        sock = stack.enter_context(socket.create_connection(address(router), timeout=5))
        if n % 3 == 1:  # a head that never ends
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif n % 3 == 2:  # a body (under the 64 KiB cap) that never arrives
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + KEYS["user"].secret.encode() + b"\r\n"
                b"Content-Length: 60000\r\n\r\n{"
            )
        # else idle: connected, nothing sent
    deadline = time.monotonic() + 15
    while (held := open_descriptors(router)) < FLOOD and time.monotonic() < deadline:
        time.sleep(0.1)
    return held


def _settled_rss_kib(router: RouterProcess, bound_kib: int) -> int:
    """The router's RSS once it is at most ``bound_kib`` (polled, with a deadline), else the last."""
    deadline = time.monotonic() + 15
    while (rss := rss_kib(router)) > bound_kib and time.monotonic() < deadline:
        time.sleep(0.2)
    return rss


def test_a_thousand_slow_or_idle_connections_do_not_stop_legitimate_traffic(
    flood_router, mock, record_property
):
    router = flood_router
    assert router.pid is not None
    with (
        httpx.Client(base_url=router.base_url, trust_env=False, timeout=10) as client,
        StallMeter((router.pid, os.getpid()), interval_s=0.02) as meter,
    ):
        _p99_ms(client, meter)  # warm up
        baseline_kib = rss_kib(router)
        idle_ms = _median_p99_ms(client, meter)
        with ExitStack() as stack:
            held = _flood(stack, router)
            loaded_ms = _median_p99_ms(client, meter)
            flooded_kib = rss_kib(router)
        # They went: the router's memory returns near its baseline.
        after_kib = _settled_rss_kib(router, baseline_kib + NEAR_KIB)
        after_ms = _median_p99_ms(client, meter, rounds=3)
        # What stays is the allocator's pools for that many connections at once, reused by the next
        # thousand, not memory per connection served: a second flood ends on the same plateau.
        with ExitStack() as stack:
            _flood(stack, router)
        second_kib = _settled_rss_kib(router, after_kib + PLATEAU_KIB)
    figures = {
        "idle_p99_ms": round(idle_ms, 2),
        "flooded_p99_ms": round(loaded_ms, 2),
        "after_p99_ms": round(after_ms, 2),
        "baseline_rss_mib": round(baseline_kib / 1024, 1),
        "flooded_rss_mib": round(flooded_kib / 1024, 1),
        "after_rss_mib": round(after_kib / 1024, 1),
        "after_second_flood_rss_mib": round(second_kib / 1024, 1),
        "router_descriptors_flooded": held,
        "machine_stall_s": round(meter.total_s, 2),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }
    record_property("figures", figures)
    print("http limits:", figures)
    assert held >= FLOOD, figures
    # Twice the idle server's p99; 2 ms of slack so a sub-millisecond idle figure is not the bound.
    assert loaded_ms <= 2 * idle_ms + 2.0, figures
    assert flooded_kib - baseline_kib <= 32 * 1024, figures  # ~32 KiB a connection at most
    assert after_kib <= baseline_kib + NEAR_KIB, figures
    assert second_kib <= after_kib + PLATEAU_KIB, figures


# ---------------------------------------------------------------- the pinned uvicorn internals


def test_the_uvicorn_hooks_the_limits_rely_on_are_still_there():
    """LimitedHttpToolsProtocol overrides these; a uvicorn upgrade that changes them must fail here
    (and be re-checked) rather than silently drop a limit."""
    assert uvicorn.__version__ == "0.54.0"
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_header",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
        "timeout_keep_alive_handler",
    ):
        assert name in HttpToolsProtocol.__dict__, name
        assert name == "timeout_keep_alive_handler" or name in LimitedHttpToolsProtocol.__dict__
    # A parser error (what a refused head raises from its callback) goes to send_400_response.
    source = inspect.getsource(HttpToolsProtocol.data_received)
    assert "except httptools.HttpParserError" in source and "self.send_400_response" in source
    assert "self.timeout_keep_alive_task" in inspect.getsource(HttpToolsProtocol.on_response_complete)
