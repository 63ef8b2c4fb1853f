"""OpenAI-compatible operations: chat and text completions, embeddings, the model list and lookup."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from router_impl.auth.authenticator import Principal
from router_impl.components import Components
from router_impl.errors import ApiError
from router_impl.pipeline import Call, Completed, FinalReply, Kind, StreamingReply, fingerprint
from router_impl.web.current import current_document, current_header, current_method_and_path, current_state
from router_impl.web.event_stream import EventStreamResponse
from router_impl.web.responses import JSON


def _call(kind: Kind, body: dict[str, Any], principal: Principal) -> Call:
    state = current_state()
    method, path = current_method_and_path()
    return Call(
        principal=principal,
        kind=kind,
        body=body,
        endpoint=path,
        fingerprint=fingerprint(method, path, state.body),
        idempotency_key=current_header(b"idempotency-key"),
        request_id=state.request_id,
        trace_id=state.trace_id,
        span_id=state.span_id,
    )


def _passthrough(call: Call, completed: Completed) -> FinalReply:
    """The backend's OpenAI answer goes back as it came, plus our routing headers."""
    return FinalReply(status=200, body=completed.raw, headers=completed.routed.headers)


async def _complete(
    components: Components, kind: Kind, body: dict[str, Any], token_info: dict[str, Any]
) -> Response:
    call = _call(kind, body, token_info["principal"])
    reply = await (
        components.pipeline.stream(call) if call.stream else components.pipeline.complete(call, _passthrough)
    )
    if isinstance(reply, StreamingReply):
        return EventStreamResponse(
            reply.events, headers=reply.headers, on_close=reply.abandon, trace_id=call.trace_id
        )
    return Response(
        reply.body, status_code=reply.status, headers=reply.headers, media_type=reply.content_type
    )


async def create_chat_completion(components: Components, token_info: dict[str, Any]) -> Response:
    return await _complete(components, "chat", current_document(), token_info)


async def create_completion(components: Components, token_info: dict[str, Any]) -> Response:
    return await _complete(components, "completion", current_document(), token_info)


async def create_embedding(components: Components, token_info: dict[str, Any]) -> Response:
    call = _call("embedding", current_document(), token_info["principal"])
    reply = await components.pipeline.complete(call, _passthrough)
    return Response(
        reply.body, status_code=reply.status, headers=reply.headers, media_type=reply.content_type
    )


async def list_models(components: Components, token_info: dict[str, Any]) -> Response:
    created = components.started_at
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": policy.owned_by}
        for name, policy in components.pipeline.available_models(token_info["principal"])
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


async def retrieve_model(components: Components, token_info: dict[str, Any], model: str) -> Response:
    """A name the key may not use is as unknown as one that does not exist (OpenAI does the same)."""
    for name, policy in components.pipeline.available_models(token_info["principal"]):
        if name == model:
            found = {
                "id": name,
                "object": "model",
                "created": components.started_at,
                "owned_by": policy.owned_by,
            }
            return Response(orjson.dumps(found), media_type=JSON)
    raise ApiError("MODEL_NOT_FOUND", "The model does not exist or this key may not use it.")
