"""The pipeline's non-streamed path in process (fake backend port): routing, failover, idempotency,
limits and accounting, each request's stages undone on every way out. Milliseconds per test."""

from __future__ import annotations

import orjson
import pytest

from router_impl.config.model import BudgetLimits, OrgLimits, RateLimitConfig
from router_impl.errors import ApiError
from router_impl.limits.service import LimitDenied
from router_impl.pipeline import Call, Completed, FinalReply
from router_impl.routing.backend_errors import error_for_status
from tests.harness.bodies import chat_body
from tests.harness.fake_backends import Fails, chat_reply
from tests.harness.pipeline_rig import MODEL, Rig, rig


def passthrough(call: Call, completed: Completed) -> FinalReply:
    return FinalReply(200, completed.raw, headers=completed.routed.headers)


async def complete(r: Rig, call: Call) -> FinalReply:
    return await r.pipeline.complete(call, passthrough)


async def test_a_completion_is_served_by_the_first_backend_billed_and_audited() -> None:
    r = rig()
    r.backends.script("a", chat_reply("hello", prompt_tokens=3, completion_tokens=2))
    reply = await complete(r, r.call())
    assert orjson.loads(reply.body)["choices"][0]["message"]["content"] == "hello"
    assert reply.headers == {"X-Routing-Backend": "a", "X-Routing-Decision": "PRIMARY"}
    assert r.backends.called() == ["a"] and r.backends.bodies()[0]["model"] == MODEL
    [record] = r.usage.records
    assert (record.backend_id, record.decision_reason, record.retry_count) == ("a", "PRIMARY", 0)
    assert (record.tokens_input, record.tokens_output, record.status_code, record.stream) == (
        3,
        2,
        200,
        False,
    )
    [event] = r.audit.events
    assert (event.action, event.routing_backend_id, event.metadata["status"]) == (
        "REQUEST_ALLOWED",
        "a",
        "200",
    )


async def test_a_backend_failing_before_its_answer_fails_over_and_the_record_counts_the_retry() -> None:
    r = rig()
    r.backends.script("a", Fails(error_for_status("a", 503, b"{}", {})))
    r.backends.script("b", chat_reply())
    reply = await complete(r, r.call())
    assert reply.headers["X-Routing-Backend"] == "b" and r.backends.called() == ["a", "b"]
    [record] = r.usage.records
    assert (record.backend_id, record.decision_reason, record.retry_count) == ("b", "FAILOVER", 1)


async def test_an_unknown_model_is_not_found_naming_the_models_the_key_may_use() -> None:
    r = rig()
    with pytest.raises(ApiError) as raised:
        await complete(r, r.call({"model": "nope", "messages": []}))
    assert raised.value.code == "MODEL_NOT_FOUND"
    assert raised.value.message == "Unknown model 'nope'. Available models: m."
    assert r.backends.requests == [] and r.usage.records == []


async def test_a_retry_with_the_same_key_replays_the_stored_reply_and_is_not_billed_again() -> None:
    r = rig()
    r.backends.script("a", chat_reply("once"))
    first = await complete(r, r.call(key="k1"))
    again = await complete(r, r.call(key="k1"))
    assert again.body == first.body and again.headers["Idempotent-Replayed"] == "true"
    assert len(r.backends.requests) == 1 and len(r.usage.records) == 1


async def test_a_reused_key_with_another_body_is_refused() -> None:
    r = rig()
    r.backends.script("a", chat_reply())
    await complete(r, r.call(key="k1"))
    with pytest.raises(ApiError) as raised:
        await complete(r, r.call(chat_body(MODEL, "other"), key="k1"))
    assert raised.value.status_code == 409


async def test_a_failed_call_releases_the_key_and_refunds_the_budget_so_the_retry_runs() -> None:
    # One reservation fits the day's budget, two do not: the retry is admitted only after a refund.
    r = rig(org_limits=OrgLimits(budgets=BudgetLimits(daily_tokens=250)))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 150}
    r.backends.script("a", Fails(error_for_status("a", 500, b"{}", {})), chat_reply())
    with pytest.raises(ApiError) as failed:
        await complete(r, r.call(body, key="k2"))
    assert failed.value.code == "BACKEND_ERROR"
    reply = await complete(r, r.call(body, key="k2"))
    assert reply.status == 200
    assert len(r.backends.requests) == 2 and len(r.usage.records) == 1


async def test_a_rate_limited_request_is_accounted_and_never_reaches_a_backend() -> None:
    r = rig(org_limits=OrgLimits(rate_limits=RateLimitConfig(requests_per_minute=1)))
    r.backends.script("a", chat_reply())
    allowed = await complete(r, r.call())
    assert allowed.headers["RateLimit-Limit"] == "1"
    with pytest.raises(LimitDenied) as denied:
        await complete(r, r.call())
    assert denied.value.status_code == 429 and r.backends.called() == ["a"]
    refused = r.usage.records[-1]
    assert (refused.decision_reason, refused.limit_state, refused.tokens_input) == (
        "RATE_LIMIT",
        "RATE_LIMITED",
        0,
    )
    assert refused.metadata["denial_code"] == denied.value.code
    assert [e.action for e in r.audit.events] == ["REQUEST_ALLOWED", "REQUEST_DENIED"]


async def test_with_a_budget_max_tokens_is_clamped_to_the_cap_before_the_backend_sees_it() -> None:
    r = rig(org_limits=OrgLimits(budgets=BudgetLimits(daily_tokens=100_000), max_tokens_cap=64))
    r.backends.script("a", chat_reply())
    await complete(r, r.call({"model": MODEL, "messages": [], "max_tokens": 5000}))
    assert r.backends.bodies()[0]["max_tokens"] == 64
    snapshot = r.usage.records[0].metadata
    assert snapshot["budget_period"] == "DAILY" and int(snapshot["budget_tokens_remaining"]) == 100_000 - 5


async def test_a_full_usage_outbox_refuses_before_any_backend_work() -> None:
    r = rig()
    r.accepting[0] = False
    with pytest.raises(ApiError) as raised:
        await complete(r, r.call(key="k3"))
    assert (raised.value.status_code, raised.value.headers) == (503, {"Retry-After": "30"})
    assert r.backends.requests == [] and r.usage.records == []


async def test_a_usage_record_that_cannot_be_stored_answers_503_and_frees_the_key() -> None:
    r = rig()
    r.backends.script("a", chat_reply())
    r.usage.failing = True
    with pytest.raises(ApiError) as raised:
        await complete(r, r.call(key="k4"))
    assert raised.value.code == "SERVICE_UNAVAILABLE" and raised.value.headers == {"Retry-After": "5"}
    r.usage.failing = False
    reply = await complete(r, r.call(key="k4"))  # the key was released: the retry runs, and is billed
    assert "Idempotent-Replayed" not in reply.headers and len(r.usage.records) == 1
