"""routeInference: the contract's envelope mapped onto an OpenAI chat call and back."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import orjson
from starlette.responses import Response

from router_impl.auth.signing import BODY_SIGNATURE_FIELD, BODY_TIMESTAMP_FIELD
from router_impl.components import Components
from router_impl.errors import ApiError
from router_impl.pipeline import Call, Completed, FinalReply, fingerprint
from router_impl.usage.cost import micro_to_usd
from router_impl.web.current import RequestContext
from router_impl.web.replies import respond

# Parameters are model-specific and passed on (top_k, min_p, ...), except those the envelope owns:
# the router builds the chat call's model and messages, and an envelope answer is never a stream.
_ENVELOPE_OWNED = frozenset({"model", "messages", "stream", "stream_options"})


def _chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """Unknown top-level envelope properties are ignored (the original contract allows them)."""
    chat: dict[str, Any] = {
        "model": body["model"],
        "messages": [{"role": "user", "content": body["payload"]}],
    }
    parameters = body.get("parameters") or {}
    chat.update({name: value for name, value in parameters.items() if name not in _ENVELOPE_OWNED})
    return chat


def _fingerprinted(body: dict[str, Any], raw: bytes) -> bytes:
    """What idempotency compares: the raw body, or for a body-signed one its JSON without the
    signature and its timestamp (a retry must re-sign, and still gets its stored reply)."""
    if BODY_SIGNATURE_FIELD not in body and BODY_TIMESTAMP_FIELD not in body:
        return raw
    unsigned = {k: v for k, v in body.items() if k not in (BODY_SIGNATURE_FIELD, BODY_TIMESTAMP_FIELD)}
    try:
        return orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # An integer beyond 64 bits (JSON allows it, e.g. in an ignored property): the standard
        # library writes it exactly, so two bodies that differ there keep different fingerprints.
        return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def _render(call: Call, completed: Completed) -> FinalReply:
    choices = completed.payload.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message")
    message = message if isinstance(message, dict) else {}
    output: dict[str, Any] = {"text": str(message.get("content") or "")}
    if isinstance(first.get("finish_reason"), str):
        output["finish_reason"] = first["finish_reason"]
    body = {
        "request_id": call.request_id,
        "output": output,
        "usage": {
            "tokens_input": completed.usage.tokens_input,
            "tokens_output": completed.usage.tokens_output,
            "latency_ms": completed.latency_ms,
            "cost_usd": micro_to_usd(completed.cost_micro_usd),
            "limit_state": "WITHIN_LIMIT",
        },
        "trace_id": call.trace_id,
        "span_id": call.span_id,
        "model": completed.routed.policy.model,
        "backend_id": completed.routed.backend.id,
        "decision": completed.routed.decision,
    }
    return FinalReply(status=200, body=orjson.dumps(body), headers=completed.routed.headers)


def canonical_request_id(value: Any) -> str:
    """The contract's ``format: uuid`` admits the braced, URN and unhyphenated spellings; the router
    keys idempotency, usage records and audit on one spelling: the canonical lower-case 8-4-4-4-12."""
    try:
        return str(UUID(str(value)))
    except ValueError:
        detail = {"field": "body.request_id", "message": "not a UUID"}
        raise ApiError("VALIDATION_ERROR", "body.request_id: not a UUID.", details=[detail]) from None


async def route_inference(
    components: Components, request: RequestContext, token_info: dict[str, Any]
) -> Response:
    body = request.json_body()
    request_id = canonical_request_id(body["request_id"])
    principal = token_info["principal"]  # its signatures, headers and body field, were verified in security
    call = Call(
        principal=principal,
        kind="chat",
        body=_chat_body(body),
        endpoint=request.path,
        fingerprint=fingerprint(request.method, request.path, _fingerprinted(body, request.body)),
        idempotency_key=request_id,
        request_id=request_id,
        trace_id=request.trace_id,
        span_id=request.span_id,
    )
    return respond(request, await components.pipeline.complete(call, _render))
