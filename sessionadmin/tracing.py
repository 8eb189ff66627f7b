"""Spans of the gateway's tool calls, exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; the exporter reads the other standard
``OTEL_*`` variables itself (headers, timeout, ``OTEL_SERVICE_NAME``, ``OTEL_BSP_*``).

One span per tool call, after the OpenTelemetry MCP semantic conventions: name
``tools/call {tool}``, ``mcp.method.name``, ``gen_ai.operation.name``, ``gen_ai.tool.name``,
``mcp.session.id``, ``error.type`` on failure. Arguments and results are never recorded (they
are the agent's and the server's data, and may hold secrets). The span is the child of the
caller's span when the agent sent a W3C ``traceparent`` (the HTTP header, or ``params._meta``
as the MCP conventions propagate it).

When no endpoint is set nothing is imported (the SDK costs ~100 ms of imports) and a call pays
one attribute check.
"""

from __future__ import annotations

import os
from typing import Any

ENDPOINT_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SERVICE_NAME = "sessionadmin-gateway"


class _State:
    checked = False
    tracer: Any = None
    provider: Any = None


_state = _State()


def enabled() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_ENV)


def tracer() -> Any:
    """The gateway's tracer, or None when tracing is off (decided once per process)."""
    if not _state.checked:
        _state.checked = True
        if enabled():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            use_provider(_provider(), BatchSpanProcessor(OTLPSpanExporter()))
    return _state.tracer


def _provider() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    name = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    return TracerProvider(resource=Resource.create({"service.name": name}))


def use_provider(provider: Any, processor: Any = None) -> None:
    """Trace into ``provider`` (with ``processor`` added to it): the exporter above, or a test's
    in-memory one. Not the global provider: the SDK's own spans stay out of it."""
    if processor is not None:
        provider.add_span_processor(processor)
    _state.checked, _state.provider = True, provider
    _state.tracer = provider.get_tracer("sessionadmin.gateway")


def shutdown() -> None:
    """Flush what is buffered (the gateway's exit)."""
    if _state.provider is not None:
        _state.provider.shutdown()


def start_tool_call(tool: str, *, session_id: str, mcp_session_id: str = "", traceparent: str = "") -> Any:
    """A started span for one tool call, or None when tracing is off."""
    current = tracer()
    if current is None:
        return None
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None
    attributes = {
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
        "mcp.session.id": mcp_session_id or session_id,
        "sessionadmin.session.id": session_id,
    }
    return current.start_span(f"tools/call {tool}", context=parent, kind=SpanKind.SERVER, attributes=attributes)


def end_tool_call(span: Any, *, error_type: str = "") -> None:
    if span is None:
        return
    if error_type:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR))
    span.end()
