"""The outbound client against the real mock backend over loopback HTTP: answers, faults, pools."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import orjson
import pytest

from router_impl.errors import ApiError, render
from router_impl.routing.backend_client import BackendCallError, BackendClient
from tests.harness.backend import MockBackend
from tests.harness.ports import free_port
from tests.harness.stall import StallMeter
from tests.harness.wait import eventually
from tests.routing import tcp_table
from tests.routing.conftest import SECRETS, TRACEPARENT, backend_for, chat_body


async def call(client: BackendClient, backend, body: bytes | None = None, deadline: float | None = None):
    return await client.post_json(
        backend,
        "/chat/completions",
        body or chat_body(),
        traceparent=TRACEPARENT,
        request_id="req-1",
        deadline=deadline,
    )


async def failure(client: BackendClient, backend, **kwargs) -> BackendCallError:
    with pytest.raises(BackendCallError) as caught:
        await call(client, backend, **kwargs)
    return caught.value


async def test_a_completion_is_passed_through_with_its_usage(client, mock_backend):
    reply = await call(client, backend_for(mock_backend))
    assert reply.status == 200
    assert reply.document == orjson.loads(reply.body)
    assert reply.document["choices"][0]["message"]["content"] == "hello there world"
    assert reply.document["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.elapsed_ms > 0
    assert mock_backend.inference_requests == 1


async def test_requests_carry_auth_trace_and_request_id_and_nothing_else_of_ours(client, mock_backend):
    await call(client, backend_for(mock_backend))
    sent = mock_backend.last_request
    assert sent is not None
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert sent.path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-backend-secret"
    assert headers["traceparent"] == TRACEPARENT
    assert headers["x-request-id"] == "req-1"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"
    assert headers["user-agent"] == "api-router"  # not aiohttp's, which names its version
    assert headers["accept-encoding"] == "identity"
    assert "cookie" not in headers
    assert sent.raw_body == chat_body()


async def test_no_authorization_header_without_api_key_env(client, mock_backend):
    await call(client, backend_for(mock_backend, api_key_env=None))
    assert "authorization" not in {k.lower() for k in mock_backend.last_request.headers}


async def test_a_missing_bearer_token_fails_before_sending_and_is_safe_to_retry(mock_backend):
    client = BackendClient(secrets={})
    try:
        error = await failure(client, backend_for(mock_backend))
    finally:
        await client.close()
    assert (error.code, error.reason, error.retry_safe) == ("BACKEND_UNAVAILABLE", "config", True)
    assert mock_backend.inference_requests == 0


@pytest.mark.parametrize(
    ("status", "code", "http"),
    [
        (500, "BACKEND_ERROR", 502),
        (502, "BACKEND_ERROR", 502),
        (503, "BACKEND_ERROR", 502),
        (429, "BACKEND_UNAVAILABLE", 503),
        (400, "INVALID_REQUEST", 400),
        (404, "INVALID_REQUEST", 400),
        (413, "INVALID_REQUEST", 400),
        (422, "INVALID_REQUEST", 400),
        (401, "BACKEND_ERROR", 502),
        (403, "BACKEND_ERROR", 502),
        (409, "BACKEND_ERROR", 502),
    ],
)
async def test_backend_statuses_map_to_catalog_errors(client, mock_backend, status, code, http):
    mock_backend.configure(fixed_status=status)
    error = await failure(client, backend_for(mock_backend))
    assert isinstance(error, ApiError)
    assert (error.code, error.status_code, error.upstream_status) == (code, http, status)
    if code == "INVALID_REQUEST":  # the backend's own short message is passed on
        assert (
            error.message == f"The backend rejected the request: mock backend configured to answer {status}"
        )
        assert error.retry_safe
    if status >= 500:
        assert error.maybe_processed


async def test_error_rate_one_is_a_backend_error(client, mock_backend):
    mock_backend.configure(error_rate=1.0)
    error = await failure(client, backend_for(mock_backend))
    assert error.code == "BACKEND_ERROR"


async def test_a_hanging_backend_times_out_at_the_deadline(client, mock_backend):
    mock_backend.configure(hang=True)
    started = time.monotonic()
    with StallMeter([os.getpid()], interval_s=0.01) as meter:
        error = await failure(client, backend_for(mock_backend), deadline=started + 0.3)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.4 + meter.total_s  # late only by the machine's stall
    assert (error.code, error.status_code, error.reason) == ("BACKEND_TIMEOUT", 504, "timeout")
    assert error.maybe_processed  # it was sent: another backend could run it twice


async def test_a_hanging_backend_times_out_after_timeout_ms_without_a_deadline(client, mock_backend):
    mock_backend.configure(hang=True)
    started = time.monotonic()
    with StallMeter([os.getpid()], interval_s=0.01) as meter:
        error = await failure(client, backend_for(mock_backend, timeout_ms=250), deadline=started + 30)
    assert 0.25 <= time.monotonic() - started < 0.35 + meter.total_s
    assert error.code == "BACKEND_TIMEOUT"


async def test_a_passed_deadline_fails_without_sending(client, mock_backend):
    error = await failure(client, backend_for(mock_backend), deadline=time.monotonic() - 0.001)
    assert (error.code, error.reason, error.retry_safe) == ("BACKEND_TIMEOUT", "deadline", True)
    assert mock_backend.inference_requests == 0


async def test_a_reset_connection_is_unavailable_and_may_have_been_processed(client, mock_backend):
    mock_backend.configure(reset=True)
    error = await failure(client, backend_for(mock_backend))
    # Broken before any byte of the answer: a "reset", which the dispatcher may send elsewhere.
    assert (error.code, error.status_code, error.reason) == ("BACKEND_UNAVAILABLE", 503, "reset")
    assert error.maybe_processed
    assert mock_backend.inference_requests == 1  # never resent by the HTTP stack


async def test_garbage_is_a_backend_error(client, mock_backend):
    mock_backend.configure(garbage=True)
    error = await failure(client, backend_for(mock_backend))
    assert (error.code, error.status_code, error.reason) == ("BACKEND_ERROR", 502, "bad_response")


async def test_a_refused_connection_is_unavailable_and_safe_to_retry(client, mock_backend):
    backend = backend_for(mock_backend, base_url=f"http://127.0.0.1:{free_port()}/v1")
    error = await failure(client, backend)
    assert (error.code, error.reason, error.retry_safe) == ("BACKEND_UNAVAILABLE", "connect", True)


async def test_an_unknown_host_is_unavailable_and_safe_to_retry(client, mock_backend):
    backend = backend_for(
        mock_backend, base_url="http://no-such-backend.invalid:8000/v1", connect_timeout_ms=300
    )
    error = await failure(client, backend)
    assert error.code == "BACKEND_UNAVAILABLE"
    assert error.retry_safe


async def test_a_full_pool_is_a_connect_timeout_and_safe_to_retry(client, mock_backend):
    mock_backend.configure(latency_ms=600)
    backend = backend_for(mock_backend, max_in_flight=1, connect_timeout_ms=100)
    first = asyncio.create_task(call(client, backend))
    await eventually(lambda: mock_backend.inference_requests == 1, what="the first call holding the pool")
    error = await failure(client, backend)
    assert (error.code, error.reason, error.retry_safe) == ("BACKEND_UNAVAILABLE", "connect_timeout", True)
    # When the caller's deadline is what runs out while waiting, it is the request's timeout.
    error = await failure(client, backend, deadline=time.monotonic() + 0.05)
    assert (error.code, error.retry_safe) == ("BACKEND_TIMEOUT", True)
    assert (await first).status == 200
    assert mock_backend.inference_requests == 1


async def test_a_stall_before_the_pool_wait_still_reads_as_nothing_sent(client, mock_backend, monkeypatch):
    """The deadline ends both the total timer and the pool wait's, started a few statements apart;
    a stall between them (the process descheduled on a busy machine, here 20 ms) lets the total
    timer fire first. The call never got a connection, so it is still safe to retry."""
    mock_backend.configure(latency_ms=600)
    backend = backend_for(mock_backend, max_in_flight=1)
    first = asyncio.create_task(call(client, backend))
    await eventually(lambda: mock_backend.inference_requests == 1, what="the first call holding the pool")
    connect = aiohttp.BaseConnector.connect

    async def stalled_connect(self, *args, **kwargs):
        time.sleep(0.02)
        return await connect(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.BaseConnector, "connect", stalled_connect)
    error = await failure(client, backend, deadline=time.monotonic() + 0.05)
    assert (error.code, error.reason, error.retry_safe) == ("BACKEND_TIMEOUT", "connect_timeout", True)
    assert (await first).status == 200
    assert mock_backend.inference_requests == 1


async def test_max_in_flight_caps_connections_to_a_backend(client, mock_backend):
    mock_backend.configure(latency_ms=150)
    backend = backend_for(mock_backend, max_in_flight=2)
    calls = [asyncio.create_task(call(client, backend)) for _ in range(6)]
    await eventually(lambda: client.in_flight(backend.id) == 6, what="six calls under way")
    await eventually(lambda: mock_backend.inference_requests >= 2, what="the first two at the backend")
    assert len(tcp_table.client_ports(mock_backend.port)) == 2
    assert all(reply.status == 200 for reply in await asyncio.gather(*calls))
    assert client.in_flight(backend.id) == 0


async def test_sequential_calls_reuse_one_connection(client, mock_backend):
    backend = backend_for(mock_backend)
    seen: set[int] = set()
    for _ in range(20):
        await call(client, backend)
        seen |= tcp_table.client_ports(mock_backend.port)
    assert len(seen) == 1
    assert mock_backend.inference_requests == 20


async def test_an_error_answer_keeps_the_connection_for_reuse(client, mock_backend):
    backend = backend_for(mock_backend)
    await call(client, backend)
    before = tcp_table.client_ports(mock_backend.port)
    mock_backend.configure(fixed_status=503)
    await failure(client, backend)
    assert tcp_table.client_ports(mock_backend.port) == before


async def test_error_messages_never_name_the_backend_address(client, mock_backend):
    port = mock_backend.port
    refused = free_port()
    scenarios = [
        (backend_for(mock_backend, base_url=f"http://127.0.0.1:{refused}/v1"), {}),
        (
            backend_for(
                mock_backend, base_url="http://no-such-backend.invalid:8000/v1", connect_timeout_ms=300
            ),
            {},
        ),
        (backend_for(mock_backend), {"hang": True}),
        (backend_for(mock_backend), {"reset": True}),
        (backend_for(mock_backend), {"garbage": True}),
        *[(backend_for(mock_backend), {"fixed_status": s}) for s in (400, 404, 422, 429, 500, 503, 401)],
    ]
    errors: list[BackendCallError] = []
    for backend, faults in scenarios:
        mock_backend.reset_controls()
        mock_backend.configure(**faults)
        errors.append(await failure(client, backend, deadline=time.monotonic() + 0.3))
    for error in errors:
        texts = [str(error), error.message, repr(error.args), *error.headers.values()]
        texts += [render(error, trace_id="t", request_id="r", openai=flag).decode() for flag in (True, False)]
        for text in texts:
            for leak in ("127.0.0.1", str(port), str(refused), "http:", "no-such-backend", ".invalid", "/v1"):
                assert leak not in text, (error.reason, text)
        assert error.__cause__ is None  # no aiohttp exception (which names the URL) chained for logs


async def test_sessions_follow_configuration_snapshots(client):
    with MockBackend() as first, MockBackend() as second:
        original = backend_for(first, backend_id="b")
        await client.start([original])
        await call(client, original)
        assert len(tcp_table.client_ports(first.port)) == 1

        # Unchanged apart from labels: the same session and connection.
        relabelled = original.model_copy(update={"labels": {"zone": "a"}})
        await client.update([relabelled])
        await call(client, relabelled)
        assert len(tcp_table.client_ports(first.port)) == 1

        # A new base URL: a new session; the old one, idle, is closed at once.
        moved = backend_for(second, backend_id="b")
        await client.update([moved])
        await eventually(lambda: not tcp_table.client_ports(first.port))
        await call(client, moved)
        assert second.inference_requests == 1

        # Removed while a call is in flight: the call finishes, then the session closes.
        second.configure(latency_ms=300)
        slow = asyncio.create_task(call(client, moved))
        await eventually(lambda: second.inference_requests == 2, what="the call in flight at the backend")
        await client.update([])
        assert client.in_flight("b") == 0  # no longer a current backend
        assert tcp_table.client_ports(second.port)  # but its connection is still serving the call
        assert (await slow).status == 200
        await eventually(lambda: not tcp_table.client_ports(second.port))


async def test_a_changed_config_passed_to_a_call_rebuilds_the_session_lazily(client):
    with MockBackend() as first, MockBackend() as second:
        await call(client, backend_for(first, backend_id="b"))
        await call(client, backend_for(second, backend_id="b"))
        assert (first.inference_requests, second.inference_requests) == (1, 1)
        await eventually(lambda: not tcp_table.client_ports(first.port))


async def test_closing_the_client_also_closes_replaced_sessions_still_busy(mock_backend):
    client = BackendClient(secrets=SECRETS)
    mock_backend.configure(latency_ms=400)
    slow = asyncio.create_task(call(client, backend_for(mock_backend)))
    await eventually(lambda: mock_backend.inference_requests == 1, what="the slow call at the backend")
    await client.update([backend_for(mock_backend, timeout_ms=3_000)])  # replaces the busy session
    await client.close()
    with pytest.raises(BackendCallError) as caught:
        await slow
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    await eventually(lambda: not tcp_table.client_ports(mock_backend.port))
    await asyncio.sleep(0.4)  # let the mock's handler finish before the fixture stops it


async def test_a_closed_client_refuses_calls(mock_backend):
    client = BackendClient(secrets=SECRETS)
    await call(client, backend_for(mock_backend))
    await client.close()
    await eventually(lambda: not tcp_table.client_ports(mock_backend.port))
    error = await failure(client, backend_for(mock_backend, timeout_ms=999))
    assert (error.code, error.reason) == ("BACKEND_UNAVAILABLE", "closed")
