"""schemathesis with a random seed against live routers: the fuzzing phase afresh with a tenth of
the fixed seed's cases (ROUTER_FUZZ_RANDOM_EXAMPLES), then the stateful phase; zero failures.
ROUTER_FUZZ_SEED replays a failing seed (the failure message names it)."""

from __future__ import annotations

import pytest

from tests.contract.fuzzing import RANDOM_EXAMPLES, RANDOM_PHASES, RANDOM_SEED, TIMEOUT_S, fuzz_seed


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_implemented_operations_pass_every_check_with_a_random_seed(live_routers, tmp_path):
    fuzz_seed(live_routers, RANDOM_SEED, RANDOM_PHASES, RANDOM_EXAMPLES, tmp_path)
