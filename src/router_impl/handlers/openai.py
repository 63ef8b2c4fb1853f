"""OpenAI-compatible operations: chat and text completions, embeddings, the model list and lookup."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from router_impl.auth.authenticator import Principal
from router_impl.components import Components
from router_impl.errors import ApiError
from router_impl.pipeline import Call, Completed, FinalReply, Kind, fingerprint
from router_impl.web.current import RequestContext
from router_impl.web.replies import respond
from router_impl.web.responses import JSON


def _call(kind: Kind, request: RequestContext, principal: Principal) -> Call:
    return Call(
        principal=principal,
        kind=kind,
        body=request.json_body(),
        endpoint=request.path,
        fingerprint=fingerprint(request.method, request.path, request.body),
        idempotency_key=request.header(b"idempotency-key"),
        request_id=request.request_id,
        trace_id=request.trace_id,
        span_id=request.span_id,
    )


def _passthrough(call: Call, completed: Completed) -> FinalReply:
    """The backend's OpenAI answer goes back as it came, plus our routing headers."""
    return FinalReply(status=200, body=completed.raw, headers=completed.routed.headers)


async def _complete(
    components: Components, request: RequestContext, kind: Kind, token_info: dict[str, Any]
) -> Response:
    call = _call(kind, request, token_info["principal"])
    pipeline = components.pipeline
    reply = await (pipeline.stream(call) if call.stream else pipeline.complete(call, _passthrough))
    return respond(request, reply)


async def create_chat_completion(
    components: Components, request: RequestContext, token_info: dict[str, Any]
) -> Response:
    return await _complete(components, request, "chat", token_info)


async def create_completion(
    components: Components, request: RequestContext, token_info: dict[str, Any]
) -> Response:
    return await _complete(components, request, "completion", token_info)


async def create_embedding(
    components: Components, request: RequestContext, token_info: dict[str, Any]
) -> Response:
    return await _complete(components, request, "embedding", token_info)


async def list_models(
    components: Components, request: RequestContext, token_info: dict[str, Any]
) -> Response:
    created = components.started_at
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": policy.owned_by}
        for name, policy in components.pipeline.available_models(token_info["principal"])
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


async def retrieve_model(
    components: Components, request: RequestContext, token_info: dict[str, Any], model: str
) -> Response:
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
