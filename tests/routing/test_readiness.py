"""Readiness of backends: which are ready, which degraded, and whether every model can be served."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from router_impl.auth.keys import ApiKeyRecord, hash_secret
from router_impl.config.model import BackendConfig, BackendState, ModelPolicy, RuntimeConfig, WeightedBackend
from router_impl.routing.health import BackendHealth
from router_impl.routing.readiness import assess, keys_check
from tests.harness.clock import ManualClock


def config(**states: str) -> RuntimeConfig:
    backends = tuple(BackendConfig(id=name, base_url=f"http://{name}:8000/v1") for name in ("a", "b", "c"))
    return RuntimeConfig(
        backends=backends,
        models=(
            ModelPolicy(
                model="m1", backends=(WeightedBackend(backend_id="a"), WeightedBackend(backend_id="b"))
            ),
            ModelPolicy(model="m2", backends=(WeightedBackend(backend_id="c"),)),
        ),
        backend_states={name: BackendState(state=state) for name, state in states.items()},  # type: ignore[arg-type]
    )


def test_all_healthy_is_ready_and_passes() -> None:
    found = assess(config(), BackendHealth(ManualClock()))
    assert (found.ready, found.degraded, found.unserved_models) == (("a", "b", "c"), (), ())
    assert found.check()[0] == "pass"


def test_degraded_and_disabled_backends_are_reported_apart() -> None:
    found = assess(config(a="degraded", b="disabled"), BackendHealth(ManualClock()))
    assert (found.ready, found.degraded) == (("c",), ("a",))
    assert found.check()[0] == "pass"


def test_a_model_without_any_available_backend_warns_and_no_model_at_all_fails() -> None:
    health = BackendHealth(ManualClock())
    health.probe_result("c", False)
    some = assess(config(), health)
    assert some.unserved_models == ("m2",)
    assert some.check() == ("warn", "no available backend for model(s): m2")
    for name in ("a", "b"):
        health.probe_result(name, False)
    assert assess(config(), health).check()[0] == "fail"


def test_an_open_breaker_takes_a_backend_out_until_its_trial() -> None:
    clock = ManualClock()
    health = BackendHealth(clock, cool_down_s=10)
    for _ in range(3):
        health.record_failure("a", threshold=3)
    assert "a" not in assess(config(), health).ready + assess(config(), health).degraded
    clock.advance(11)
    assert assess(config(), health).degraded == ("a",)  # half-open: one trial allowed


def test_no_model_at_all_warns_while_an_admin_can_add_one_else_fails() -> None:
    none = assess(RuntimeConfig(), BackendHealth(ManualClock()))
    assert none.check(admin_can_configure=True)[0] == "warn"
    assert none.check(admin_can_configure=False)[0] == "fail"


def test_keys_check_fails_without_a_usable_key() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def key(name: str, **extra: Any) -> ApiKeyRecord:
        return ApiKeyRecord(
            id=name, organization_id="o", key_hash=hash_secret(name), scopes={"admin"}, **extra
        )

    dead = [
        key("revoked", revoked=True),
        key("expired", expires_at=now),
        key("old", expires_at=now - timedelta(1)),
    ]
    assert keys_check(dead, now)[0] == "fail"
    assert keys_check([], now)[0] == "fail"
    assert keys_check([*dead, key("live", expires_at=now + timedelta(seconds=1))], now) == (
        "pass",
        "1 usable API key(s), 1 with scope admin",
    )
