"""US-1 with the official `openai` client: point base_url at the router, use an API key, get completions."""

from __future__ import annotations

import uuid

import openai
import pytest

from tests.e2e.conftest import (
    ALIAS,
    BACKEND_ID,
    FAULTY_MODEL,
    KEYS,
    MODEL,
    OTHER_MODEL,
    records_for,
)
from tests.harness.wait import wait_until

PROMPT = "route this prompt through the router please"
WORDS = len(PROMPT.split())


def user(text: str = PROMPT) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_completion_returns_the_backend_answer_with_usage(clients, router, mock):
    client = clients.openai(router, KEYS["user"].secret)

    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=user())
    completion = raw.parse()

    assert completion.choices[0].message.content == PROMPT  # the mock echoes the last user message
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (WORDS, WORDS)
    assert completion.usage.total_tokens == 2 * WORDS
    assert raw.headers["X-Routing-Backend"] == BACKEND_ID
    assert raw.headers["X-Routing-Decision"] == "PRIMARY"
    assert raw.headers["X-Request-ID"]
    assert mock.inference_requests == 1


def test_an_alias_reaches_the_backend_as_the_canonical_model(clients, router, mock):
    client = clients.openai(router, KEYS["user"].secret)

    completion = client.chat.completions.create(model=ALIAS, messages=user("alias works"))

    assert completion.choices[0].message.content == "alias works"
    assert mock.last_inference_request is not None and mock.last_inference_request.body["model"] == MODEL


def test_legacy_completion_returns_the_backend_text(clients, router, mock):
    client = clients.openai(router, KEYS["user"].secret)

    completion = client.completions.create(model=MODEL, prompt="complete me now", max_tokens=2)

    assert completion.choices[0].text == "complete me"  # the mock stops at max_tokens words
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 2)
    assert mock.last_inference_request is not None and mock.last_inference_request.path == "/v1/completions"


def test_streamed_chat_arrives_in_chunks_that_add_up_to_the_answer(clients, router, mock):
    mock.configure(stream_chunks=5)
    client = clients.openai(router, KEYS["user"].secret)

    chunks = list(client.chat.completions.create(model=MODEL, messages=user(), stream=True))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == PROMPT
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The router asks the backend for usage on the client's behalf, but must not pass on a
    # usage-only chunk the client did not ask for.
    assert all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask for it"
    assert all(c.usage is None for c in chunks)


def test_streamed_chat_with_include_usage_ends_with_a_usage_chunk(clients, router, mock):
    client = clients.openai(router, KEYS["user"].secret)
    request_id = f"e2e-stream-{uuid.uuid4()}"

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user(),
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-ID": request_id},
        )
    )

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (WORDS, WORDS)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == PROMPT
    records = wait_until(lambda: records_for(router, request_id))
    assert len(records) == 1
    assert records[0]["stream"] is True
    assert (records[0]["tokens_input"], records[0]["tokens_output"]) == (WORDS, WORDS)


def test_streamed_legacy_completion_adds_up_to_the_prompt(clients, router, mock):
    client = clients.openai(router, KEYS["user"].secret)

    chunks = list(client.completions.create(model=MODEL, prompt="stream the legacy way", stream=True))

    assert "".join(c.choices[0].text for c in chunks if c.choices) == "stream the legacy way"


def test_models_list_shows_the_models_and_aliases_a_key_may_use(clients, router, mock):
    everything = clients.openai(router, KEYS["user"].secret).models.list()
    restricted = clients.openai(router, KEYS["restricted"].secret).models.list()

    assert {m.id for m in everything.data} == {MODEL, ALIAS, OTHER_MODEL, FAULTY_MODEL}
    assert all(m.object == "model" for m in everything.data)
    assert [m.id for m in restricted.data] == [OTHER_MODEL]
    assert mock.inference_requests == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_bad_key_is_an_authentication_error_carrying_our_code(clients, router, mock, stream):
    client = clients.openai(router, "rk_not_a_key_we_know")

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=user(), stream=stream)

    assert caught.value.status_code == 401
    assert caught.value.code == "INVALID_API_KEY"
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "INVALID_API_KEY"
    assert caught.value.body["type"] == "authentication_error"
    assert mock.inference_requests == 0


