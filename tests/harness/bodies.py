"""Request bodies the tests send: an OpenAI chat completion request of one user message."""

from __future__ import annotations

from typing import Any


def chat_body(model: str, content: str = "hello there world", **extra: Any) -> dict[str, Any]:
    """``extra`` adds fields: ``max_tokens=8``, ``stream=True``, ``stream_options={...}``."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def words(count: int, word: str = "tok") -> str:
    """A prompt of ``count`` words, for tests that reserve and bill an exact number of tokens."""
    return " ".join([word] * count)
