"""The pure core of idempotency: verdicts, names, fingerprints and the stored-reply encoding."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_impl.limits.idempotency import (
    Completed,
    Conflict,
    InFlight,
    Replay,
    StoredReply,
    compact,
    decode_reply,
    duration_ms,
    encode_reply,
    entry_name,
    held_by,
    judge,
    request_fingerprint,
    to_ms,
)
from router_impl.limits.idempotency_lmdb import decode_entry, encode_entry

header_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
replies = st.builds(
    StoredReply,
    status=st.integers(100, 599),
    body=st.binary(max_size=2048),
    content_type=header_text,
    headers=st.lists(st.tuples(header_text, header_text), max_size=6).map(tuple),
)
REPLY = StoredReply(200, b"ok", "text/plain")


@given(replies)
def test_any_reply_round_trips_exactly(reply: StoredReply) -> None:
    assert decode_reply(encode_reply(reply)) == reply


def test_the_encoding_is_a_json_head_line_then_the_raw_body() -> None:
    encoded = encode_reply(StoredReply(200, b"\xff\n\x00", "a/b", (("X-A", "1"),)))
    assert encoded == b'[1,200,"a/b",[["X-A","1"]]]\n\xff\n\x00'


@pytest.mark.parametrize("data", [b"no head line", b'[2,200,"a",[]]\nbody', b"[1,200]\n"])
def test_unreadable_replies_are_value_errors(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_reply(data)


@given(replies, st.text(max_size=80), header_text, st.integers(0, 2**48))
def test_lmdb_entries_round_trip(reply: StoredReply, fingerprint: str, token: str, until: int) -> None:
    for entry in (
        InFlight(compact(fingerprint), token, until),
        Completed(compact(fingerprint), reply, until),
    ):
        assert decode_entry(encode_entry(entry)) == entry


@pytest.mark.parametrize("data", [b'["x","f",1]', b'["p"]', b"{}", b"not json"])
def test_malformed_lmdb_entries_are_value_errors(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_entry(data)


def test_verdicts() -> None:
    in_flight = InFlight("fp", "tok", until_ms=1000)
    done = Completed("fp", REPLY, until_ms=1000)
    assert judge(None, "fp", 0) is None
    assert judge(in_flight, "fp", 999) == Conflict("REQUEST_IN_PROGRESS")
    assert judge(in_flight, "other", 999) == Conflict("IDEMPOTENCY_CONFLICT")
    assert judge(in_flight, "fp", 1000) is None
    assert judge(done, "fp", 999) == Replay(REPLY)
    assert judge(done, "other", 999) == Conflict("IDEMPOTENCY_CONFLICT")
    assert judge(done, "other", 1000) is None


def test_only_the_holders_token_settles_an_in_flight_entry() -> None:
    assert held_by(InFlight("fp", "tok", 0), "tok")
    assert not held_by(InFlight("fp", "tok", 0), "tok2")
    assert not held_by(Completed("fp", REPLY, 0), "tok")
    assert not held_by(None, "tok")


@given(st.text(max_size=300))
def test_compact_names_are_bounded_printable_and_never_break_the_hash_tag(text: str) -> None:
    name = compact(text)
    assert 1 <= len(name) <= 128 and name.isascii() and name.isprintable()
    assert not {"{", "}", "/"} & set(name)
    assert (name == text) != name.startswith("#")


@given(st.text(max_size=50), st.text(max_size=50), st.text(max_size=50), st.text(max_size=50))
def test_distinct_scope_and_key_pairs_get_distinct_names(s1: str, k1: str, s2: str, k2: str) -> None:
    assert (entry_name(s1, k1) == entry_name(s2, k2)) == ((s1, k1) == (s2, k2))


def test_entry_names_keep_plain_ids_readable() -> None:
    assert entry_name("org-1", "3f2b6c1e-9a1d-4c52-b3f5-0c2f0d1e2a3b") == (
        "{org-1}:3f2b6c1e-9a1d-4c52-b3f5-0c2f0d1e2a3b"
    )
    assert entry_name("org-1", "k" * 129) == "{org-1}:#" + compact("k" * 129)[1:]


def test_fingerprints_cover_method_path_and_body_without_ambiguity() -> None:
    base = request_fingerprint("POST", "/v1/inference", b"{}")
    assert base == request_fingerprint("post", "/v1/inference", b"{}")
    assert len(base) == 64
    assert base != request_fingerprint("POST", "/v1/inference", b"{ }")
    assert base != request_fingerprint("POST", "/v1/completions", b"{}")
    assert request_fingerprint("POST", "/a", b"b") != request_fingerprint("POST", "/ab", b"")


def test_instants_are_floored_to_milliseconds() -> None:
    assert to_ms(1.2349) == 1234
    assert to_ms(datetime.fromtimestamp(1.5, UTC)) == 1500
    with pytest.raises(ValueError, match="aware"):
        to_ms(datetime(2030, 1, 1))
    assert duration_ms(120, "lease") == 120_000
    with pytest.raises(ValueError, match="ttl"):
        duration_ms(0.0001, "ttl")
