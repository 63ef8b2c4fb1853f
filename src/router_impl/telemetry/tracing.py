"""OpenTelemetry traces of one router process: a span per request stage, sampled at the head and
exported in batches by OTLP over HTTP. Off, every call returns a shared no-op.

Spans come from this process's own ``TracerProvider``; OpenTelemetry's global provider is never set,
so two apps in one process (the tests) never share one. Attributes carry ids (request, organisation,
key id, backend), codes and statuses, never a secret, a signature, a prompt or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue

from router_impl.errors import ApiError
from router_impl.settings import Settings

SERVICE_NAME = "api-router"
Attributes = Mapping[str, AttributeValue]


class SpanScope(Protocol):
    def __enter__(self) -> Span: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class _NoSpan:
    """A stage that is not traced (tracing off, or the request not sampled): two empty calls."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_NO_SPAN = _NoSpan()


class _ActiveSpan:
    """A started span, current for the block and ended when it leaves."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            mark_failed(self._span, exc)
        self._span.end()
        if self._token is not None:
            otel_context.detach(self._token)


def mark_failed(span: Span, error: BaseException) -> None:
    """Status ERROR with the error's code (or type name); the message may quote input, so never it."""
    code = error.code if isinstance(error, ApiError) else type(error).__name__
    span.set_attribute("error.type", code)
    span.set_status(Status(StatusCode.ERROR, code))


def link_to(span: Span, trace_id: str, span_id: str) -> None:
    """Link ``span`` to another trace's span (hex ids as in usage records); malformed ids are skipped."""
    try:
        linked = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True)
    except ValueError:
        return
    if linked.is_valid:
        span.add_link(linked)


class Ingress:
    """The request's server span, current from ``Tracing.ingress`` until ``end``."""

    __slots__ = ("_token", "sampled", "span", "span_id", "trace_id")

    def __init__(self, span: Span) -> None:
        self.span = span
        found = span.get_span_context()
        self.trace_id = format(found.trace_id, "032x")
        self.span_id = format(found.span_id, "016x")
        self.sampled = found.trace_flags.sampled
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def end(self, status: int, attributes: Mapping[str, AttributeValue | None]) -> None:
        span = self.span
        try:
            if span.is_recording():
                span.set_attribute("http.response.status_code", status)
                for name, value in attributes.items():
                    if value is not None:
                        span.set_attribute(name, value)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
        finally:
            otel_context.detach(self._token)


class Tracing:
    """Spans for one router process, or nothing at all when off.

    ``exporter`` replaces the OTLP exporter (still batched); ``processor`` replaces the batching too
    (tests pass a ``SimpleSpanProcessor`` over an ``InMemorySpanExporter``).
    """

    def __init__(
        self,
        *,
        enabled: bool = False,
        sample_ratio: float = 0.1,
        service_version: str = "unknown",
        exporter: SpanExporter | None = None,
        processor: SpanProcessor | None = None,
    ) -> None:
        self.enabled = enabled
        self.provider: TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()
        if not enabled:
            return
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
            resource=Resource.create({"service.name": SERVICE_NAME, "service.version": service_version}),
            shutdown_on_exit=False,  # the lifecycle flushes it on stop
        )
        self.provider.add_span_processor(processor or BatchSpanProcessor(exporter or OTLPSpanExporter()))
        self._tracer = self.provider.get_tracer("router_impl", service_version)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        """On with ``ROUTER_TRACING_ENABLED`` or a standard OTLP endpoint variable; the exporter reads
        the standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout, TLS) itself."""
        return cls(
            enabled=settings.tracing_enabled or bool(settings.tracing_otlp_endpoint),
            sample_ratio=settings.tracing_sample_ratio,
            service_version=settings.build_version,
        )

    def ingress(
        self, trace_id: str, parent_span_id: str | None, parent_flags: int, attributes: Attributes
    ) -> Ingress | None:
        """Start the request's server span, continuing the caller's trace when it sent one; None when off."""
        if not self.enabled:
            return None
        parent = Context()  # never inherit whatever was current: a request starts its own trace
        if parent_span_id is not None:
            flags = TraceFlags(parent_flags)
            remote = SpanContext(
                int(trace_id, 16), int(parent_span_id, 16), is_remote=True, trace_flags=flags
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote), parent)
        span = self._tracer.start_span(
            "ingress",
            parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return Ingress(span)

    def span(self, name: str, attributes: Attributes | None = None, *, client: bool = False) -> SpanScope:
        """A child of the current span for the block. A no-op unless the current span is recorded, so
        an unsampled request (and work outside any request) costs a look-up, not a span."""
        if not self.enabled or not trace.get_current_span().is_recording():
            return _NO_SPAN
        span = self._tracer.start_span(
            name,
            kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _ActiveSpan(span)

    def finished_span(
        self, name: str, start_time_ns: int, end_time_ns: int, attributes: Attributes | None = None
    ) -> None:
        """Record a child of the current span after the fact (for work known to deserve a span only
        once it succeeded); times are ``time.time_ns()``."""
        if not self.enabled or not trace.get_current_span().is_recording():
            return
        self._tracer.start_span(name, attributes=attributes, start_time=start_time_ns).end(end_time_ns)

    def root_span(self, name: str, attributes: Attributes | None = None) -> SpanScope:
        """A span starting a trace of its own (background work such as a publish round), sampled by
        the ratio."""
        if not self.enabled:
            return _NO_SPAN
        span = self._tracer.start_span(
            name,
            Context(),
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _ActiveSpan(span)

    def traceparent(self, trace_id: str, span_id: str) -> str:
        """The W3C ``traceparent`` for a call out: the current span, with the sampling decision, when
        tracing; the request's own ids otherwise."""
        if self.enabled:
            current = trace.get_current_span().get_span_context()
            if current.is_valid:
                return f"00-{current.trace_id:032x}-{current.span_id:016x}-{int(current.trace_flags):02x}"
        return f"00-{trace_id}-{span_id}-01"

    def force_flush(self) -> bool:
        return self.provider.force_flush() if self.provider is not None else True

    async def shutdown(self, within_seconds: float = 5.0) -> None:
        """Export what is buffered and stop, waiting at most ``within_seconds``: the SDK may take its
        30 s export timeout when the collector is down, which must not hold the process's exit. The
        flush runs on a daemon thread, off the event loop."""
        provider = self.provider
        if provider is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def flush_and_stop() -> None:
            try:
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=flush_and_stop, name="tracing-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, within_seconds)
