from __future__ import annotations

from datetime import UTC, datetime, timedelta

import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessionadmin import tokens
from sessionadmin.models import ApiToken, AuditEntry
from tests.base import BaseTestCase

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class CreateTokenTestCase(BaseTestCase):
    def test_it_returns_plaintext_once_and_stores_only_a_hash(self) -> None:
        token, raw = tokens.create_token(name="runtime", actor="alice", org=self.org)
        row = ApiToken.objects.get()
        self.assertTrue(raw.startswith("sat_"))
        self.assertEqual(row.prefix, raw[:12])
        self.assertEqual(row.token_hash, tokens.hash_token(raw))
        self.assertNotIn(raw, row.token_hash)
        self.assertEqual(row.org_id, "acme")
        self.assertEqual(token.actor, "token:runtime")

    def test_it_audits_creation_without_the_secret(self) -> None:
        _, raw = tokens.create_token(name="runtime", actor="alice")
        entry = AuditEntry.objects.get()
        self.assertEqual((entry.event_type, entry.actor), ("api_token_created", "alice"))
        self.assertEqual(entry.details["name"], "runtime")
        self.assertNotIn(raw[12:], str(entry.details))
        self.assertNotIn(tokens.hash_token(raw), str(entry.details))

    def test_it_refuses_duplicate_and_empty_names(self) -> None:
        tokens.create_token(name="runtime", actor="alice")
        with self.assertRaisesMessage(tokens.TokenError, "already exists"):
            tokens.create_token(name="runtime", actor="alice")
        with self.assertRaisesMessage(tokens.TokenError, "needs a name"):
            tokens.create_token(name="  ", actor="alice")
        self.assertEqual(AuditEntry.objects.count(), 1)

    def test_it_refuses_an_expiry_in_the_past(self) -> None:
        with self.assertRaisesMessage(tokens.TokenError, "future"):
            tokens.create_token(name="runtime", actor="alice", expires_at=T0, now=T0)


class AuthenticateTestCase(BaseTestCase):
    def test_it_accepts_the_token_and_rejects_lookalikes(self) -> None:
        token, raw = tokens.create_token(name="runtime", actor="alice")
        self.assertEqual(tokens.authenticate(raw), token)
        self.assertIsNone(tokens.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")))
        self.assertIsNone(tokens.authenticate(raw[:12]))
        self.assertIsNone(tokens.authenticate(""))
        self.assertIsNone(tokens.authenticate("x" * 5000))

    def test_it_rejects_an_expired_token(self) -> None:
        _, raw = tokens.create_token(name="runtime", actor="alice", expires_at=T0 + timedelta(hours=1), now=T0)
        self.assertIsNotNone(tokens.authenticate(raw, now=T0 + timedelta(minutes=59)))
        self.assertIsNone(tokens.authenticate(raw, now=T0 + timedelta(hours=1)))

    def test_it_rejects_a_revoked_token(self) -> None:
        _, raw = tokens.create_token(name="runtime", actor="alice")
        tokens.revoke_token(name="runtime", actor="bob")
        self.assertIsNone(tokens.authenticate(raw))

    def test_it_writes_last_used_at_once_per_resolution(self) -> None:
        _, raw = tokens.create_token(name="runtime", actor="alice", now=T0)
        with time_machine.travel(T0, tick=False):
            with CaptureQueriesContext(connection) as first:
                tokens.authenticate(raw)
            with CaptureQueriesContext(connection) as second:
                tokens.authenticate(raw)
        with time_machine.travel(T0 + timedelta(seconds=tokens.LAST_USED_RESOLUTION_SECONDS + 1), tick=False):
            with CaptureQueriesContext(connection) as later:
                tokens.authenticate(raw)
        updates = [sum(q["sql"].startswith("UPDATE") for q in c.captured_queries) for c in (first, second, later)]
        self.assertEqual(updates, [1, 0, 1])
        self.assertEqual(ApiToken.objects.get().last_used_at, T0 + timedelta(seconds=tokens.LAST_USED_RESOLUTION_SECONDS + 1))

    def test_it_reads_one_row_when_recently_used(self) -> None:
        _, raw = tokens.create_token(name="runtime", actor="alice")
        tokens.authenticate(raw)
        # 1. SELECT the usable token by prefix (no write: last_used_at is fresh)
        with self.assertNumQueries(1):
            tokens.authenticate(raw)


class RevokeTokenTestCase(BaseTestCase):
    def test_it_revokes_and_audits_once(self) -> None:
        tokens.create_token(name="runtime", actor="alice", org=self.org)
        with time_machine.travel(T0, tick=False):
            token = tokens.revoke_token(name="runtime", actor="bob")
            tokens.revoke_token(name="runtime", actor="bob")
        self.assertEqual(token.revoked_at, T0)
        entries = list(AuditEntry.objects.filter(event_type="api_token_revoked"))
        self.assertEqual([(e.actor, e.org_id) for e in entries], [("bob", "acme")])

    def test_it_raises_for_an_unknown_name(self) -> None:
        with self.assertRaises(tokens.TokenNotFound):
            tokens.revoke_token(name="nope", actor="bob")
