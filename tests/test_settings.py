"""Settings read from the environment: strict parsing, nothing written on import, and the
`setup` command that writes var/, the secret key and the broker's folders instead."""

from __future__ import annotations

import os
import runpy
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase

import sessionadmin.settings as settings_module

REPO = Path(__file__).resolve().parent.parent


def load_settings(**env: str) -> dict[str, Any]:
    """Execute settings.py afresh with these variables on top of the test environment."""
    with mock.patch.dict(os.environ, env):
        return runpy.run_path(settings_module.__file__)


class TempDirMixin:
    tmp: Path

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.tmp = Path(tempfile.mkdtemp(prefix="sessionadmin-settings-test-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)  # type: ignore[attr-defined]


class EnvParsingTestCase(TempDirMixin, SimpleTestCase):
    def test_it_refuses_a_boolean_it_does_not_know(self) -> None:
        for value in ("ture", "2", "enabled"):
            with self.subTest(value=value), self.assertRaisesRegex(ImproperlyConfigured, r"^SESSIONADMIN_DEBUG must be one of"):
                load_settings(SESSIONADMIN_DEBUG=value)

    def test_it_reads_the_boolean_words_both_ways(self) -> None:
        for value, expected in (("yes", True), ("On", True), ("1", True), ("off", False), ("FALSE", False), ("0", False)):
            with self.subTest(value=value):
                self.assertIs(load_settings(SESSIONADMIN_DEBUG=value)["DEBUG"], expected)

    def test_it_refuses_an_integer_that_does_not_parse(self) -> None:
        for value in ("ten", "1.5", "1e3"):
            with self.subTest(value=value), self.assertRaisesRegex(ImproperlyConfigured, r"^SESSIONADMIN_MAX_CONCURRENT must be"):
                load_settings(SESSIONADMIN_MAX_CONCURRENT=value)

    def test_it_refuses_an_integer_below_its_minimum(self) -> None:
        with self.assertRaisesRegex(ImproperlyConfigured, r"^SESSIONADMIN_WEB_WORKERS must be at least 1"):
            load_settings(SESSIONADMIN_WEB_WORKERS="0")

    def test_it_refuses_a_float_that_does_not_parse_or_is_not_finite(self) -> None:
        for value in ("soon", "nan", "inf", "1e999"):
            with self.subTest(value=value), self.assertRaisesRegex(ImproperlyConfigured, r"^SESSIONADMIN_MCP_TIMEOUT_SECONDS"):
                load_settings(SESSIONADMIN_MCP_TIMEOUT_SECONDS=value)

    def test_it_refuses_an_unknown_log_level_and_database_scheme(self) -> None:
        with self.assertRaisesRegex(ImproperlyConfigured, r"^SESSIONADMIN_LOG_LEVEL must be"):
            load_settings(SESSIONADMIN_LOG_LEVEL="LOUD")
        with self.assertRaisesRegex(ImproperlyConfigured, r"^DATABASE_URL: scheme 'mysql'"):
            load_settings(DATABASE_URL="mysql://db/x")

    def test_it_reads_the_run_and_celery_variables_here(self) -> None:
        loaded = load_settings(
            SESSIONADMIN_BIND="127.0.0.1:18999",
            SESSIONADMIN_WEB_WORKERS="3",
            CELERY_CONCURRENCY="5",
            SESSIONADMIN_CELERY_QUEUE="q-1",
            CELERY_VISIBILITY_TIMEOUT="7200",
        )
        self.assertEqual(loaded["SESSIONADMIN_BIND"], "127.0.0.1:18999")
        self.assertEqual((loaded["SESSIONADMIN_WEB_WORKERS"], loaded["SESSIONADMIN_WORKER_CONCURRENCY"]), (3, 5))
        self.assertEqual(loaded["CELERY_TASK_DEFAULT_QUEUE"], "q-1")
        self.assertEqual(loaded["CELERY_BROKER_TRANSPORT_OPTIONS"]["visibility_timeout"], 7200.0)

    def test_it_writes_nothing_on_import(self) -> None:
        var = self.tmp / "var"
        with mock.patch.dict(os.environ, {"SESSIONADMIN_SECRET_KEY": ""}):
            loaded = load_settings(SESSIONADMIN_VAR_DIR=str(var))
        self.assertFalse(var.exists())
        self.assertEqual(loaded["SECRET_KEY"], "")  # no key yet, and none made up
        self.assertTrue(loaded["CELERY_BROKER_TRANSPORT_OPTIONS"]["data_folder_in"].startswith(str(var)))

    def test_it_runs_the_tests_on_a_var_dir_of_their_own(self) -> None:
        self.assertFalse(Path(settings.VAR_DIR).is_relative_to(REPO))
        self.assertFalse(Path(settings.DATABASES["default"]["TEST"]["NAME"]).is_relative_to(REPO / "var"))


class SetupCommandTestCase(TempDirMixin, SimpleTestCase):
    """As a new machine runs it: processes with no key in their environment and an empty var/."""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"SESSIONADMIN_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"}}
        return env | {"SESSIONADMIN_VAR_DIR": str(self.tmp / "var"), "DJANGO_SETTINGS_MODULE": "sessionadmin.settings"}

    def run_python(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=120)

    def test_it_creates_var_the_secret_key_and_the_broker_folders_once(self) -> None:
        var = self.tmp / "var"
        first = self.run_python("manage.py", "setup")
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn("(new secret key)", first.stdout)
        key = (var / "secret_key").read_text()
        self.assertGreaterEqual(len(key), 50)
        self.assertEqual(stat.S_IMODE((var / "secret_key").stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(var.stat().st_mode), 0o700)
        for folder in ("celery/broker/queue", "celery/broker/control", "celery/broker/processed", "staticfiles"):
            self.assertTrue((var / folder).is_dir(), folder)

        again = self.run_python("manage.py", "setup")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("nothing to do", again.stdout)
        self.assertEqual((var / "secret_key").read_text(), key)
        served = self.run_python("-c", "import sessionadmin.wsgi")
        self.assertEqual(served.returncode, 0, served.stderr)

    def test_it_refuses_to_serve_without_a_secret_key(self) -> None:
        served = self.run_python("-c", "import sessionadmin.wsgi")
        self.assertNotEqual(served.returncode, 0)
        self.assertIn("no secret key: run `python manage.py setup`", served.stderr)
        self.assertFalse((self.tmp / "var").exists())

    def test_it_refuses_to_start_a_worker_without_a_secret_key(self) -> None:
        worker = self.run_python("-m", "celery", "-A", "sessionadmin", "worker", "--pool", "solo", "--without-mingle")
        self.assertNotEqual(worker.returncode, 0)
        self.assertIn("no secret key: run `python manage.py setup`", worker.stdout + worker.stderr)

    def test_it_migrates_without_a_secret_key(self) -> None:
        (self.tmp / "var").mkdir()
        migrated = self.run_python("manage.py", "migrate", "--no-input", "-v", "0")
        self.assertEqual(migrated.returncode, 0, migrated.stderr)
        self.assertFalse((self.tmp / "var" / "secret_key").exists())


class MetricsSettingsTests(SimpleTestCase):
    def test_the_metrics_allow_list_is_empty_by_default(self) -> None:
        with mock.patch.dict(os.environ, {"SESSIONADMIN_METRICS_ALLOWED_IPS": ""}):
            self.assertEqual(load_settings()["SESSIONADMIN_METRICS_ALLOWED_IPS"], [])

    def test_the_metrics_allow_list_takes_addresses_and_networks(self) -> None:
        loaded = load_settings(SESSIONADMIN_METRICS_ALLOWED_IPS=" 10.0.0.5, 10.1.0.0/16,::1 ")
        self.assertEqual([str(n) for n in loaded["SESSIONADMIN_METRICS_ALLOWED_IPS"]], ["10.0.0.5/32", "10.1.0.0/16", "::1/128"])

    def test_the_metrics_allow_list_refuses_anything_else(self) -> None:
        for bad in ("prometheus.local", "10.0.0.5/16", "10.0.0.300", "*"):
            with self.subTest(bad), self.assertRaisesRegex(ImproperlyConfigured, "SESSIONADMIN_METRICS_ALLOWED_IPS"):
                load_settings(SESSIONADMIN_METRICS_ALLOWED_IPS=bad)
