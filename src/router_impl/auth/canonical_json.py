"""Canonical JSON (RFC 8785, JCS): the one byte form of a JSON value that a body signature covers.

Objects with members sorted by their UTF-16 code units, no whitespace, strings escaped only where
JSON requires it, numbers as ECMAScript prints an IEEE double (``1``, ``0.2``, ``1e-7``, ``1e+21``).
Every JCS implementation (JavaScript ``canonicalize``, Go, Java, Python ``rfc8785``) gives the same
bytes, so a client in any language can sign what the router verifies.
"""

from __future__ import annotations

import math
from typing import Any

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def canonical_json(value: Any) -> bytes:
    """The JCS bytes of a parsed JSON value; ValueError for what JSON cannot carry (NaN, Infinity,
    non-string keys, other types)."""
    parts: list[str] = []
    _write(value, parts)
    # surrogatepass: a string that is not valid Unicode must still only fail verification, never crash.
    return "".join(parts).encode("utf-8", "surrogatepass")


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int | float):
        out.append(_number(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("object keys must be strings")
        out.append("{")
        for index, key in enumerate(sorted(value, key=_utf16)):
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    else:
        raise ValueError(f"not a JSON value: {type(value).__name__}")


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _string(text: str) -> str:
    escaped = []
    for char in text:
        short = _SHORT_ESCAPES.get(char)
        if short is not None:
            escaped.append(short)
        elif char < " ":
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _number(number: int | float) -> str:
    """ECMAScript Number::toString of the number as an IEEE double (RFC 8785 §3.2.2.3)."""
    try:
        value = float(number)
    except OverflowError as exc:
        raise ValueError("number outside the IEEE double range") from exc
    if not math.isfinite(value):
        raise ValueError("NaN and Infinity are not JSON")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript requires.
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # value = 0.<digits> * 10**point
    point = len(whole) + int(exponent or 0) - (len(whole + fraction) - len((whole + fraction).lstrip("0")))
    digits = digits.rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        text = digits + "0" * (point - count)
    elif 0 < point <= 21:
        text = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        power = point - 1
        head = digits[0] + ("." + digits[1:] if count > 1 else "")
        text = f"{head}e{'+' if power > 0 else '-'}{abs(power)}"
    return sign + text
