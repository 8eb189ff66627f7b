"""Oversized MCP messages (sessionadmin.mcp_limits, and mcp_client's transports using it): cut
with a visible marker as they arrive, never held whole, answered for the same request id."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.test import SimpleTestCase

from sessionadmin import mcp_client, mcp_limits
from sessionadmin.mcp_client import Target
from sessionadmin.mcp_limits import LineSplitter, MessageBuffer, Oversized, Pending, SseSplitter, TopLevel
from tests.mcp_servers import HOSTILE_SCRIPT, SANDBOX_PATHS, RunningServer, hostile_command

FIFTY_MB = 50_000_000
RSS_BUDGET_MB = 100


def top_level(data: bytes, chunk: int) -> dict[str, Any] | None:
    top = TopLevel()
    for i in range(0, len(data), chunk):
        top.feed(data[i : i + chunk])
    return top.result()


def feed(splitter: LineSplitter | SseSplitter, data: bytes, chunk: int) -> list[bytes | Oversized]:
    out: list[bytes | Oversized] = []
    for i in range(0, len(data), chunk):
        out += splitter.feed(data[i : i + chunk])
    return out


class TopLevelTests(SimpleTestCase):
    def test_it_keeps_the_top_level_wherever_the_id_is(self) -> None:
        nested = {"content": [{"type": "text", "text": 'a "quoted" {brace} [bracket] \\ and \n'}], "isError": False}
        for message in (
            {"jsonrpc": "2.0", "id": 7, "result": nested},
            {"result": nested, "jsonrpc": "2.0", "id": "req-7"},
            {"jsonrpc": "2.0", "method": "notifications/message", "params": nested},
        ):
            data = json.dumps(message).encode()
            expected = {k: (None if isinstance(v, dict | list) else v) for k, v in message.items()}
            for chunk in (1, 2, 3, 7, 64, len(data)):
                with self.subTest(message=list(message), chunk=chunk):
                    self.assertEqual(top_level(data, chunk), expected)

    def test_it_ignores_what_comes_before_the_object(self) -> None:
        self.assertEqual(top_level(b'data: {"id": 3, "result": {"a": "}"}}', 5), {"id": 3, "result": None})

    def test_long_top_level_strings_are_kept_empty(self) -> None:
        data = json.dumps({"junk": "z" * 10_000 + '\\"', "id": 4}).encode()
        self.assertEqual(top_level(data, 100), {"junk": "", "id": 4})

    def test_an_unreadable_message_has_no_top_level(self) -> None:
        self.assertIsNone(top_level(b'{"id": 1, "result": {"unfinished', 10))
        self.assertIsNone(top_level(b"[1, 2, 3]", 10))
        many_keys = b"{" + b",".join(b'"k%d": 1' % i for i in range(20_000)) + b"}"
        self.assertIsNone(top_level(many_keys, 4096))


class SplitterTests(SimpleTestCase):
    def test_lines_up_to_the_limit_pass_whole_and_longer_ones_are_followed(self) -> None:
        small = b'{"jsonrpc": "2.0", "id": 1, "result": {}}'
        big = json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"text": "x" * 5000}}).encode()
        out = feed(LineSplitter(1000), small + b"\n\n" + big + b"\n" + small + b"\n", 333)
        self.assertEqual(out, [small, Oversized(len(big), {"jsonrpc": "2.0", "id": 2, "result": None}), small])

    def test_sse_events_up_to_the_limit_pass_whole_and_longer_ones_are_followed(self) -> None:
        small = b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\r\n\r\n'
        big = b"id: 9\rdata: " + json.dumps({"result": {"x": "y" * 5000}, "jsonrpc": "2.0", "id": 2}).encode() + b"\r\r"
        for chunk in (1, 2, 50, 10_000):
            with self.subTest(chunk=chunk):
                splitter = SseSplitter(1000)
                out = feed(splitter, small + big + small, chunk) + splitter.flush()
                normalized = b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'
                self.assertEqual(out[0], normalized)
                self.assertIsInstance(out[1], Oversized)
                self.assertEqual(out[1].top, {"result": None, "jsonrpc": "2.0", "id": 2})  # type: ignore[union-attr]
                self.assertEqual(out[2:], [normalized])

    def test_a_buffer_never_keeps_more_than_its_limit(self) -> None:
        buffer = MessageBuffer(100)
        buffer.add(b'{"id": 5, "result": "' + b"x" * 99)
        for _ in range(1000):
            buffer.add(b"x" * 1000)
            self.assertEqual(len(buffer._buffer), 0)
        buffer.add(b'"}')
        self.assertEqual(buffer.finish(), Oversized(1_000_122, {"id": 5, "result": ""}))


class ReplacementTests(SimpleTestCase):
    def test_a_tool_result_becomes_a_marked_result_for_the_same_id(self) -> None:
        pending = Pending()
        pending.add(7, "tools/call")
        stand_in = mcp_limits.replacement(Oversized(52_000_000, {"jsonrpc": "2.0", "id": 7, "result": None}), pending, 4_194_304)
        assert stand_in is not None
        self.assertEqual(stand_in["id"], 7)
        self.assertTrue(stand_in["result"]["isError"])
        self.assertEqual(
            stand_in["result"]["content"][0]["text"],
            "[result cut: the MCP server sent 52,000,000 bytes, more than the limit of 4,194,304 bytes; the rest was dropped]",
        )
        self.assertIsNone(pending.pop(7))

    def test_other_answers_become_an_error_for_the_same_id(self) -> None:
        pending = Pending()
        pending.add("list-1", "tools/list")
        stand_in = mcp_limits.replacement(Oversized(9_000_000, {"id": "list-1", "result": None}), pending, 4_194_304)
        assert stand_in is not None
        self.assertEqual(stand_in["error"]["code"], mcp_limits.INTERNAL_ERROR)
        self.assertIn("answer to tools/list was 9,000,000 bytes", stand_in["error"]["message"])

    def test_what_answers_nothing_is_dropped(self) -> None:
        pending = Pending()
        pending.add(1, "tools/call")
        pending.add(2, "tools/call")
        self.assertIsNone(mcp_limits.replacement(Oversized(10, {"method": "notifications/message", "params": None}), pending, 5))
        self.assertIsNone(mcp_limits.replacement(Oversized(10, {"id": 99, "result": None}), pending, 5))
        self.assertIsNone(mcp_limits.replacement(Oversized(10, None), pending, 5))  # two waiting: which one?

    def test_an_unreadable_answer_goes_to_the_only_waiting_request(self) -> None:
        pending = Pending()
        pending.add(3, "tools/call")
        stand_in = mcp_limits.replacement(Oversized(10, None), pending, 5)
        self.assertEqual(stand_in and stand_in["id"], 3)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident size of this process, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS


class OversizedResultTests(SimpleTestCase):
    """A 50 MB tool result over each transport: cut with the marker, and the peak RSS of this
    process (the one making the call) stays within 100 MB of its idle size."""

    def setUp(self) -> None:
        super().setUp()
        self.workspace = tempfile.mkdtemp(prefix="sbx-limits-")
        self.addCleanup(shutil.rmtree, self.workspace, ignore_errors=True)

    def assert_cut_within_budget(self, target: Target, tool: str, size: int) -> None:
        mcp_client.call_tool(target, tool, {"size": 1000}, timeout=60)  # warm: imports, TLS, first connection
        reset_peak()
        idle, _ = rss_mb()
        result = mcp_client.call_tool(target, tool, {"size": size}, timeout=120)
        _, peak = rss_mb()
        self.assertTrue(result.is_error)
        [text] = result.text
        self.assertTrue(text.startswith(mcp_limits.CUT_MARKER), text)
        sent = int(text.split("sent ")[1].split(" bytes")[0].replace(",", ""))
        self.assertGreater(sent, size)
        self.assertLess(peak - idle, RSS_BUDGET_MB, f"idle {idle:.0f} MB, peak {peak:.0f} MB")

    def stdio(self, mode: str) -> Target:
        command, args = hostile_command(mode)
        return Target("stdio", command=command, args=tuple(args), cwd=self.workspace, read_only_paths=SANDBOX_PATHS)

    def test_a_50_mb_result_over_stdio_is_cut(self) -> None:
        self.assert_cut_within_budget(self.stdio("stdio"), "big", FIFTY_MB)

    def test_a_50_mb_result_with_its_id_last_is_cut_and_an_oversized_notification_dropped(self) -> None:
        # raw-stdio sends a 50 MB log notification first, then the answer with "id" after "result".
        with self.assertLogs("sessionadmin.mcp_client", "WARNING") as logs:
            self.assert_cut_within_budget(self.stdio("raw-stdio"), "big_id_last", FIFTY_MB)
        self.assertIn("that was no answer to a request", logs.output[-1])

    def test_a_50_mb_result_over_streamable_http_is_cut(self) -> None:
        server = RunningServer("streamable-http", script=HOSTILE_SCRIPT)
        self.addCleanup(server.stop)
        self.assert_cut_within_budget(Target("streamable_http", url=server.url, allowed_hosts=("127.0.0.1",)), "big", FIFTY_MB)

    def test_a_50_mb_result_over_sse_is_cut(self) -> None:
        server = RunningServer("sse", script=HOSTILE_SCRIPT)
        self.addCleanup(server.stop)
        self.assert_cut_within_budget(Target("sse", url=server.url, allowed_hosts=("127.0.0.1",)), "big", FIFTY_MB)

    def test_results_within_the_limit_arrive_whole(self) -> None:
        server = RunningServer("streamable-http", script=HOSTILE_SCRIPT)
        self.addCleanup(server.stop)
        for target in (self.stdio("stdio"), Target("streamable_http", url=server.url, allowed_hosts=("127.0.0.1",))):
            with self.subTest(target.transport):
                result = mcp_client.call_tool(target, "big", {"size": 1_000_000}, timeout=60)
                self.assertEqual(result.text, ["x" * 1_000_000])
                self.assertFalse(result.is_error)

    def test_the_limit_is_the_targets(self) -> None:
        target = Target(
            "stdio", command=self.stdio("stdio").command, args=self.stdio("stdio").args, read_only_paths=SANDBOX_PATHS
        )
        small = Target(**{**target.__dict__, "max_result_bytes": 100_000})
        self.assertEqual(mcp_client.call_tool(target, "big", {"size": 200_000}, timeout=60).text, ["x" * 200_000])
        cut = mcp_client.call_tool(small, "big", {"size": 200_000}, timeout=60)
        self.assertIn("more than the limit of 100,000 bytes", cut.text[0])

    def test_an_oversized_listing_is_a_clear_error(self) -> None:
        with self.assertRaises(mcp_client.McpError) as ctx:
            mcp_client.inspect(Target(**{**self.stdio("stdio").__dict__, "max_result_bytes": 500}), timeout=60)
        self.assertIn("more than the limit of 500 bytes", str(ctx.exception))
