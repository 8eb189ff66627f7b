from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import time_machine
from django.db import OperationalError
from django.test import Client
from django.test.utils import override_settings

from sessionadmin.models import ServiceHeartbeat
from tests.base import BaseTestCase
from tests.gateway import GatewayMixin, tearDownModule  # noqa: F401

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class HealthzTestCase(GatewayMixin, BaseTestCase):
    def beat(self, name: str, age_seconds: int) -> None:
        ServiceHeartbeat.objects.update_or_create(name=name, defaults={"beat_at": T0 - timedelta(seconds=age_seconds)})

    def get(self, path: str = "/healthz") -> dict:  # type: ignore[type-arg]
        with time_machine.travel(T0, tick=False):
            r = Client().get(path)
        return {"http": r.status_code, **r.json()}

    def test_it_is_200_when_everything_is_alive_without_login(self) -> None:
        self.beat("worker", 5)
        self.beat("beat", 20)
        body = self.get()
        self.assertEqual((body["http"], body["checks"]["worker"]["age_seconds"]), (200, 5.0))
        self.assertTrue(all(c["ok"] for c in body["checks"].values()))
        self.assertEqual(self.get("/api/v1/healthz")["http"], 200)

    def test_it_is_503_with_a_stale_worker(self) -> None:
        self.beat("worker", 3600)
        self.beat("beat", 5)
        body = self.get()
        self.assertEqual(body["http"], 503)
        self.assertEqual(body["checks"]["worker"], {"ok": False, "age_seconds": 3600.0, "error": "no recent heartbeat"})
        self.assertTrue(body["checks"]["beat"]["ok"])

    def test_it_is_503_without_any_heartbeat(self) -> None:
        body = self.get()
        self.assertEqual(body["http"], 503)
        self.assertEqual((body["checks"]["worker"]["age_seconds"], body["checks"]["beat"]["ok"]), (None, False))

    def test_it_is_503_when_the_broker_is_down(self) -> None:
        self.beat("worker", 5)
        self.beat("beat", 5)
        with mock.patch("sessionadmin.celery.app.connection_for_write", side_effect=ConnectionRefusedError("refused")):
            body = self.get()
        self.assertEqual(body["http"], 503)
        self.assertEqual(body["checks"]["broker"], {"ok": False, "error": "broker unreachable"})
        self.assertTrue(body["checks"]["database"]["ok"])

    def test_it_is_503_when_the_database_is_down(self) -> None:
        with mock.patch("sessionadmin.api.check_database", return_value={"ok": False, "error": "database unreachable"}):
            body = self.get()
        self.assertEqual(body["http"], 503)
        self.assertFalse(body["checks"]["worker"]["ok"])

    def test_it_is_503_when_the_gateway_is_down(self) -> None:
        self.beat("worker", 5)
        self.beat("beat", 5)
        with override_settings(SESSIONADMIN_GATEWAY_INTERNAL_URL="http://127.0.0.1:9"):
            body = self.get()
        self.assertEqual(body["http"], 503)
        self.assertEqual(body["checks"]["gateway"], {"ok": False, "error": "gateway unreachable"})
        self.assertTrue(body["checks"]["database"]["ok"])

    def test_it_reports_a_failing_liveness_query(self) -> None:
        with mock.patch("sessionadmin.maintenance.liveness", side_effect=OperationalError("gone")):
            body = self.get()
        self.assertEqual((body["http"], body["checks"]["beat"]["ok"]), (503, False))

    def test_it_answers_405_to_post(self) -> None:
        self.assertEqual(Client().post("/healthz").status_code, 405)
