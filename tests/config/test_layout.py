"""The object layout: one key per object, and a whole-snapshot check that names the bad objects."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_impl.config.layout import assemble, explode, object_key, parse_key, references, with_change
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import ConfigInvalid
from tests.config.samples import backend, key, model, sample_config


def test_each_object_has_its_own_key_and_model_names_with_slashes_are_quoted() -> None:
    objects = explode(sample_config())
    assert list(objects) == [
        "backends/gpu-a",
        "backends/gpu-b",
        "models/llama-3-8b",
        "models/org%2Fmixtral:8x7b",
        "backend_states/gpu-b",
        "keys/key-1",
        "keys/key-2",
    ]
    assert parse_key("models/org%2Fmixtral:8x7b") == ("models", "org/mixtral:8x7b")
    assert json.loads(objects["backends/gpu-a"])["base_url"] == "http://gpu-a.internal:8000"


def test_api_key_objects_hold_hashes_never_secrets() -> None:
    stored = json.loads(explode(sample_config())["keys/key-1"])
    assert set(stored) >= {"id", "key_hash", "scopes"}
    assert not any("secret" in name and stored[name] for name in stored)


def test_assemble_inverts_explode() -> None:
    config = sample_config()
    assert assemble(explode(config)) == config


names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


@given(
    backend_ids=st.lists(names, min_size=1, max_size=4, unique=True),
    model_names=st.lists(st.tuples(names, st.sampled_from(["", "/", ":"]), names), max_size=4, unique=True),
    key_ids=st.lists(names, max_size=3, unique=True),
)
def test_any_valid_config_survives_the_round_trip(
    backend_ids: list[str], model_names: list[tuple[str, str, str]], key_ids: list[str]
) -> None:
    unique_models = sorted(
        {f"{a}{sep}{b}" for a, sep, b in model_names}, key=lambda n: object_key("models", n)
    )
    config = RuntimeConfig(
        backends=tuple(backend(b) for b in sorted(backend_ids)),
        models=tuple(model(name, backend_ids[0]) for name in unique_models),
        api_keys=tuple(key(k) for k in sorted(key_ids)),
    )
    assert assemble(explode(config)) == config


def _invalid(objects: dict[str, bytes]) -> ConfigInvalid:
    with pytest.raises(ConfigInvalid) as caught:
        assemble(objects)
    return caught.value


def _with(kind_key: str, document: dict[str, object]) -> dict[str, bytes]:
    return {**explode(sample_config()), kind_key: json.dumps(document).encode()}


def test_a_negative_weight_is_rejected_naming_the_model_object() -> None:
    bad = model("llama-3-8b", "gpu-a").model_dump(mode="json")
    bad["backends"][0]["weight"] = -1
    problems = _invalid(_with("models/llama-3-8b", bad)).problems
    assert list(problems) == ["models/llama-3-8b"]
    assert "weight" in problems["models/llama-3-8b"]


def test_a_model_naming_an_unknown_backend_is_rejected() -> None:
    bad = model("llama-3-8b", "gpu-z").model_dump(mode="json")
    problems = _invalid(_with("models/llama-3-8b", bad)).problems
    assert problems == {"models/llama-3-8b": "names unknown backend(s) gpu-z"}


def test_a_backend_with_a_bad_url_is_rejected() -> None:
    bad = backend("gpu-a").model_dump(mode="json") | {"base_url": "ftp:/nowhere"}
    problems = _invalid(_with("backends/gpu-a", bad)).problems
    assert list(problems) == ["backends/gpu-a"]
    assert "base_url" in problems["backends/gpu-a"]


def test_every_bad_object_is_listed_and_the_message_names_them() -> None:
    objects = explode(sample_config())
    objects["backends/gpu-a"] = b"{not json"
    objects["keys/key-1"] = key("key-9").model_dump_json().encode()  # id differs from its key
    objects["widgets/w1"] = b"{}"
    objects["models/org/mixtral"] = b"{}"  # not the canonical (quoted) key
    error = _invalid(objects)
    assert set(error.problems) == {"backends/gpu-a", "keys/key-1", "widgets/w1", "models/org/mixtral"}
    assert "keys/key-1: the object's own id 'key-9' differs from its key" in str(error)


def test_duplicate_aliases_and_key_hashes_name_both_objects() -> None:
    objects = explode(sample_config())
    objects = with_change(
        objects, "models", "llama-2", model("llama-2", "gpu-a", aliases=("llama",)).model_dump_json().encode()
    )
    same_hash = key("key-1").model_copy(update={"id": "key-3"})
    objects = with_change(objects, "keys", "key-3", same_hash.model_dump_json().encode())
    problems = _invalid(objects).problems
    assert set(problems) == {"models/llama-2", "models/llama-3-8b", "keys/key-1", "keys/key-3"}


def test_a_state_for_an_unknown_backend_is_rejected() -> None:
    objects = with_change(explode(sample_config()), "backends", "gpu-b", None)
    problems = _invalid(objects).problems
    # The model that still names gpu-b and gpu-b's state are both to blame.
    assert set(problems) == {"models/org%2Fmixtral:8x7b", "backend_states/gpu-b"}


def test_references_name_the_backends_a_change_depends_on() -> None:
    config = sample_config()
    assert references("models", "org/mixtral:8x7b", config.models[1]) == ("backends/gpu-a", "backends/gpu-b")
    assert references("backend_states", "gpu-b", None) == ("backends/gpu-b",)
    assert references("backends", "gpu-a", config.backends[0]) == ()


def test_a_memo_decodes_only_changed_objects() -> None:
    memo: dict[str, tuple[bytes, object]] = {}
    objects = explode(sample_config())
    first = assemble(objects, memo)  # type: ignore[arg-type]
    changed = with_change(
        objects, "backends", "gpu-a", backend("gpu-a", "http://new:1").model_dump_json().encode()
    )
    changed = with_change(changed, "keys", "key-2", None)
    second = assemble(changed, memo)  # type: ignore[arg-type]
    assert second.backends[1] is first.backends[1]  # gpu-b reused, not decoded again
    assert second.backend("gpu-a") is not None and second.backend("gpu-a").base_url == "http://new:1"  # type: ignore[union-attr]
    assert "keys/key-2" not in memo
