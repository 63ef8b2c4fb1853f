"""The contract fuzzing harness: schemathesis runs against live router subprocesses, zero failures.

Per seed, fresh routers meet schemathesis: the fixed seed runs the examples, coverage and fuzzing
phases with ROUTER_FUZZ_EXAMPLES cases per operation (1,000 by default), the random seed fuzzes
afresh with a tenth of that, and both walk the contract's OpenAPI links in the stateful phase for
ROUTER_FUZZ_STATEFUL_SECONDS. Each run prints its time, cases and links covered (pytest -s).

The operations that rewrite the runtime config are fuzzed against routers of their own (see
CONFIG_WRITERS), the rest against a "traffic" router.

Generation is CPU-bound Python (~10 ms a case) and schemathesis's workers are threads, so the
operations are split across processes instead (one worker each: with two threads, CPython 3.11.7's
ast.parse, used by hypothesis, can fail with "AST constructor recursion depth mismatch"). Each
operation's cases derive from the seed and its own label, so the split does not change them.

The seeds run in test_fuzz_fixed_seed.py and test_fuzz_random_seed.py (two files, so xdist's
--dist loadfile gives them two workers); test_fuzz.py checks the split itself: every operation
implemented and fuzzed, every contract link inside a stateful run.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from router_contract import SPEC_PATH
from router_contract.operations import OPERATIONS

FUZZ_KEY = "rk_fuzz_all_scopes"  # the key the live_routers fixture (conftest.py) configures
FIXED_SEED = 20261127
# Lower it locally for a quick pass (e.g. ROUTER_FUZZ_EXAMPLES=60); .ci/run sets 700 (CI time cap).
EXAMPLES = int(os.environ.get("ROUTER_FUZZ_EXAMPLES", "1000"))
RANDOM_EXAMPLES = max(
    1, min(EXAMPLES, int(os.environ.get("ROUTER_FUZZ_RANDOM_EXAMPLES", str(EXAMPLES // 10))))
)
STATEFUL_SECONDS = int(os.environ.get("ROUTER_FUZZ_STATEFUL_SECONDS", "30"))
TIMEOUT_S = 1500

ROUTERS = ("traffic", "backends", "policies")
# The operations that rewrite the runtime config, by the router (and process) they are fuzzed
# against; every other operation goes to "traffic". Apart from inference: a model they route to an
# unreachable backend makes inference for it answer 503 NO_BACKEND_AVAILABLE (documented, but a
# server error to schemathesis). Apart from each other: each write re-reads and rewrites the whole
# config file, so the two that add objects by the hundred (backends, org limits) get a router each.
CONFIG_WRITERS: dict[str, tuple[str, ...]] = {
    "backends": ("putBackend", "setBackendState", "deleteBackend"),
    "policies": ("putOrgLimits", "patchOrgLimits", "putModelPolicy", "deleteModelPolicy"),
}
# More processes than CPUs: when one finishes early the others get its CPU, so an uneven split costs little.
TRAFFIC_PROCESSES = 3

# The stateful phase starts scenarios at "reliable" roots only (POSTs and collection GETs) whenever
# the selected operations have any, so next to one a resource created by PUT (backends, model
# policies, org limits) or an inference request would never start a scenario. Hence three runs, each
# on one router. Every contract link lies inside one of them (checked below).
STATEFUL_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "config": (
        "policies",
        (
            "putBackend",
            "getBackend",
            "setBackendState",
            "deleteBackend",
            "putModelPolicy",
            "getModelPolicy",
            "deleteModelPolicy",
            "putOrgLimits",
            "patchOrgLimits",
            "getOrgLimits",
            "resetOrgLimits",
            "getAuditByRequest",
        ),
    ),
    "keys-and-inference": (
        "traffic",
        ("routeInference", "getAuditByRequest", "createApiKey", "revokeApiKey", "listApiKeys"),
    ),
    "reads": (
        "traffic",
        (
            "createChatCompletion",
            "createCompletion",
            "createEmbedding",
            "getAuditByRequest",
            "listBackends",
            "getBackend",
            "listModelPolicies",
            "getModelPolicy",
        ),
    ),
}


@dataclass(frozen=True)
class Run:
    name: str
    router: str
    operation_ids: tuple[str, ...]
    phases: str
    examples: int
    exclude_checks: tuple[str, ...] = ()
    max_time: int | None = None


def fuzz_runs(
    operation_ids: Sequence[str], phases: str, examples: int, exclude_checks: tuple[str, ...] = ()
) -> list[Run]:
    """One process per config-writer router, the rest of the operations spread over TRAFFIC_PROCESSES."""
    writers = {op for ops in CONFIG_WRITERS.values() for op in ops}
    groups = [
        (router, tuple(op for op in ops if op in operation_ids)) for router, ops in CONFIG_WRITERS.items()
    ]
    traffic = [op for op in operation_ids if op not in writers]
    groups += [("traffic", group) for group in split(traffic, TRAFFIC_PROCESSES)]
    return [
        Run(f"fuzz-{router}-{i}", router, group, phases, examples, exclude_checks)
        for i, (router, group) in enumerate(groups, 1)
        if group
    ]


def split(operation_ids: Sequence[str], parts: int) -> list[tuple[str, ...]]:
    """Longest first, each to the lightest group so far, by generation_cost."""
    groups: list[list[str]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for op in sorted(operation_ids, key=lambda op: (-generation_cost(op), op)):
        lightest = loads.index(min(loads))
        groups[lightest].append(op)
        loads[lightest] += generation_cost(op)
    return [tuple(sorted(group)) for group in groups if group]


@functools.cache
def generation_cost(operation_id: str) -> int:
    """What generating one case costs, roughly: a base for the headers (security) plus the size of
    the request's definition with its references resolved (bodies dominate; 0 without any input)."""
    spec = yaml.safe_load(SPEC_PATH.read_text())

    def resolved(node: object, depth: int = 0) -> object:
        if depth > 12:
            return None
        if isinstance(node, list):
            return [resolved(item, depth + 1) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolved(target, depth + 1)
        return {k: resolved(v, depth + 1) for k, v in node.items() if k not in {"description", "example"}}

    for path_item in spec["paths"].values():
        for operation in path_item.values():
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                request = [path_item.get("parameters", []), operation.get("parameters", [])]
                request.append(operation.get("requestBody", {}))
                size = len(json.dumps(resolved(request)))
                return 0 if size <= len("[[], [], {}]") and not operation.get("security") else 500 + size
    raise KeyError(operation_id)


def command(base_url: str, seed: int, run: Run) -> list[str]:
    return [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        str(SPEC_PATH),
        "--url",
        base_url,
        "--checks",
        "all",
        "--seed",
        str(seed),
        "--max-examples",
        str(run.examples),
        "--phases",
        run.phases,
        "--header",
        f"X-API-Key: {FUZZ_KEY}",
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--no-color",
        *(["--max-time", str(run.max_time)] if run.max_time else []),
        *(arg for op in run.operation_ids for arg in ("--include-operation-id", op)),
        *(arg for check in run.exclude_checks for arg in ("--exclude-checks", check)),
    ]


def run_schemathesis(base_urls: dict[str, str], seed: int, runs: Sequence[Run], logs: Path) -> None:
    """All runs at once, each against its router; every one must pass. Output goes to files, so a
    chatty run never stalls on a full pipe."""
    started = time.monotonic()
    procs = []
    for run in runs:
        with (logs / f"{run.name}.log").open("w") as log:
            procs.append(subprocess.Popen(command(base_urls[run.router], seed, run), stdout=log, stderr=log))
    finished: dict[int, float] = {}
    try:
        while len(finished) < len(procs):
            if time.monotonic() - started > TIMEOUT_S:
                raise TimeoutError(f"schemathesis still running after {TIMEOUT_S} s")
            for i, proc in enumerate(procs):
                if i not in finished and proc.poll() is not None:
                    finished[i] = time.monotonic() - started
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [
        (run, proc.returncode, (logs / f"{run.name}.log").read_text())
        for run, proc in zip(runs, procs, strict=True)
    ]
    failed = [(run, output) for run, code, output in outputs if code != 0]
    report = "\n".join(
        f"== {run.name} ({', '.join(run.operation_ids)}):\n{output[-12000:]}" for run, output in failed
    )
    assert not failed, f"schemathesis (seed {seed}, ROUTER_FUZZ_SEED={seed} replays it) failed:\n{report}"
    for i, (run, _, output) in enumerate(outputs):
        print(f"{run.name}: {finished[i]:.0f} s; {summary(output)}")


def summary(output: str) -> str:
    """The counts worth a line in the log: cases generated and, for stateful runs, links covered."""
    lines = [m.group(0).strip() for m in re.finditer(r"(API Links:.*|Scenarios:.*|\d+ generated.*)", output)]
    return "; ".join(lines)


# The fixed seed runs every phase; the random one fuzzes afresh (examples and coverage cases are
# the schema's own, the same whatever the seed) with fewer cases, to keep CI's time in bounds.
# ROUTER_FUZZ_SEED replays a failing random seed (the failure message names it).
RANDOM_SEED = int(os.environ.get("ROUTER_FUZZ_SEED") or random.SystemRandom().randrange(1, 2**31))
FIXED_PHASES = "examples,coverage,fuzzing"
RANDOM_PHASES = "fuzzing"


def fuzz_seed(base_urls: dict[str, str], seed: int, phases: str, examples: int, logs: Path) -> None:
    """Every implemented operation under ``seed``: the fuzz runs, then the stateful runs, all at once."""
    implemented = sorted(op.operation_id for op in OPERATIONS.values() if not op.stub)
    runs = fuzz_runs(implemented, phases, examples)
    for name, (router, operation_ids) in STATEFUL_RUNS.items():
        selected = tuple(op for op in operation_ids if op in implemented)
        runs.append(
            Run(f"stateful-{name}", router, selected, "stateful", examples, max_time=STATEFUL_SECONDS)
        )
    run_schemathesis(base_urls, seed, runs, logs)
