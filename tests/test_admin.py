"""The Django admin: read-only audit trail with CSV export; orgs, prompt layers and sessions."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from django.urls import reverse

from sessionadmin import audit
from sessionadmin.models import AgentSession, AuditEntry, Org, PromptLayer
from tests.base import BaseTestCase

AT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SID = "aaaa1111-0000-4000-8000-000000000001"


def entry(
    event: str,
    *,
    actor: str = "alice",
    org_id: str = "acme",
    user_id: str = "u-1",
    session_id: str | None = SID,
    **details: object,
) -> AuditEntry:
    return audit.write(
        [audit.entry(event, actor=actor, org_id=org_id, user_id=user_id, session_id=session_id, details=dict(details), at=AT)]
    )[0]


class AuditEntryAdminTestCase(BaseTestCase):
    changelist = reverse("admin:sessionadmin_auditentry_changelist")
    export = reverse("admin:sessionadmin_auditentry_export")

    def setUp(self) -> None:
        super().setUp()
        self.root.is_staff = True
        self.bob.is_staff = True
        self.root.save(update_fields=["is_staff"])
        self.bob.save(update_fields=["is_staff"])
        self.e1 = entry("session_created", reason="x")
        self.e2 = entry("session_terminating", actor="bob", reason='=HYPERLINK("http://evil")')
        self.e3 = entry("org_created", org_id="globex", user_id="", session_id=None)

    def test_it_is_read_only_even_for_superusers(self) -> None:
        self.client.force_login(self.root)
        self.assertEqual(self.client.get(reverse("admin:sessionadmin_auditentry_add")).status_code, 403)
        change = reverse("admin:sessionadmin_auditentry_change", args=[self.e1.pk])
        r = self.client.get(change)
        self.assertEqual(r.status_code, 200)  # view only
        self.assertNotContains(r, 'name="_save"')
        self.assertEqual(self.client.post(change, {"actor": "mallory"}).status_code, 403)
        self.assertEqual(self.client.post(reverse("admin:sessionadmin_auditentry_delete", args=[self.e1.pk])).status_code, 403)
        self.assertEqual(AuditEntry.objects.get(pk=self.e1.pk).actor, "alice")
        r = self.client.get(self.changelist)
        self.assertNotContains(r, "delete_selected")

    def test_it_filters_and_searches(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.changelist, {"event_type": "org_created"})
        self.assertEqual(list(r.context["cl"].result_list), [self.e3])
        r = self.client.get(self.changelist, {"org_id": "acme", "actor": "bob"})
        self.assertEqual(list(r.context["cl"].result_list), [self.e2])
        r = self.client.get(self.changelist, {"q": SID})
        self.assertEqual(set(r.context["cl"].result_list), {self.e1, self.e2})
        r = self.client.get(self.changelist, {"q": str(SID)[:8]})  # the dashboard's short id
        self.assertEqual(set(r.context["cl"].result_list), {self.e1, self.e2})
        r = self.client.get(self.changelist, {"q": "ffffffff"})
        self.assertEqual(list(r.context["cl"].result_list), [])
        r = self.client.get(self.changelist, {"q": "bob"})
        self.assertEqual(list(r.context["cl"].result_list), [self.e2])
        r = self.client.get(self.changelist, {"at__year": "2026", "at__month": "3"})
        self.assertEqual(len(r.context["cl"].result_list), 3)
        self.assertContains(r, "Export filtered entries as CSV")

    def test_it_exports_the_filtered_entries_as_csv(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.export, {"org_id": "acme"})
        self.assertEqual(r["Content-Type"], "text/csv; charset=utf-8")
        rows = list(csv.reader(io.StringIO(b"".join(r.streaming_content).decode())))
        self.assertEqual(rows[0], ["at", "event_type", "actor", "user_id", "org_id", "session_id", "details"])
        self.assertEqual(
            sorted(rows[1:]),
            [
                ["2026-03-02T12:00:00+00:00", "session_created", "alice", "u-1", "acme", SID, '{"reason": "x"}'],
                [
                    "2026-03-02T12:00:00+00:00",
                    "session_terminating",
                    "bob",
                    "u-1",
                    "acme",
                    SID,
                    '{"reason": "=HYPERLINK(\\"http://evil\\")"}',
                ],
            ],
        )

    def test_it_neutralises_formulas(self) -> None:
        entry("x", actor="=cmd|' /C calc'!A0")
        self.client.force_login(self.bob)
        r = self.client.get(self.export, {"event_type": "x"})
        rows = list(csv.reader(io.StringIO(b"".join(r.streaming_content).decode())))
        self.assertEqual(rows[1][2], "'=cmd|' /C calc'!A0")

    def test_it_exports_selected_entries_with_an_action(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.post(self.changelist, {"action": "export_selected_csv", "_selected_action": [self.e3.pk]})
        rows = list(csv.reader(io.StringIO(b"".join(r.streaming_content).decode())))
        self.assertEqual([row[1] for row in rows[1:]], ["org_created"])

    def test_it_refuses_users_without_access(self) -> None:
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.get(self.export).status_code, 302)  # not staff: to the admin login


class SessionAdminTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        for user in (self.alice, self.bob):
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        self.session = self.manager().create_session("u-1", "acme", actor="alice")
        self.change = reverse("admin:sessionadmin_agentsession_change", args=[self.session.pk])
        self.changelist = reverse("admin:sessionadmin_agentsession_changelist")

    def test_it_never_edits_status(self) -> None:
        self.client.force_login(self.root)
        self.assertEqual(self.client.post(self.change, {"status": "ended"}).status_code, 403)
        self.assertEqual(AgentSession.objects.get(pk=self.session.pk).status, "active")
        self.assertEqual(self.client.get(reverse("admin:sessionadmin_agentsession_add")).status_code, 403)

    def test_it_ends_through_the_lifecycle_for_operators(self) -> None:
        self.client.force_login(self.alice)
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            self.client.post(self.changelist, {"action": "kill_sessions", "_selected_action": [str(self.session.pk)]})
        row = AgentSession.objects.get(pk=self.session.pk)
        # Marked now; the workspace is removed by a worker (the removal is sent on commit).
        self.assertEqual((row.status, row.ended_by, row.end_reason), ("terminating", "alice", "killed from the admin"))
        self.assertTrue(AuditEntry.objects.filter(event_type="session_terminating", session_id=self.session.pk).exists())
        self.assertEqual(row.cleanup_run.task, "workspace_removal")
        self.assertTrue(callbacks)

    def test_it_offers_viewers_no_kill_action(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.changelist)
        self.assertNotContains(r, "kill_sessions")
        self.client.post(self.changelist, {"action": "kill_sessions", "_selected_action": [str(self.session.pk)]})
        self.assertEqual(AgentSession.objects.get(pk=self.session.pk).status, "active")

    def test_it_searches_by_id_prefix(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.changelist, {"q": str(self.session.pk)[:8]})
        self.assertEqual(list(r.context["cl"].result_list), [self.session])


class OrgAndLayerAdminTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.alice.is_staff = True
        self.alice.save(update_fields=["is_staff"])

    def test_it_creates_and_edits_orgs_through_the_services(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(
            reverse("admin:sessionadmin_org_add"), {"id": "initech", "name": "Initech", "prompt": "", "max_sessions": "4"}
        )
        self.assertEqual(r.status_code, 302)
        self.assertEqual(Org.objects.get(pk="initech").max_sessions, 4)
        self.client.post(
            reverse("admin:sessionadmin_org_change", args=["initech"]), {"name": "Initech", "prompt": "", "max_sessions": "5"}
        )
        self.assertEqual(Org.objects.get(pk="initech").max_sessions, 5)
        self.assertEqual(
            list(AuditEntry.objects.filter(org_id="initech").values_list("event_type", flat=True).order_by("id")),
            ["org_created", "org_updated"],
        )

    def test_it_refuses_invalid_org_ids(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(reverse("admin:sessionadmin_org_add"), {"id": "a/b", "name": "X", "prompt": ""})
        self.assertEqual(r.status_code, 200)
        self.assertFalse(Org.objects.filter(pk="a/b").exists())

    def test_it_versions_and_audits_prompt_layers(self) -> None:
        self.client.force_login(self.alice)
        add = reverse("admin:sessionadmin_promptlayer_add")
        data = {
            "scope": "org",
            "org": "acme",
            "user_id": "",
            "name": "tone",
            "body": "Be brief.",
            "priority": "100",
            "enabled": "on",
        }
        self.assertEqual(self.client.post(add, data).status_code, 302)
        layer = PromptLayer.objects.get()
        self.assertEqual(layer.version, 1)
        self.client.post(reverse("admin:sessionadmin_promptlayer_change", args=[layer.pk]), {**data, "body": "Be very brief."})
        self.assertEqual(PromptLayer.objects.get().version, 2)
        self.client.post(reverse("admin:sessionadmin_promptlayer_delete", args=[layer.pk]), {"post": "yes"})
        self.assertFalse(PromptLayer.objects.exists())
        events = list(AuditEntry.objects.order_by("id").values_list("event_type", flat=True))
        self.assertEqual(events, ["prompt_layer_created", "prompt_layer_updated", "prompt_layer_deleted"])

    def test_it_refuses_a_layer_breaking_the_scope_rule(self) -> None:
        self.client.force_login(self.alice)
        data = {"scope": "global", "org": "acme", "user_id": "", "name": "x", "body": "y", "priority": "1", "enabled": "on"}
        r = self.client.post(reverse("admin:sessionadmin_promptlayer_add"), data)
        self.assertEqual(r.status_code, 200)
        self.assertFalse(PromptLayer.objects.exists())
