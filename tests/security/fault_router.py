"""`router serve` with faults injected into two ports, for the log sweep (test_log_sweep.py).

Run as ``python -m tests.security.fault_router serve ...``: the same CLI, in one process (one
worker), after two ports are wrapped so that chosen requests raise -- an internal error (500) with
live secrets in the frames' locals, as a real bug would leave them:

- the key store raises just after it minted a key (its secret and signing secret in the frame),
  for organisation ``FAULT_ORG``;
- the pipeline raises for the idempotency keys in ``FAULT_KEYS`` (the caller's credential in the
  ASGI scope of every frame above), on the fast lane and on the Connexion path alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from router_impl import cli
from router_impl.auth.store_config import ConfigKeyStore
from router_impl.pipeline import Call, Completed, FinalReply, Pipeline

FAULT_ORG = "org-fault-injected"
FAULT_IDEMPOTENCY_KEY = "fault-injection"  # Idempotency-Key of an OpenAI-route request
FAULT_REQUEST_ID = "7f0e4a52-3c1d-4b8e-9f6a-2d5c8b1e0a93"  # request_id of a /v1/inference request
FAULT_KEYS = frozenset({FAULT_IDEMPOTENCY_KEY, FAULT_REQUEST_ID})


class InjectedFault(RuntimeError):
    """Raised by a wrapped port: the router must answer 500 and log it without any secret."""


def install() -> None:
    create = ConfigKeyStore.create
    complete = Pipeline.complete

    async def faulty_create(self: ConfigKeyStore, **kwargs: Any) -> Any:
        minted = await create(self, **kwargs)
        if kwargs.get("organization_id") == FAULT_ORG:
            raise InjectedFault(f"fault injected after minting {minted[0].id}")
        return minted

    async def faulty_complete(
        self: Pipeline, call: Call, render: Callable[[Call, Completed], FinalReply]
    ) -> FinalReply:
        if call.idempotency_key in FAULT_KEYS:
            raise InjectedFault("fault injected into the pipeline")
        return await complete(self, call, render)

    ConfigKeyStore.create = faulty_create  # type: ignore[assignment,method-assign]
    Pipeline.complete = faulty_complete  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    sys.exit(cli.main(sys.argv[1:]))
