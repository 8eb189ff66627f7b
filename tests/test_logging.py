"""Log lines: SESSIONADMIN_LOG_FORMAT=json gives one JSON object per line with the request and
session ids of the request being served (sessionadmin/logs.py, RequestIdMiddleware)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sessionadmin import logs
from tests.base import PASSWORD, BaseTestCase

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )


class JsonLogTests(BaseTestCase):
    def capture(self, logger_name: str) -> io.StringIO:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.json_formatter())
        handler.addFilter(logs.ContextFilter())
        logger = logging.getLogger(logger_name)
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        return stream

    def test_it_writes_one_json_object_per_line_with_the_configured_formatter(self) -> None:
        code = (
            "import django, logging; django.setup()\n"
            "from sessionadmin import logs\n"
            "log = logging.getLogger('sessionadmin.test')\n"
            "log.warning('outside %s', 'any request')\n"
            "with logs.context(request_id='req-1', session_id='6f1c'):\n"
            "    log.error('inside\\nwith a newline')\n"
        )
        result = run_python(code, DJANGO_SETTINGS_MODULE="sessionadmin.settings", SESSIONADMIN_LOG_FORMAT="json")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 2, lines)
        outside, inside = (json.loads(line) for line in lines)
        self.assertEqual(set(outside), {"time", "level", "logger", "message"})
        self.assertEqual(
            (outside["level"], outside["logger"], outside["message"]), ("WARNING", "sessionadmin.test", "outside any request")
        )
        self.assertEqual(
            {k: inside[k] for k in ("level", "message", "request_id", "session_id")},
            {"level": "ERROR", "message": "inside\nwith a newline", "request_id": "req-1", "session_id": "6f1c"},
        )

    def test_text_stays_the_default(self) -> None:
        code = "import django, logging; django.setup()\nlogging.getLogger('sessionadmin.test').warning('plain')\n"
        env = {k: v for k, v in os.environ.items() if k != "SESSIONADMIN_LOG_FORMAT"}
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**env, "DJANGO_SETTINGS_MODULE": "sessionadmin.settings"},
            check=False,
        )
        self.assertRegex(result.stderr.strip(), r"^\d{4}-\d\d-\d\d \S+ WARNING sessionadmin.test plain$")

    def test_an_unknown_format_is_refused(self) -> None:
        result = run_python("import sessionadmin.settings", SESSIONADMIN_LOG_FORMAT="xml")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("SESSIONADMIN_LOG_FORMAT must be text or json", result.stderr)

    def test_a_request_line_carries_its_request_id_and_session_id(self) -> None:
        stream = self.capture("django.request")
        self.client.login(username="alice", password=PASSWORD)
        missing = uuid.uuid4()
        response = self.client.get(f"/sessions/{missing}/", headers={"X-Request-ID": "edge-42"})
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response["X-Request-ID"], "edge-42")
        (line,) = stream.getvalue().strip().splitlines()
        record = json.loads(line)
        self.assertEqual((record["request_id"], record["session_id"], record["level"]), ("edge-42", str(missing), "WARNING"))

    def test_a_request_gets_an_id_of_its_own_when_the_proxy_sends_none_or_a_bad_one(self) -> None:
        first = self.client.get("/healthz")["X-Request-ID"]
        second = self.client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})["X-Request-ID"]
        self.assertRegex(first, r"^[0-9a-f]{32}$")
        self.assertRegex(second, r"^[0-9a-f]{32}$")
        self.assertNotEqual(first, second)