def test_an_unknown_model_is_not_found_and_the_message_names_the_available_models(clients, router, mock):
    client = clients.openai(router, KEYS["user"].secret)

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=user())

    assert caught.value.code == "MODEL_NOT_FOUND"
    message = caught.value.body["message"]
    assert "no-such-model" in message
    for name in (MODEL, OTHER_MODEL, FAULTY_MODEL):
        assert name in message
    assert mock.inference_requests == 0


def test_the_unknown_model_hint_only_names_models_the_key_may_use(clients, router, mock):
    client = clients.openai(router, KEYS["restricted"].secret)

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=user())

    message = caught.value.body["message"]
    assert OTHER_MODEL in message
    assert MODEL not in message.replace("no-such-model", "")


def test_a_key_without_the_inference_scope_is_permission_denied(clients, router, mock):
    client = clients.openai(router, KEYS["audit"].secret)

    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model=MODEL, messages=user())

    assert caught.value.code == "FORBIDDEN"
    assert mock.inference_requests == 0


def test_a_model_outside_the_keys_allowed_models_is_permission_denied(clients, router, mock):
    client = clients.openai(router, KEYS["restricted"].secret)

    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model=MODEL, messages=user())

    assert caught.value.code == "MODEL_NOT_ALLOWED"
    assert mock.inference_requests == 0
    assert client.chat.completions.create(model=OTHER_MODEL, messages=user("allowed")).choices
    assert mock.inference_requests == 1


def test_an_idempotency_key_replays_the_first_completion_without_calling_the_backend_again(
    clients, router, mock
):
    client = clients.openai(router, KEYS["user"].secret)
    key = f"e2e-idem-{uuid.uuid4()}"
    first_request, retry_request = f"e2e-first-{uuid.uuid4()}", f"e2e-retry-{uuid.uuid4()}"

    first = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user(), extra_headers={"Idempotency-Key": key, "X-Request-ID": first_request}
    )
    retry = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user(), extra_headers={"Idempotency-Key": key, "X-Request-ID": retry_request}
    )

    assert retry.parse().id == first.parse().id
    assert retry.http_response.content == first.http_response.content
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert retry.headers["X-Routing-Backend"] == BACKEND_ID
    assert mock.inference_requests == 1
    assert len(wait_until(lambda: records_for(router, first_request))) == 1
    assert records_for(router, retry_request) == [], "a replayed request was billed"


def test_an_idempotency_key_reused_for_another_request_is_a_conflict(clients, router, mock):
    client = clients.openai(router, KEYS["user"].secret)
    key = f"e2e-idem-{uuid.uuid4()}"
    client.chat.completions.create(model=MODEL, messages=user(), extra_headers={"Idempotency-Key": key})

    with pytest.raises(openai.ConflictError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=user("something else"), extra_headers={"Idempotency-Key": key}
        )

    assert caught.value.code == "IDEMPOTENCY_CONFLICT"
    assert mock.inference_requests == 1


def test_a_finished_stream_is_replayed_whole_for_its_idempotency_key(clients, router, mock):
    client = clients.openai(router, KEYS["user"].secret)
    key = f"e2e-idem-stream-{uuid.uuid4()}"

    def stream() -> tuple[str, dict[str, str]]:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=user(), stream=True, extra_headers={"Idempotency-Key": key}
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return text, dict(raw.headers)

    first_text, first_headers = stream()
    replay_text, replay_headers = stream()

    assert first_text == replay_text == PROMPT
    assert "idempotent-replayed" not in first_headers
    assert replay_headers.get("idempotent-replayed") == "true"
    assert replay_headers["content-type"].startswith("text/event-stream")
    assert mock.inference_requests == 1
