from hypothesis import given
from hypothesis import strategies as st

from router_impl.web.json_body import parse_json


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
