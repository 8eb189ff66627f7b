"""What a tool result may carry out of the gateway (``sessionadmin/gateway/results.py``)."""

from __future__ import annotations

import mcp_types as types
from django.test import SimpleTestCase

from sessionadmin.gateway.results import present
from sessionadmin.redaction import Redactor


class ResultTests(SimpleTestCase):
    def test_it_redacts_whole_secrets_and_their_long_parts_everywhere(self) -> None:
        result = types.CallToolResult(
            content=[types.TextContent(type="text", text="invalid api token: SECRET-HDR-123456 (Bearer SECRET-HDR-123456)")],
            structured_content={"echo": "Bearer SECRET-HDR-123456", "short": "Bearer"},
            is_error=True,
        )
        shown = present(result, Redactor(["Bearer SECRET-HDR-123456"]), max_bytes=10_000)
        self.assertEqual(shown.content[0].text, "invalid api token: [redacted] ([redacted])")
        self.assertEqual(shown.structured_content, {"echo": "[redacted]", "short": "Bearer"})
        self.assertTrue(shown.is_error)

    def test_it_cuts_a_result_over_the_limit_with_a_marker(self) -> None:
        result = types.CallToolResult(content=[types.TextContent(type="text", text="x" * 50_000)], structured_content={"n": 1})
        shown = present(result, Redactor(), max_bytes=1_000)
        self.assertLess(len(shown.content[0].text), 1_000)
        self.assertIn("[result cut: ", shown.content[0].text)
        self.assertIsNone(shown.structured_content)
