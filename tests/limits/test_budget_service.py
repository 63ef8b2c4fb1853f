"""BudgetServiceClient against the mock budget service: caching, single flight, fail-static, back-off,
and the bounds of its cache (its reading of answers: tests/limits/test_budget_service_answers.py)."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from router_impl.limits.budget_service import (
    BudgetServiceUnavailable,
)
from tests.harness.wait import eventually

ORG = "org-a"


async def test_answer_is_cached_for_the_ttl_the_service_gives(budget_service, make_client, clock):
    budget_service.set_budget(ORG, daily_tokens=100)
    budget_service.configure(cache_ttl_seconds=30)
    client = make_client()
    for _ in range(10):
        assert (await client.budgets(ORG)).daily_tokens == 100
    assert (budget_service.calls(ORG), client.cache_hits) == (1, 9)
    budget_service.set_budget(ORG, daily_tokens=200)
    clock.advance(29.999)
    assert (await client.budgets(ORG)).daily_tokens == 100
    clock.advance(0.001)
    assert (await client.budgets(ORG)).daily_tokens == 200
    assert budget_service.calls(ORG) == 2


async def test_ttl_zero_answers_are_never_served_from_cache_but_back_an_outage(
    budget_service, make_client, clock
):
    budget_service.set_budget(ORG, daily_tokens=100)
    budget_service.configure(cache_ttl_seconds=0)
    client = make_client()
    for _ in range(3):
        await client.budgets(ORG)
    assert budget_service.calls(ORG) == 3 and client.cache_hits == 0
    budget_service.configure(fixed_status=500)
    assert (await client.budgets(ORG)).daily_tokens == 100
    assert client.degraded and client.stale_served == 1


async def test_unknown_organisation_has_no_budget_and_is_remembered_briefly(
    budget_service, make_client, clock
):
    client = make_client(negative_ttl=5)
    assert await client.budgets(ORG) is None
    assert await client.budgets(ORG) is None
    assert budget_service.calls(ORG) == 1
    budget_service.set_budget(ORG, daily_tokens=7)  # defined just now
    clock.advance(4.9)
    assert await client.budgets(ORG) is None
    clock.advance(0.1)
    assert (await client.budgets(ORG)).daily_tokens == 7
    assert budget_service.calls(ORG) == 2 and not client.degraded


async def test_fifty_concurrent_lookups_of_one_org_make_one_call(budget_service, make_client):
    budget_service.set_budget(ORG, daily_tokens=100)
    budget_service.configure(latency_ms=100)
    client = make_client()
    results = await asyncio.gather(*(client.budgets(ORG) for _ in range(50)))
    assert {r.daily_tokens for r in results} == {100}
    assert budget_service.calls() == 1 and client.calls == 1


async def test_fifty_concurrent_lookups_during_an_outage_make_one_call(budget_service, make_client, clock):
    budget_service.set_budget(ORG, daily_tokens=100)
    client = make_client()
    await client.budgets(ORG)
    budget_service.configure(latency_ms=100, fixed_status=500)
    clock.advance(61)
    results = await asyncio.gather(*(client.budgets(ORG) for _ in range(50)))
    assert {r.daily_tokens for r in results} == {100}
    assert budget_service.calls() == 2 and client.stale_served == 50


async def test_a_caller_giving_up_does_not_cancel_the_lookup_others_wait_for(budget_service, make_client):
    budget_service.set_budget(ORG, daily_tokens=100)
    budget_service.configure(latency_ms=500)
    client = make_client(timeout=5.0)
    impatient = asyncio.create_task(client.budgets(ORG))
    patient = asyncio.create_task(client.budgets(ORG))
    await eventually(lambda: budget_service.calls() == 1, what="the one lookup at the budget service")
    assert not patient.done()  # both are waiting on that one lookup when the first gives up
    impatient.cancel()
    assert (await patient).daily_tokens == 100
    assert budget_service.calls() == 1


@pytest.mark.parametrize("fault", ["status_500", "status_503", "hang", "bad_json", "reset", "down"])
async def test_outage_serves_the_last_good_answer_within_the_stale_window(
    budget_service, make_client, clock, fault
):
    budget_service.set_budget(ORG, daily_tokens=100, monthly_usd=0.1)
    # A hang costs the client's timeout, three times here; the healthy first call must fit in it too.
    timeout = 2.0 if fault == "hang" else 10.0
    client = make_client(timeout=timeout, stale_window=900, retry_after_failure=1.0)
    expected = await client.budgets(ORG)
    assert not client.degraded

    if fault.startswith("status_"):
        budget_service.configure(fixed_status=int(fault.removeprefix("status_")))
    elif fault == "down":
        budget_service.down()
    else:
        budget_service.configure(**{fault: True})

    clock.advance(61)  # the answer is no longer fresh: the client must ask, and cannot
    assert await client.budgets(ORG) == expected
    assert client.degraded and client.stale_served == 1 and client.failures == 1
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets("org-never-seen")  # nothing to fall back on

    clock.advance(900 - 61 - 1)  # just inside the window since the service last answered
    assert await client.budgets(ORG) == expected
    clock.advance(1)  # 900 s after the last good answer
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets(ORG)
    assert client.degraded


async def test_no_prior_answer_means_unavailable(budget_service, make_client):
    budget_service.set_budget(ORG, daily_tokens=100)
    budget_service.configure(fixed_status=500)
    client = make_client()
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets(ORG)
    assert client.degraded and client.stale_served == 0


async def test_unknown_organisation_answer_also_backs_an_outage(budget_service, make_client, clock):
    client = make_client(negative_ttl=5)
    assert await client.budgets(ORG) is None
    budget_service.configure(fixed_status=503)
    clock.advance(10)
    assert await client.budgets(ORG) is None
    assert client.stale_served == 1


async def test_recovery_clears_degraded_and_refreshes(budget_service, make_client, clock):
    budget_service.set_budget(ORG, daily_tokens=100)
    client = make_client()
    await client.budgets(ORG)
    budget_service.configure(fixed_status=500)
    clock.advance(61)
    with capture_logs() as logs:
        assert (await client.budgets(ORG)).daily_tokens == 100
        assert client.degraded
        budget_service.configure(fixed_status=None)
        budget_service.set_budget(ORG, daily_tokens=300)
        clock.advance(2)
        assert (await client.budgets(ORG)).daily_tokens == 300
    assert not client.degraded and client.failures == 1
    assert [e["event"] for e in logs] == ["budget_service_unavailable", "budget_service_recovered"]


async def test_a_failing_service_is_not_hammered(budget_service, make_client, clock):
    budget_service.configure(fixed_status=503)
    client = make_client(retry_after_failure=1.0)
    for i in range(20):
        with pytest.raises(BudgetServiceUnavailable):
            await client.budgets(f"org-{i}")
    assert budget_service.calls() == 1  # later lookups fail without a call
    clock.advance(1)
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets(ORG)
    assert budget_service.calls() == 2


async def test_retry_after_is_respected_while_serving_stale(budget_service, make_client, clock):
    budget_service.set_budget(ORG, daily_tokens=100)
    client = make_client(retry_after_failure=1.0)
    await client.budgets(ORG)
    budget_service.configure(fixed_status=429, retry_after="30")
    clock.advance(61)
    for _ in range(5):
        assert (await client.budgets(ORG)).daily_tokens == 100
        clock.advance(5)
    assert budget_service.calls() == 2  # one answered 429; none until Retry-After has passed
    clock.advance(4.999)  # 29.999 s after the 429
    await client.budgets(ORG)
    assert budget_service.calls() == 2
    budget_service.configure(fixed_status=None, retry_after=None)
    clock.advance(0.001)
    assert (await client.budgets(ORG)).daily_tokens == 100
    assert budget_service.calls() == 3 and not client.degraded
    assert client.stale_served == 6


@pytest.mark.parametrize("retry_after", [None, "soon", "0"])
async def test_429_without_a_usable_retry_after_backs_off_briefly(
    budget_service, make_client, clock, retry_after
):
    budget_service.configure(fixed_status=429, retry_after=retry_after)
    client = make_client(retry_after_failure=1.0)
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets(ORG)
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets(ORG)
    assert budget_service.calls() == 1
    clock.advance(1)
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets(ORG)
    assert budget_service.calls() == 2


async def test_an_absurd_retry_after_is_capped(budget_service, make_client, clock):
    budget_service.configure(fixed_status=429, retry_after="999999999")
    client = make_client()
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets(ORG)
    budget_service.configure(fixed_status=None, retry_after=None)
    budget_service.set_budget(ORG, daily_tokens=1)
    clock.advance(600)
    assert (await client.budgets(ORG)).daily_tokens == 1


async def test_an_answer_for_another_organisation_is_rejected(budget_service, make_client, clock):
    budget_service.set_budget(ORG, daily_tokens=100)
    client = make_client()
    await client.budgets(ORG)
    budget_service.configure(wrong_org=True)
    budget_service.set_budget(ORG, daily_tokens=999_999)
    clock.advance(61)
    assert (await client.budgets(ORG)).daily_tokens == 100  # the last good answer, not the foreign one
    assert client.degraded
    with pytest.raises(BudgetServiceUnavailable):
        await make_client().budgets(ORG)


async def test_a_wrong_service_token_is_unavailable_and_logged_without_the_token(budget_service, make_client):
    budget_service.set_budget(ORG, daily_tokens=100)
    token = "not-the-service-token-s3cr3t"
    client = make_client(token=token)
    with capture_logs() as logs, pytest.raises(BudgetServiceUnavailable) as err:
        await client.budgets(ORG)
    assert client.degraded
    (event,) = [e for e in logs if e["event"] == "budget_service_unavailable"]
    assert event["log_level"] == "warning" and event["reason"] == "status 401" and event["org_id"] == ORG
    assert token not in repr(logs) and token not in str(err.value) and token not in repr(client)
    assert (await make_client().budgets(ORG)).daily_tokens == 100  # the right token is accepted


async def test_cache_is_bounded_least_recently_used_first(budget_service, make_client):
    for org in ("org-1", "org-2", "org-3"):
        budget_service.set_budget(org, daily_tokens=1)
    client = make_client(max_entries=2)
    await client.budgets("org-1")
    await client.budgets("org-2")
    await client.budgets("org-1")  # org-2 is now the least recently used
    await client.budgets("org-3")
    assert budget_service.calls() == 3
    await client.budgets("org-1")
    assert budget_service.calls() == 3
    await client.budgets("org-2")
    assert budget_service.calls("org-2") == 2


async def test_a_malformed_org_id_is_refused_without_a_call(budget_service, make_client):
    client = make_client()
    for bad in ("", "../admin", "org a", "-leading-dash", "x" * 129):
        with pytest.raises(ValueError):
            await client.budgets(bad)
    assert budget_service.calls() == 0 and not client.degraded


async def test_close_is_idempotent_and_the_client_reopens_on_use(budget_service, make_client):
    budget_service.set_budget(ORG, daily_tokens=1)
    budget_service.configure(cache_ttl_seconds=0)
    client = make_client()
    await client.budgets(ORG)
    await client.close()
    await client.close()
    assert (await client.budgets(ORG)).daily_tokens == 1
