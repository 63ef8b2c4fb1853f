"""Dev servers: `up`, `down` and `status` for local Redis, etcd and Tansu kept under .dev-services/.

eval "$(.venv/bin/python tools/services.py up)"   # exports ROUTER_REDIS_URL, ... for this shell
.venv/bin/python tools/services.py status
.venv/bin/python tools/services.py down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # so `tests.harness` imports when run as a script

from tests.harness.kafka import kafka_ready  # noqa: E402
from tests.harness.probes import etcd_healthy, redis_ping  # noqa: E402
from tests.harness.process import ManagedProcess  # noqa: E402
from tests.harness.services import EtcdServer, KafkaBroker, RedisServer, router_service_env  # noqa: E402

STATE_DIR = REPO_ROOT / ".dev-services"
STATE_FILE = STATE_DIR / "state.json"
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServiceRecord:
    name: str
    pid: int
    binary: str
    port: int  # the client-facing port
    workdir: str


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _is_alive(record: ServiceRecord) -> bool:
    """True when `record.pid` still runs `record.binary` (guards against a reused PID)."""
    proc = Path("/proc") / str(record.pid)
    try:
        stat = (proc / "stat").read_text()
        executable = os.readlink(proc / "exe")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    # Compared resolved: Debian's redis-server is a symlink to redis-check-rdb.
    return state != "Z" and executable == os.path.realpath(record.binary)


def _is_healthy(record: ServiceRecord) -> bool:
    probes: dict[str, Callable[[int], bool]] = {
        "redis": redis_ping,
        "etcd": etcd_healthy,
        "kafka": kafka_ready,
    }
    return probes[record.name](record.port)


def _read_state() -> tuple[list[ServiceRecord], dict[str, str]]:
    try:
        state = json.loads(STATE_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return [], {}
    return [ServiceRecord(**item) for item in state["services"]], dict(state["env"])


def _write_state(records: list[ServiceRecord], env: dict[str, str]) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    payload = {"services": [asdict(record) for record in records], "env": env}
    STATE_FILE.write_text(json.dumps(payload, indent=2) + "\n")


def _print_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        print(f"export {key}={value}")


def _record(name: str, service: ManagedProcess, port: int) -> ServiceRecord:
    assert service.pid is not None
    return ServiceRecord(name, service.pid, service.command()[0], port, str(service.workdir))


def _fresh_workdir(name: str) -> Path:
    workdir = STATE_DIR / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir


def _start_all() -> tuple[list[ServiceRecord], dict[str, str]]:
    started: list[ManagedProcess] = []
    try:
        redis = RedisServer(workdir=_fresh_workdir("redis"))
        started.append(redis.start())
        etcd = EtcdServer(workdir=_fresh_workdir("etcd"))
        started.append(etcd.start())
        kafka = KafkaBroker(workdir=_fresh_workdir("kafka"))
        started.append(kafka.start())
    except BaseException:
        for service in started:
            service.stop()
        raise
    for service in started:
        _log(f"{service.name}: pid {service.pid}, healthy in {service.last_start_seconds or 0:.2f} s")
    records = [
        _record("redis", redis, redis.port),
        _record("etcd", etcd, etcd.client_port),
        _record("kafka", kafka, kafka.port),
    ]
    return records, router_service_env(redis, etcd, kafka)


def _stop(record: ServiceRecord) -> None:
    if not _is_alive(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGTERM)  # each server leads its own session
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
    _log(f"{record.name}: stopped pid {record.pid}")


def up() -> int:
    records, env = _read_state()
    if records and all(_is_alive(record) for record in records):
        _log("dev services already running")
        _print_env(env)
        return 0
    for record in records:
        _stop(record)
    records, env = _start_all()
    _write_state(records, env)
    _log(f"state in {STATE_FILE}; stop with: python tools/services.py down")
    _print_env(env)
    return 0


def down() -> int:
    records, _ = _read_state()
    if not records:
        _log("no dev services recorded")
    for record in records:
        _stop(record)
    STATE_FILE.unlink(missing_ok=True)
    return 0


def status() -> int:
    records, env = _read_state()
    if not records:
        _log("no dev services recorded (run: python tools/services.py up)")
        return 1
    all_healthy = True
    for record in records:
        alive = _is_alive(record)
        healthy = alive and _is_healthy(record)
        all_healthy = all_healthy and healthy
        state = "healthy" if healthy else ("running, unhealthy" if alive else "not running")
        print(f"{record.name:<6} pid {record.pid:<8} port {record.port:<6} {state}  (logs: {record.workdir})")
    _print_env(env)
    return 0 if all_healthy else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    commands = {"up": up, "down": down, "status": status}
    return commands[parser.parse_args().command]()


if __name__ == "__main__":
    sys.exit(main())
