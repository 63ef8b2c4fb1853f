"""Cheap, short-timeout health probes (TCP, Redis PING, HTTP) used while waiting for servers."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from tests.harness.ports import LOOPBACK

PROBE_TIMEOUT_S = 0.5


def _direct_opener() -> urllib.request.OpenerDirector:
    """An opener that ignores http_proxy: probes always target loopback."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def accepts_connections(port: int, host: str = LOOPBACK, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(port: int, host: str = LOOPBACK, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a Redis server answers PING with +PONG (a loading Redis answers -LOADING)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def http_answers(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when anything speaks HTTP at `url`, whatever the status code."""
    try:
        with _direct_opener().open(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def http_json(url: str, timeout: float = PROBE_TIMEOUT_S) -> object:
    """GET `url` and decode its JSON body; None when unreachable, non-2xx or not JSON."""
    try:
        with _direct_opener().open(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def etcd_healthy(client_port: int, host: str = LOOPBACK, timeout: float = PROBE_TIMEOUT_S) -> bool:
    body = http_json(f"http://{host}:{client_port}/health", timeout)
    return isinstance(body, dict) and body.get("health") == "true"
