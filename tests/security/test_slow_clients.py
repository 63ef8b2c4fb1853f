"""Slow clients (slowloris: headers or a body trickling in) hold a connection each, never the worker:
while hundreds of them dawdle, a normal request is served at once."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.conftest import KEYS, MODEL, auth
from tests.harness.bodies import chat_body
from tests.harness.router_proc import RouterProcess
from tests.harness.stall import StallMeter

SLOW_CLIENTS = 300


@pytest.fixture(scope="module")
def router(start_router: Callable[..., RouterProcess]) -> RouterProcess:
    return start_router()


@pytest.fixture
def slow_sockets(router: RouterProcess) -> Iterator[list[socket.socket]]:
    host, port = router.base_url.removeprefix("http://").split(":")
    opened: list[socket.socket] = []
    try:
        for n in range(SLOW_CLIENTS):
            sock = socket.create_connection((host, int(port)), timeout=5)
            if n % 2:  # headers that never end
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:  # a body that never arrives
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + KEYS["user"].secret.encode() + b"\r\n"
                    b"Content-Length: 100000\r\n\r\n{"
                )
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_hundreds_of_slow_clients_do_not_delay_a_normal_request(router, slow_sockets, mock) -> None:
    time.sleep(0.5)  # let the router take them all in
    started = time.monotonic()
    with StallMeter((router.pid, os.getpid()), interval_s=0.02) as meter:
        answer = httpx.post(
            router.base_url + "/v1/chat/completions",
            json=chat_body(MODEL, "still there?"),
            headers=auth(KEYS["user"]),
            trust_env=False,
            timeout=10,
        )
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    stall = meter.total_s  # what the machine took from the router and this process meanwhile
    assert elapsed < 1.0 + stall, (
        f"a normal request took {elapsed:.2f} s behind {SLOW_CLIENTS} slow clients (stall {stall:.2f} s)"
    )
    assert httpx.get(router.base_url + "/v1/status/healthz", trust_env=False, timeout=5).status_code == 200
    # The dawdling uploads reached no backend.
    assert mock.inference_requests == 1


def test_a_body_that_does_not_arrive_in_time_is_refused_and_frees_its_connection(start_router) -> None:
    router = start_router(env={"ROUTER_BODY_TIMEOUT_SECONDS": "1"})
    host, port = router.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEYS["user"].secret.encode() + b"\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        answer = sock.recv(65536)
        waited = time.monotonic() - started
        # Read to the end: the head and the body may come in separate segments. The end (b"") must
        # come from the server hanging up (else recv times out and the test fails): nothing of the
        # connection is held any longer.
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"did not arrive within 1 s" in answer
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert 0.8 < waited < 3.0
