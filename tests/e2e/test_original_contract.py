"""Drop-in compatibility with the platform's original contract and usage-record schema
(../shared/seed/): its generated clients and its analytics consumers work against this router.

Organisation ids are UUIDs here, as the platform's are; every usage record kind the router writes
is validated against both openapi/usage-record.schema.json and the original schema, formats checked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from router_impl.ids import uuid_for
from tests.e2e.conftest import (
    KEYS,
    MODEL,
    SECRET_KEY,
    ObservedBackend,
    auth,
    records_for,
    runtime_config,
    usage_records,
)
from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.config_docs import key_record, write_config
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL_RECORD_SCHEMA = ROOT.parent / "shared" / "seed" / "usage-record.schema.yaml"
ORIGINAL_CONTRACT = ROOT.parent / "shared" / "seed" / "api-router.openapi.yaml"
OUR_RECORD_SCHEMA = ROOT / "openapi" / "usage-record.schema.json"

# One organisation per kind of limit, each a UUID as the platform's organisation ids are.
ORGS = {
    name: str(uuid.uuid5(uuid.NAMESPACE_URL, f"compat-{name}"))
    for name in ("plain", "both", "tokens", "usd", "rate", "broke")
}
LIMITS: dict[str, dict[str, Any]] = {
    "both": {"budgets": {"daily_tokens": 1_000_000, "daily_usd": "100.00"}},
    "tokens": {"budgets": {"daily_tokens": 1_000_000}},
    "usd": {"budgets": {"monthly_usd": "100.00"}},
    "rate": {"rate_limits": {"requests_per_minute": 1, "burst": 1}},
    "broke": {"budgets": {"daily_tokens": 1}},
}
# Config-declared keys keep the ids their operators gave them (not UUIDs).
SECRETS = {name: f"rk_compat_{name}_0123456789" for name in ORGS}
ADMIN = KEYS["admin"]

needs_seed = pytest.mark.skipif(
    not ORIGINAL_RECORD_SCHEMA.exists(), reason="the original schemas are not here"
)


def _validators() -> list[tuple[str, jsonschema.protocols.Validator]]:
    """Our record schema, and the original one where the seed is beside the checkout (the tests that
    are about the original alone are ``needs_seed``)."""
    ours = json.loads(OUR_RECORD_SCHEMA.read_text())
    validators: list[tuple[str, jsonschema.protocols.Validator]] = [
        ("ours", jsonschema.Draft7Validator(ours, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER))
    ]
    if ORIGINAL_RECORD_SCHEMA.exists():
        original = yaml.safe_load(ORIGINAL_RECORD_SCHEMA.read_text())
        checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
        validators.append(("original", jsonschema.Draft202012Validator(original, format_checker=checker)))
    return validators


def assert_valid_everywhere(record: dict[str, Any]) -> None:
    for name, validator in _validators():
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(record)]
        assert errors == [], f"record breaks {name} schema: {errors}\n{record}"


@pytest.fixture(scope="module")
def compat_router(
    tmp_path_factory: pytest.TempPathFactory, backend_a: ObservedBackend, backend_f: MockBackend
) -> Iterator[RouterProcess]:
    config = runtime_config(backend_a, backend_f)
    config["api_keys"].extend(
        key_record(f"compat-{name}", org, SECRETS[name], ["inference", "audit"]) for name, org in ORGS.items()
    )
    config["org_limits"] = {ORGS[name]: limits for name, limits in LIMITS.items()}
    path = write_config(tmp_path_factory.mktemp("compat"), config)
    fleet = RouterFleet(tmp_path_factory.mktemp("compat-routers"))
    try:
        yield fleet.start(env={"ROUTER_CONFIG_PATH": str(path), "ROUTER_SECRET_KEY": SECRET_KEY})
    finally:
        fleet.close()


@pytest.fixture
def client(compat_router: RouterProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=compat_router.base_url, trust_env=False, timeout=10.0) as made:
        yield made


def chat(**extra: Any) -> dict[str, Any]:
    return chat_body(MODEL, "one two three", **extra)


def envelope(**extra: Any) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "one two three", **extra}


def record_of(router: RouterProcess, request_id: str) -> dict[str, Any]:
    found = wait_until(lambda: records_for(router, request_id))
    assert len(found) == 1, found
    return found[0]


def test_readiness_answers_the_original_shape_counts_with_the_ids_beside_them(client):
    body = client.get("/v1/status/readyz").json()
    assert isinstance(body["ready_backends"], int) and isinstance(body["degraded_backends"], int)
    assert body["ready_backends"] == len(body["ready_backend_ids"])
    assert body["degraded_backends"] == len(body["degraded_backend_ids"])
    assert "mock-a" in body["ready_backend_ids"]
    spec = yaml.safe_load(ORIGINAL_CONTRACT.read_text()) if ORIGINAL_CONTRACT.exists() else None
    if spec is not None:  # the original's ReadinessStatus, field by field
        readiness = spec["components"]["schemas"]["ReadinessStatus"]["allOf"][1]["properties"]
        assert {name: type(body[name]).__name__ for name in readiness} == dict.fromkeys(readiness, "int")


def test_the_envelope_accepts_properties_it_does_not_list_and_passes_open_parameters(
    client, compat_router, backend_a
):
    backend_a.reset_counters()
    body = envelope(
        priority="high",
        x_client={"nested": [1, 2]},
        parameters={"max_tokens": 8, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    answer = client.post("/v1/inference", json=body, headers=auth(SECRETS["plain"]))
    assert answer.status_code == 200, answer.text
    sent = backend_a.last_inference_request
    assert sent is not None and isinstance(sent.body, dict)
    assert (sent.body["top_k"], sent.body["min_p"], sent.body["repetition_penalty"]) == (40, 0.05, 1.1)
    assert sent.body["max_tokens"] == 8
    assert "priority" not in sent.body and "x_client" not in sent.body  # ignored, never forwarded
    assert_valid_everywhere(record_of(compat_router, body["request_id"]))


def test_the_envelope_keeps_model_messages_and_streaming_its_own(client, backend_a):
    backend_a.reset_counters()
    body = envelope(parameters={"stream": True, "model": "other", "messages": []})
    answer = client.post("/v1/inference", json=body, headers=auth(SECRETS["plain"]))
    assert answer.status_code == 200, answer.text
    sent = backend_a.last_inference_request
    assert sent is not None and sent.body["model"] == MODEL and sent.body.get("stream") is not True


@needs_seed
def test_every_usage_record_kind_validates_against_both_schemas(client, compat_router):
    kinds: dict[str, str] = {}

    def post(kind: str, path: str, secret: str, body: dict[str, Any], status: int = 200) -> None:
        request_id = str(uuid.uuid4())
        if path == "/v1/inference":
            body = {**body, "request_id": request_id}
        headers = {**auth(secret), "X-Request-ID": request_id}
        answer = client.post(path, json=body, headers=headers)
        assert answer.status_code == status, f"{kind}: {answer.text}"
        answer.read()
        kinds[kind] = request_id

    plain = SECRETS["plain"]
    post("chat", "/v1/chat/completions", plain, chat())
    post("completions", "/v1/completions", plain, {"model": MODEL, "prompt": "one two", "max_tokens": 4})
    post("inference", "/v1/inference", plain, envelope())
    post(
        "stream with usage",
        "/v1/chat/completions",
        plain,
        chat(stream=True, stream_options={"include_usage": True}),
    )
    post("stream without usage", "/v1/chat/completions", plain, chat(stream=True))
    post("completions stream", "/v1/completions", plain, {"model": MODEL, "prompt": "a b", "stream": True})
    post("token and USD budgets", "/v1/chat/completions", SECRETS["both"], chat())
    post("token budget", "/v1/chat/completions", SECRETS["tokens"], chat())
    post(
        "embeddings, token budget",
        "/v1/embeddings",
        SECRETS["tokens"],
        {"model": MODEL, "input": ["a b", "c"]},
    )
    post("USD budget", "/v1/inference", SECRETS["usd"], envelope())
    post("within the rate limit", "/v1/chat/completions", SECRETS["rate"], chat())
    post("429", "/v1/chat/completions", SECRETS["rate"], chat(), status=429)
    post("402", "/v1/inference", SECRETS["broke"], envelope(), status=402)

    # A key the router creates has a UUID id, which the record carries unchanged.
    created = client.post(
        "/v1/admin/keys",
        json={"organization_id": ORGS["plain"], "scopes": ["inference"], "name": "compat"},
        headers=auth(ADMIN),
    )
    assert created.status_code == 201, created.text
    new_key = created.json()
    assert str(uuid.UUID(new_key["key"]["id"])) == new_key["key"]["id"]
    post("router-created key", "/v1/chat/completions", new_key["secret"], chat())

    records = {kind: record_of(compat_router, request_id) for kind, request_id in kinds.items()}
    for kind, record in records.items():
        try:
            assert_valid_everywhere(record)
        except AssertionError as exc:
            raise AssertionError(f"{kind}: {exc}") from None

    assert records["router-created key"]["api_key_id"] == new_key["key"]["id"]
    assert "api_key_ref" not in records["router-created key"]["metadata"]
    assert records["chat"]["api_key_id"] == uuid_for("compat-plain")
    assert records["chat"]["metadata"]["api_key_ref"] == "compat-plain"
    assert records["stream with usage"]["stream"] is True
    both = records["token and USD budgets"]["budget_snapshot"]
    assert both["period"] == "DAILY" and both["tokens_remaining"] > 0 and both["currency_remaining"] > 0
    tokens_only = records["token budget"]
    assert "budget_snapshot" not in tokens_only
    assert tokens_only["metadata"]["budget_period"] == "DAILY"
    assert int(tokens_only["metadata"]["budget_tokens_remaining"]) > 0
    assert records["USD budget"]["metadata"]["budget_period"] == "MONTHLY"
    embedded = records["embeddings, token budget"]
    assert (embedded["endpoint"], embedded["tokens_input"], embedded["tokens_output"]) == (
        "/v1/embeddings",
        3,
        0,
    )
    assert int(embedded["metadata"]["budget_tokens_remaining"]) < int(
        tokens_only["metadata"]["budget_tokens_remaining"]
    )
    denied_rate, denied_budget = records["429"], records["402"]
    assert (denied_rate["decision_reason"], denied_rate["limit_state"]) == ("RATE_LIMIT", "RATE_LIMITED")
    assert denied_rate["metadata"]["denial_code"] == "RATE_LIMIT_EXCEEDED"
    assert (denied_budget["decision_reason"], denied_budget["limit_state"]) == (
        "RATE_LIMIT",
        "BUDGET_EXCEEDED",
    )
    assert denied_budget["metadata"]["denial_code"] == "BUDGET_EXCEEDED"


@needs_seed
def test_a_client_request_id_that_is_not_a_uuid_is_kept_beside_the_records_uuid(client, compat_router):
    answer = client.post(
        "/v1/chat/completions",
        json=chat(),
        headers={**auth(SECRETS["plain"]), "X-Request-ID": "req-compat-1"},
    )
    assert answer.status_code == 200
    record = wait_until(
        lambda: [
            r for r in usage_records(compat_router) if r["metadata"].get("request_ref") == "req-compat-1"
        ]
    )
    assert record and record[0]["request_id"] == uuid_for("req-compat-1")
    assert_valid_everywhere(record[0])
