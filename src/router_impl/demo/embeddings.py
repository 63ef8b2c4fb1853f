"""What the demo model answers to /v1/embeddings: deterministic unit vectors with honest usage (pure).

Each input's vector is derived from the SHA-256 of its text (or token ids), so the same input always
gets the same vector; tokens are whitespace-separated words, a token id counts one.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import orjson

from router_impl.demo.answers import DEMO_MODEL, BadRequest, demo_request

DEFAULT_DIMENSIONS = 64
MAX_DIMENSIONS = 4096


def embeddings_body(raw: bytes) -> bytes:
    """OpenAI's embeddings response for a request body; ``BadRequest`` when it is unusable."""
    body = demo_request(raw)
    inputs = _inputs(body.get("input"))
    dimensions = _dimensions(body.get("dimensions"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(f"<{t}>" for t in item)
        tokens += len(item.split()) if isinstance(item, str) else len(item)
        vector = unit_vector(text, dimensions)
        packed: list[float] | str = (
            vector
            if encoding == "float"
            else base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        )
        data.append({"object": "embedding", "index": index, "embedding": packed})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": data, "model": DEMO_MODEL, "usage": usage})


def unit_vector(text: str, dimensions: int) -> list[float]:
    """Deterministic pseudo-random components in [-1, 1], scaled to length 1."""
    raw = bytearray()
    counter = 0
    seed = text.encode("utf-8", "surrogatepass")
    while len(raw) < 2 * dimensions:
        raw += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    values = [(int.from_bytes(raw[2 * i : 2 * i + 2], "big") / 32767.5) - 1.0 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _inputs(given: object) -> list[str | list[int]]:
    """OpenAI's four input forms: a text, texts, one token-id array, or token-id arrays."""
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given:
        if all(isinstance(item, str) for item in given):
            return list(given)
        if all(_is_token(item) for item in given):
            return [list(given)]
        if all(isinstance(item, list) and item and all(_is_token(t) for t in item) for item in given):
            return [list(item) for item in given]
    raise BadRequest("'input' must be a string, an array of strings or an array of token ids.", "input")


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dimensions(given: object) -> int:
    if given is None:
        return DEFAULT_DIMENSIONS
    if not isinstance(given, int) or isinstance(given, bool) or not 1 <= given <= MAX_DIMENSIONS:
        raise BadRequest(f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}.", "dimensions")
    return given
