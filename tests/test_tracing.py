"""Spans of the gateway's tool calls (sessionadmin/tracing.py).

The end-to-end test runs the real gateway process with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointed at
an OTLP/HTTP receiver in this process that keeps the spans in memory: an exporter object inside
the gateway process could not be read from here, and this way the environment switch, the lazy
import, the batching exporter and the wire format are all what production runs. The SDK's own
``InMemorySpanExporter`` checks the span's shape in-process, and a fresh interpreter shows that
nothing of the SDK is imported when no endpoint is set."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sessionadmin import mcp_services, tracing
from sessionadmin.models import McpServer
from tests.base import BaseTestCase, BaseTransactionTestCase
from tests.celery_worker import wait_for
from tests.gateway import RunningGateway, run_async
from tests.mcp_servers import RunningServer

REPO = Path(__file__).resolve().parent.parent
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


class OtlpReceiver:
    """A minimal OTLP/HTTP traces endpoint (protobuf bodies at /v1/traces), spans kept in a list."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans: list[Any] = []
        self.spans = spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in span.attributes:
        value = item.value
        out[item.key] = getattr(value, value.WhichOneof("value"))
    return out


class GatewaySpanTests(BaseTransactionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.receiver = OtlpReceiver()
        self.addCleanup(self.receiver.stop)
        self.server = RunningServer("streamable-http")
        self.addCleanup(self.server.stop)
        self.gateway = RunningGateway(
            extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": self.receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        )
        self.addCleanup(self.gateway.stop)
        override = self.gateway.settings()
        override.enable()
        self.addCleanup(override.disable)

    def test_it_exports_one_span_per_tool_call_with_the_mcp_attributes_and_no_arguments(self) -> None:
        session = self.manager().create_session("u1", "acme", actor="alice")
        self.addCleanup(self.cut_off, session.id)
        entry = mcp_services.save_server(
            McpServer(name="tools-http", transport="streamable_http", url=self.server.url), actor="alice"
        )
        mcp_services.add_client(session.id, server=entry, actor="alice")
        config = json.loads((Path(session.workspace_path) / ".mcp.json").read_text())["mcpServers"]["sessionadmin"]
        url, token = config["url"], config["headers"]["Authorization"].removeprefix("Bearer ")

        async def agent() -> list[Any]:
            import httpx2
            from mcp import Client
            from mcp.client.streamable_http import streamable_http_client

            # The agent's own span: the gateway's spans must continue its trace.
            headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}
            http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
            async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
                return [
                    (await client.call_tool("tools-http__add", {"a": 31337, "b": 4242})).structured_content["result"],
                    (await client.call_tool("tools-http__fail", {"message": "secret-sauce-7781"})).is_error,
                ]

        self.assertEqual(run_async(agent), [35579, True])
        spans = wait_for(lambda: len(self.receiver.spans) >= 2 and list(self.receiver.spans), what="two exported spans")
        self.assertEqual(sorted(span.name for span in spans), ["tools/call add", "tools/call fail"])
        by_name = {span.name: span for span in spans}
        add, fail = attributes(by_name["tools/call add"]), attributes(by_name["tools/call fail"])
        self.assertEqual(
            add,
            {
                "mcp.method.name": "tools/call",
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "add",
                "mcp.session.id": add["mcp.session.id"],
                "sessionadmin.session.id": str(session.id),
            },
        )
        self.assertTrue(add["mcp.session.id"])
        self.assertEqual(fail["error.type"], "tool_error")
        self.assertEqual(fail["gen_ai.tool.name"], "fail")
        for span in spans:
            self.assertEqual(span.trace_id.hex(), TRACE_ID)
            self.assertEqual(span.parent_span_id.hex(), PARENT_SPAN_ID)
            text = repr(attributes(span))
            for secret in ("31337", "4242", "35579", "secret-sauce-7781"):
                self.assertNotIn(secret, text)
            self.assertEqual(len(span.events), 0)

    def cut_off(self, session_id: Any) -> None:
        from sessionadmin import gateway_client

        try:
            gateway_client.close_sessions([session_id])
            gateway_client.drain(timeout=10)
        except Exception:
            pass


class TracingTests(BaseTestCase):
    def test_a_span_has_the_mcp_attributes_its_parent_and_error_type(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        saved = (tracing._state.checked, tracing._state.tracer, tracing._state.provider)
        self.addCleanup(_restore, saved)
        exporter = InMemorySpanExporter()
        tracing.use_provider(TracerProvider(), SimpleSpanProcessor(exporter))
        span = tracing.start_tool_call("add", session_id="s-1", traceparent=f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
        tracing.end_tool_call(span, error_type="unavailable")
        (finished,) = exporter.get_finished_spans()
        self.assertEqual(finished.name, "tools/call add")
        self.assertEqual(finished.attributes["error.type"], "unavailable")
        self.assertEqual(finished.attributes["mcp.session.id"], "s-1")
        self.assertEqual(format(finished.context.trace_id, "032x"), TRACE_ID)
        self.assertEqual(format(finished.parent.span_id, "016x"), PARENT_SPAN_ID)

    def test_nothing_of_the_sdk_is_imported_when_no_endpoint_is_set(self) -> None:
        code = (
            "import os, sys\n"
            "for k in ('OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'): os.environ.pop(k, None)\n"
            "from sessionadmin import tracing\n"
            "assert tracing.start_tool_call('add', session_id='s') is None\n"
            "tracing.end_tool_call(None)\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
        self.assertEqual(out.strip(), "[]")


def _restore(saved: tuple[bool, Any, Any]) -> None:
    tracing._state.checked, tracing._state.tracer, tracing._state.provider = saved
