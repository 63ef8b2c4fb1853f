"""OpenAI-compatible bodies built deterministically from a request body (pure functions, no I/O)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]

_ERROR_TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def count_tokens(text: str) -> int:
    """The mock's tokenizer: whitespace-separated words."""
    return len(text.split())


def content_text(content: object) -> str:
    """Text of a message `content`: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def _messages(body: JsonObject) -> list[JsonObject]:
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


@dataclass(frozen=True)
class Completion:
    """What the mock model 'generated' for one request, and the token counts it bills."""

    text: str
    prompt_tokens: int
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return count_tokens(self.text)

    def usage(self) -> JsonObject:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _echo(text: str, prompt_tokens: int, max_tokens: object) -> Completion:
    words = text.split()
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 <= max_tokens < len(words):
        return Completion(" ".join(words[:max_tokens]), prompt_tokens, "length")
    return Completion(text, prompt_tokens, "stop")


def chat_completion_of(body: JsonObject) -> Completion:
    """Echo the last user message; the prompt is every message's text."""
    messages = _messages(body)
    prompt_tokens = sum(count_tokens(content_text(m.get("content"))) for m in messages)
    user_texts = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return _echo(user_texts[-1] if user_texts else "", prompt_tokens, max_tokens)


def recount_prompt(
    completion: Completion, body: JsonObject, *, per_byte: bool, template_per_message: int
) -> Completion:
    """``completion`` with its prompt counted another way: a token per UTF-8 byte of the prompt text
    (``per_byte``), plus ``template_per_message`` tokens per chat message (or per prompt)."""
    if not per_byte and not template_per_message:
        return completion
    messages = _messages(body)
    if messages:
        texts = [content_text(m.get("content")) for m in messages]
    else:
        prompt = body.get("prompt")
        texts = [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else [str(prompt or "")]
    counted = sum(len(t.encode()) if per_byte else count_tokens(t) for t in texts)
    return dataclasses.replace(
        completion, prompt_tokens=counted + template_per_message * max(1, len(messages))
    )


def text_completion_of(body: JsonObject) -> Completion:
    """Echo the prompt (a string or a list of strings)."""
    prompt = body.get("prompt")
    text = " ".join(p for p in prompt if isinstance(p, str)) if isinstance(prompt, list) else prompt
    text = text if isinstance(text, str) else ""
    return _echo(text, count_tokens(text), body.get("max_tokens"))


def wants_stream(body: JsonObject) -> bool:
    return body.get("stream") is True


def wants_stream_usage(body: JsonObject) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def split_into_chunks(text: str, count: int) -> list[str]:
    """Exactly `count` pieces (some maybe empty) whose concatenation is `text`, split between words."""
    leading = text[: len(text) - len(text.lstrip())]
    words = re.findall(r"\S+\s*", text)
    count = max(count, 1)
    size, extra = divmod(len(words), count)
    pieces: list[str] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append("".join(words[start:end]))
        start = end
    pieces[0] = leading + pieces[0]
    return pieces


@dataclass(frozen=True)
class ResponseMeta:
    response_id: str
    model: str
    created: int


def chat_completion_body(meta: ResponseMeta, completion: Completion, *, with_usage: bool) -> JsonObject:
    body: JsonObject = {
        "id": meta.response_id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
    }
    if with_usage:
        body["usage"] = completion.usage()
    return body


def text_completion_body(meta: ResponseMeta, completion: Completion, *, with_usage: bool) -> JsonObject:
    body: JsonObject = {
        "id": meta.response_id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [
            {"index": 0, "text": completion.text, "logprobs": None, "finish_reason": completion.finish_reason}
        ],
    }
    if with_usage:
        body["usage"] = completion.usage()
    return body


def _chunk(meta: ResponseMeta, obj: str, choices: list[JsonObject], with_usage: bool) -> JsonObject:
    chunk: JsonObject = {
        "id": meta.response_id,
        "object": obj,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    }
    if with_usage:
        chunk["usage"] = None  # OpenAI sends null on every chunk but the last when usage is requested
    return chunk


def chat_stream_chunks(
    meta: ResponseMeta, completion: Completion, chunk_count: int, *, with_usage: bool
) -> list[JsonObject]:
    """`chunk_count` content chunks, one finish chunk, then a usage chunk when `with_usage`."""
    obj = "chat.completion.chunk"
    chunks = []
    for index, piece in enumerate(split_into_chunks(completion.text, chunk_count)):
        delta: JsonObject = {"role": "assistant", "content": piece} if index == 0 else {"content": piece}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        chunks.append(_chunk(meta, obj, [choice], with_usage))
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": completion.finish_reason}
    chunks.append(_chunk(meta, obj, [finish], with_usage))
    if with_usage:
        chunks.append({**_chunk(meta, obj, [], with_usage), "usage": completion.usage()})
    return chunks


def text_stream_chunks(
    meta: ResponseMeta, completion: Completion, chunk_count: int, *, with_usage: bool
) -> list[JsonObject]:
    """Same shape as `chat_stream_chunks`, for /v1/completions."""
    obj = "text_completion"
    chunks = [
        _chunk(meta, obj, [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}], with_usage)
        for piece in split_into_chunks(completion.text, chunk_count)
    ]
    finish = {"index": 0, "text": "", "logprobs": None, "finish_reason": completion.finish_reason}
    chunks.append(_chunk(meta, obj, [finish], with_usage))
    if with_usage:
        chunks.append({**_chunk(meta, obj, [], with_usage), "usage": completion.usage()})
    return chunks


def error_body(status: int, message: str) -> JsonObject:
    error_type = _ERROR_TYPE_OF_STATUS.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": error_type, "param": None, "code": f"mock_{status}"}}


def models_body(models: tuple[str, ...], created: int) -> JsonObject:
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": created, "owned_by": "mock"} for model in models
        ],
    }


def vector_of(text: str, dimensions: int) -> list[float]:
    """A deterministic embedding: ``dimensions`` values in [-1, 1) from the SHA-256 of ``text``."""
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{counter}:{text}".encode("utf-8", "surrogatepass")).digest()
        counter += 1
    return [round(byte / 128 - 1, 4) for byte in digest[:dimensions]]
