"""Stdio MCP servers in their bubblewrap sandbox (sessionadmin.sandbox + mcp_client's stdio
transport), against the hostile server of tests/mcp_servers/hostile.py: what it can read, write,
reach and leave behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

from django.conf import settings
from django.db import connection
from django.test import SimpleTestCase

from sessionadmin import mcp_client, sandbox
from sessionadmin.mcp_client import McpError, Target
from tests.mcp_servers import SANDBOX_PATHS, hostile_command, process_gone, processes_with

WAIT_SECONDS = 30


def hostile_target(workspace: str, **kwargs: Any) -> Target:
    command, args = hostile_command()
    kwargs.setdefault("read_only_paths", SANDBOX_PATHS)
    return Target("stdio", command=command, args=tuple(args), cwd=workspace, **kwargs)


def call(target: Target, tool: str, **arguments: Any) -> Any:
    result = mcp_client.call_tool(target, tool, arguments, timeout=60)
    assert not result.is_error, result.text
    structured = result.structured
    # A tool returning a dict gives it as is; any other type comes wrapped as {"result": ...}.
    return structured["result"] if isinstance(structured, dict) and set(structured) == {"result"} else structured


class WorkspaceMixin(SimpleTestCase):
    def setUp(self) -> None:
        super().setUp()
        # A workspace, and a sibling folder standing for another session's workspace.
        root = Path(tempfile.mkdtemp(prefix="sbx-test-"))
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        self.workspace = root / "session-a"
        self.workspace.mkdir(mode=0o700)
        self.other = root / "session-b"
        self.other.mkdir(mode=0o700)
        (self.other / "private.txt").write_text("another session's file")


# A dashboard process: the secrets are in its environment from the start, as in production,
# where a stdio server used to read them from /proc/<parent pid>/environ.
DASHBOARD = """
import json, sys
from sessionadmin import mcp_client
spec = json.loads(sys.argv[1])
target = mcp_client.Target(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
print(json.dumps(mcp_client.call_tool(target, "environ_everywhere", {}, timeout=60).structured))
"""


class SandboxedEnvironmentTests(WorkspaceMixin):
    def probe_from_a_dashboard(self, *, sandboxed: bool) -> tuple[dict[str, str], dict[str, str]]:
        """(the secrets in the dashboard's environment, what the server's probe saw)"""
        marker = f"marker-{uuid.uuid4().hex}"
        secrets = {
            "SESSIONADMIN_TEST_MARKER": marker,
            "DATABASE_URL": f"postgres://sa:pw-{marker}@db/sa",
            "CELERY_BROKER_URL": f"redis://:pw-{marker}@broker:6379/0",
            "SESSIONADMIN_SECRET_KEY": str(settings.SECRET_KEY),
        }
        command, args = hostile_command()
        spec = {
            "transport": "stdio",
            "command": command,
            "args": args,
            "cwd": str(self.workspace),
            "env": {"CATALOG_VALUE": "catalog-value-1"},
            "read_only_paths": list(SANDBOX_PATHS),
            "sandbox": sandboxed,
        }
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PYTHONPATH": str(settings.BASE_DIR), **secrets}
        done = subprocess.run(
            [sys.executable, "-c", DASHBOARD, json.dumps(spec)],
            env=env,
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return secrets, json.loads(done.stdout)

    def test_it_shows_a_server_nothing_of_the_dashboards_environment(self) -> None:
        secrets, seen = self.probe_from_a_dashboard(sandboxed=True)
        text = json.dumps(seen)
        for name, value in secrets.items():
            self.assertNotIn(value, text, name)
        self.assertIn("catalog-value-1", seen["self"])
        names = {line.split("=", 1)[0] for line in seen["self"].splitlines() if line}
        self.assertEqual(names, {"PATH", "HOME", "LANG", "PWD", "CATALOG_VALUE"})
        self.assertIn("HOME=/workspace", seen["self"].splitlines())

    def test_the_same_probe_finds_the_dashboards_environment_without_the_sandbox(self) -> None:
        # What the test above looks for is there to be found when nothing isolates the server:
        # its parent is the dashboard process.
        secrets, seen = self.probe_from_a_dashboard(sandboxed=False)
        for name, value in secrets.items():
            self.assertIn(value, seen["parent"], name)

    def test_it_sees_only_the_processes_of_its_own_sandbox(self) -> None:
        pids = call(hostile_target(str(self.workspace)), "visible_pids")
        self.assertLessEqual(len(pids), 4)
        self.assertNotIn(os.getpid(), pids)


class SandboxedFilesTests(WorkspaceMixin):
    def test_it_cannot_read_the_dashboards_files(self) -> None:
        forbidden = [
            "/etc/shadow",
            str(self.other / "private.txt"),
            str(settings.BASE_DIR / "sessionadmin" / "settings.py"),
            str(settings.BASE_DIR / "README.md"),
            f"/proc/{os.getpid()}/environ",
        ]
        if connection.vendor == "sqlite":
            forbidden.append(str(connection.settings_dict["NAME"]))
        secret_key_file = settings.VAR_DIR / "secret_key"
        if secret_key_file.exists():
            forbidden.append(str(secret_key_file))
        target = hostile_target(str(self.workspace))
        for path in forbidden:
            with self.subTest(path):
                self.assertTrue(Path(path).exists())
                self.assertTrue(call(target, "read_file", path=path).startswith("ERROR: FileNotFoundError"))

    def test_it_sees_the_system_and_its_read_only_paths_but_not_the_repository(self) -> None:
        target = hostile_target(str(self.workspace))
        self.assertIn("passwd", call(target, "list_dir", path="/etc"))
        self.assertNotIn("shadow", call(target, "list_dir", path="/etc"))
        self.assertNotIn("private", call(target, "list_dir", path="/etc/ssl"))
        self.assertIn("hostile.py", call(target, "list_dir", path=str(Path(SANDBOX_PATHS[2]))))
        repository = call(target, "list_dir", path=str(settings.BASE_DIR))
        self.assertNotIn("sessionadmin", repository)
        self.assertNotIn("var", repository)

    def test_a_read_only_path_under_tmp_is_not_hidden_by_the_private_tmp(self) -> None:
        # A checkout (and its venv) under /tmp: the sandbox's own /tmp must not cover it.
        with tempfile.TemporaryDirectory(dir="/tmp") as folder, tempfile.TemporaryDirectory(dir="/tmp") as other:
            (Path(folder) / "tool.txt").write_text("under tmp")
            target = hostile_target(str(self.workspace), read_only_paths=(*SANDBOX_PATHS, folder))
            self.assertEqual(call(target, "read_file", path=f"{folder}/tool.txt"), "under tmp")
            listing = call(target, "list_dir", path="/tmp")
            self.assertIn(Path(folder).name, listing)
            self.assertNotIn(Path(other).name, listing)  # the rest of the host's /tmp stays out

    def test_its_read_only_paths_are_read_only(self) -> None:
        target = hostile_target(str(self.workspace))
        script = Path(SANDBOX_PATHS[2]) / "hostile.py"
        self.assertEqual(call(target, "write_here", name=str(script), text="pwned"), "ERROR: OSError: Read-only file system")
        self.assertNotIn("pwned", script.read_text())

    def test_it_works_in_the_session_workspace(self) -> None:
        target = hostile_target(str(self.workspace))
        self.assertEqual(call(target, "write_here", name="notes.txt", text="written inside"), "/workspace/notes.txt")
        written = self.workspace / "notes.txt"
        self.assertEqual(written.read_text(), "written inside")
        self.assertEqual(written.stat().st_uid, os.getuid())
        self.assertTrue(stat.S_ISREG(written.stat().st_mode))


class SandboxedNetworkTests(WorkspaceMixin):
    def setUp(self) -> None:
        super().setUp()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(self.listener.close)
        self.port = self.listener.getsockname()[1]

    def test_without_network_it_cannot_connect_even_to_loopback(self) -> None:
        result = call(hostile_target(str(self.workspace)), "connect", host="127.0.0.1", port=self.port)
        self.assertTrue(result.startswith("ERROR: ConnectionRefusedError"), result)

    def test_with_network_it_connects(self) -> None:
        result = call(hostile_target(str(self.workspace), network=True), "connect", host="127.0.0.1", port=self.port)
        self.assertEqual(result, "connected")


class SandboxLifetimeTests(WorkspaceMixin):
    def spawn_orphan(self, *, hang: bool, timeout: float) -> tuple[list[int], dict[str, Any]]:
        """Call ``spawn_orphan`` in a thread; find the orphan's host pid while the call runs
        (by the token on its command line), let the call go on, and return the pids seen and
        what the call gave."""
        token = uuid.uuid4().hex
        target = hostile_target(str(self.workspace))
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = mcp_client.call_tool(target, "spawn_orphan", {"token": token, "hang": hang}, timeout=timeout)
            except McpError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        pids: list[int] = []
        deadline = time.monotonic() + WAIT_SECONDS
        while not pids and thread.is_alive() and time.monotonic() < deadline:
            pids = processes_with(token)
            time.sleep(0.05)
        (self.workspace / f"release-{token}").write_text("seen")
        thread.join()
        return pids, outcome

    def test_a_forking_server_leaves_no_process_after_close(self) -> None:
        pids, outcome = self.spawn_orphan(hang=False, timeout=60)
        self.assertEqual(len(pids), 1)
        self.assertGreater(outcome["result"].structured["result"], 1)
        self.assertTrue(all(process_gone(pid) for pid in pids))

    def test_a_forking_server_leaves_no_process_after_a_timeout(self) -> None:
        pids, outcome = self.spawn_orphan(hang=True, timeout=20)
        self.assertEqual(len(pids), 1)
        self.assertEqual(outcome["error"].kind, mcp_client.TIMEOUT)
        self.assertTrue(all(process_gone(pid) for pid in pids))


class SandboxErrorTests(WorkspaceMixin):
    def test_a_command_outside_the_sandbox_is_a_clear_error(self) -> None:
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(hostile_target(str(self.workspace), read_only_paths=()), timeout=10)
        self.assertEqual(ctx.exception.kind, mcp_client.UNREACHABLE)
        self.assertIn("is outside the sandbox: add its folder to the catalog entry's read-only paths", str(ctx.exception))

    def test_a_missing_bwrap_is_a_clear_error(self) -> None:
        with (
            mock.patch.object(sandbox, "BWRAP", "/nonexistent/bwrap"),
            mock.patch.object(sandbox.shutil, "which", return_value=None),
            self.assertRaises(McpError) as ctx,
        ):
            mcp_client.ping(hostile_target(str(self.workspace)), timeout=10)
        self.assertEqual(ctx.exception.kind, mcp_client.SANDBOX)
        self.assertTrue(str(ctx.exception).startswith("sandbox unavailable: /nonexistent/bwrap not found"))

    def test_a_failing_bwrap_is_a_clear_error(self) -> None:
        fake = self.workspace.parent / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        with mock.patch.object(sandbox, "BWRAP", str(fake)), self.assertRaises(McpError) as ctx:
            mcp_client.ping(hostile_target(str(self.workspace)), timeout=10)
        self.assertEqual(ctx.exception.kind, mcp_client.SANDBOX)
        self.assertTrue(str(ctx.exception).startswith("sandbox unavailable: bwrap: No permissions to create a new namespace"))


class SandboxCommandTests(SimpleTestCase):
    def test_it_isolates_everything_but_what_it_binds(self) -> None:
        argv = sandbox.command(["/usr/bin/true", "x"], workspace="/srv/ws", read_only_paths=[sys.base_prefix])
        for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent"):
            self.assertIn(flag, argv)
        self.assertNotIn("--share-net", argv)
        self.assertEqual(argv[argv.index("--cap-drop") + 1], "ALL")
        self.assertEqual(argv[-3:], ["--", "/usr/bin/true", "x"])
        pairs = {(argv[i], argv[i + 2]) for i in range(len(argv) - 2) if argv[i].startswith("--")}
        self.assertIn(("--bind", "/workspace"), pairs)
        self.assertIn(("--ro-bind", sys.base_prefix), pairs)
        self.assertNotIn(("--ro-bind", "/etc"), pairs)
        self.assertNotIn(("--ro-bind-try", "/etc"), pairs)
        self.assertNotIn(("--ro-bind-try", "/etc/shadow"), pairs)
        self.assertIn(("--ro-bind-try", "/etc/ssl/certs"), pairs)

    def test_it_shares_the_network_only_when_asked(self) -> None:
        argv = sandbox.command(["/usr/bin/true"], workspace="/srv/ws", network=True)
        self.assertIn("--share-net", argv)
        self.assertNotIn("--unshare-net", argv)

    def test_secrets_never_go_on_the_command_line(self) -> None:
        argv = sandbox.command(["/usr/bin/true"], workspace="/srv/ws")
        self.assertNotIn("--setenv", argv)
        env = sandbox.environment({"API_KEY": "sk-live-1"}, lang="C.UTF-8")
        self.assertEqual(env, {"PATH": sandbox.SANDBOX_PATH, "HOME": "/workspace", "LANG": "C.UTF-8", "API_KEY": "sk-live-1"})

    def test_it_validates_read_only_paths(self) -> None:
        var = tempfile.mkdtemp(prefix="sbx-var-")
        self.addCleanup(shutil.rmtree, var, ignore_errors=True)
        self.assertEqual(sandbox.check_read_only_paths([sys.base_prefix + "/", " "]), [sys.base_prefix])
        refused = {
            "relative/path": "must be absolute",
            "/nonexistent/venv": "no such file or folder",
            "/etc": "may not be, contain or lie inside /etc",
            "/etc/ssl": "may not be, contain or lie inside /etc",
            "/": "may not be, contain or lie inside",
            "/root": "may not be or contain /root",
            var: f"may not be, contain or lie inside {Path(var).resolve()}",
            str(Path(var).parent): f"may not be, contain or lie inside {Path(var).resolve()}",
        }
        for path, message in refused.items():
            with self.subTest(path), self.assertRaises(sandbox.SandboxPathError) as ctx:
                sandbox.check_read_only_paths([path], forbidden=[var])
            self.assertIn(message, str(ctx.exception))
        with self.assertRaises(sandbox.SandboxPathError):
            sandbox.check_read_only_paths([str(settings.BASE_DIR)], forbidden_whole=[settings.BASE_DIR])
