from hypothesis import given
from hypothesis import strategies as st

from router_impl.web.json_body import has_long_digit_run, parse_json


def test_integers_beyond_64_bits_stay_exact():
    big = 123456789012345678901234567890
    assert parse_json(b'{"seed": %d}' % big) == {"seed": big}
    assert parse_json(b'{"seed": -%d}' % big) == {"seed": -big}


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_parsing_matches_the_standard_library_exactly(document):
    import json

    raw = json.dumps(document).encode()
    assert parse_json(raw) == json.loads(raw)


@given(st.binary(max_size=200))
def test_the_long_digit_scan_finds_exactly_runs_of_19_ascii_digits(raw):
    import re

    assert has_long_digit_run(raw) == bool(re.search(rb"[0-9]{19,}", raw))


def test_scanning_a_one_mib_prompt_for_long_integers_costs_milliseconds_not_a_tenth_of_a_second():
    body = b'{"messages":[{"role":"user","content":"' + b"lorem ipsum 12 " * 70_000 + b'"}]}'
    best = min(_timed(lambda: has_long_digit_run(body)) for _ in range(5))
    assert best < 0.02, f"{best * 1000:.1f} ms"  # re's \d{19,} took ~110 ms per MiB


def _timed(work):
    import time

    started = time.perf_counter()
    work()
    return time.perf_counter() - started
