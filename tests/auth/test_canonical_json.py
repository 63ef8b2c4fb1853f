"""RFC 8785 (JCS) canonical JSON: the RFC's own examples, ECMAScript number forms, and refusals."""

from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_impl.auth.canonical_json import canonical_json


def test_the_rfc_8785_example_is_canonicalised_byte_for_byte():
    # RFC 8785 §3.2.2: the sample input and its canonical form.
    sample = (
        b'{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        b' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        b' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()
    assert canonical_json(orjson.loads(sample)) == expected


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (100, "100"),
        (0.2, "0.2"),
        (-12.5, "-12.5"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.23e-7, "1.23e-7"),
        (0.1 + 0.2, "0.30000000000000004"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740993, "9007199254740992"),  # every JSON number is an IEEE double
    ],
)
def test_numbers_print_as_ecmascript_prints_them(number, text):
    assert canonical_json(number) == text.encode()


def test_members_sort_by_utf16_code_units_not_code_points():
    # U+1F600 is D83D DE00 in UTF-16, which sorts before U+FB01 (a code-point sort puts it after).
    assert (
        canonical_json({"\ufb01": 1, "\U0001f600": 2, "a": 3}) == '{"a":3,"\U0001f600":2,"\ufb01":1}'.encode()
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, {1: "x"}, b"bytes", {"a": object()}, 10**400])
def test_what_json_cannot_carry_is_refused(value):
    with pytest.raises(ValueError):
        canonical_json(value)


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
def test_canonical_json_is_json_that_parses_back_to_the_same_value(value):
    text = canonical_json(value)
    assert json.loads(text, parse_int=float) == value  # every number is a double, whatever its form
    assert canonical_json(orjson.loads(text)) == text
