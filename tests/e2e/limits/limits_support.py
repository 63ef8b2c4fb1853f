"""US-2 end to end, shared parts: the organisations of the limits config (each scenario its own), the
request sizes that make a reservation equal what the mock backend bills, and concurrent bursts.

A prompt of n three-letter words is estimated at n tokens and counted as n by the mock, and the mock
echoes at most ``max_tokens`` words, so a request with n >= max_tokens costs exactly n + max_tokens
tokens.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from router_impl.usage.tokens import prompt_bound
from tests.e2e.conftest import (
    MODEL,
    auth,
)
from tests.harness import bodies
from tests.harness.config_docs import key_record
from tests.harness.router_proc import RouterProcess

CHAT = "/v1/chat/completions"
PROMPT_WORDS = 5
MAX_TOKENS = 5
PER_REQUEST = PROMPT_WORDS + MAX_TOKENS  # tokens billed (the mock counts words)
# 5 tokens in at $3/M + 5 out at $15/M = 90 micro-dollars.
PER_REQUEST_MICRO_USD = 90
# What a budget reserves for chat() until it settles: the prompt's upper bound (its UTF-8 bytes plus
# the default chat-template allowance, usage/tokens.py prompt_bound) + max_tokens; refunded to billed.
PROMPT_BOUND = prompt_bound(
    {"messages": [{"role": "user", "content": " ".join(["tok"] * PROMPT_WORDS)}]}, 8, 16
)
RESERVED = PROMPT_BOUND + MAX_TOKENS
RESERVED_MICRO_USD = PROMPT_BOUND * 3 + MAX_TOKENS * 15  # at $3/M in, $15/M out

# Prompts a real tokenizer counts far above characters/4: non-Latin scripts and emoji, each UTF-8 byte
# a token (the byte-level BPE worst case), plus 8 chat-template tokens per message.
TEMPLATE_PROMPTS = (
    "東京の天気はどうですか、明日は雨が降りますか",
    "Привет мир как дела сегодня",
    "مرحبا بالعالم كيف حالك اليوم",
    "🙂🚀🌍 emoji 🎉✨",
)
TEMPLATE_TOKENS = 8


def template_chat(prompt: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Réponds brièvement."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": MAX_TOKENS,
    }


def template_cost(prompt: str) -> int:
    """What the backend bills: every byte of both messages, 8 template tokens each, and the echo."""
    body = template_chat(prompt)
    prompt_tokens = sum(len(m["content"].encode()) + TEMPLATE_TOKENS for m in body["messages"])
    return prompt_tokens + min(MAX_TOKENS, len(prompt.split()))


TEMPLATE_BUDGET = 25 * sum(template_cost(p) for p in TEMPLATE_PROMPTS)  # about 100 requests

LIMITS: dict[str, dict[str, Any]] = {
    "org-burst": {"rate_limits": {"requests_per_minute": 6, "burst": 5}},
    # fail_closed: exactness is promised while Redis answers; a stray timeout must not count locally.
    "org-bucket250": {"rate_limits": {"requests_per_minute": 1, "burst": 250}, "failure_mode": "fail_closed"},
    "org-budget100": {"budgets": {"daily_tokens": 100 * PER_REQUEST}, "failure_mode": "fail_closed"},
    # Room for 3 requests one after the other: 2 billed, and the third's reservation.
    "org-daily": {"budgets": {"daily_tokens": 2 * PER_REQUEST + RESERVED, "monthly_tokens": 1_000_000}},
    "org-monthly-usd": {
        "budgets": {"monthly_usd": (2 * PER_REQUEST_MICRO_USD + RESERVED_MICRO_USD) / 1_000_000}
    },
    "org-reset": {"rate_limits": {"requests_per_minute": 1, "burst": 2}},
    "org-workers": {"rate_limits": {"requests_per_minute": 4}},
    "org-skew": {"rate_limits": {"requests_per_minute": 300, "burst": 10}, "failure_mode": "fail_closed"},
    "org-template": {"budgets": {"daily_tokens": TEMPLATE_BUDGET}, "failure_mode": "fail_closed"},
    "org-open": {"rate_limits": {"requests_per_minute": 1, "burst": 3}, "failure_mode": "fail_open"},
    "org-closed": {"rate_limits": {"requests_per_minute": 600}, "failure_mode": "fail_closed"},
    "org-fit": {"budgets": {"daily_tokens": 1000}},
}


def secret_of(org: str) -> str:
    return f"rk_e2e_{org.replace('-', '_')}"


def key_record_of(org: str) -> dict[str, Any]:
    return key_record(f"key-{org}", org, secret_of(org), ("inference", "audit"))


def chat(words: int = PROMPT_WORDS, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    return bodies.chat_body(MODEL, bodies.words(words), max_tokens=max_tokens)


def headers(org: str, request_id: str | None = None) -> dict[str, str]:
    return {**auth(secret_of(org)), "X-Request-ID": request_id or f"lim-{uuid.uuid4().hex[:16]}"}


def limit_events(routers: tuple[RouterProcess, ...]) -> list[str]:
    """The routers' log lines about the limit store, to explain a miscount."""
    return [line for r in routers for line in r.log_text().splitlines() if "limits_" in line][-10:]


async def burst(
    routers: tuple[RouterProcess, ...], org: str, count: int, body: dict[str, Any] | None = None
) -> list[httpx.Response]:
    """``count`` concurrent requests, spread evenly over ``routers``."""
    clients = [
        httpx.AsyncClient(
            base_url=r.base_url, trust_env=False, timeout=30, limits=httpx.Limits(max_connections=count)
        )
        for r in routers
    ]
    try:
        return await asyncio.gather(
            *(
                clients[i % len(clients)].post(CHAT, json=body or chat(), headers=headers(org))
                for i in range(count)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
