"""Property-based run of the generated OpenAPI document against the app (schemathesis over WSGI): no
request, valid or not, may get a 500 or a response that the document does not describe."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import schemathesis
from django.core import signals
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import load_all_checks
from schemathesis.specs.openapi import checks as openapi_checks

from sessionadmin.models import ServiceHeartbeat
from sessionadmin.wsgi import application
from tests.api_base import ApiTestCase
from tests.gateway import GatewayMixin, tearDownModule  # noqa: F401

# Bounded for CI (the whole run stays well under a minute); raise it locally for a deeper search.
MAX_EXAMPLES = int(os.environ.get("SESSIONADMIN_SCHEMA_EXAMPLES", "25"))

# Checks about this API's documented behaviour; semantic ones (positive_data_acceptance expects
# valid-looking input to succeed, but an org id matching the pattern may still be unknown) are
# covered by the endpoint tests instead.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.negative_data_rejection,
]

# 413 (body too large) is this API's documented rejection of an oversized body. The token is
# given by the test (``self.headers``), so no case is generated without it: a case "negated" by
# dropping Authorization would get the header back and be accepted.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 413, 415, 422, 429]}},
        "generation": {"with-security-parameters": False},
    }
)


class OpenApiSchemaTestCase(GatewayMixin, ApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        # As Django's test client does: a request must not close the test's transaction.
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        self.addCleanup(signals.request_started.connect, close_old_connections)
        self.addCleanup(signals.request_finished.connect, close_old_connections)
        load_all_checks()
        self.schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application, config=CONFIG)
        self.session = self.create()
        for name in ("worker", "beat"):  # so /healthz may answer 200 (a 503 counts as a server error)
            ServiceHeartbeat.objects.create(name=name, beat_at=timezone.now() + timedelta(hours=1))
        self.headers = {"Authorization": f"Bearer {self.raw['platform']}"}

    def run_operation(self, path: str, method: str, mode: GenerationMode, path_parameters: dict[str, Any] | None) -> None:
        operation = self.schema[path][method]
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: Any) -> None:
            case.call_and_validate(headers=self.headers, checks=CHECKS)

        check()

    def test_it_conforms_for_every_operation(self) -> None:
        known = {"session_id": str(self.session.id)}
        for path, methods in self.schema.raw_schema["paths"].items():
            for method in methods:
                if method == "parameters":
                    continue
                # An operation without parameters or body has nothing to make invalid.
                modes = (
                    [GenerationMode.POSITIVE] if path == "/api/v1/healthz" else [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
                )
                for mode in modes:
                    params = known if "{session_id}" in path and mode is GenerationMode.POSITIVE else None
                    with self.subTest(path=path, method=method, mode=mode.value):
                        self.run_operation(path, method.upper(), mode, params)
                        if "{session_id}" in path and mode is GenerationMode.POSITIVE:
                            self.run_operation(path, method.upper(), mode, None)

    def test_it_serves_the_document_without_a_token(self) -> None:
        r = self.client.get("/api/v1/openapi.json")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.json()["openapi"], "3.1.0")
        self.assertIn("/api/v1/sessions/{session_id}/activity", r.json()["paths"])
