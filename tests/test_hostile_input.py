"""A table of hostile values thrown at every dashboard form, query parameter, path parameter and
admin filter/form: each answer is a 4xx or a page with a form error, never a 500. (The runtime
API has its own table in test_api_hostile_input.py.) Runs on SQLite and PostgreSQL: PostgreSQL
refuses NUL characters in text, which is where most 500s came from."""

from __future__ import annotations

from urllib.parse import quote

from django.test import override_settings

from sessionadmin.models import AgentSession, McpServer
from tests.base import BaseTestCase

# Each value as the browser would send it: already percent-encoded where it matters (a lone
# surrogate cannot be a Python str on the wire; its UTF-8-ish bytes are what arrives).
HOSTILE: list[tuple[str, str]] = [
    ("nul", "a%00b"),
    ("only-nul", "%00"),
    ("surrogate-bytes", "%ED%A0%80"),
    ("bad-utf8", "%FF%FE"),
    ("oversized", "x" * 5000),
    ("path-trick", quote("../../etc/passwd", safe="")),
    ("inf", "1e999"),
    ("nan", "NaN"),
    ("negative", "-1"),
    ("huge-int", "9" * 400),
    ("script", quote("<script>alert(1)</script>", safe="")),
    ("sql", quote("' OR 1=1 --", safe="")),
    ("percent", "%25"),
    ("rtl", quote("\u202eevil", safe="")),
    ("empty", ""),
    ("spaces", "%20%20"),
]


def _post_body(fields: dict[str, str]) -> str:
    """An urlencoded body whose values are already encoded (see HOSTILE)."""
    return "&".join(f"{quote(name)}={value}" for name, value in fields.items())


