"""US-2 end to end: budgets hold across two routers sharing one Redis (tokens and currency, daily and
monthly, 500 concurrent requests, template tokens of non-English prompts, the budget service)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import openai
import pytest

from tests.e2e.conftest import (
    KEYS,
    MODEL,
    auth,
    records_for,
)
from tests.e2e.limits.limits_support import (
    CHAT,
    MAX_TOKENS,
    PER_REQUEST,
    PER_REQUEST_MICRO_USD,
    PROMPT_WORDS,
    RESERVED,
    RESERVED_MICRO_USD,
    TEMPLATE_BUDGET,
    TEMPLATE_PROMPTS,
    TEMPLATE_TOKENS,
    burst,
    chat,
    headers,
    limit_events,
    secret_of,
    template_chat,
)
from tests.harness.budget_service import MockBudgetService
from tests.harness.wait import wait_until
from tests.telemetry.test_metrics import value as metric


async def test_500_concurrent_requests_on_two_routers_never_overspend_a_budget_with_room_for_100(pair, mock):
    calls = mock.inference_requests
    answers = await burst(pair, "org-budget100", 500)
    statuses = [a.status_code for a in answers]
    admitted = statuses.count(200)
    # Each admit reserves RESERVED (> billed) until it settles: at least as many as fit reserved at
    # once, at most as many as the budget pays for; the rest 402.
    assert 100 * PER_REQUEST // RESERVED <= admitted <= 100, (statuses, limit_events(pair))
    assert statuses.count(402) == 500 - admitted
    assert mock.inference_requests - calls == admitted
    state = httpx.get(
        f"{pair[0].base_url}/v1/admin/orgs/org-budget100/limits", headers=auth(KEYS["admin"]), trust_env=False
    ).json()
    daily = next(b for b in state["state"]["budgets"] if b["period"] == "DAILY")
    assert (daily["tokens_used"], daily["tokens_limit"]) == (admitted * PER_REQUEST, 100 * PER_REQUEST)


def test_daily_token_budget_exhausted_answers_402_with_remaining_context(pair, clients):
    http = clients.http(pair[0])
    allowed_id = f"lim-daily-ok-{uuid.uuid4().hex[:8]}"
    for n in range(3):
        request_id = allowed_id if n == 0 else None
        assert http.post(CHAT, json=chat(), headers=headers("org-daily", request_id)).status_code == 200
    denied_id = str(uuid.uuid4())
    denied = http.post(
        "/v1/inference",
        json={"request_id": denied_id, "model": MODEL, "payload": "tok"},
        headers=auth(secret_of("org-daily")),
    )
    assert denied.status_code == 402
    body = denied.json()
    assert body["code"] == "BUDGET_EXCEEDED"
    context = body["limit_context"]
    assert context["period"] == "DAILY"
    assert context["tokens_remaining"] == RESERVED - PER_REQUEST  # less than this request may cost
    assert context["reset_at"].endswith("T00:00:00.000Z")
    assert body["retry_after_seconds"] >= 1
    # OpenAI routes answer in OpenAI's shape.
    openai_denied = clients.http(pair[1]).post(CHAT, json=chat(), headers=headers("org-daily"))
    assert openai_denied.status_code == 402
    assert openai_denied.json()["error"]["type"] == "insufficient_quota"
    scraped = clients.http(pair[1]).get("/metrics").text
    assert metric(scraped, "router_budget_denials_total", period="DAILY") >= 1
    # The audit trail has both, each visible to its own organisation only.
    own = auth(secret_of("org-daily"))
    allowed = wait_until(lambda: http.get(f"/v1/audit/requests/{allowed_id}", headers=own).json())
    assert (allowed["action"], allowed["limit_state"], allowed["routing_backend_id"]) == (
        "REQUEST_ALLOWED",
        "WITHIN_LIMIT",
        "mock-a",
    )
    refused = http.get(f"/v1/audit/requests/{denied_id}", headers=own).json()
    assert (refused["action"], refused["limit_state"], refused["decision_reason"]) == (
        "REQUEST_DENIED",
        "BUDGET_EXCEEDED",
        "BUDGET_EXCEEDED",
    )
    other_org = http.get(f"/v1/audit/requests/{denied_id}", headers=auth(secret_of("org-burst")))
    assert other_org.status_code == 404


def test_a_request_too_large_for_the_budget_left_is_refused_alone_through_the_openai_sdk(pair, clients):
    """Issue 17.7: the default 4,096-token cap does not fit 1,000 tokens; the 402 says what does,
    and the organisation is not locked out."""
    client = clients.openai(pair[0], secret_of("org-fit"))
    messages = chat()["messages"]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert caught.value.status_code == 402
    body = caught.value.body
    error = body.get("error", body) if isinstance(body, dict) else {}
    assert (error["code"], error["type"], error["tokens_remaining"]) == (
        "BUDGET_EXCEEDED",
        "insufficient_quota",
        1000,
    )
    assert f"max_tokens of at most {1000 - PROMPT_WORDS} fits" in error["message"], error
    # Only that request was refused: a smaller one is served, on either router.
    for router in pair:
        fitted = clients.openai(router, secret_of("org-fit")).chat.completions.create(
            model=MODEL, messages=messages, max_tokens=MAX_TOKENS
        )
        assert fitted.usage is not None and fitted.usage.total_tokens == PER_REQUEST
    state = clients.http(pair[1]).get("/v1/admin/orgs/org-fit/limits", headers=auth(KEYS["admin"])).json()
    assert "lockout_until" not in state["state"], state
    assert state["state"]["budgets"][0]["tokens_used"] == 2 * PER_REQUEST


def test_monthly_currency_budget_exhausted_in_exact_micro_dollars(pair, clients):
    http = clients.http(pair[1])
    ids = [f"lim-usd-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    for request_id in ids:
        answer = http.post(CHAT, json=chat(), headers=headers("org-monthly-usd", request_id))
        assert answer.status_code == 200, answer.text
    denied = http.post(CHAT, json=chat(), headers=headers("org-monthly-usd"))
    assert denied.status_code == 402
    records = [r for request_id in ids for r in wait_until(lambda rid=request_id: records_for(pair[1], rid))]
    assert [r["cost_micro_usd"] for r in records] == [PER_REQUEST_MICRO_USD] * 3
    # A USD-only budget: the schema's snapshot needs both figures, so the one figure is in metadata.
    last = records[-1]
    assert "budget_snapshot" not in last
    assert last["metadata"]["budget_period"] == "MONTHLY"
    remaining_micro = round(float(last["metadata"]["budget_currency_remaining"]) * 1_000_000)
    assert remaining_micro == RESERVED_MICRO_USD - PER_REQUEST_MICRO_USD  # less than a request may cost


def test_budgets_from_the_budget_service_are_enforced_for_organisations_without_configured_ones(
    start_router, limits_config, clients, mock
):
    with MockBudgetService() as budgets:
        budgets.set_budget("org-external", daily_tokens=PER_REQUEST + RESERVED)
        router = start_router(
            env={
                "ROUTER_BUDGET_SERVICE_URL": budgets.base_url,
                "ROUTER_BUDGET_SERVICE_TOKEN": "budget-test-token",
            },
            config=limits_config,
        )
        http = clients.http(router)
        statuses = [
            http.post(CHAT, json=chat(), headers=headers("org-external")).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 402]
        # Budgets configured in the router win over the service's: org-daily has 3 requests' worth.
        budgets.set_budget("org-daily", daily_tokens=0)
        fresh = start_router(
            env={
                "ROUTER_BUDGET_SERVICE_URL": budgets.base_url,
                "ROUTER_BUDGET_SERVICE_TOKEN": "budget-test-token",
            },
            config=limits_config,
        )
        assert clients.http(fresh).post(CHAT, json=chat(), headers=headers("org-daily")).status_code == 200
        assert budgets.calls("org-daily") == 0


async def test_300_concurrent_non_english_requests_with_template_tokens_never_overspend_the_budget(
    pair, mock
) -> None:
    """15.7: before, the reservation was characters/4: the backend's count (bytes + template tokens)
    was several times larger, and a budget sized for 100 requests was overspent many times over."""
    mock.configure(prompt_tokens_per_byte=True, template_tokens_per_message=TEMPLATE_TOKENS)
    clients = [
        httpx.AsyncClient(
            base_url=r.base_url, trust_env=False, timeout=60, limits=httpx.Limits(max_connections=300)
        )
        for r in pair
    ]
    try:
        answers = await asyncio.gather(
            *(
                clients[i % 2].post(
                    CHAT,
                    json=template_chat(TEMPLATE_PROMPTS[i % len(TEMPLATE_PROMPTS)]),
                    headers=headers("org-template"),
                )
                for i in range(300)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    served = [a for a in answers if a.status_code == 200]
    assert {a.status_code for a in answers} <= {200, 402}, [
        a.text for a in answers if a.status_code not in (200, 402)
    ][:3]
    assert served and len(served) < 300  # the budget was binding
    billed = sum(a.json()["usage"]["total_tokens"] for a in served)
    state = httpx.get(
        f"{pair[0].base_url}/v1/admin/orgs/org-template/limits", headers=auth(KEYS["admin"]), trust_env=False
    ).json()
    daily = next(b for b in state["state"]["budgets"] if b["period"] == "DAILY")
    print(f"BUDGET template+non-English: served={len(served)} billed={billed} budget={TEMPLATE_BUDGET}")
    assert daily["tokens_used"] == billed  # every reservation settled to what the backend counted
    assert billed <= TEMPLATE_BUDGET, f"overspent by {billed - TEMPLATE_BUDGET} tokens"
