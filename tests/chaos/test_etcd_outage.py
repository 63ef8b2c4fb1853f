"""Chaos: the router loses etcd for 30 s under load, and etcd compacts its history meanwhile.

The router reaches etcd through a TCP proxy; a partition holds every byte both ways (connections stay
open and silent, as when packets are dropped). While partitioned, an operator writes straight into
etcd, etcd restarts (same data dir) and compacts past everything the router has seen. The router
must keep routing by the config it has, and apply the newest config within seconds of the partition
healing. Before that, with the watch live, history is compacted past the revision the router's watch
started from and then changed: the change must still be applied.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.backend import MockBackend
from tests.harness.chaos_load import BoundedLoad, Outcome, Shot, summary
from tests.harness.chaos_pipeline import (
    MODEL,
    ChaosStack,
    EtcdKv,
    PipelineRouter,
    PipelineRouterFactory,
    chat_body,
    model_document,
    new_org,
    pipeline_config,
)
from tests.harness.service_proxy import ServiceProxy
from tests.harness.wait import PROBE_INTERVAL_S, wait_until

PARTITION_S = 30.0
APPLY_WITHIN_S = 5.0
MAX_LATENCY_S = 2.0
CHURN = 5  # revisions written before each compaction


@pytest.fixture
def proxy(chaos_stack: ChaosStack) -> Iterator[ServiceProxy]:
    with ServiceProxy([chaos_stack.etcd.client_port]) as running:
        yield running


@pytest.fixture
def backends() -> Iterator[dict[str, MockBackend]]:
    with (
        MockBackend(models=(MODEL,)) as a,
        MockBackend(models=(MODEL,)) as b,
        MockBackend(models=(MODEL,)) as c,
    ):
        for mock in (a, b, c):
            mock.configure(latency_ms=5)
        yield {"chaos-a": a, "chaos-b": b, "chaos-c": c}


def churn(kv: EtcdKv, org: str, count: int = CHURN) -> int:
    """``count`` new revisions of an object no request depends on; the last revision."""
    revision = 0
    for n in range(count):
        revision = kv.put_object("limits", org, {"rate_limits": {"requests_per_minute": 1000 + n}})
    return revision


def switch_to(kv: EtcdKv, backend_id: str) -> int:
    return kv.put_object("models", MODEL, model_document(backend_id))


def applied(router: PipelineRouter, revision: int) -> bool:
    return router.metric("router_config_revision") >= revision


def served_by(outcomes: list[Outcome]) -> set[str | None]:
    return {o.backend for o in outcomes}


def test_etcd_partitioned_30s_and_compacted_the_router_keeps_routing_and_applies_the_newest_config(
    chaos_stack: ChaosStack,
    pipeline_router: PipelineRouterFactory,
    proxy: ServiceProxy,
    backends: dict[str, MockBackend],
) -> None:
    org = new_org("chaos-etcd", rate_limits={"requests_per_minute": 60_000})
    churned = f"chaos-churn-{uuid.uuid4().hex[:8]}"
    router = pipeline_router(pipeline_config(backends, "chaos-a", [org]), etcd_endpoints=proxy.endpoint)
    kv = router.etcd
    etcd = chaos_stack.etcd

    def shot(n: int) -> Shot:
        request_id = f"etcd-{n}-{uuid.uuid4().hex[:6]}"
        return Shot(org.id, request_id, chat_body(), org.headers(request_id))

    with BoundedLoad(router.base_url, shot, concurrency=8, rate=50) as load:
        time.sleep(2.0)
        # With the watch live: history compacted past where the watch began, then a change.
        watch_began = int(router.metric("router_config_revision"))
        kv.compact(churn(kv, churned))
        assert kv.revision() > watch_began
        first_switch = switch_to(kv, "chaos-b")
        written_at = load.now()
        assert wait_until(
            lambda: applied(router, first_switch), timeout=APPLY_WITHIN_S, interval=PROBE_INTERVAL_S
        )
        live_apply_s = load.now() - written_at
        time.sleep(0.5)  # requests already on their way to chaos-a finish
        backends["chaos-a"].stop()
        a_killed_at = load.now()

        proxy.partition()
        partitioned_at = load.now()
        try:
            second_switch = switch_to(kv, "chaos-c")  # the router cannot see this
            etcd.stop()
            etcd.start()  # same data dir: the change survives the restart
            newest = churn(kv, churned)
            kv.compact(newest)  # past every revision the router has seen
            assert kv.revision() == newest > second_switch
            time.sleep(PARTITION_S / 2)
            during = (router.readiness("config"), int(router.metric("router_config_revision")))
            time.sleep(partitioned_at + PARTITION_S - load.now())
        finally:
            proxy.heal()
            etcd.start()
        healed_at = load.now()
        assert wait_until(
            lambda: applied(router, newest), timeout=APPLY_WITHIN_S, interval=PROBE_INTERVAL_S
        ), "newest config never applied"
        healed_apply_s = load.now() - healed_at
        time.sleep(0.5)
        backends["chaos-b"].stop()
        b_killed_at = load.now()
        time.sleep(2.0)
        after = (router.readiness("config"), router.metric("router_config_rejected_total"))
    outcomes = load.outcomes
    print(
        summary(
            "etcd-30s",
            outcomes,
            live_apply=f"{live_apply_s:.2f}s",
            healed_apply=f"{healed_apply_s:.2f}s",
            partition_s=f"{healed_at - partitioned_at:.1f}",
        )
    )

    assert {o.status for o in outcomes} == {200}, [o for o in outcomes if o.status != 200][:5]
    assert max(o.latency_s for o in outcomes) < MAX_LATENCY_S
    assert live_apply_s < 3.0
    assert healed_apply_s < APPLY_WITHIN_S
    # Routed by the newest config the router had, never to a stopped backend.
    assert served_by(load.between(a_killed_at, healed_at)) == {"chaos-b"}
    assert served_by(load.between(b_killed_at, load.now())) == {"chaos-c"}
    assert served_by(load.between(healed_at + healed_apply_s, load.now())) == {"chaos-c"}
    assert len(load.between(partitioned_at, healed_at)) >= 0.5 * 50 * PARTITION_S  # the load kept going
    assert during == ("warn", first_switch)
    assert after == ("pass", 0)
