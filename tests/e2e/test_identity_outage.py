"""Issue 15.5: a router whose keys live in the external identity service, with that service down.

A key the service cannot check is answered 503 IDENTITY_UNAVAILABLE with Retry-After (retryable),
never 401 (a client throws a 401's key away); 401 only when the service says the key is not valid.
Cached keys keep working, and readiness warns.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from router_impl.auth.keys import new_secret
from tests.e2e.conftest import MODEL, ORG, Clients, auth, dumps
from tests.harness.bodies import chat_body
from tests.harness.errors import error_code
from tests.harness.identity import MockIdentityService
from tests.harness.router_proc import RouterProcess
from tests.harness.wait import PROBE_INTERVAL_S, wait_until

CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"


@pytest.fixture
def identity() -> Iterator[MockIdentityService]:
    with MockIdentityService() as service:
        yield service


@pytest.fixture
def identity_router(
    start_router: Callable[..., RouterProcess], identity: MockIdentityService
) -> RouterProcess:
    return start_router(
        env={
            "ROUTER_IDENTITY_URL": identity.base_url,
            "ROUTER_IDENTITY_TOKEN": identity.token,
        }
    )


def chat(http, secret: str, path: str = CHAT):
    body = (
        {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "hello"}
        if path == INFERENCE
        else chat_body(MODEL, "hello")
    )
    return http.post(path, content=dumps(body), headers={"Content-Type": "application/json", **auth(secret)})


@pytest.mark.parametrize("fault", ["down", "status_503"])
def test_identity_outage_is_a_retryable_503_and_never_a_bad_key(
    clients: Clients, mock, identity: MockIdentityService, identity_router: RouterProcess, fault: str
) -> None:
    cached, fresh = new_secret(), new_secret()
    identity.add_key(cached, id="key-cached", organization_id=ORG)
    identity.add_key(fresh, id="key-fresh", organization_id=ORG)
    http = clients.http(identity_router)
    assert chat(http, cached).status_code == 200

    if fault == "down":
        identity.down()
    else:
        identity.configure(fixed_status=503)
    try:
        for path in (CHAT, INFERENCE, CHAT):  # the second lookup is inside the hold-off: still 503
            refused = chat(http, fresh, path)
            assert (refused.status_code, error_code(refused)) == (503, "IDENTITY_UNAVAILABLE"), refused.text
            assert int(refused.headers["Retry-After"]) >= 1
        assert chat(http, cached).status_code == 200  # fail-static for a key the service vouched for
        readiness = wait_until(
            lambda: (
                next(
                    c
                    for c in http.get("/v1/status/readyz").json()["checks"]
                    if c["name"] == "identity" and c["status"] == "warn"
                )
                or None
            ),
            interval=PROBE_INTERVAL_S,
        )
        assert readiness is not None
    finally:
        if fault == "down":
            identity.up()
        else:
            identity.configure(fixed_status=None)
    # Back: the same key is asked about again (nothing was remembered as "invalid") and works.
    assert wait_until(lambda: chat(http, fresh).status_code == 200, timeout=5.0)


def test_key_the_service_says_is_invalid_is_401(
    clients: Clients, mock, identity: MockIdentityService, identity_router: RouterProcess
) -> None:
    revoked = new_secret()
    identity.add_key(revoked, id="key-revoked-upstream", organization_id=ORG, revoked=True)
    http = clients.http(identity_router)
    for secret in (new_secret(), revoked):
        refused = chat(http, secret)
        assert (refused.status_code, error_code(refused)) == (401, "INVALID_API_KEY")
