from __future__ import annotations

import re

from sessionadmin import tokens
from sessionadmin.models import ApiToken, AuditEntry
from tests.base import BaseTestCase


class ApiTokenAdminTestCase(BaseTestCase):
    def test_it_creates_a_token_and_shows_the_plaintext_once(self) -> None:
        self.client.force_login(self.root)
        r = self.client.post(
            "/admin/sessionadmin/apitoken/add/",
            {"name": "runtime", "org": "acme", "expires_at_0": "", "expires_at_1": ""},
        )
        self.assertEqual(r.status_code, 200)
        self.assertIn("no-store", r["Cache-Control"])
        raw = re.search(r'<pre id="api-token"[^>]*>([^<]+)</pre>', r.content.decode()).group(1)  # type: ignore[union-attr]
        token = ApiToken.objects.get()
        self.assertEqual(tokens.authenticate(raw), token)
        self.assertEqual((token.org_id, token.created_by), ("acme", "root"))
        self.assertEqual(AuditEntry.objects.get(event_type="api_token_created").actor, "root")
        detail = self.client.get(f"/admin/sessionadmin/apitoken/{token.pk}/change/").content.decode()
        self.assertIn(token.prefix, detail)
        self.assertNotIn(token.token_hash, detail)
        self.assertNotIn(raw, detail)

    def test_it_lists_prefixes_never_hashes(self) -> None:
        token, _ = tokens.create_token(name="runtime", actor="root")
        self.client.force_login(self.root)
        page = self.client.get("/admin/sessionadmin/apitoken/").content.decode()
        self.assertIn(token.prefix, page)
        self.assertNotIn(token.token_hash, page)

    def test_it_revokes_with_the_action(self) -> None:
        token, raw = tokens.create_token(name="runtime", actor="root")
        self.client.force_login(self.root)
        r = self.client.post("/admin/sessionadmin/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]})
        self.assertEqual(r.status_code, 302)
        self.assertIsNone(tokens.authenticate(raw))
        self.assertEqual(AuditEntry.objects.get(event_type="api_token_revoked").actor, "root")

    def test_it_refuses_a_past_expiry(self) -> None:
        self.client.force_login(self.root)
        r = self.client.post(
            "/admin/sessionadmin/apitoken/add/",
            {"name": "runtime", "org": "", "expires_at_0": "2000-01-01", "expires_at_1": "00:00:00"},
        )
        self.assertContains(r, "The expiry must be in the future.")
        self.assertFalse(ApiToken.objects.exists())
