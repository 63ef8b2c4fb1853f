"""What the demo model answers: a deterministic echo with honest token counts (pure, no I/O).

Tokens are whitespace-separated words. The reply is the echoed text's words joined by single
spaces, so a streamed answer (one chunk per word) concatenates to exactly the whole answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

DEMO_MODEL = "demo"
AnswerKind = Literal["chat", "completion"]


class BadRequest(ValueError):
    """A request body the demo model refuses, with OpenAI's ``param`` naming the culprit."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


@dataclass(frozen=True, slots=True)
class Answer:
    model: str
    words: list[str]
    prompt_tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def completion_tokens(self) -> int:
        return len(self.words)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def demo_request(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object naming the demo model; ``BadRequest`` as OpenAI words it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("You must provide a model parameter.", "model")
    if model != DEMO_MODEL:
        raise BadRequest(f"The model `{model[:64]}` does not exist.", "model", status=404)
    return body


def answer(kind: AnswerKind, raw: bytes) -> Answer:
    """The demo model's answer to a request body; ``BadRequest`` when the body is unusable."""
    body = demo_request(raw)
    if kind == "chat":
        prompt_words, reply_words = _chat_words(body.get("messages"))
        limit = _max_tokens(body, "max_completion_tokens")
        if limit is None:
            limit = _max_tokens(body, "max_tokens")
    else:
        prompt_words = _prompt_words(body.get("prompt"))
        reply_words = prompt_words
        limit = _max_tokens(body, "max_tokens")
    stream = _flag(body, "stream")
    include_usage = _include_usage(body.get("stream_options"))
    finish = "stop"
    if limit is not None and limit < len(reply_words):
        reply_words, finish = reply_words[:limit], "length"
    return Answer(DEMO_MODEL, reply_words, len(prompt_words), finish, stream, include_usage)


def _chat_words(messages: object) -> tuple[list[str], list[str]]:
    """Every message's words (the prompt) and the last user message's words (the reply)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of message objects.", "messages")
    prompt: list[str] = []
    last_user: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"'messages[{index}]' must be an object with a 'role'.", f"messages[{index}]")
        words = _content_text(message.get("content"), index).split()
        prompt += words
        if message["role"] == "user":
            last_user = words
    return prompt, last_user


def _content_text(content: object, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(part for part in parts if isinstance(part, str))
    raise BadRequest(
        f"'messages[{index}].content' must be a string or an array of parts.", f"messages[{index}]"
    )


def _prompt_words(prompt: object) -> list[str]:
    """OpenAI's four prompt forms: a string, strings, token ids, or lists of token ids.
    Token ids have no text here, so each stands for one word ("<id>")."""
    if isinstance(prompt, str):
        return prompt.split()
    if isinstance(prompt, list):
        if all(isinstance(part, str) for part in prompt):
            return " ".join(prompt).split()
        if all(_is_token(part) for part in prompt):
            return [f"<{part}>" for part in prompt]
        if all(isinstance(part, list) and all(_is_token(t) for t in part) for part in prompt):
            return [f"<{token}>" for part in prompt for token in part]
    raise BadRequest("'prompt' must be a string, an array of strings or an array of token ids.", "prompt")


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _max_tokens(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"'{name}' must be an integer of at least 1.", name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise BadRequest(f"'{name}' must be a boolean.", name)


def _include_usage(options: object) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise BadRequest(
            "'stream_options' must be an object with a boolean 'include_usage'.", "stream_options"
        )
    return bool(options.get("include_usage"))


def error_body(error: BadRequest) -> bytes:
    """OpenAI's error shape."""
    kind = "invalid_request_error"
    code = "model_not_found" if error.status == 404 else None
    return orjson.dumps(
        {"error": {"message": error.message, "type": kind, "param": error.param, "code": code}}
    )


def whole_body(kind: AnswerKind, answer: Answer, response_id: str, created: int) -> bytes:
    """A chat.completion or text_completion body."""
    text = answer.text
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": answer.finish_reason}
        obj = "text_completion"
    return orjson.dumps(
        {
            "id": response_id,
            "object": obj,
            "created": created,
            "model": answer.model,
            "choices": [choice],
            "usage": answer.usage(),
        }
    )


def stream_events(kind: AnswerKind, answer: Answer, response_id: str, created: int) -> list[bytes]:
    """SSE events: one chunk per word, a finish chunk, a usage chunk when asked, then [DONE]."""
    obj = b"chat.completion.chunk" if kind == "chat" else b"text_completion"
    usage_field = b',"usage":null' if answer.include_usage else b""
    head = b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":[' % (
        orjson.dumps(response_id),
        obj,
        created,
        orjson.dumps(answer.model),
    )
    tail = b"]%s}\n\n" % usage_field
    pieces = [answer.words[0], *(" " + word for word in answer.words[1:])] if answer.words else [""]
    events = [
        head + _piece_choice(kind, piece, first=index == 0) + tail for index, piece in enumerate(pieces)
    ]
    finish = orjson.dumps(answer.finish_reason)
    if kind == "chat":
        events.append(head + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":%s}' % finish + tail)
    else:
        events.append(head + b'{"index":0,"text":"","logprobs":null,"finish_reason":%s}' % finish + tail)
    if answer.include_usage:
        events.append(head + b'],"usage":' + orjson.dumps(answer.usage()) + b"}\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _piece_choice(kind: AnswerKind, piece: str, *, first: bool) -> bytes:
    text = orjson.dumps(piece)
    if kind == "completion":
        return b'{"index":0,"text":%s,"logprobs":null,"finish_reason":null}' % text
    role = b'"role":"assistant",' if first else b""
    return b'{"index":0,"delta":{%s"content":%s},"logprobs":null,"finish_reason":null}' % (role, text)
