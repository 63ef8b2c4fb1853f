"""Failover inside one request (issue 17.4): which failed attempts move on to the next backend,
with the in-memory backend port (tests/harness/fake_backends.py) in place of HTTP, saturation and
breakers, and where each backend's model name comes from."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest

from router_impl.config.model import BackendConfig, ModelPolicy, RuntimeConfig, WeightedBackend
from router_impl.errors import ApiError
from router_impl.routing.backend_errors import BackendCallError, FailureReason, error_for_status
from router_impl.routing.backend_port import BackendReply, BackendRequest
from router_impl.routing.dispatcher import Dispatcher
from router_impl.routing.engine import Candidate, RouteDecision, RouteRequest, plan_route
from router_impl.routing.health import BackendHealth
from tests.harness.clock import ManualClock
from tests.harness.fake_backends import Fails, FakeBackends, chat_reply

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

    dispatcher = Dispatcher(FakeBackends(), BackendHealth())
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


def through(port: FakeBackends) -> Callable[[Candidate], Awaitable[BackendReply]]:
    """The pipeline's ``send``: one call through the backend port."""

    async def send(candidate: Candidate) -> BackendReply:
        return await port.send(candidate.backend, BackendRequest("chat", b"{}", "", "r", None))

    return send


async def test_a_backend_at_its_max_in_flight_is_skipped_and_all_saturated_is_503() -> None:
    port = FakeBackends(busy={"a": 256})
    port.script("b", chat_reply())
    dispatcher = Dispatcher(port, BackendHealth())
    done = await dispatcher.call(decision(), through(port))
    assert (done.candidate.backend.id, done.index, done.attempts) == ("b", 1, 1)
    port.busy["b"] = 256
    with pytest.raises(ApiError) as refused:
        await dispatcher.call(decision(), through(port))
    assert (refused.value.code, refused.value.headers) == ("SERVICE_UNAVAILABLE", {"Retry-After": "1"})
    assert port.called() == ["b"]


async def test_failures_open_the_breaker_and_later_requests_skip_the_backend_until_it_cools_down() -> None:
    port, clock = FakeBackends(), ManualClock()
    port.script("a", Fails(error_for_status("a", 503, b"{}", {})), chat_reply())
    port.script("b", chat_reply())
    dispatcher = Dispatcher(port, BackendHealth(clock, cool_down_s=30))
    for _ in range(2):
        assert (
            await dispatcher.call(decision(failover_threshold=1), through(port))
        ).candidate.backend.id == "b"
    assert port.called() == ["a", "b", "b"]  # the open breaker kept the second request off a
    clock.advance(31)
    assert (await dispatcher.call(decision(failover_threshold=1), through(port))).candidate.backend.id == "a"
