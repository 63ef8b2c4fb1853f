"""Logs carry no secrets: tracebacks render without frame locals, and the redaction processor blanks
secret-named fields and key-shaped values wherever they appear in an event."""

from __future__ import annotations

import orjson

from router_impl.telemetry.logging import structured_tracebacks
from router_impl.telemetry.redaction import REDACTED, redact_secrets, redact_text

KEY = "rk_3kTqv9ZkY1c8mQ2pW7nB4xR6sD0fH5jL"
SIGNING = "rs_9fLx2Qm8Zk3Vw7Yt1Pb5Nc4Rd6Hs0Jg"


def _failing(secret: str) -> BaseException:
    headers = [(b"x-api-key", secret.encode())]  # a local, as the ASGI scope is in every frame
    try:
        raise RuntimeError(f"boom with {len(headers)} headers")
    except RuntimeError as exc:
        return exc


def test_tracebacks_carry_no_frame_locals() -> None:
    event = structured_tracebacks()(None, "error", {"event": "unhandled_error", "exc_info": _failing(KEY)})
    rendered = orjson.dumps(event).decode()
    assert KEY not in rendered and "locals" not in rendered
    assert event["exception"][0]["exc_type"] == "RuntimeError"


def test_secret_named_fields_are_blanked_at_any_depth() -> None:
    event = {
        "event": "api_key_created",
        "key_id": "key_0123456789abcdef",
        "secret": "anything",
        "signing_secret": "anything",
        "nested": {"Authorization": "Basic abc", "password": "p", "api_key_id": "key_1", "tokens_input": 3},
        "budget_service_token": "t",
    }
    redacted = redact_secrets(None, "info", event)
    assert redacted["key_id"] == "key_0123456789abcdef"
    assert redacted["secret"] == redacted["signing_secret"] == redacted["budget_service_token"] == REDACTED
    nested = redacted["nested"]
    assert nested["Authorization"] == nested["password"] == REDACTED
    assert (nested["api_key_id"], nested["tokens_input"]) == ("key_1", 3)


def test_key_shaped_values_are_blanked_inside_any_text() -> None:
    texts = [
        f"rejected {KEY} for org-1",
        f"signing secret {SIGNING} unreadable",
        "headers [(b'x-api-key', b'opaque-credential-1')]",
        "Authorization: Bearer opaque-credential-2",
        "{'X-API-Key': 'opaque-credential-3'}",
        "secret=opaque-credential-4",
        "the demo key rk-demo-admin-key",
    ]
    for text in texts:
        cleaned = redact_text(text)
        for secret in (KEY, SIGNING, "opaque-credential", "rk-demo-admin-key"):
            assert secret not in cleaned, (text, cleaned)
    assert (
        redact_text("routed to backend mock-a in 12 ms (tokens 5)")
        == "routed to backend mock-a in 12 ms (tokens 5)"
    )


def test_exception_text_and_lists_are_redacted() -> None:
    event = {"event": "x", "exception": [{"exc_value": f"invalid key {KEY}", "frames": []}], "args": (KEY,)}
    rendered = orjson.dumps(redact_secrets(None, "error", event)).decode()
    assert KEY not in rendered