@override_settings(SESSIONADMIN_STDIO_COMMANDS=[])
class HostileInputTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("user-1", "acme")
        self.server = McpServer.objects.create(name="srv", transport="streamable_http", url="http://127.0.0.1:9/mcp")
        self.client.force_login(self.root)

    def assert_no_500(self, method: str, path: str, *, body: str | None = None, what: str) -> None:
        for name, value in HOSTILE:
            with self.subTest(what=what, value=name):
                url = path.replace("{v}", value)
                if method == "GET":
                    r = self.client.get(url)
                else:
                    r = self.client.generic(
                        method,
                        url,
                        (body or "").replace("{v}", value),
                        content_type="application/x-www-form-urlencoded",
                    )
                self.assertLess(r.status_code, 500, f"{method} {url[:200]} -> {r.status_code}")
                if "%00" in value and method == "GET":
                    self.assertIn(r.status_code, (400, 404), f"GET {url[:200]} with a NUL -> {r.status_code}")

    # --- query strings and path parameters ---------------------------------------------------

    def test_query_parameters_of_every_page(self) -> None:
        pages = {
            "sessions": "/?q={v}&org={v}&user={v}&status={v}&sort={v}&page={v}",
            "sessions polling": "/?q={v}&page={v}",
            "orgs": "/orgs/?x={v}",
            "maintenance": "/maintenance/?task={v}",
            "catalog": "/mcp/servers/?q={v}",
            "session page": f"/sessions/{self.session.id}/?tab={{v}}",
            "session mcp": f"/sessions/{self.session.id}/mcp/?x={{v}}",
            "session create": "/sessions/new/?org={v}",
            "login": "/accounts/login/?next={v}",
        }
        for what, path in pages.items():
            self.assert_no_500("GET", path, what=what)

    def test_path_parameters(self) -> None:
        for what, path in {
            "org edit": "/orgs/{v}/edit/",
            "session page": "/sessions/{v}/",
            "session kill": "/sessions/{v}/kill/",
            "mcp client": f"/sessions/{self.session.id}/mcp/{{v}}/refresh/",
            "mcp tool": f"/sessions/{self.session.id}/mcp/client/tools/{{v}}/",
            "catalog entry": "/mcp/servers/{v}/",
            "unknown page": "/{v}/",
        }.items():
            self.assert_no_500("GET", path, what=what)

    def test_admin_filters_search_and_dates(self) -> None:
        base = "/admin/sessionadmin/"
        for what, path in {
            "audit filters": base + "auditentry/?event_type={v}&actor={v}&org_id={v}",
            "audit search": base + "auditentry/?q={v}",
            "audit dates": base + "auditentry/?at__year={v}&at__month={v}&at__day={v}",
            "audit csv": base + "auditentry/export/?actor={v}&event_type={v}&q={v}",
            "audit ordering": base + "auditentry/?o={v}&p={v}",
            "sessions": base + "agentsession/?q={v}&status={v}",
            "orgs": base + "org/?q={v}",
            "layers": base + "promptlayer/?q={v}&scope={v}",
            "catalog": base + "mcpserver/?q={v}&transport={v}",
            "clients": base + "mcpclient/?q={v}",
            "runs": base + "maintenancerun/?q={v}&task={v}",
            "tokens": base + "apitoken/?q={v}&org__id__exact={v}",
        }.items():
            self.assert_no_500("GET", path, what=what)
        for what, path in {
            "org change": base + "org/{v}/change/",
            "session change": base + "agentsession/{v}/change/",
            "audit change": base + "auditentry/{v}/change/",
            "layer change": base + "promptlayer/{v}/change/",
            "catalog change": base + "mcpserver/{v}/change/",
            "token change": base + "apitoken/{v}/change/",
        }.items():
            self.assert_no_500("GET", path, what=what)

    # --- forms -----------------------------------------------------------------------------------

    def test_dashboard_forms(self) -> None:
        sid = self.session.id
        for what, (path, fields) in {
            "session create": ("/sessions/new/", {"org": "{v}", "user_id": "{v}", "variables": "{v}"}),
            "session create variables": ("/sessions/new/", {"org": "acme", "user_id": "u-2", "variables": "name={v}"}),
            "bulk kill": ("/sessions/kill/", {"ids": "{v}", "reason": "{v}", "next": "{v}"}),
            "bulk kill reason": ("/sessions/kill/", {"ids": str(sid), "reason": "{v}"}),
            "kill": (f"/sessions/{sid}/kill/", {"reason": "{v}"}),
            "pin": (f"/sessions/{sid}/pin/", {"until": "{v}", "reason": "{v}"}),
            "pin reason": (f"/sessions/{sid}/pin/", {"until": "2999-01-01T00:00", "reason": "{v}"}),
            "prompt": (f"/sessions/{sid}/prompt/", {"prompt": "{v}"}),
            "org create": (
                "/orgs/new/",
                {
                    "id": "{v}",
                    "name": "{v}",
                    "max_sessions": "{v}",
                    "max_sessions_per_user": "{v}",
                    "idle_timeout_seconds": "{v}",
                    "prompt": "{v}",
                },
            ),
            "org edit": (
                "/orgs/acme/edit/",
                {
                    "name": "{v}",
                    "max_sessions": "{v}",
                    "max_sessions_per_user": "{v}",
                    "idle_timeout_seconds": "{v}",
                    "prompt": "{v}",
                },
            ),
            "maintenance run": ("/maintenance/run/", {"task": "{v}"}),
            "mcp attach": (
                f"/sessions/{sid}/mcp/attach/",
                {"server": "{v}", "url": "{v}", "transport": "{v}", "client_id": "{v}"},
            ),
            "catalog create": (
                "/mcp/servers/new/",
                {
                    "name": "{v}",
                    "transport": "{v}",
                    "url": "{v}",
                    "command": "{v}",
                    "args_text": "{v}",
                    "headers_text": "{v}",
                    "env_text": "{v}",
                    "description": "{v}",
                },
            ),
            "login": ("/accounts/login/", {"username": "{v}", "password": "{v}"}),
        }.items():
            self.assert_no_500("POST", path, body=_post_body(fields), what=what)
        self.client.force_login(self.root)  # the login form logged us out

    def test_admin_forms(self) -> None:
        base = "/admin/sessionadmin/"
        for what, (path, fields) in {
            "org add": (base + "org/add/", {"id": "{v}", "name": "{v}", "max_sessions": "{v}", "prompt": "{v}"}),
            "org change": (base + "org/acme/change/", {"name": "{v}", "idle_timeout_seconds": "{v}", "prompt": "{v}"}),
            "layer add": (
                base + "promptlayer/add/",
                {"scope": "{v}", "org": "{v}", "user_id": "{v}", "name": "{v}", "body": "{v}", "priority": "{v}"},
            ),
            "token add": (base + "apitoken/add/", {"name": "{v}", "org": "{v}", "expires_at_0": "{v}", "expires_at_1": "{v}"}),
            "catalog add": (
                base + "mcpserver/add/",
                {"name": "{v}", "transport": "{v}", "url": "{v}", "command": "{v}", "args_text": "{v}", "headers_text": "{v}"},
            ),
            "session action": (
                base + "agentsession/",
                {"action": "{v}", "_selected_action": "{v}", "select_across": "{v}", "index": "{v}"},
            ),
            "audit action": (base + "auditentry/", {"action": "{v}", "_selected_action": "{v}"}),
        }.items():
            self.assert_no_500("POST", path, body=_post_body(fields), what=what)

    def test_an_over_long_user_id_is_refused_not_cut(self) -> None:
        self.client.force_login(self.alice)
        page = self.client.get("/sessions/new/")
        self.assertNotContains(page, "maxlength")  # the browser must not cut it silently
        r = self.client.post("/sessions/new/", {"org": "acme", "user_id": "u" * 500})
        self.assertEqual(r.status_code, 200)
        self.assertContains(r, "Ensure this value has at most 128 characters (it has 500).")
        self.assertFalse(AgentSession.objects.filter(user_id__startswith="uuu").exists())

    def test_nul_in_a_path_is_a_clear_400(self) -> None:
        r = self.client.get("/orgs/a%00b/edit/")
        self.assertEqual(r.status_code, 400)
        self.assertIn(b"NUL character", r.content)
        r = self.client.get("/api/v1/sessions?org_id=a%00b")
        self.assertEqual((r.status_code, r.json()["error"]["code"]), (400, "invalid_request"))
