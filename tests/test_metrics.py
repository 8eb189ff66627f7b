"""/metrics of the web tier and of the gateway: a scripted scenario through the real Celery worker
and the real gateway process, scraped and parsed with prometheus_client's own parser; and who may
scrape.

Counters and histograms are compared as differences between a scrape before and one after the
scenario: the test process, its workers and its gateway keep their multiprocess files for the
whole run, so earlier tests' events are in them too."""

from __future__ import annotations

import ipaddress
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.test import Client, SimpleTestCase, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from sessionadmin import lifecycle, mcp_services, metrics, tasks, tokens
from sessionadmin.models import AgentSession, MaintenanceRun, McpClient, McpServer, ServiceHeartbeat
from tests.base import BaseTestCase
from tests.gateway import GatewayMixin, agent_client, run_async
from tests.gateway import tearDownModule as stop_gateways
from tests.mcp_servers import SANDBOX_PATHS, RunningServer, stdio_command
from tests.test_tasks_worker import WorkerTestCase

Key = tuple[str, frozenset[tuple[str, str]]]
SERVERS: dict[str, RunningServer] = {}


def setUpModule() -> None:
    SERVERS["http"] = RunningServer("streamable-http")


def tearDownModule() -> None:
    stop_gateways()
    for server in SERVERS.values():
        server.stop()


