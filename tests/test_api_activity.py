from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import time_machine
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import resolve

from sessionadmin import api, lifecycle, tokens
from sessionadmin.models import AgentSession, ApiToken, AuditEntry
from tests.api_base import ApiTestCase

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RESOLUTION = 30  # SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS


class ActivityTestCase(ApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        with time_machine.travel(T0, tick=False):
            self.session = self.create()
        self.url = f"/api/v1/sessions/{self.session.id}/activity"

    def session_updates(self, at: datetime) -> int:
        with time_machine.travel(at, tick=False), CaptureQueriesContext(connection) as ctx:
            r = self.api("POST", self.url)
        self.assertEqual(r.status_code, 204)
        self.assertFalse(r.has_header("Content-Type"))  # no body, so no type (not text/html)
        return sum(q["sql"].startswith("UPDATE") and "sessionadmin_agentsession" in q["sql"] for q in ctx.captured_queries)

    def test_it_writes_at_most_once_per_resolution_window(self) -> None:
        writes = [
            self.session_updates(T0 + timedelta(seconds=s))
            for s in (1, 10, RESOLUTION - 1, RESOLUTION + 1, RESOLUTION + 2, 2 * RESOLUTION, 2 * RESOLUTION + 2)
        ]
        self.assertEqual(writes, [0, 0, 0, 1, 0, 0, 1])
        self.session.refresh_from_db()
        self.assertEqual(self.session.last_active_at, T0 + timedelta(seconds=2 * RESOLUTION + 2))

    def test_a_heartbeat_within_the_window_is_one_read(self) -> None:
        with time_machine.travel(T0 + timedelta(seconds=1), tick=False):
            self.api("POST", self.url)  # the token's last_used_at is written here, once
            # 1. SELECT the usable token by prefix LEFT JOIN the active, in-scope session
            with self.assertNumQueries(1):
                self.api("POST", self.url)

    def test_it_writes_the_tokens_last_use_coalesced(self) -> None:
        with time_machine.travel(T0 + timedelta(seconds=1), tick=False):
            self.api("POST", self.url)
        with time_machine.travel(T0 + timedelta(seconds=5), tick=False):
            self.api("POST", self.url)
        self.acme_token.refresh_from_db()
        self.assertEqual(self.acme_token.last_used_at, T0 + timedelta(seconds=1))

    def test_it_is_401_for_bad_expired_and_revoked_tokens(self) -> None:
        self.assertEqual(self.api("POST", self.url, token=None).status_code, 401)
        self.assertEqual(self.api("POST", "/api/v1/sessions/nope/activity", token=None).status_code, 401)
        r = self.client.post(self.url, headers={"Authorization": "Bearer " + self.raw["acme-runtime"][:-2] + "xx"})
        self.assertEqual(r.status_code, 401)
        _, raw = tokens.create_token(name="short", actor="root", expires_at=T0 + timedelta(hours=1), now=T0)
        with time_machine.travel(T0 + timedelta(hours=2), tick=False):
            self.assertEqual(self.client.post(self.url, headers={"Authorization": f"Bearer {raw}"}).status_code, 401)
        tokens.revoke_token(name="acme-runtime", actor="root")
        self.assertEqual(self.api("POST", self.url).status_code, 401)

    def test_it_is_404_for_unknown_other_org_and_ended_sessions(self) -> None:
        theirs = self.create("user-1", "globex")
        ended = self.create("user-2")
        self.manager().cleanup_session(ended.id, actor="test")
        for sid in (uuid.UUID(int=1), "nope", theirs.id, ended.id):
            r = self.api("POST", f"/api/v1/sessions/{sid}/activity")
            self.assertEqual(r.status_code, 404, sid)
        with time_machine.travel(T0 + timedelta(hours=1), tick=False):
            self.api("POST", f"/api/v1/sessions/{theirs.id}/activity")
        theirs.refresh_from_db()
        self.assertNotEqual(theirs.last_active_at, T0 + timedelta(hours=1))

    def test_it_writes_no_audit_entry(self) -> None:
        before = AuditEntry.objects.count()
        with time_machine.travel(T0 + timedelta(hours=1), tick=False):
            self.assertEqual(self.api("POST", self.url).status_code, 204)
        self.assertEqual(AuditEntry.objects.count(), before)
        self.assertEqual(AgentSession.objects.get(pk=self.session.pk).last_active_at, T0 + timedelta(hours=1))

    def test_it_is_405_for_get(self) -> None:
        self.assertEqual(self.api("GET", self.url).status_code, 405)


class HeartbeatLookupTestCase(ApiTestCase):
    """The heartbeat's one-SELECT lookup (``api.heartbeat_lookup``) is a second implementation of
    ``tokens.authenticate`` + ``sessions_of(token).active()``: it must accept and refuse exactly
    the same tokens, see exactly the same sessions and agree on what is stale."""

    def lookup(self, raw: str, session_id: object) -> api.Heartbeat | None:
        request = RequestFactory().post(f"/api/v1/sessions/{session_id}/activity")
        request.resolver_match = resolve(request.path)
        return api.heartbeat_lookup(request, raw)

    def test_it_accepts_and_refuses_exactly_what_the_generic_path_does(self) -> None:
        with time_machine.travel(T0, tick=False):
            sessions: dict[str, object] = {
                "mine": self.create("user-1", "acme").id,
                "other org": self.create("user-1", "globex").id,
                "terminating": self.create("user-2").id,
                "ended": self.create("user-3").id,
                "unknown": uuid.UUID(int=1),
                "malformed": "nope",
            }
            lifecycle.end(session_ids=[sessions["terminating"]], actor="test", reason="", enqueue=False)  # type: ignore[list-item]
            self.manager().cleanup_session(sessions["ended"], actor="test")  # type: ignore[arg-type]
            _, expiring = tokens.create_token(name="expiring", actor="root", expires_at=T0 + timedelta(hours=2), now=T0)
            _, revoked = tokens.create_token(name="revoked", actor="root", now=T0)
            tokens.revoke_token(name="revoked", actor="root", now=T0)
        valid = self.raw["acme-runtime"]
        raws = {
            "scoped": valid,
            "unscoped": self.raw["platform"],
            "other org's token": self.raw["globex-runtime"],
            "expiring": expiring,
            "revoked": revoked,
            "wrong secret": valid[:-3] + ("aaa" if not valid.endswith("aaa") else "bbb"),
            "wrong prefix": "sat_00000000" + valid[12:],
            "another token's prefix": self.raw["platform"][:12] + valid[12:],
            "no scheme": valid[4:],
            "scheme only": "sat_",
            "upper-case scheme": "SAT" + valid[3:],
            "too long": valid + "a" * 200,
            "NUL": valid[:-1] + "\x00",
            "lone surrogate": valid[:-1] + "\ud800",
            "empty": "",
        }
        resolution = timedelta(seconds=RESOLUTION)
        # Either side of the activity window and of the token's expiry, boundaries included.
        for at in (T0 + resolution, T0 + resolution + timedelta(seconds=1), T0 + timedelta(hours=2), T0 + timedelta(hours=3)):
            for label, raw in raws.items():
                for name, sid in sessions.items():
                    with self.subTest(at=at, token=label, session=name), time_machine.travel(at, tick=False):
                        fast = self.lookup(raw, sid)
                        token = ApiToken.objects.usable(at).filter(prefix=raw[:12]).first()
                        token_stale = token is not None and (
                            token.last_used_at is None or token.last_used_at < at - timedelta(minutes=1)
                        )
                        generic = tokens.authenticate(raw)
                        self.assertEqual(fast is not None, generic is not None)
                        if fast is None or generic is None:
                            continue
                        visible = api.sessions_of(generic).active().filter(pk=sid).first() if name != "malformed" else None
                        self.assertEqual(fast.token_id, generic.pk)
                        self.assertEqual(fast.token_stale, token_stale)
                        self.assertEqual(fast.session_found, visible is not None)
                        self.assertEqual(fast.session_stale, visible is not None and visible.last_active_at < at - resolution)
