"""Token counts of a request: from the backend's usage block, or estimated when it has none."""

from __future__ import annotations

import json
from typing import Any

import orjson

from router_impl.usage.record import Usage

# Request fields a backend renders into the prompt: the text, and tool or output schemas.
_PROMPT_FIELDS = ("messages", "prompt", "input", "tools", "functions", "tool_choice", "response_format")


def estimate_tokens(text: str) -> int:
    """A deliberately rough estimate (about 4 characters per token) for backends that omit usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def usage_of(payload: dict[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if completion is None and isinstance(prompt, int) and usage.get("total_tokens") == prompt:
        completion = 0  # an embeddings usage block: prompt and total tokens only
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return Usage(tokens_input=prompt, tokens_output=completion)


def prompt_text(kind: str, body: dict[str, Any]) -> str:
    if kind == "completion":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else " ".join(p for p in prompt or () if isinstance(p, str))
    parts: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return " ".join(parts)


def prompt_estimate(kind: str, body: dict[str, Any]) -> int:
    if kind == "embedding":
        return _embedding_input_tokens(body.get("input"))
    return estimate_tokens(prompt_text(kind, body))


def _embedding_input_tokens(given: object) -> int:
    """Texts are estimated; token ids count one each."""
    if isinstance(given, str):
        return estimate_tokens(given)
    total = 0
    for item in given if isinstance(given, list) else ():
        if isinstance(item, str):
            total += estimate_tokens(item)
        elif isinstance(item, list):
            total += len(item)
        elif isinstance(item, int):
            total += 1
    return total


def prompt_bound(body: dict[str, Any], per_message: int, per_request: int) -> int:
    """An upper bound of the prompt tokens a backend can count for ``body`` (the budget reserves it).

    A byte-level BPE tokenizer (GPT-2/GPT-4 family, Llama 3, Qwen, Mistral's Tekken) never makes more
    tokens of a text than its UTF-8 bytes; the prompt-bearing fields' compact JSON has at least those
    bytes (names, arguments and schemas included). The chat template adds ``per_message`` tokens per
    message plus ``per_request``. Not covered: images or audio parts, counted by the model's own rule.
    """
    size = sum(_compact_size(body[name]) for name in _PROMPT_FIELDS if body.get(name) is not None)
    messages = body.get("messages")
    count = len(messages) if isinstance(messages, list) else 1
    return size + per_message * count + per_request


def _compact_size(value: Any) -> int:
    """Bytes of ``value``'s compact UTF-8 JSON; the standard library writes integers beyond 64 bits,
    which JSON allows and orjson refuses."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return len(text.encode("utf-8", "surrogatepass"))


def estimate(kind: str, body: dict[str, Any], payload: dict[str, Any]) -> Usage:
    texts: list[str] = []
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(text, str):
                texts.append(text)
    return Usage(
        tokens_input=prompt_estimate(kind, body),
        tokens_output=estimate_tokens(" ".join(texts)),
        estimated=True,
    )
