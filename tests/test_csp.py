"""The Content-Security-Policy (issue 11, item 8): every response carries the strict policy, and
no page has what the policy would refuse (inline scripts, style attributes, event handler
attributes). tests/browser/test_csp.py checks the same in a real browser."""

from __future__ import annotations

import re

from django.test import override_settings
from django.urls import reverse

from sessionadmin import mcp_services
from sessionadmin.models import McpServer
from tests.base import BaseTestCase

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
STYLE_ATTRIBUTE = re.compile(r"<[a-z][^>]*\sstyle\s*=", re.IGNORECASE)
STYLE_ELEMENT = re.compile(r"<style[\s>]", re.IGNORECASE)
HANDLER_ATTRIBUTE = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.IGNORECASE)


def directives(header: str) -> dict[str, str]:
    return {part.split()[0]: " ".join(part.split()[1:]) for part in header.split(";") if part.strip()}


class CspTests(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u1", "acme", actor="alice")
        self.entry = mcp_services.save_server(
            McpServer(name="remote", transport="streamable_http", url="http://127.0.0.1:9/mcp"), actor="dave"
        )
        self.root.is_staff = True
        self.root.save(update_fields=["is_staff"])

    def assert_strict(self, response: object, url: str) -> None:
        header = response["Content-Security-Policy"]  # type: ignore[index]
        got = directives(header)
        for name, sources in POLICY.items():
            self.assertEqual(got.get(name), sources, f"{name} on {url}")
        self.assertNotIn("unsafe-inline", header)
        self.assertNotIn("unsafe-eval", header)

    def assert_clean_html(self, html: str, url: str) -> None:
        for pattern in (INLINE_SCRIPT, STYLE_ATTRIBUTE, STYLE_ELEMENT, HANDLER_ATTRIBUTE):
            match = pattern.search(html)
            self.assertIsNone(match, f"{url}: {match.group(0) if match else ''}")

    def test_every_dashboard_page_is_strict_and_has_nothing_inline(self) -> None:
        pages = [
            reverse("session_list"),
            reverse("session_create"),
            reverse("session_detail", args=[self.session.id]),
            reverse("session_mcp", args=[self.session.id]),
            reverse("org_list"),
            reverse("org_edit", args=["acme"]),
            reverse("maintenance"),
            reverse("mcp_server_list"),
            reverse("mcp_server_create"),
            reverse("mcp_server_edit", args=[self.entry.pk]),
        ]
        self.client.force_login(self.root)
        for url in pages:
            for headers in ({}, {"HX-Request": "true"}):
                response = self.client.get(url, headers=headers)
                self.assertEqual(response.status_code, 200, url)
                self.assert_strict(response, url)
                self.assert_clean_html(response.content.decode(), url)

    def test_the_login_page_admin_api_and_errors_are_strict_too(self) -> None:
        login = self.client.get(reverse("login"))
        self.assert_strict(login, "login")
        self.assert_clean_html(login.content.decode(), "login")
        self.assert_strict(self.client.get(reverse("healthz")), "healthz")
        self.client.force_login(self.root)
        for url in (
            reverse("admin:index"),
            reverse("admin:sessionadmin_auditentry_changelist"),
            reverse("admin:sessionadmin_mcpserver_add"),
            reverse("admin:sessionadmin_agentsession_change", args=[self.session.pk]),
        ):
            response = self.client.get(url)
            self.assertEqual(response.status_code, 200, url)
            self.assert_strict(response, url)
            self.assert_clean_html(response.content.decode(), url)
        self.assert_strict(self.client.get("/no/such/page/"), "404")

    def test_the_api_token_page_of_the_admin_has_no_inline_style(self) -> None:
        self.client.force_login(self.root)
        response = self.client.post(reverse("admin:sessionadmin_apitoken_add"), {"name": "ci"})
        self.assertContains(response, '<pre id="api-token">')
        self.assert_clean_html(response.content.decode(), "token created")

    def test_meters_carry_their_width_as_data(self) -> None:
        self.client.force_login(self.alice)
        with override_settings(SESSIONADMIN_MAX_CONCURRENT=4):
            self.assertContains(self.client.get(reverse("session_list")), 'data-width="25"')

    def test_htmx_is_configured_for_the_policy(self) -> None:
        self.client.force_login(self.alice)
        html = self.client.get(reverse("session_list")).content.decode()
        config = '{"includeIndicatorStyles": false, "allowEval": false, "allowScriptTags": false}'
        self.assertIn(f"""<meta name="htmx-config" content='{config}'>""", html)
