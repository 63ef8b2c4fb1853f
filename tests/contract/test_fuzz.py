"""The contract fuzzing's split checked: every operation implemented (so every one is fuzzed with
every check; an operation put back on a 501 stub fails here instead of silently leaving the fuzzed
set), every contract link inside one stateful run, each run on the router it needs.

The fuzzing itself: test_fuzz_fixed_seed.py and test_fuzz_random_seed.py (harness: fuzzing.py).
"""

from __future__ import annotations

import yaml
from router_contract import SPEC_PATH
from router_contract.operations import OPERATIONS

from tests.contract.fuzzing import CONFIG_WRITERS, ROUTERS, STATEFUL_RUNS


def test_every_contract_operation_is_implemented_so_every_one_gets_every_check():
    assert [op.operation_id for op in OPERATIONS.values() if op.stub] == []


def test_every_contract_link_is_walked_by_a_stateful_run():
    spec = yaml.safe_load(SPEC_PATH.read_text())
    unwalked = []
    for path_item in spec["paths"].values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            for status, response in operation["responses"].items():
                for name, link in (response.get("links") or {}).items():
                    ends = {operation["operationId"], link["operationId"]}
                    if not any(ends <= set(ops) for _, ops in STATEFUL_RUNS.values()):
                        unwalked.append(
                            f"{operation['operationId']} {status} {name} -> {link['operationId']}"
                        )
    assert unwalked == []


def test_the_stateful_runs_name_only_contract_operations_each_on_its_router():
    named = {op for _, ops in STATEFUL_RUNS.values() for op in ops}
    assert named <= {op.operation_id for op in OPERATIONS.values()}
    writers = {op for ops in CONFIG_WRITERS.values() for op in ops}
    inference = {"routeInference", "createChatCompletion", "createCompletion", "createEmbedding"}
    for router, ops in STATEFUL_RUNS.values():
        assert router in ROUTERS
        assert not (writers & set(ops) and inference & set(ops)), "config writes next to inference: 503s"
        if router == "traffic":
            assert not writers & set(ops)
