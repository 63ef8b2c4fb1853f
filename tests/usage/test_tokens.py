from hypothesis import given
from hypothesis import strategies as st

from router_impl.usage.record import Usage
from router_impl.usage.tokens import (
    estimate,
    estimate_tokens,
    prompt_bound,
    prompt_estimate,
    prompt_text,
    usage_of,
)


def test_the_backend_usage_block_is_taken_as_reported():
    assert usage_of({"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}) == Usage(
        7, 3
    )


def test_a_missing_or_malformed_usage_block_is_not_trusted():
    for payload in (
        {},
        {"usage": None},
        {"usage": {"prompt_tokens": -1, "completion_tokens": 2}},
        {"usage": {"prompt_tokens": "7", "completion_tokens": 3}},
    ):
        assert usage_of(payload) is None


def test_without_usage_tokens_are_estimated_and_marked_as_such():
    chat = {
        "messages": [
            {"role": "user", "content": "abcdefgh"},
            {"role": "user", "content": [{"type": "text", "text": "ijkl"}]},
        ]
    }
    answer = {"choices": [{"message": {"content": "abcd"}}]}
    assert estimate("chat", chat, answer) == Usage(
        tokens_input=estimate_tokens("abcdefgh ijkl"), tokens_output=1, estimated=True
    )
    legacy = estimate("completion", {"prompt": ["ab", "cd"]}, {"choices": [{"text": "xyz"}]})
    assert legacy == Usage(tokens_input=estimate_tokens("ab cd"), tokens_output=1, estimated=True)


def test_estimates_are_about_four_characters_per_token():
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


@given(
    texts=st.lists(st.text(max_size=200), min_size=1, max_size=8),
    tools=st.none() | st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=4),
)
def test_prompt_bound_covers_every_byte_and_the_template_allowance(texts, tools) -> None:
    """A byte-level BPE tokenizer makes at most one token per UTF-8 byte; the template adds its own."""
    body = {"messages": [{"role": "user", "content": t} for t in texts]}
    if tools is not None:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": tools}}]
    worst = sum(len(t.encode()) for t in texts) + 8 * len(texts) + 16
    worst += sum(len(k.encode()) + len(v.encode()) for k, v in (tools or {}).items())
    assert prompt_bound(body, 8, 16) >= worst


def test_prompt_bound_of_a_non_english_prompt_is_far_above_the_estimate() -> None:
    body = {"messages": [{"role": "user", "content": "東京の天気はどうですか"}]}
    assert prompt_estimate("chat", body) == 3
    assert prompt_bound(body, 8, 16) >= len("東京の天気はどうですか".encode()) + 8 + 16 == 57


def test_zero_tokens_reported_by_the_backend_are_taken_as_reported():
    assert usage_of({"usage": {"prompt_tokens": 0, "completion_tokens": 0}}) == Usage(0, 0)


def test_the_prompt_text_is_what_the_client_wrote_in_either_request_kind():
    assert prompt_text("completion", {"prompt": "abcdefgh"}) == "abcdefgh"
    assert prompt_text("completion", {"prompt": ["ab", 7, "cd"]}) == "ab cd"
    assert prompt_text("completion", {}) == ""
    chat = {
        "messages": [
            "not a message",
            {"role": "user", "content": [{"type": "image_url"}, {"type": "text", "text": "abcd"}]},
            {"role": "user", "content": None},
        ]
    }
    assert prompt_text("chat", chat) == " abcd"  # a part without text adds nothing of its own
    assert prompt_estimate("completion", {"prompt": "abcdefgh"}) == 2


def test_the_answer_of_several_choices_is_estimated_on_their_texts_joined_by_a_space():
    answer = {"choices": [{"message": {"content": "abcd"}}, {"text": "efgh"}, "junk", {"message": None}]}
    assert estimate("chat", {"messages": []}, answer).tokens_output == estimate_tokens("abcd efgh") == 3


def test_prompt_bound_counts_integers_beyond_64_bits_in_prompt_fields() -> None:
    """JSON allows them (e.g. an unknown message property or a tool schema's const); orjson cannot
    write them, which made the chat route answer 500."""
    big = 106531779456416227567222128640
    body = {
        "messages": [{"role": "user", "content": "hi", "x-extra": big}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"const": -big}}}],
    }
    assert prompt_bound(body, 8, 16) >= 2 * len(str(big)) + len("hi") + 8 + 16


def test_an_embeddings_usage_block_without_completion_tokens_counts_none_out():
    """Embeddings answer prompt and total tokens only; anything else without completion tokens is not
    trusted, and completion tokens reported are kept whatever the total says."""
    assert usage_of({"usage": {"prompt_tokens": 5, "total_tokens": 5}}) == Usage(5, 0)
    assert usage_of({"usage": {"prompt_tokens": 5, "total_tokens": 6}}) is None
    assert usage_of({"usage": {"prompt_tokens": 5}}) is None
    assert usage_of({"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 7}}) == Usage(7, 3)


def test_an_embeddings_input_is_estimated_per_text_and_counted_per_token_id():
    assert prompt_estimate("embedding", {"input": "abcdefgh"}) == 2
    assert prompt_estimate("embedding", {"input": ["abcdefgh", [11, 12, 13], 7, None, 1.5]}) == 2 + 3 + 1
    assert prompt_estimate("embedding", {"input": 7}) == 0  # neither a text nor a list of inputs
    assert prompt_estimate("embedding", {"prompt": "abcdefgh"}) == 0  # only ``input`` is embedded
    assert estimate("embedding", {"input": ["abcd", "efgh"]}, {"data": []}) == Usage(2, 0, estimated=True)


def test_prompt_bound_is_the_compact_json_of_the_prompt_fields_plus_the_template_allowance() -> None:
    one = {"messages": [{"role": "user", "content": "hi"}]}
    assert prompt_bound(one, 8, 16) == len('[{"role":"user","content":"hi"}]') + 8 + 16 == 56
    two = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert prompt_bound(two, 8, 16) == 68 + 2 * 8 + 16
    assert prompt_bound({"prompt": "abc"}, 8, 16) == len('"abc"') + 8 + 16  # no messages: one turn


def test_prompt_bound_sizes_integers_beyond_64_bits_as_compact_utf8_json() -> None:
    prompt = [106531779456416227567222128640, "é", {"a": 1}]
    # '[106531779456416227567222128640,"é",{"a":1}]': 44 characters, "é" two bytes in UTF-8
    assert prompt_bound({"prompt": prompt}, 8, 16) == 45 + 8 + 16
