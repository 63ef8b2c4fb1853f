import itertools
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_impl.auth.admin import (
    KeyMinter,
    created_micros,
    decode_cursor,
    encode_cursor,
    page_limit,
    revoked_copy,
)
from router_impl.auth.identity_wire import Answer, KeyValidation, record_of
from router_impl.auth.keys import ApiKeyRecord, base62, hash_secret
from router_impl.auth.lru import LruCache
from router_impl.auth.secret_box import SecretBox
from router_impl.errors import ApiError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
BOX = SecretBox(b"k" * 32)
CURSOR_PATTERN = re.compile(r"^[A-Za-z0-9._~=-]{1,512}$")


def counting_bytes():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def test_minted_key_stores_only_the_hash_and_a_sealed_signing_secret():
    minter = KeyMinter(BOX, counting_bytes())
    new = minter.mint("key_0000000000000001", "org-a", "ci", ["inference"], ["m1"], None, True, NOW)
    record = new.record
    assert record.key_hash == hash_secret(new.secret)
    assert record.prefix == new.secret[:12]
    assert new.signing_secret is not None and new.signing_secret.startswith("rs_")
    assert BOX.decrypt(record.signing_secret_enc, context=record.id) == new.signing_secret
    dumped = record.model_dump_json()
    assert new.secret not in dumped and new.signing_secret not in dumped
    assert (record.created_at, record.allowed_models, record.name) == (NOW, frozenset({"m1"}), "ci")
    assert new.secret not in repr(new)


def test_new_key_ids_are_random_uuids():
    uuid4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(uuid4, KeyMinter(BOX).new_id())


def test_key_without_signature_gets_no_signing_secret():
    new = KeyMinter(None).mint("key_1", "org-a", None, ["admin"], None, None, False, NOW)
    assert new.signing_secret is None and new.record.signing_secret_enc is None


def test_signing_secret_without_a_secret_box_is_an_internal_error():
    with pytest.raises(ApiError) as err:
        KeyMinter(None).mint("key_1", "org-a", None, ["admin"], None, None, True, NOW)
    assert err.value.code == "INTERNAL_ERROR"


def test_revoking_twice_keeps_the_first_instant_and_reason():
    record = KeyMinter(None).mint("key_1", "org-a", None, ["admin"], None, None, False, NOW).record
    first = revoked_copy(record, NOW, "leaked")
    second = revoked_copy(first, datetime(2027, 1, 1, tzinfo=UTC), "again")
    assert (second.revoked, second.revoked_at, second.revoked_reason) == (True, NOW, "leaked")


@given(
    micros=st.integers(0, 2**63), key_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True)
)
def test_cursor_round_trips_and_fits_the_contract_pattern(micros, key_id):
    cursor = encode_cursor((micros, key_id))
    assert CURSOR_PATTERN.match(cursor)
    assert decode_cursor(cursor) == (micros, key_id)


@pytest.mark.parametrize("cursor", ["zz", "abc", "00", "7c", "313233", "7c6b6579"])
def test_foreign_cursors_are_rejected(cursor):
    with pytest.raises(ValueError):
        decode_cursor(cursor)


def test_page_limits_are_clamped():
    assert [page_limit(n) for n in (-1, 0, 1, 100, 1000, 5000)] == [1, 1, 1, 100, 1000, 1000]


def test_keys_without_creation_time_sort_first():
    record = ApiKeyRecord(id="k", organization_id="o", key_hash="0" * 64, scopes={"admin"})
    assert created_micros(record) == 0
    assert created_micros(record.model_copy(update={"created_at": NOW})) == int(NOW.timestamp()) * 1_000_000


def test_base62_has_fixed_width():
    assert base62(b"\x00" * 32) == "0" * 43
    assert len(base62(b"\xff" * 32)) == 43


def test_lru_evicts_the_least_recently_used_and_reports_it():
    evicted = []
    cache = LruCache(2, lambda k, v: evicted.append(k))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert evicted == ["b"] and len(cache) == 2
    assert cache.peek("a") == 1 and cache.pop("a") == 1 and cache.get("a") is None


def validation(**overrides):
    body = {
        "valid": True,
        "cache_ttl_seconds": 30,
        "key": {
            "id": "key_1",
            "organization_id": "org-a",
            "scopes": ["inference"],
            "revoked": False,
            "signature_required": True,
            "signing_secret": "rs_signing-secret-from-idp",
            "future_field": "ignored",
        },
        "also_ignored": 1,
    }
    return KeyValidation.model_validate(body | overrides)


def test_identity_answer_becomes_a_record_with_the_signing_secret_sealed():
    record = record_of("a" * 64, validation(), BOX)
    assert (record.id, record.organization_id, record.key_hash, record.revoked) == (
        "key_1",
        "org-a",
        "a" * 64,
        False,
    )
    assert BOX.decrypt(record.signing_secret_enc, context="key_1") == "rs_signing-secret-from-idp"
    assert "rs_signing-secret-from-idp" not in repr(validation())


def test_identity_answer_not_valid_is_recorded_as_revoked_and_without_key_as_unknown():
    assert record_of("a" * 64, validation(valid=False), BOX).revoked
    assert record_of("a" * 64, KeyValidation(valid=False, cache_ttl_seconds=5), BOX) is None
    with pytest.raises(ValueError):
        record_of("a" * 64, KeyValidation(valid=True, cache_ttl_seconds=5), BOX)


def test_only_live_recent_answers_are_served_during_an_outage():
    live = record_of("a" * 64, validation(), BOX)
    assert Answer(live, 10, 100).servable_when_down(99)
    assert not Answer(live, 10, 100).servable_when_down(100)
    assert not Answer(None, 10, 100).servable_when_down(50)
    assert not Answer(live.model_copy(update={"revoked": True}), 10, 100).servable_when_down(50)
