"""Tool call forms generated from input schemas: nested values get fields when simple."""

from __future__ import annotations

from django.test import SimpleTestCase

from sessionadmin.mcp_forms import ToolCallForm

# As mcp-server-git and pydantic write them: an optional object of plain values, an optional
# string (anyOf with null), a list of strings, and something deeper.
SCHEMA = {
    "type": "object",
    "properties": {
        "repo": {"type": "string"},
        "since": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": "Since"},
        "window": {
            "type": "object",
            "title": "Window",
            "properties": {
                "start": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"enum": ["h", "d"]},
                "inclusive": {"type": "boolean"},
            },
            "required": ["start"],
        },
        "paths": {"type": "array", "items": {"type": "string"}},
        "weights": {"type": "array", "items": {"type": "number"}},
        "deep": {"type": "object", "properties": {"inner": {"type": "object", "properties": {"x": {"type": "string"}}}}},
    },
    "required": ["repo"],
}


class ToolCallFormTests(SimpleTestCase):
    def test_it_gives_simple_nested_values_their_own_fields(self) -> None:
        form = ToolCallForm(SCHEMA)
        self.assertEqual(
            list(form.fields),
            [
                "arg_repo", "arg_since", "arg_window__start", "arg_window__days", "arg_window__unit",
                "arg_window__inclusive", "arg_paths", "arg_weights", "arg_deep",
            ],
        )  # fmt: skip
        self.assertEqual(form.fields["arg_window__days"].label, "Window / days")
        self.assertIn("One string per line.", form.fields["arg_paths"].help_text)
        self.assertEqual(form.kinds["deep"], "json")

    def test_it_builds_the_arguments(self) -> None:
        data = {
            "arg_repo": "/r",
            "arg_since": "2026-01-01",
            "arg_window__start": "today",
            "arg_window__days": "3",
            "arg_window__unit": "d",
            "arg_window__inclusive": "on",
            "arg_paths": "a.py\n\nb.py\n",
            "arg_weights": "1.5\n2",
            "arg_deep": '{"inner": {"x": "y"}}',
        }
        form = ToolCallForm(SCHEMA, data)
        self.assertTrue(form.is_valid(), form.errors)
        self.assertEqual(
            form.arguments(),
            {
                "repo": "/r",
                "since": "2026-01-01",
                "window": {"start": "today", "days": 3, "unit": "d", "inclusive": True},
                "paths": ["a.py", "b.py"],
                "weights": [1.5, 2.0],
                "deep": {"inner": {"x": "y"}},
            },
        )

    def test_it_leaves_out_optional_nested_values_left_empty(self) -> None:
        form = ToolCallForm(SCHEMA, {"arg_repo": "/r"})
        self.assertTrue(form.is_valid(), form.errors)
        self.assertEqual(form.arguments(), {"repo": "/r"})

    def test_it_reports_a_bad_list_item(self) -> None:
        form = ToolCallForm(SCHEMA, {"arg_repo": "/r", "arg_weights": "1\nlots"})
        self.assertFalse(form.is_valid())
        self.assertEqual(form.errors["arg_weights"], ["Not a number: lots"])
