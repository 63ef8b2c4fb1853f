"""Parses request bodies: orjson, except where it would change a number.

orjson turns integers beyond 64 bits into floats, silently; a client's exact integer must reach the
backend unchanged. Any body with a run of 19+ digits goes through the standard library's parser,
which keeps integers exact (a long run inside a string or a fraction merely costs the slower path).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile(rb"\d{19,}")


def parse_json(raw: bytes) -> Any:
    if _LONG_DIGITS.search(raw):
        return json.loads(raw)
    return orjson.loads(raw)


def exact_integers(raw: bytes, document: Any) -> Any:
    """``document`` as orjson parsed it, or parsed again exactly when it may hold long integers."""
    if _LONG_DIGITS.search(raw):
        return json.loads(raw)
    return document
