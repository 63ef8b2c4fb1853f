"""The one renderer of limit answers: RateLimit headers and the 429 / 402 refusals (pure)."""

from __future__ import annotations

from router_impl.limits.denials import admitted_headers, budget_exhausted, rate_limit_headers, rate_limited
from router_impl.limits.store import BucketSpec

PER_MINUTE_60 = 60 / 60_000  # 60 requests a minute, per ms
REQUESTS = BucketSpec("rl:{acme}:org:requests", 60.0, PER_MINUTE_60, 1.0, "org", "requests")
KEY_REQUESTS = BucketSpec("rl:{acme}:key:k1:requests", 10.0, PER_MINUTE_60, 1.0, "key", "requests")
TOKENS = BucketSpec("rl:{acme}:org:tokens", 1000.0, 1000 / 60_000, 500.0, "org", "tokens")
NOW_MS = 1_800_000_000_000


def test_an_admitted_request_shows_its_tightest_request_bucket_and_never_a_token_bucket() -> None:
    headers = admitted_headers((REQUESTS, KEY_REQUESTS, TOKENS), (50.0, 3.5, 0.0))
    assert headers == {"RateLimit-Limit": "10", "RateLimit-Remaining": "3", "RateLimit-Reset": "7"}
    assert admitted_headers((TOKENS,), (0.0,)) == {}


def test_a_rate_refusal_carries_the_same_headers_as_an_admission_would() -> None:
    denied = rate_limited(KEY_REQUESTS, 0.25)
    assert (denied.status_code, denied.code, denied.limit_state, denied.scope) == (
        429,
        "RATE_LIMIT_EXCEEDED",
        "RATE_LIMITED",
        "key",
    )
    assert denied.retry_after_seconds == 1  # 0.75 of a request refills in 0.75 s
    assert {k: v for k, v in denied.headers.items() if k.startswith("RateLimit")} == rate_limit_headers(
        KEY_REQUESTS, 0.25
    )
    assert denied.limit_context == {"scope": "key", "limit": 10, "remaining": 0, "reset_seconds": 10}
    assert "API key's request rate limit" in denied.message


def test_a_token_refusal_has_no_ratelimit_headers_and_waits_for_its_cost() -> None:
    denied = rate_limited(TOKENS, 100.0)
    assert not any(k.startswith("RateLimit") for k in denied.headers)
    assert denied.retry_after_seconds == 24  # 400 tokens at 1000 a minute
    assert "organisation's token rate limit" in denied.message


def test_a_budget_refusal_says_when_it_resets_and_what_is_left() -> None:
    denied = budget_exhausted(
        "DAILY", NOW_MS + 90_500, NOW_MS, tokens_remaining=12, micro_usd_remaining=1_500_000
    )
    assert (denied.status_code, denied.code, denied.scope) == (402, "BUDGET_EXCEEDED", "org")
    assert denied.retry_after_seconds == 91
    assert denied.limit_context == {
        "period": "DAILY",
        "reset_at": "2027-01-15T08:01:30.500Z",
        "tokens_remaining": 12,
        "currency_remaining": 1.5,
    }
    unknown = budget_exhausted("MONTHLY", NOW_MS + 40 * 86_400_000, NOW_MS)
    assert unknown.limit_context is not None and set(unknown.limit_context) == {"period", "reset_at"}
    assert unknown.retry_after_seconds == 2_678_400  # never more than 31 days
