"""Backend answers to catalog errors: statuses, Retry-After, and which backend messages may be shown."""

from __future__ import annotations

import orjson
import pytest

from router_impl.routing.backend_errors import backend_message, error_for_status, safe_message


def openai_error(message: object) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", "7"),
        (" 12 ", "12"),
        ("0", "0"),
        ("999999", "3600"),
        ("1.5", None),
        ("-3", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("٣", None),
    ],
)
def test_a_429_passes_on_a_numeric_retry_after_only(header, expected):
    error = error_for_status("b", 429, b"", {"Retry-After": header})
    assert (error.code, error.status_code, error.retry_safe) == ("BACKEND_UNAVAILABLE", 503, True)
    # an unusable value gives way to BACKEND_UNAVAILABLE's own Retry-After (one breaker cool-down)
    assert error.headers.get("Retry-After") == (expected or "10")
    assert error.retry_after_seconds is None  # the body stays a plain ErrorResponse


def test_a_429_without_retry_after_gets_the_catalog_default():
    assert error_for_status("b", 429, b"", {}).headers["Retry-After"] == "10"


def test_messages_are_read_from_openai_vllm_and_tgi_shapes():
    assert backend_message(openai_error("bad temperature")) == "bad temperature"
    assert (
        backend_message(b'{"object":"error","message":"bad top_p","type":"BadRequestError"}') == "bad top_p"
    )
    assert backend_message(b'{"error":"Input validation error: `inputs` must not be empty"}') is not None
    assert backend_message(b"<html>Bad Request</html>") is None
    assert backend_message(b'{"error": {"message": 42}}') is None


def test_a_common_vllm_context_length_message_is_shown():
    message = (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(4000 in the messages, 1000 in the completion). "
        "Please reduce the length of the messages or completion."
    )
    assert safe_message(message) == message


@pytest.mark.parametrize(
    "message",
    [
        "connect to http://10.0.0.5:8000/v1 failed",
        "upstream 10.1.2.3 refused",
        "backend vllm-a:8000 is overloaded",
        "see gpu-node-3.cluster.local for details",
        "cannot open /var/lib/models/llama/config.json",
        "failed at C:\\models\\x",
        "contact ops@example.org",
        'Traceback (most recent call last):\n  File "x.py", line 3',
        'File "/app/server.py", line 10',
        "ValueError exception in handler",
        "fe80::1 unreachable",
        "x" * 301,
        "tab\tseparated",
        "",
        "   ",
    ],
)
def test_messages_that_could_leak_internals_are_dropped(message):
    assert safe_message(message) is None
    error = error_for_status("b", 400, openai_error(message), {})
    assert error.message == "The backend rejected the request."


def test_other_client_errors_are_backend_errors_without_the_backend_message():
    error = error_for_status("b", 401, openai_error("Incorrect API key provided"), {})
    assert (error.code, error.status_code) == ("BACKEND_ERROR", 502)
    assert "API key" not in error.message


def test_redirects_and_informational_answers_are_backend_errors():
    assert error_for_status("b", 302, b"", {"Location": "http://internal/"}).code == "BACKEND_ERROR"
