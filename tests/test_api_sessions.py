from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from unittest import mock

import time_machine

from sessionadmin.api import MAX_BODY_BYTES
from sessionadmin.models import AgentSession, AuditEntry
from sessionadmin.workspaces import WorkspaceError
from tests.api_base import ApiTestCase

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class CreateSessionTestCase(ApiTestCase):
    def test_it_creates_a_session_audited_as_the_token(self) -> None:
        r = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "acme", "variables": {"team": "core", "n": 3}})
        self.assertEqual(r.status_code, 201)
        body = r.json()
        session = AgentSession.objects.get()
        self.assertEqual(body["id"], str(session.id))
        self.assertEqual(r["Location"], f"/api/v1/sessions/{session.id}")
        self.assertEqual((body["user_id"], body["org_id"], body["status"]), ("user-1", "acme", "active"))
        self.assertEqual(body["variables"], {"team": "core", "n": "3"})
        self.assertEqual(session.created_by, "token:acme-runtime")
        self.assertEqual(AuditEntry.objects.get(event_type="session_created").actor, "token:acme-runtime")
        self.assertNotIn("system_prompt", body)

    def test_it_returns_field_errors_for_invalid_ids_and_variables(self) -> None:
        r = self.api("POST", "/api/v1/sessions", {"user_id": "../etc", "org_id": 7, "variables": {"user_id": "x"}})
        self.assertEqual(r.status_code, 400)
        error = r.json()["error"]
        self.assertEqual(error["code"], "invalid_request")
        self.assertEqual(set(error["fields"]), {"user_id", "org_id", "variables"})
        self.assertFalse(AgentSession.objects.exists())

    def test_it_requires_user_and_org(self) -> None:
        r = self.api("POST", "/api/v1/sessions", {})
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["fields"], {"user_id": "this field is required", "org_id": "this field is required"})

    def test_it_rejects_null_variables(self) -> None:
        r = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "acme", "variables": None})
        self.assertEqual(r.status_code, 400)
        self.assertEqual(list(r.json()["error"]["fields"]), ["variables"])

    def test_it_answers_unknown_and_out_of_scope_orgs_alike(self) -> None:
        unknown = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "initech"})
        other = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "globex"})
        self.assertEqual((unknown.status_code, other.status_code), (400, 400))
        self.assertEqual(unknown.json(), other.json())
        self.assertEqual(unknown.json()["error"]["fields"], {"org_id": "unknown org"})
        self.assertFalse(AgentSession.objects.exists())

    def test_it_lets_an_unscoped_token_create_in_any_org(self) -> None:
        r = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "globex"}, token="platform")
        self.assertEqual(r.status_code, 201)
        self.assertEqual(AgentSession.objects.get().org_id, "globex")

    def test_it_returns_429_with_retry_after_and_the_full_limit(self) -> None:
        self.org.max_sessions_per_user = 1
        self.org.save(update_fields=["max_sessions_per_user"])
        self.assertEqual(self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "acme"}).status_code, 201)
        r = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "acme"})
        self.assertEqual(r.status_code, 429)
        self.assertEqual(r["Retry-After"], "30")
        error = r.json()["error"]
        self.assertEqual(error["code"], "max_sessions_reached")
        self.assertEqual(error["limit"], {"scope": "user", "current": 1, "maximum": 1})
        self.assertEqual(AgentSession.objects.count(), 1)

    def test_it_reports_the_org_limit(self) -> None:
        self.org.max_sessions = 1
        self.org.save(update_fields=["max_sessions"])
        self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "acme"})
        r = self.api("POST", "/api/v1/sessions", {"user_id": "user-2", "org_id": "acme"})
        self.assertEqual(r.status_code, 429)
        self.assertEqual(r.json()["error"]["limit"]["scope"], "org")

    def test_it_returns_503_when_the_workspace_cannot_be_created(self) -> None:
        with mock.patch("sessionadmin.workspaces.create_workspace", side_effect=WorkspaceError("disk full")):
            r = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "acme"})
        self.assertEqual((r.status_code, r.json()["error"]["code"]), (503, "workspace_unavailable"))
        self.assertNotIn("disk full", r.content.decode())
        self.assertFalse(AgentSession.objects.exists())

    def test_it_rejects_malformed_json(self) -> None:
        for raw in (b'{"user_id": ', b"\xff\xfe", b'{"user_id": NaN}', b"[" * 60000):
            r = self.api("POST", "/api/v1/sessions", raw_body=raw)
            self.assertEqual((r.status_code, r.json()["error"]["code"]), (400, "malformed_json"), raw[:20])

    def test_it_rejects_a_body_that_is_not_an_object(self) -> None:
        r = self.api("POST", "/api/v1/sessions", ["user-1", "acme"])
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["message"], "the body must be a JSON object")

    def test_it_rejects_unknown_fields(self) -> None:
        r = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "acme", "workspace_path": "/"})
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["fields"], {"workspace_path": "unknown field"})

    def test_it_rejects_an_oversized_body(self) -> None:
        body = json.dumps({"user_id": "user-1", "org_id": "acme", "variables": {"x": "a" * MAX_BODY_BYTES}}).encode()
        r = self.api("POST", "/api/v1/sessions", raw_body=body)
        self.assertEqual(r.status_code, 413)
        self.assertEqual(r.json()["error"]["code"], "body_too_large")

    def test_it_rejects_a_missing_body_and_other_media_types(self) -> None:
        self.assertEqual(self.api("POST", "/api/v1/sessions").status_code, 400)
        r = self.api("POST", "/api/v1/sessions", raw_body=b"user_id=user-1", content_type="application/x-www-form-urlencoded")
        self.assertEqual(r.status_code, 415)

    def test_it_requires_a_token(self) -> None:
        r = self.api("POST", "/api/v1/sessions", {"user_id": "user-1", "org_id": "acme"}, token=None)
        self.assertEqual(r.status_code, 401)
        self.assertIn("Bearer", r["WWW-Authenticate"])
        self.assertEqual(r.json()["error"]["code"], "unauthorized")

    def test_it_answers_405_in_json(self) -> None:
        r = self.api("PUT", "/api/v1/sessions", {})
        self.assertEqual(r.status_code, 405)
        self.assertEqual(r["Allow"], "GET, POST")
        self.assertEqual(r.json()["error"]["code"], "method_not_allowed")

    def test_it_answers_unknown_endpoints_in_json(self) -> None:
        r = self.api("GET", "/api/v1/nothing/here")
        self.assertEqual((r.status_code, r.json()["error"]["code"]), (404, "not_found"))


