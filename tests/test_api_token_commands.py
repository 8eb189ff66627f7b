from __future__ import annotations

from io import StringIO

from django.core.management import CommandError, call_command

from sessionadmin import tokens
from sessionadmin.models import ApiToken, AuditEntry
from tests.base import BaseTestCase


class CreateApiTokenCommandTestCase(BaseTestCase):
    def test_it_prints_the_token_once_on_stdout(self) -> None:
        out, err = StringIO(), StringIO()
        call_command(
            "create_api_token",
            "runtime",
            "--org",
            "acme",
            "--expires-in-days",
            "30",
            "--actor",
            "cli:ops",
            stdout=out,
            stderr=err,
        )
        raw = out.getvalue().strip()
        self.assertEqual(tokens.authenticate(raw), ApiToken.objects.get(name="runtime"))
        token = ApiToken.objects.get()
        self.assertEqual(token.org_id, "acme")
        self.assertIsNotNone(token.expires_at)
        self.assertIn(token.prefix, err.getvalue())
        self.assertEqual(AuditEntry.objects.get().actor, "cli:ops")

    def test_it_fails_for_an_unknown_org(self) -> None:
        with self.assertRaisesMessage(CommandError, "unknown org"):
            call_command("create_api_token", "runtime", "--org", "initech", stdout=StringIO(), stderr=StringIO())
        self.assertFalse(ApiToken.objects.exists())

    def test_it_fails_for_a_duplicate_name(self) -> None:
        tokens.create_token(name="runtime", actor="alice")
        with self.assertRaisesMessage(CommandError, "already exists"):
            call_command("create_api_token", "runtime", stdout=StringIO(), stderr=StringIO())


class RevokeApiTokenCommandTestCase(BaseTestCase):
    def test_it_revokes(self) -> None:
        _, raw = tokens.create_token(name="runtime", actor="alice")
        out = StringIO()
        call_command("revoke_api_token", "runtime", "--actor", "cli:ops", stdout=out)
        self.assertIn("revoked", out.getvalue())
        self.assertIsNone(tokens.authenticate(raw))
        self.assertEqual(AuditEntry.objects.get(event_type="api_token_revoked").actor, "cli:ops")

    def test_it_fails_for_an_unknown_name(self) -> None:
        with self.assertRaisesMessage(CommandError, "no token named"):
            call_command("revoke_api_token", "nope", stdout=StringIO())