def parse(text: str) -> tuple[dict[Key, float], dict[str, set[frozenset[tuple[str, str]]]]]:
    """(sample name + labels -> value, family name -> its label sets) of an exposition."""
    values: dict[Key, float] = {}
    label_sets: dict[str, set[frozenset[tuple[str, str]]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if k != "le")
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
            label_sets.setdefault(family.name, set()).add(labels)
    return values, label_sets


def key(name: str, **labels: str) -> Key:
    return (name, frozenset(labels.items()))


def product(**values: tuple[str, ...]) -> set[frozenset[tuple[str, str]]]:
    sets: list[dict[str, str]] = [{}]
    for name, options in values.items():
        sets = [{**s, name: option} for s in sets for option in options]
    return {frozenset(s.items()) for s in sets}


class MetricsScenarioTests(GatewayMixin, WorkerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.raw = {}
        _, self.raw["prometheus"] = tokens.create_token(name="prometheus", actor="root", can_read_metrics=True)
        _, self.raw["runtime"] = tokens.create_token(name="runtime", actor="root", org=self.org)
        self.org.max_sessions = 3
        self.org.save(update_fields=["max_sessions"])

    def scrape_web(self) -> tuple[dict[Key, float], dict[str, set[frozenset[tuple[str, str]]]]]:
        response = Client().get("/metrics", headers={"Authorization": f"Bearer {self.raw['prometheus']}"})
        self.assertEqual(response.status_code, 200)
        return parse(response.content.decode())

    def gateway_get(self, token: str | None) -> tuple[int, str]:
        request = urllib.request.Request(f"{self.gateway.url}/metrics")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def scrape_gateway(self) -> tuple[dict[Key, float], dict[str, set[frozenset[tuple[str, str]]]]]:
        status, text = self.gateway_get(self.raw["prometheus"])
        self.assertEqual(status, 200)
        return parse(text)

    def api(self, method: str, path: str, body: str = "") -> Any:
        headers = {"Authorization": f"Bearer {self.raw['runtime']}"}
        return getattr(Client(), method)(path, data=body, content_type="application/json", headers=headers)

    def test_it_counts_a_scripted_scenario_on_the_web_tier_and_the_gateway(self) -> None:
        web_before, _ = self.scrape_web()
        gateway_before, _ = self.scrape_gateway()

        # Creates: two through the API, one through the manager; a fourth hits the org's limit
        # of 3; one has an invalid user id.
        first = self.api("post", "/api/v1/sessions", '{"user_id": "u1", "org_id": "acme"}').json()["id"]
        second = self.api("post", "/api/v1/sessions", '{"user_id": "u1", "org_id": "acme"}').json()["id"]
        third = self.manager().create_session("u2", "acme", actor="alice")
        with self.assertRaises(lifecycle.MaxSessionsReached):
            self.manager().create_session("u3", "acme", actor="alice")
        with self.assertRaises(lifecycle.InvalidUserID):
            self.manager().create_session("not a valid id!", "acme", actor="alice")

        # Heartbeats: one coalesced (the session was active a moment ago), one that writes.
        self.assertEqual(self.api("post", f"/api/v1/sessions/{first}/activity").status_code, 204)
        AgentSession.objects.filter(pk=first).update(last_active_at=timezone.now() - timedelta(hours=1))
        self.assertEqual(self.api("post", f"/api/v1/sessions/{first}/activity").status_code, 204)

        # Tool calls through the gateway: two by the agent, one by an operator.
        mcp_services.add_client(first, server=self.http_server(), actor="alice")
        url, token = self.endpoint(first)

        async def agent() -> list[Any]:
            async with agent_client(url, token) as client:
                return [
                    (await client.call_tool("tools-http__add", {"a": 1, "b": 2})).structured_content["result"],
                    (await client.call_tool("tools-http__add", {"a": 20, "b": 22})).structured_content["result"],
                ]

        self.assertEqual(run_async(agent), [3, 42])
        self.assertEqual(
            mcp_services.call_tool(first, "tools-http", "add", {"a": 2, "b": 2}, actor="alice").structured, {"result": 4}
        )
        live = self.scrape_gateway()[0]
        self.assertEqual(live[key("sessionadmin_mcp_live_clients", status="connected")], 1)

        # Kills: one by an operator, one through the API; the worker removes both workspaces.
        lifecycle.end(session_ids=[first], actor="alice", reason="done")
        self.assertEqual(self.api("delete", f"/api/v1/sessions/{second}").status_code, 202)
        # The third goes idle and the inactivity cleanup, run by the worker, ends it.
        AgentSession.objects.filter(pk=third.pk).update(last_active_at=timezone.now() - timedelta(hours=2))
        tasks.inactivity_cleanup.delay(idle_timeout_seconds=3600)
        tasks.heartbeat.delay()  # what beat sends every 30 s: the worker records its heartbeat
        self.wait(
            lambda: (
                AgentSession.objects.filter(status=AgentSession.Status.ENDED).count() == 3
                and MaintenanceRun.objects.filter(task="inactivity_cleanup", outcome="ok").exists()
                and ServiceHeartbeat.objects.filter(name="worker").exists()
            ),
            what="three ended sessions, a settled cleanup and the worker's heartbeat",
        )

        web, web_labels = self.scrape_web()
        gateway, gateway_labels = self.scrape_gateway()

        def delta(after: dict[Key, float], before: dict[Key, float], name: str, **labels: str) -> float:
            return after[key(name, **labels)] - before.get(key(name, **labels), 0.0)

        creates = {
            s: delta(web, web_before, "sessionadmin_session_create_duration_seconds_count", status=s)
            for s in metrics.CREATE_STATUSES
        }
        self.assertEqual(
            creates,
            {"success": 3, "limit_global": 0, "limit_org": 1, "limit_user": 0, "invalid": 1, "workspace_error": 0},
        )
        ended = {r: delta(web, web_before, "sessionadmin_sessions_ended_total", reason=r) for r in metrics.END_REASONS}
        self.assertEqual(ended, {"idle": 1, "killed": 1, "api": 1, "error": 0})
        removals = {
            s: delta(web, web_before, "sessionadmin_workspace_removal_duration_seconds_count", status=s) for s in ("ok", "failed")
        }
        self.assertEqual(removals, {"ok": 3, "failed": 0})
        # Every removal was observed in a bucket no larger than +Inf, and the +Inf bucket is the count.
        self.assertEqual(
            delta(web, web_before, "sessionadmin_workspace_removal_duration_seconds_bucket", status="ok", le="+Inf"), 3
        )
        self.assertEqual(
            delta(
                web, web_before, "sessionadmin_maintenance_run_duration_seconds_count", task="inactivity_cleanup", outcome="ok"
            ),
            1,
        )
        self.assertEqual(
            delta(web, web_before, "sessionadmin_maintenance_run_duration_seconds_count", task="workspace_removal", outcome="ok"),
            3,
        )
        self.assertEqual(delta(web, web_before, "sessionadmin_heartbeats_total", written="true"), 1)
        self.assertEqual(delta(web, web_before, "sessionadmin_heartbeats_total", written="false"), 1)
        self.assertEqual(
            delta(
                web,
                web_before,
                "sessionadmin_http_request_duration_seconds_count",
                handler="report_activity",
                method="POST",
                code="2xx",
            ),
            2,
        )
        self.assertEqual(
            delta(
                web,
                web_before,
                "sessionadmin_http_request_duration_seconds_count",
                handler="create_session",
                method="POST",
                code="2xx",
            ),
            2,
        )
        self.assertEqual(web[key("sessionadmin_sessions_active")], 0)
        self.assertEqual(web[key("sessionadmin_sessions_terminating")], 0)
        self.assertGreater(web[key("sessionadmin_maintenance_last_success_timestamp_seconds", task="inactivity_cleanup")], 0)
        self.assertGreater(web[key("sessionadmin_component_heartbeat_timestamp_seconds", component="worker")], 0)

        calls = Counter(
            {
                (k, o): delta(gateway, gateway_before, "sessionadmin_mcp_tool_calls_total", actor_kind=k, outcome=o)
                for k in metrics.ACTOR_KINDS
                for o in metrics.TOOL_OUTCOMES
            }
        )
        self.assertEqual(+calls, Counter({("agent", "ok"): 2, ("operator", "ok"): 1}))
        name = "sessionadmin_mcp_operation_duration_seconds"
        self.assertEqual(
            delta(gateway, gateway_before, f"{name}_count", method="tools/call", transport="streamable_http", status="ok"), 3
        )
        self.assertEqual(
            delta(
                gateway,
                gateway_before,
                f"{name}_bucket",
                method="tools/call",
                transport="streamable_http",
                status="ok",
                le="300.0",
            ),
            3,
        )
        self.assertEqual(gateway[key("sessionadmin_mcp_live_clients", status="connected")], 0)

        # Bounded label sets: exactly the declared values, whatever happened.
        self.assertEqual(web_labels["sessionadmin_session_create_duration_seconds"], product(status=metrics.CREATE_STATUSES))
        self.assertEqual(web_labels["sessionadmin_sessions_ended"], product(reason=metrics.END_REASONS))
        self.assertEqual(
            web_labels["sessionadmin_maintenance_run_duration_seconds"],
            product(task=metrics.MAINTENANCE_TASKS, outcome=metrics.MAINTENANCE_OUTCOMES),
        )
        handlers = {dict(labels)["handler"] for labels in web_labels["sessionadmin_http_request_duration_seconds"]}
        self.assertTrue(all(not handler.startswith("/") for handler in handlers), handlers)
        self.assertEqual(
            gateway_labels["sessionadmin_mcp_operation_duration_seconds"],
            product(method=metrics.MCP_METHODS, transport=metrics.MCP_TRANSPORTS, status=metrics.MCP_STATUSES),
        )
        self.assertEqual(gateway_labels["sessionadmin_mcp_live_clients"], product(status=metrics.CLIENT_STATUSES))
        self.assertEqual(
            gateway_labels["sessionadmin_mcp_tool_calls"], product(actor_kind=metrics.ACTOR_KINDS, outcome=metrics.TOOL_OUTCOMES)
        )
        # No session id anywhere in either exposition.
        for sid in (first, second, str(third.pk)):
            self.assertFalse(any(sid in str(k) for k in [*web, *gateway]))

    def test_a_reconnect_and_a_failed_call_are_counted_by_the_gateway(self) -> None:
        command, args = stdio_command()
        entry = mcp_services.save_server(
            McpServer(name="tools-stdio", transport="stdio", command=command, args=args, read_only_paths=list(SANDBOX_PATHS)),
            actor="alice",
        )
        session = self.manager().create_session("u1", "acme", actor="alice")
        mcp_services.add_client(session.id, server=entry, actor="alice")
        url, token = self.endpoint(str(session.id))
        before, _ = self.scrape_gateway()

        async def crash() -> bool:
            async with agent_client(url, token) as client:
                return bool((await client.call_tool("tools-stdio__crash", {})).is_error)

        self.assertTrue(run_async(crash))
        self.wait(
            lambda: McpClient.objects.filter(client_id="tools-stdio", reconnects=1, status="connected").exists(),
            what="the reconnect",
        )
        after, _ = self.scrape_gateway()
        self.assertEqual(after[key("sessionadmin_mcp_reconnects_total")] - before[key("sessionadmin_mcp_reconnects_total")], 1)
        failed = key("sessionadmin_mcp_tool_calls_total", actor_kind="agent", outcome="failed")
        self.assertEqual(after[failed] - before[failed], 1)
        errors = key("sessionadmin_mcp_operation_duration_seconds_count", method="tools/call", transport="stdio", status="error")
        self.assertEqual(after[errors] - before[errors], 1)

    def test_the_gateway_refuses_a_scrape_without_a_metrics_token(self) -> None:
        self.assertEqual(self.gateway_get(None)[0], 401)
        self.assertEqual(self.gateway_get(self.raw["runtime"])[0], 403)
        self.assertEqual(self.gateway_get(self.raw["prometheus"])[0], 200)

    def http_server(self) -> McpServer:
        return mcp_services.save_server(
            McpServer(name="tools-http", transport="streamable_http", url=SERVERS["http"].url), actor="alice"
        )

    def endpoint(self, session_id: str) -> tuple[str, str]:
        session = AgentSession.objects.get(pk=session_id)
        entry = json.loads((Path(session.workspace_path) / ".mcp.json").read_text())["mcpServers"]["sessionadmin"]
        return entry["url"], entry["headers"]["Authorization"].removeprefix("Bearer ")


class MetricsAccessTests(BaseTestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.raw = {}
        _, cls.raw["prometheus"] = tokens.create_token(name="prometheus", actor="root", can_read_metrics=True)
        _, cls.raw["runtime"] = tokens.create_token(name="runtime", actor="root")

    raw: dict[str, str]

    def get(self, token: str | None = None, **extra: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.raw[token]}"} if token else {}
        return Client().get("/metrics", headers=headers, **extra)

    def test_it_refuses_a_scrape_with_no_credential(self) -> None:
        response = self.get()
        self.assertEqual(response.status_code, 401)
        self.assertIn("Bearer", response["WWW-Authenticate"])

    def test_it_refuses_a_token_without_the_metrics_permission(self) -> None:
        self.assertEqual(self.get("runtime").status_code, 403)

    def test_it_refuses_an_unknown_token(self) -> None:
        response = Client().get("/metrics", headers={"Authorization": "Bearer sat_00000000_nope"})
        self.assertEqual(response.status_code, 403)

    def test_it_serves_a_token_with_the_metrics_permission(self) -> None:
        response = self.get("prometheus")
        self.assertEqual(response.status_code, 200)
        self.assertTrue(response["Content-Type"].startswith("text/plain"))
        self.assertIn("sessionadmin_sessions_active", response.content.decode())

    def test_it_serves_a_listed_address_with_no_token(self) -> None:
        with override_settings(SESSIONADMIN_METRICS_ALLOWED_IPS=[ipaddress.ip_network("10.0.0.0/8")]):
            self.assertEqual(self.get(REMOTE_ADDR="10.1.2.3").status_code, 200)
            self.assertEqual(self.get(REMOTE_ADDR="192.168.1.1").status_code, 401)

    def test_it_is_get_only(self) -> None:
        self.assertEqual(
            Client().post("/metrics", headers={"Authorization": f"Bearer {self.raw['prometheus']}"}).status_code, 405
        )


class ProcessEnvironmentTests(SimpleTestCase):
    def test_run_gives_web_worker_and_gateway_an_emptied_directory_each_and_beat_none(self) -> None:
        from sessionadmin.management.commands.run import process_env

        tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-metrics-env-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        (tmp / "web").mkdir()
        (tmp / "web" / "counter_1.db").write_bytes(b"left by a process that ran before")
        with override_settings(SESSIONADMIN_METRICS_DIR=tmp):
            envs = {name: process_env(name) for name in ("web", "gateway", "worker", "beat")}
        for kind in ("web", "gateway", "worker"):
            self.assertEqual(envs[kind]["PROMETHEUS_MULTIPROC_DIR"], str(tmp / kind))
            self.assertEqual(list((tmp / kind).iterdir()), [])
        self.assertNotIn("PROMETHEUS_MULTIPROC_DIR", envs["beat"])


class LimitUsageTests(BaseTestCase):
    def test_it_reports_the_fullest_org_and_user_and_the_global_limit(self) -> None:
        from sessionadmin.maintenance import limit_usage

        self.org.max_sessions, self.org.max_sessions_per_user = 4, 2
        self.org.save(update_fields=["max_sessions", "max_sessions_per_user"])
        manager = self.manager()
        for user in ("u1", "u1", "u2"):
            manager.create_session(user, "acme", actor="alice")
        manager.create_session("u9", "globex", actor="alice")  # no limits in globex
        with override_settings(SESSIONADMIN_MAX_CONCURRENT=10):
            self.assertEqual(limit_usage(), {"global": 0.4, "org": 0.75, "user": 1.0})
        with override_settings(SESSIONADMIN_MAX_CONCURRENT=0):
            self.assertEqual(limit_usage()["global"], 0.0)
