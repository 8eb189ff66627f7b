"""The alert rules and the Grafana dashboard shipped in deploy/: valid for Prometheus's own
checker (``promtool``, Debian's ``prometheus`` package, in the Makefile's DEBS), their alerts
firing as the unit tests in alerts_test.yml say, and every metric they name one that sessionadmin
exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from django.test import SimpleTestCase
from prometheus_client.registry import REGISTRY

from sessionadmin import metrics
from tests.base import BaseTestCase

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "sessionadmin.json"
METRIC = re.compile(r"\bsessionadmin_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def promtool(*args: str, cwd: Path = DEPLOY / "prometheus") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, check=False)


def family_of(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


class PromtoolTests(SimpleTestCase):
    def test_promtool_accepts_the_rules(self) -> None:
        result = promtool("check", "rules", str(RULES))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS: 6 rules found", result.stdout)

    def test_the_alerts_fire_as_their_unit_tests_expect(self) -> None:
        result = promtool("test", "rules", "alerts_test.yml")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class ReferencedMetricsTests(BaseTestCase):
    def exposed(self) -> set[str]:
        """Every family sessionadmin exposes: the counters and histograms of all processes, the
        web tier's scrape-time gauges and the gateway's."""
        names = {family.name for family in REGISTRY.collect() if family.name.startswith("sessionadmin_")}
        names |= {family.name for family in metrics.DatabaseCollector().collect()}
        names.add(metrics.live_clients_family([]).name)
        return names

    def test_the_dashboard_and_the_rules_name_only_metrics_that_exist(self) -> None:
        exposed = self.exposed()
        for source, text in (("dashboard", "\n".join(dashboard_exprs())), ("rules", RULES.read_text())):
            referenced = {family_of(name) for name in METRIC.findall(text)}
            self.assertTrue(referenced, source)
            self.assertEqual(referenced - exposed, set(), source)

    def test_the_dashboard_shows_every_metric_of_the_issue(self) -> None:
        referenced = {family_of(name) for name in METRIC.findall("\n".join(dashboard_exprs()))}
        self.assertEqual(self.exposed() - referenced, set())

    def test_the_dashboard_is_importable(self) -> None:
        dashboard = json.loads(DASHBOARD.read_text())
        self.assertEqual(dashboard["__inputs"][0]["pluginId"], "prometheus")
        ids = [panel["id"] for panel in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
