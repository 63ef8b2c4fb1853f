"""Issue 17.4: a backend process SIGKILLed under load costs no client an error.

Four clients keep a real router busy on one model with two real backend processes: ``primary``
(weight 100) and ``standby`` (weight 0, failover only). The primary answers after 200 ms (the
standby after 10 ms), so when it is killed right after one answer the router holds the other
clients' requests, already sent there. Each of those broke
before any byte of its answer arrived: the router sends it to the standby within the request's
deadline, and bills only the attempt that answered (one usage record, ``retry_count`` 1).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import records_for
from tests.harness.backend_proc import BackendProcess
from tests.harness.bodies import chat_body
from tests.harness.config_docs import backend_doc, failover_model, key_record, write_config
from tests.harness.router_proc import RouterFleet, RouterProcess

MODEL = "kill-model"
KEY = "rk_chaos_backend_kill"
ADMIN_KEY = "rk_chaos_backend_kill_admin"
CLIENTS = 4
PRIMARY_LATENCY_MS = 200
STANDBY_LATENCY_MS = 10
ANSWERS_BEFORE_KILL = 20
ANSWERS_AFTER_KILL = 60
LOAD_LIMIT_S = 20.0  # the whole load; it takes ~2 s on an idle machine


@dataclass(frozen=True)
class Answer:
    request_id: str
    status: int | None  # None: no HTTP answer at all
    backend: str | None
    detail: str


@pytest.fixture
def kill_rig(tmp_path: Path) -> Iterator[tuple[RouterProcess, BackendProcess, BackendProcess]]:
    with (
        BackendProcess(MODEL, latency_ms=PRIMARY_LATENCY_MS, workdir=tmp_path / "primary") as primary,
        BackendProcess(MODEL, latency_ms=STANDBY_LATENCY_MS, workdir=tmp_path / "standby") as standby,
    ):
        backends = [
            backend_doc(
                backend_id,
                backend.openai_base_url,
                MODEL,
                timeout_ms=5_000,
                health_check={"path": "/health", "interval_seconds": 60, "timeout_ms": 300},
            )
            for backend_id, backend in (("primary", primary), ("standby", standby))
        ]
        config: dict[str, Any] = {
            "backends": backends,
            "models": [failover_model(MODEL, "primary", "standby", warmup_seconds=0)],
            "api_keys": [
                key_record("key-kill", "org-kill", KEY),
                key_record("key-ops", "org-ops", ADMIN_KEY, scopes=["admin"]),
            ],
        }
        path = write_config(tmp_path, config)
        fleet = RouterFleet(tmp_path / "routers")
        try:
            router = fleet.start(env={"ROUTER_CONFIG_PATH": str(path), "ROUTER_ACCESS_LOG": "false"})
            yield router, primary, standby
        finally:
            fleet.close()


def _body(kind: str, request_id: str) -> tuple[str, dict[str, Any]]:
    if kind == "inference":
        return "/v1/inference", {"request_id": request_id, "model": MODEL, "payload": "are you there"}
    return "/v1/chat/completions", chat_body(MODEL, "are you there")


def _kill_while_it_holds_requests(
    router: RouterProcess, primary: BackendProcess, answers: list[Answer]
) -> int:
    """SIGKILL the primary once ANSWERS_BEFORE_KILL answers have arrived and the router has at least
    two calls under way there (its admin API says); the number of answers at that moment."""
    deadline = time.monotonic() + LOAD_LIMIT_S / 2
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=router.base_url, trust_env=False, timeout=5.0, headers=admin) as http:
        while True:
            assert time.monotonic() < deadline, "the primary never held two requests at once"
            if len(answers) >= ANSWERS_BEFORE_KILL:
                status = http.get("/v1/admin/backends/primary")
                assert status.status_code == 200, status.text
                if status.json()["in_flight"] >= 2:
                    primary.kill()  # SIGKILL: the kernel closes its connections mid-request
                    return len(answers)
            time.sleep(0.005)  # a polling interval, not a synchronisation


async def _hammer(router: RouterProcess, primary: BackendProcess) -> tuple[list[Answer], int]:
    """CLIENTS clients in a loop until ANSWERS_AFTER_KILL answers after the primary was killed."""
    answers: list[Answer] = []
    killed_at: list[int] = []
    kinds = itertools.cycle(("chat", "inference"))
    give_up = time.monotonic() + LOAD_LIMIT_S

    def going() -> bool:
        return time.monotonic() < give_up and not (
            killed_at and len(answers) >= killed_at[0] + ANSWERS_AFTER_KILL
        )

    async def client() -> None:
        async with httpx.AsyncClient(
            base_url=router.base_url,
            trust_env=False,
            timeout=10.0,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as http:
            while going():
                request_id = str(uuid.uuid4())
                path, body = _body(next(kinds), request_id)
                try:
                    response = await http.post(path, json=body, headers={"X-Request-ID": request_id})
                    answer = Answer(
                        request_id,
                        response.status_code,
                        response.headers.get("x-routing-backend"),
                        response.text[:200],
                    )
                except httpx.HTTPError as exc:
                    answer = Answer(request_id, None, None, type(exc).__name__)
                answers.append(answer)

    async def killer() -> None:
        killed_at.append(await asyncio.to_thread(_kill_while_it_holds_requests, router, primary, answers))

    await asyncio.gather(killer(), *(client() for _ in range(CLIENTS)))
    return answers, killed_at[0]


def test_a_backend_killed_under_load_costs_no_client_an_error(kill_rig) -> None:
    router, primary, _standby = kill_rig
    answers, killed_at = asyncio.run(_hammer(router, primary))

    assert killed_at > 0, "the load never reached the kill"
    assert len(answers) >= killed_at + ANSWERS_AFTER_KILL, f"the load stalled: {len(answers)} answers"
    errors = [a for a in answers if a.status != 200]
    assert not errors, f"{len(errors)} of {len(answers)} clients saw an error, e.g. {errors[:3]}"
    assert {a.backend for a in answers[:ANSWERS_BEFORE_KILL]} == {"primary"}
    assert {a.backend for a in answers[-10:]} == {"standby"}

    # The kill hit requests the primary held (sent, unanswered): they moved to the standby.
    log = router.log_text()
    resent = [line for line in log.splitlines() if "backend_failover" in line and "reset" in line]
    primary_events = [line[:160] for line in log.splitlines() if '"primary"' in line][:6]
    assert resent, f"no request was in flight at the primary when it died: {primary_events}"
    # Each answered request has one usage record, from the backend that answered; the retried ones
    # count their retry.
    by_id = {a.request_id: records_for(router, a.request_id) for a in answers}
    assert all(len(records) == 1 for records in by_id.values()), "a request was billed twice or not at all"
    retried = [r[0] for r in by_id.values() if r[0]["retry_count"] > 0]
    assert retried and {(r["backend_id"], r["retry_count"]) for r in retried} == {("standby", 1)}
    print(
        f"\nKILL: {len(answers)} answers, primary killed after {killed_at}, {len(retried)} retried, 0 errors"
    )
