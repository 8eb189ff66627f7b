from __future__ import annotations

from datetime import UTC, datetime, timedelta

import time_machine
from django.test import Client

from sessionadmin import tokens
from tests.api_base import ApiTestCase

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class TokenAuthTestCase(ApiTestCase):
    def test_it_rejects_missing_malformed_and_unknown_tokens(self) -> None:
        for header in ("", "Bearer", "Bearer ", "Basic abc", "Bearer sat_00000000_nope", f"Token {self.raw['platform']}"):
            r = Client().get("/api/v1/sessions", headers={"Authorization": header} if header else {})
            self.assertEqual((r.status_code, r.json()["error"]["code"]), (401, "unauthorized"), header)

    def test_it_rejects_an_expired_token(self) -> None:
        _, raw = tokens.create_token(name="short", actor="root", expires_at=T0 + timedelta(hours=1), now=T0)
        with time_machine.travel(T0 + timedelta(minutes=30), tick=False):
            self.assertEqual(Client().get("/api/v1/sessions", headers={"Authorization": f"Bearer {raw}"}).status_code, 200)
        with time_machine.travel(T0 + timedelta(hours=1, seconds=1), tick=False):
            self.assertEqual(Client().get("/api/v1/sessions", headers={"Authorization": f"Bearer {raw}"}).status_code, 401)

    def test_it_rejects_a_revoked_token_at_once(self) -> None:
        self.assertEqual(self.api("GET", "/api/v1/sessions").status_code, 200)
        tokens.revoke_token(name="acme-runtime", actor="root")
        self.assertEqual(self.api("GET", "/api/v1/sessions").status_code, 401)

    def test_it_needs_no_csrf_token(self) -> None:
        client = Client(enforce_csrf_checks=True)
        r = client.post(
            "/api/v1/sessions",
            data='{"user_id": "user-1", "org_id": "acme"}',
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.raw['acme-runtime']}"},
        )
        self.assertEqual(r.status_code, 201)

    def test_a_logged_in_browser_session_is_not_a_token(self) -> None:
        client = Client()
        client.force_login(self.root)
        self.assertEqual(client.get("/api/v1/sessions").status_code, 401)


class ScopeIsolationTestCase(ApiTestCase):
    def test_each_org_token_sees_only_its_own_sessions(self) -> None:
        acme = self.create("user-1", "acme")
        globex = self.create("user-1", "globex")
        for token, mine, theirs in (("acme-runtime", acme, globex), ("globex-runtime", globex, acme)):
            for suffix in ("", "/system-prompt", "/activity"):
                method = "POST" if suffix == "/activity" else "GET"
                self.assertIn(self.api(method, f"/api/v1/sessions/{mine.id}{suffix}", token=token).status_code, (200, 204))
                r = self.api(method, f"/api/v1/sessions/{theirs.id}{suffix}", token=token)
                self.assertEqual(r.status_code, 404, (token, suffix))
            listed = [s["id"] for s in self.api("GET", "/api/v1/sessions", token=token).json()["sessions"]]
            self.assertEqual(listed, [str(mine.id)])

    def test_out_of_scope_and_unknown_sessions_look_the_same(self) -> None:
        globex = self.create("user-1", "globex")
        theirs = self.api("GET", f"/api/v1/sessions/{globex.id}")
        unknown = self.api("GET", "/api/v1/sessions/00000000-0000-0000-0000-000000000001")
        self.assertEqual((theirs.status_code, theirs.json()), (unknown.status_code, unknown.json()))
