"""The session list (home page), its polling partial and the bulk kill."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import time_machine
from django.test import override_settings
from django.urls import reverse

from sessionadmin.models import AgentSession, AuditEntry, McpClient
from tests.base import BaseTestCase
from tests.celery_worker import QueueProbe

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def make_row(org_id: str, user_id: str, *, status: str = "active", minutes_ago: int = 0, sid: str | None = None) -> AgentSession:
    """A bare row for read-only pages (no workspace on disk)."""
    at = NOW - timedelta(minutes=minutes_ago)
    return AgentSession.objects.create(
        id=uuid.UUID(sid) if sid else uuid.uuid4(),
        user_id=user_id,
        org_id=org_id,
        workspace_path=f"/nonexistent/{user_id}",
        status=status,
        created_at=at,
        last_active_at=at,
        ended_at=at if status in ("ended", "failed") else None,
    )


@time_machine.travel(NOW, tick=False)
class SessionListTestCase(BaseTestCase):
    url = reverse("session_list")

    def setUp(self) -> None:
        super().setUp()
        self.a1 = make_row("acme", "u-ann", minutes_ago=5, sid="aaaa1111-0000-4000-8000-000000000001")
        self.a2 = make_row("acme", "u-bob", minutes_ago=10, sid="bbbb2222-0000-4000-8000-000000000002")
        self.g1 = make_row("globex", "u-ann", minutes_ago=15, sid="cccc3333-0000-4000-8000-000000000003")
        self.e1 = make_row("acme", "u-old", status="ended", minutes_ago=60, sid="dddd4444-0000-4000-8000-000000000004")

    def test_it_requires_login(self) -> None:
        r = self.client.get(self.url)
        self.assertRedirects(r, f"/accounts/login/?next={self.url}")

    def test_it_forbids_users_without_a_role(self) -> None:
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.get(self.url).status_code, 403)

    def test_it_shows_live_sessions_to_a_viewer_without_actions(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url)
        self.assertContains(r, "aaaa1111")
        self.assertContains(r, "cccc3333")
        self.assertNotContains(r, "dddd4444")  # ended: not live
        self.assertNotContains(r, "New session")
        self.assertNotContains(r, 'name="ids"')
        self.assertNotContains(r, "Kill selected")

    def test_it_shows_actions_to_an_operator(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.get(self.url)
        self.assertContains(r, "New session")
        self.assertContains(r, f'name="ids" value="{self.a1.id}"')
        self.assertContains(r, "Kill selected")

    def test_it_filters_by_org_user_and_status(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url, {"org": "globex"})
        self.assertEqual([s.id for s in r.context["sessions"]], [self.g1.id])
        r = self.client.get(self.url, {"user": "u-ann"})
        self.assertEqual([s.id for s in r.context["sessions"]], [self.a1.id, self.g1.id])
        r = self.client.get(self.url, {"status": "ended"})
        self.assertEqual([s.id for s in r.context["sessions"]], [self.e1.id])
        r = self.client.get(self.url, {"status": "all"})
        self.assertEqual(len(r.context["sessions"]), 4)

    def test_it_searches_id_prefixes_and_user_prefixes(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url, {"q": "bbbb2222"})
        self.assertEqual([s.id for s in r.context["sessions"]], [self.a2.id])
        r = self.client.get(self.url, {"q": str(self.g1.id)})
        self.assertEqual([s.id for s in r.context["sessions"]], [self.g1.id])
        r = self.client.get(self.url, {"q": "u-b"})
        self.assertEqual([s.id for s in r.context["sessions"]], [self.a2.id])

    def test_it_sorts_on_the_server(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url, {"sort": "created"})
        self.assertEqual([s.id for s in r.context["sessions"]], [self.g1.id, self.a2.id, self.a1.id])
        r = self.client.get(self.url, {"sort": "-org"})
        self.assertEqual([s.org_id for s in r.context["sessions"]], ["globex", "acme", "acme"])

    def test_it_ignores_invalid_query_values(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url, {"status": "bogus", "sort": "password", "page": "x"})
        self.assertEqual(r.status_code, 200)
        self.assertEqual(len(r.context["sessions"]), 3)

    @override_settings(SESSIONADMIN_MAX_CONCURRENT=10)
    def test_it_shows_headline_counters(self) -> None:
        self.org.max_sessions = 4
        self.org.save(update_fields=["max_sessions"])
        self.client.force_login(self.bob)
        r = self.client.get(self.url)
        self.assertEqual(r.context["headline"]["active"], 3)
        self.assertEqual(r.context["headline"]["limit"], 10)
        self.assertEqual([(o["id"], o["active"], o["limit"]) for o in r.context["headline"]["orgs"]], [("acme", 2, 4)])

    def test_it_shows_idle_deadline_pin_and_mcp_count(self) -> None:
        self.a1.pinned_until = NOW + timedelta(days=2)
        self.a1.save(update_fields=["pinned_until"])
        McpClient.objects.create(session=self.a2, client_id="fs", transport="stdio")
        McpClient.objects.create(session=self.a2, client_id="gone", transport="stdio", status="closed")
        self.client.force_login(self.bob)
        r = self.client.get(self.url)
        rows = {s.id: s for s in r.context["sessions"]}
        self.assertTrue(rows[self.a1.id].pinned)
        self.assertEqual(rows[self.a2.id].deadline, NOW - timedelta(minutes=10) + timedelta(days=1))
        self.assertEqual(rows[self.a2.id].mcp_count, 1)
        self.assertContains(r, "pinned until")
        self.assertContains(r, 'title="2026-03-02 11:55:00 UTC"')  # exact time on hover

    def test_it_paginates_without_counting(self) -> None:
        for n in range(51):
            make_row("globex", f"u-{n:03d}", minutes_ago=100 + n)
        self.client.force_login(self.bob)
        r = self.client.get(self.url)
        self.assertEqual(len(r.context["sessions"]), 50)
        self.assertTrue(r.context["has_next"])
        r = self.client.get(self.url, {"page": 2})
        self.assertEqual([s.user_id for s in r.context["sessions"]], ["u-047", "u-048", "u-049", "u-050"])
        self.assertFalse(r.context["has_next"])
        self.assertContains(r, "rows 51\u201354")
        r = self.client.get(self.url, {"page": 9})
        self.assertContains(r, "No sessions on page 9")

    def test_it_renders_the_polling_partial_for_htmx(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url, {"org": "acme", "page": 1}, headers={"HX-Request": "true", "HX-Target": "session-live"})
        body = r.content.decode()
        self.assertTrue(body.lstrip().startswith('<div id="session-live"'))
        self.assertIn('hx-get="/?org=acme&amp;page=1"', body)  # polling keeps filters and page
        self.assertNotIn("<html", body)
        self.assertIn("aaaa1111", body)

    def test_it_uses_a_constant_number_of_queries(self) -> None:
        for n in range(20):
            s = make_row("globex", f"u-{n:03d}", minutes_ago=30 + n)
            McpClient.objects.create(session=s, client_id="fs", transport="stdio")
        self.client.force_login(self.alice)
        # session, user, user permissions, group permissions, the page of rows (org joined,
        # MCP count subquery), orgs with their active counts
        with self.assertNumQueries(6):
            self.client.get(self.url, {"status": "all"})
        with self.assertNumQueries(6):
            self.client.get(self.url, headers={"HX-Request": "true", "HX-Target": "session-live"})

    def test_it_shows_an_empty_state(self) -> None:
        AgentSession.objects.all().delete()
        self.client.force_login(self.alice)
        self.assertContains(self.client.get(self.url), "No live sessions right now.")
        self.assertContains(self.client.get(self.url, {"org": "acme"}), "No sessions match these filters.")
        empty = self.client.get(self.url)
        self.assertNotContains(empty, 'class="pager"')  # nothing to page through
        self.assertNotContains(empty, "Kill selected")  # nothing to kill
        self.assertContains(empty, '<label for="filter-status">Status')


class BulkKillTestCase(BaseTestCase):
    url = reverse("session_bulk_kill")

    def setUp(self) -> None:
        super().setUp()
        manager = self.manager()
        self.s1 = manager.create_session("u-1", "acme", actor="setup")
        self.s2 = manager.create_session("u-2", "acme", actor="setup")
        self.s3 = manager.create_session("u-3", "globex", actor="setup")

    def test_it_kills_the_selected_sessions_with_a_reason(self) -> None:
        probe = QueueProbe()
        self.addCleanup(probe.close)
        self.client.force_login(self.alice)
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(self.url, {"ids": [str(self.s1.id), str(self.s2.id)], "reason": "cost", "next": "/?org=acme"})
        self.assertRedirects(r, "/?org=acme", fetch_redirect_response=False)
        statuses = dict(AgentSession.objects.values_list("id", "status"))
        self.assertEqual(statuses, {self.s1.id: "terminating", self.s2.id: "terminating", self.s3.id: "active"})
        entry = AuditEntry.objects.get(session_id=self.s1.id, event_type="session_terminating")
        self.assertEqual((entry.actor, entry.details["reason"]), ("alice", "cost"))
        # One removal task for the batch; the request removed nothing itself.
        [(task, [ids], kwargs)] = probe.messages()
        self.assertEqual(
            (task, sorted(ids), kwargs),
            ("sessionadmin.tasks.remove_workspaces", sorted([str(self.s1.id), str(self.s2.id)]), {"actor": "alice"}),
        )
        self.assertTrue((self.workspace_root / "u-1" / str(self.s1.id)).exists())

    def test_it_requires_a_reason_and_a_selection(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"ids": [str(self.s1.id)], "reason": "  "}, follow=True)
        self.assertContains(r, "Nothing was killed: A reason is required.")
        r = self.client.post(self.url, {"reason": "cost"}, follow=True)
        self.assertContains(r, "Nothing was killed: Select at least one session.")
        self.assertEqual(AgentSession.objects.active().count(), 3)

    def test_it_refuses_an_offsite_next(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"ids": [str(self.s1.id)], "reason": "x", "next": "https://evil.example/"})
        self.assertRedirects(r, "/", fetch_redirect_response=False)

    def test_it_answers_htmx_with_a_client_redirect(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"ids": [str(self.s3.id)], "reason": "x", "next": "/"}, headers={"HX-Request": "true"})
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r["HX-Redirect"], "/")

    def test_it_forbids_viewers(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.post(self.url, {"ids": [str(self.s1.id)], "reason": "x"})
        self.assertEqual(r.status_code, 403)
        self.assertEqual(AgentSession.objects.active().count(), 3)

    def test_it_forbids_users_without_a_role(self) -> None:
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.post(self.url, {"ids": [str(self.s1.id)], "reason": "x"}).status_code, 403)

    def test_it_allows_only_post(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(self.url).status_code, 405)

    def test_it_requires_csrf(self) -> None:
        from django.test import Client

        client = Client(enforce_csrf_checks=True)
        client.force_login(self.alice)
        r = client.post(self.url, {"ids": [str(self.s1.id)], "reason": "x"}, headers={"HX-Request": "true"})
        self.assertEqual(r.status_code, 403)
        self.assertEqual(AgentSession.objects.active().count(), 3)
