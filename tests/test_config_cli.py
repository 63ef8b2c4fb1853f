"""An operator checks a runtime-config file before deploying it: `router config validate FILE` lists every
error with its path, and `router serve --config FILE` refuses a bad file with the same list, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router_impl.cli import main

ROUTER_BIN = Path(sys.executable).with_name("router")
HASH = "a" * 64
# The files here are written as YAML text on purpose, not with tests/harness/config_docs.py: what is
# tested is how the CLI reads an operator's text (flow style, broken syntax, line numbers, wrong fields).
GOOD = """
backends:
  - {id: vllm-a, base_url: "http://vllm-a:8000/v1", models: [llama]}
models:
  - {model: llama, backends: [{backend_id: vllm-a}]}
"""

# Ten broken configs, each with every line `router config validate` must print for it.
BROKEN: dict[str, tuple[str, list[str]]] = {
    "not_yaml": (
        "backends: [\n  {id: a\n",
        ["line 3, column 1: not valid YAML: did not find expected ',' or '}'"],
    ),
    "a_list": (
        "- backends\n",
        ["(document): a mapping of backends, models, api_keys, ... is expected, not a list"],
    ),
    "unknown_section_and_missing_url": (
        "backend: []\nbackends:\n  - {id: a}\n",
        ["backends[0].base_url: Field required", "backend: Extra inputs are not permitted"],
    ),
    "bad_urls_and_timeouts": (
        'backends:\n  - {id: a, base_url: "vllm:8000", timeout_ms: 5}\n  - {id: "-b", base_url: "http://b"}\n',
        [
            "backends[0].base_url: String should match pattern '^https?://[^\\s/$.?#][^\\s]*$'",
            "backends[0].timeout_ms: Input should be greater than or equal to 100",
            "backends[1].id: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'",
        ],
    ),
    "unknown_backends_everywhere": (
        GOOD
        + "  - {model: other, backends: [{backend_id: ghost}]}\n"
        + "backend_states:\n  phantom: {state: disabled}\n",
        ["models: other names unknown backend ghost", "backend_states: unknown backend phantom"],
    ),
    "duplicates": (
        GOOD.replace("\nmodels:", '\n  - {id: vllm-a, base_url: "http://x"}\nmodels:')
        + "  - {model: llama2, aliases: [llama], backends: [{backend_id: vllm-a}]}\n",
        ["backends: backend id 'vllm-a' appears twice", "models: model name or alias 'llama' appears twice"],
    ),
    "bad_limits": (
        GOOD
        + "org_limits:\n  'bad org':\n    rate_limits: {requests_per_minute: 0}\n    failure_mode: maybe\n",
        [
            "org_limits.bad org.rate_limits.requests_per_minute: Input should be greater than or equal to 1",
            "org_limits.bad org.failure_mode: Input should be 'fail_open' or 'fail_closed'",
        ],
    ),
    "bad_keys": (
        GOOD + f"api_keys:\n  - {{id: k1, organization_id: acme, key_hash: {HASH}, scopes: [root]}}\n"
        "  - {id: k2, organization_id: acme, key_hash: not-a-hash, scopes: []}\n",
        [
            "api_keys[0].scopes[0]: Input should be 'inference', 'audit' or 'admin'",
            "api_keys[1].key_hash: String should match pattern '^[0-9a-f]{64}$'",
            "api_keys[1].scopes: Frozenset should have at least 1 item after validation, not 0",
        ],
    ),
    "bad_state_and_weight": (
        GOOD.replace("{backend_id: vllm-a}]", "{backend_id: vllm-a, weight: 5000}]")
        + "backend_states:\n  vllm-a: {state: broken}\n",
        [
            "models[0].backends[0].weight: Input should be less than or equal to 1000",
            "backend_states.vllm-a.state: Input should be 'healthy', 'degraded' or 'disabled'",
        ],
    ),
    "bad_pricing_and_override": (
        GOOD.replace(
            "backends: [{backend_id: vllm-a}]}",
            "backends: [{backend_id: vllm-a}], pricing: {input_usd_per_1m_tokens: -1},"
            " org_overrides: {acme: {backends: []}}}",
        ),
        [
            "models[0].pricing.input_usd_per_1m_tokens: Input should be greater than or equal to 0",
            "models[0].org_overrides.acme.backends: "
            "Tuple should have at least 1 item after validation, not 0",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_validate_lists_every_error_of_a_broken_config_with_its_path(name, tmp_path, capsys):
    text, expected = BROKEN[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)

    assert main(["config", "validate", str(path)]) == 1

    out = capsys.readouterr()
    noun = "error" if len(expected) == 1 else "errors"
    assert out.err.splitlines() == [f"{path}: {len(expected)} {noun}", *(f"  {line}" for line in expected)]
    assert out.out == ""


def test_validate_accepts_a_good_config(tmp_path, capsys):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["config", "validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: valid\n"


def test_validate_names_a_missing_file(tmp_path, capsys):
    assert main(["config", "validate", str(tmp_path / "absent.yaml")]) == 1
    assert "(file): cannot read" in capsys.readouterr().err


def test_serve_refuses_a_broken_config_with_the_same_list_and_no_traceback(tmp_path):
    text, expected = BROKEN["bad_keys"]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env["ROUTER_DATA_DIR"] = str(tmp_path / "data")

    done = subprocess.run(
        [str(ROUTER_BIN), "serve", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )

    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert lines[: len(expected) + 1] == [f"{path}: {len(expected)} errors", *(f"  {e}" for e in expected)]
    assert "router: not started" in lines[-1]
