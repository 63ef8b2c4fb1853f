"""Failover inside one request (issue 17.4): which failed attempts move on to the next backend,
with an in-memory ``send`` in place of the HTTP call, and where each backend's model name comes from."""

from __future__ import annotations

import random

import pytest

from router_impl.config.model import BackendConfig, ModelPolicy, RuntimeConfig, WeightedBackend
from router_impl.routing.backend_client import BackendClient
from router_impl.routing.backend_errors import BackendCallError, FailureReason, error_for_status
from router_impl.routing.dispatcher import Dispatcher
from router_impl.routing.engine import Candidate, RouteDecision, RouteRequest, plan_route
from router_impl.routing.health import BackendHealth

BACKENDS = tuple(BackendConfig(id=name, base_url=f"http://{name}.invalid/v1") for name in ("a", "b"))


def decision(**policy: object) -> RouteDecision:
    model = ModelPolicy(
        model="m", backends=tuple(WeightedBackend(backend_id=b.id) for b in BACKENDS), **policy
    )
    return RouteDecision(model, tuple(Candidate(b, "m", 100.0) for b in BACKENDS), "PRIMARY", None)


def broken(reason: FailureReason, *, status: int | None = None, processed: bool = True) -> BackendCallError:
    if status is not None:
        return error_for_status("a", status, b"{}", {})
    return BackendCallError("BACKEND_UNAVAILABLE", reason=reason, maybe_processed=processed, backend_id="a")


async def attempt(first_failure: BackendCallError, **policy: object) -> tuple[list[str], str]:
    """Backend a fails with ``first_failure``; b answers. The backends tried, and who answered."""
    tried: list[str] = []

    async def send(candidate: Candidate) -> str:
        tried.append(candidate.backend.id)
        if candidate.backend.id == "a":
            raise first_failure
        return "answer from b"

    dispatcher = Dispatcher(BackendClient(secrets={}), BackendHealth())
    try:
        done = await dispatcher.call(decision(**policy), send)
    except BackendCallError as exc:
        return tried, exc.code
    assert done.attempts == len(tried)  # what the usage record's retry_count counts
    return tried, done.result


@pytest.mark.parametrize(
    "failure",
    [
        broken("connect", processed=False),
        broken("reset"),  # the connection broke after the send, before the status line
        BackendCallError("BACKEND_TIMEOUT", reason="timeout", maybe_processed=True, backend_id="a"),
        broken("status", status=502),
        broken("status", status=503),
        broken("status", status=504),
        broken("status", status=429),
    ],
    ids=["connect", "reset", "timeout", "502", "503", "504", "429"],
)
async def test_failures_before_an_answer_move_on_to_the_next_backend(failure: BackendCallError) -> None:
    assert await attempt(failure) == (["a", "b"], "answer from b")


@pytest.mark.parametrize(
    "failure",
    [
        broken("disconnect"),  # part of the answer had arrived: the backend ran it
        broken("bad_response"),
        broken("status", status=500),
    ],
    ids=["disconnect-mid-answer", "garbage", "500"],
)
async def test_failures_after_an_answer_began_are_the_answer(failure: BackendCallError) -> None:
    tried, code = await attempt(failure)
    assert tried == ["a"]
    assert code == failure.code


async def test_retry_on_makes_a_500_move_on_and_can_stop_a_502_from_doing_so() -> None:
    assert await attempt(broken("status", status=500), retry_on=(500,)) == (["a", "b"], "answer from b")
    assert (await attempt(broken("status", status=502), retry_on=()))[0] == ["a"]


def test_retry_on_takes_server_error_statuses_only() -> None:
    with pytest.raises(ValueError, match="500 to 599"):
        decision(retry_on=(429,))


def test_upstream_model_names_the_model_for_one_backend_of_a_policy() -> None:
    config = RuntimeConfig(
        backends=(
            BackendConfig(id="vllm", base_url="http://vllm.invalid/v1", models=("Qwen/Qwen2.5-7B-Instruct",)),
            BackendConfig(id="other", base_url="http://other.invalid/v1"),
        ),
        models=(
            ModelPolicy(
                model="chat-small",
                backends=(
                    WeightedBackend(backend_id="vllm", weight=100, upstream_model="qwen2.5-7b"),
                    WeightedBackend(backend_id="other", weight=0),
                ),
            ),
        ),
    )
    planned = plan_route(config, BackendHealth(), RouteRequest("chat-small", "org", "key"), random.Random(1))
    assert [(c.backend.id, c.backend_model) for c in planned.candidates] == [
        ("vllm", "qwen2.5-7b"),
        ("other", "chat-small"),  # no mapping, lists no models: the public name
    ]
