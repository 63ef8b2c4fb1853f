from datetime import UTC, datetime

from router_impl.routing.decisions import DecisionLog, RoutingDecisionRecord


def decision(n: int, model: str = "m", org: str = "o") -> RoutingDecisionRecord:
    return RoutingDecisionRecord(
        f"r{n}", datetime(2026, 1, 1, tzinfo=UTC), model, org, "k", "b", "PRIMARY", 1, 5
    )


def test_recent_decisions_come_newest_first_and_the_buffer_stays_bounded():
    log = DecisionLog(capacity=3)
    for n in range(5):
        log.record(decision(n))
    assert [d.request_id for d in log.recent()] == ["r4", "r3", "r2"]


def test_decisions_filter_by_model_and_organisation_with_a_limit():
    log = DecisionLog()
    for n in range(6):
        log.record(decision(n, model="a" if n % 2 else "b", org="x" if n < 3 else "y"))
    assert [d.request_id for d in log.recent(model="a")] == ["r5", "r3", "r1"]
    assert [d.request_id for d in log.recent(model="a", organization_id="x")] == ["r1"]
    assert [d.request_id for d in log.recent(limit=2)] == ["r5", "r4"]
