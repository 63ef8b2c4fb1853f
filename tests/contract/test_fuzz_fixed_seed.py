"""schemathesis with the fixed seed against live routers: the examples, coverage and fuzzing phases
at full depth (ROUTER_FUZZ_EXAMPLES cases per operation, 1,000 by default), then the stateful
phase; zero failures. A file of its own so that xdist runs it beside the random seed."""

from __future__ import annotations

import pytest

from tests.contract.fuzzing import EXAMPLES, FIXED_PHASES, FIXED_SEED, TIMEOUT_S, fuzz_seed


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_implemented_operations_pass_every_check_with_the_fixed_seed(live_routers, tmp_path):
    fuzz_seed(live_routers, FIXED_SEED, FIXED_PHASES, EXAMPLES, tmp_path)
