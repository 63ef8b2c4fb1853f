"""The config model and the contract's admin schemas agree: what the contract calls valid, the
model accepts (schemathesis sends exactly that as a schema-valid request), and the reverse."""

from __future__ import annotations

import pytest
import yaml
from jsonschema import Draft4Validator
from pydantic import ValidationError
from router_contract import SPEC_PATH

from router_impl.config.model import BackendConfig


def _contract_accepts(schema: dict, value: object) -> bool:
    return Draft4Validator(schema).is_valid(value)


@pytest.mark.parametrize(
    "path",
    ["/run/secrets/token", "/a", "/" + "x" * 1023, "/" + "x" * 1024, "/t\x00k", "/t\nk", "/t\x02\u00e9"],
)
def test_backend_api_key_file_is_valid_for_the_contract_exactly_when_the_model_accepts_it(path):
    spec = yaml.safe_load(SPEC_PATH.read_text())
    schema = spec["components"]["schemas"]["Backend"]["properties"]["api_key_file"]
    try:
        BackendConfig(id="b", base_url="http://127.0.0.1:9", api_key_file=path)
        accepted = True
    except ValidationError:
        accepted = False
    assert _contract_accepts(schema, path) == accepted
