"""The request pipeline for completions: route, hold the idempotency key, admit, call or relay, account.

``service.Pipeline`` runs the stages; ``hold``, ``admission`` and ``relay`` are the stages;
``call`` holds what flows through them. docs/architecture.md lists the whole request path.
"""

from router_impl.pipeline.call import Call, Completed, FinalReply, Kind, Routed, StreamFailure, StreamingReply
from router_impl.pipeline.service import Pipeline, fingerprint

__all__ = [
    "Call",
    "Completed",
    "FinalReply",
    "Kind",
    "Pipeline",
    "Routed",
    "StreamFailure",
    "StreamingReply",
    "fingerprint",
]