class ListSessionsTestCase(ApiTestCase):
    def test_it_pages_newest_first_with_a_cursor(self) -> None:
        made = []
        for i in range(5):
            with time_machine.travel(T0 + timedelta(minutes=i), tick=False):
                made.append(self.create())
        seen: list[str] = []
        cursor = ""
        for _ in range(3):
            r = self.api("GET", "/api/v1/sessions?limit=2" + (f"&cursor={cursor}" if cursor else ""))
            self.assertEqual(r.status_code, 200)
            seen += [s["id"] for s in r.json()["sessions"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(seen, [str(s.id) for s in reversed(made)])
        self.assertIsNone(cursor)

    def test_it_keeps_ties_on_created_at_apart(self) -> None:
        with time_machine.travel(T0, tick=False):
            made = [self.create() for _ in range(3)]
        first = self.api("GET", "/api/v1/sessions?limit=2").json()
        second = self.api("GET", f"/api/v1/sessions?limit=2&cursor={first['next_cursor']}").json()
        ids = [s["id"] for s in first["sessions"] + second["sessions"]]
        self.assertEqual(sorted(ids), sorted(str(s.id) for s in made))
        self.assertEqual(len(set(ids)), 3)

    def test_it_filters_by_user_and_status(self) -> None:
        a = self.create("user-1")
        b = self.create("user-2")
        self.manager().cleanup_session(b.id, actor="test")
        r = self.api("GET", "/api/v1/sessions?user_id=user-1&status=active")
        self.assertEqual([s["id"] for s in r.json()["sessions"]], [str(a.id)])
        r = self.api("GET", "/api/v1/sessions?status=ended")
        self.assertEqual([s["id"] for s in r.json()["sessions"]], [str(b.id)])

    def test_it_shows_a_scoped_token_only_its_org(self) -> None:
        mine = self.create("user-1", "acme")
        theirs = self.create("user-1", "globex")
        self.assertEqual([s["id"] for s in self.api("GET", "/api/v1/sessions").json()["sessions"]], [str(mine.id)])
        self.assertEqual(self.api("GET", "/api/v1/sessions?org_id=globex").json()["sessions"], [])
        everything = self.api("GET", "/api/v1/sessions", token="platform").json()["sessions"]
        self.assertEqual({s["id"] for s in everything}, {str(mine.id), str(theirs.id)})

    def test_it_rejects_bad_parameters(self) -> None:
        r = self.api("GET", "/api/v1/sessions?status=zombie&limit=1000&user_id=../x&colour=red")
        self.assertEqual(r.status_code, 400)
        self.assertEqual(set(r.json()["error"]["fields"]), {"colour"})
        r = self.api("GET", "/api/v1/sessions?status=zombie&limit=1000&user_id=../x")
        self.assertEqual(set(r.json()["error"]["fields"]), {"status", "limit", "user_id"})
        for limit in ("+5", " 5", "5_0", "\u0663", "0", "1.0"):
            r = self.api("GET", f"/api/v1/sessions?limit={limit}")
            self.assertEqual((r.status_code, list(r.json()["error"]["fields"])), (400, ["limit"]), limit)
        for cursor in ("!!!", "bm90LWEtY3Vyc29y", "MjAyNi0wMy0wMVQxMjowMDowMHxub3Bl"):
            r = self.api("GET", f"/api/v1/sessions?cursor={cursor}")
            self.assertEqual((r.status_code, list(r.json()["error"]["fields"])), (400, ["cursor"]), cursor)

    def test_it_lists_in_a_fixed_number_of_queries(self) -> None:
        for user in ("user-1", "user-2", "user-3"):
            self.create(user)
        self.api("GET", "/api/v1/sessions")  # last_used_at of the token written once
        # 1. SELECT token by prefix  2. SELECT the page of sessions
        with self.assertNumQueries(2):
            r = self.api("GET", "/api/v1/sessions")
        self.assertEqual(len(r.json()["sessions"]), 3)


class GetSessionTestCase(ApiTestCase):
    def test_it_returns_the_session(self) -> None:
        session = self.create()
        r = self.api("GET", f"/api/v1/sessions/{session.id}")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.json()["id"], str(session.id))
        self.assertEqual(r.json()["workspace_path"], session.workspace_path)

    def test_it_is_404_for_unknown_malformed_and_other_org_sessions(self) -> None:
        theirs = self.create("user-1", "globex")
        for sid in (uuid.UUID(int=1), "not-a-uuid", theirs.id):
            r = self.api("GET", f"/api/v1/sessions/{sid}")
            self.assertEqual((r.status_code, r.json()["error"]["code"]), (404, "not_found"), sid)
        self.assertEqual(self.api("GET", f"/api/v1/sessions/{theirs.id}", token="globex-runtime").status_code, 200)


class DeleteSessionTestCase(ApiTestCase):
    def test_it_marks_terminating_and_enqueues_removal_after_commit(self) -> None:
        session = self.create()
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            r = self.api("DELETE", f"/api/v1/sessions/{session.id}", {"reason": "runtime finished"})
        self.assertEqual(r.status_code, 202)
        self.assertEqual(r.json(), {"id": str(session.id), "status": "terminating", "cleanup": "enqueued"})
        # Two things wait for the commit: the MCP gateway cuts the session off, the removal is enqueued.
        self.assertEqual(len(callbacks), 2)
        enqueue = callbacks[1]
        self.assertEqual(enqueue.func.__self__.name, "sessionadmin.tasks.remove_workspace")  # type: ignore[attr-defined]
        self.assertEqual(enqueue.args, (str(session.id),))  # type: ignore[attr-defined]
        session.refresh_from_db()
        self.assertEqual(
            (session.status, session.ended_by, session.end_reason), ("terminating", "token:acme-runtime", "runtime finished")
        )
        entry = AuditEntry.objects.get(event_type="session_terminating")
        self.assertEqual((entry.actor, entry.details["reason"]), ("token:acme-runtime", "runtime finished"))

    def test_it_accepts_no_body(self) -> None:
        session = self.create()
        with self.captureOnCommitCallbacks(execute=False):
            r = self.api("DELETE", f"/api/v1/sessions/{session.id}")
        self.assertEqual(r.status_code, 202)

    def test_a_second_call_is_404(self) -> None:
        session = self.create()
        with self.captureOnCommitCallbacks(execute=False):
            self.api("DELETE", f"/api/v1/sessions/{session.id}")
            r = self.api("DELETE", f"/api/v1/sessions/{session.id}")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(AuditEntry.objects.filter(event_type="session_terminating").count(), 1)

    def test_it_is_404_for_another_orgs_session(self) -> None:
        theirs = self.create("user-1", "globex")
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            r = self.api("DELETE", f"/api/v1/sessions/{theirs.id}")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(callbacks, [])
        theirs.refresh_from_db()
        self.assertEqual(theirs.status, "active")

    def test_it_rejects_a_bad_reason(self) -> None:
        session = self.create()
        for body in ({"reason": 5}, {"reason": "x" * 501}, {"why": "done"}):
            r = self.api("DELETE", f"/api/v1/sessions/{session.id}", body)
            self.assertEqual(r.status_code, 400, body)
        session.refresh_from_db()
        self.assertEqual(session.status, "active")
