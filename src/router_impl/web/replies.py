"""The pipeline's replies as HTTP responses: a whole reply, or a stream of server-sent events.

Who served the request (backend and routing decision) goes on the request state, where the outer
middleware reads it for the access log and the ingress span.
"""

from __future__ import annotations

from starlette.responses import Response

from router_impl.pipeline import FinalReply, StreamingReply
from router_impl.web.current import RequestContext
from router_impl.web.event_stream import EventStreamResponse


def respond(request: RequestContext, reply: FinalReply | StreamingReply) -> Response:
    if reply.served_by is not None:
        request.state.backend_id, request.state.decision = reply.served_by
    if isinstance(reply, StreamingReply):
        return EventStreamResponse(
            reply.events, headers=reply.headers, on_close=reply.abandon, trace_id=request.trace_id
        )
    return Response(
        reply.body, status_code=reply.status, headers=reply.headers, media_type=reply.content_type
    )
