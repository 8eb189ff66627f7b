"""The session detail page, its workspace panel and its actions: kill, pin, prompt."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from unittest import mock

import time_machine
from django.test import override_settings
from django.urls import reverse

from sessionadmin import lifecycle, workspaces
from sessionadmin.models import AgentSession, AuditEntry, Org, PromptLayer
from tests.base import BaseTestCase
from tests.celery_worker import QueueProbe

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
MISSING = "00000000-0000-4000-8000-000000000000"


@time_machine.travel(NOW, tick=False)
class SessionDetailTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.layer = PromptLayer.objects.create(scope="global", name="house rules", body="Be kind.")
        self.session = self.manager().create_session("u-1", "acme", actor="alice")
        self.url = reverse("session_detail", args=[self.session.id])

    def test_it_shows_the_session_to_a_viewer_without_actions(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url)
        self.assertContains(r, str(self.session.id))
        self.assertContains(r, "house rules")
        self.assertContains(r, "Be kind.")
        self.assertContains(r, "session_created")
        self.assertContains(r, f'hx-get="/sessions/{self.session.id}/workspace/"')
        self.assertNotContains(r, "Kill session")
        self.assertNotContains(r, "Save prompt")
        self.assertNotContains(r, "Pin against idle cleanup")

    def test_it_shows_actions_to_an_operator(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.get(self.url)
        self.assertContains(r, "Kill session")
        self.assertContains(r, "Save prompt")
        self.assertContains(r, "Pin against idle cleanup")

    def test_it_marks_layers_edited_since(self) -> None:
        PromptLayer.objects.filter(pk=self.layer.pk).update(version=3)
        self.client.force_login(self.bob)
        self.assertContains(self.client.get(self.url), "now v3")

    def test_it_is_not_activity(self) -> None:
        AgentSession.objects.filter(pk=self.session.pk).update(last_active_at=NOW - timedelta(hours=1))
        self.client.force_login(self.alice)
        self.client.get(self.url)
        self.assertEqual(AgentSession.objects.get(pk=self.session.pk).last_active_at, NOW - timedelta(hours=1))

    def test_it_is_404_for_unknown_sessions_and_users_without_a_role(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(reverse("session_detail", args=[MISSING])).status_code, 404)
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.get(self.url).status_code, 404)

    def test_it_renders_live_partials_for_htmx(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url, headers={"HX-Request": "true", "HX-Target": "detail-live"})
        self.assertTrue(r.content.decode().lstrip().startswith('<section id="detail-live"'))
        r = self.client.get(self.url, headers={"HX-Request": "true", "HX-Target": "detail-timeline"})
        self.assertTrue(r.content.decode().lstrip().startswith('<section id="detail-timeline"'))

    def test_it_uses_a_constant_number_of_queries(self) -> None:
        for n in range(5):
            self.session.update_system_prompt(f"prompt {n}", actor="alice")
        self.client.force_login(self.alice)
        # session, user, user permissions, group permissions, the session with its org,
        # its audit entries, the current versions of its prompt layers
        with self.assertNumQueries(7):
            self.client.get(self.url)

    def test_it_shows_each_entrys_key_details(self) -> None:
        from sessionadmin import audit, mcp_services

        call = mcp_services.tool_call_entry(
            session_id=self.session.id, user_id="u-1", org_id="acme", actor="alice", client_id="calc", tool="add",
            arguments={"a": 1}, duration=1.5, outcome="failed", error="upstream <b>down</b>", kind="timeout", at=NOW,
        )  # fmt: skip
        audit.write([call])
        self.client.force_login(self.bob)
        r = self.client.get(self.url)
        self.assertContains(r, "<dt>tool</dt><dd>add</dd>", html=False)
        self.assertContains(r, "<dt>client</dt><dd>calc</dd>", html=False)
        self.assertContains(r, "<dt>error kind</dt><dd>timeout</dd>", html=False)
        self.assertContains(r, "<dt>took (ms)</dt><dd>1500.0</dd>", html=False)
        self.assertContains(r, "upstream &lt;b&gt;down&lt;/b&gt;")

    def test_it_filters_the_trail_by_event_type_in_the_same_view(self) -> None:
        lifecycle.pin(session_id=self.session.id, until=NOW + timedelta(days=1), reason="demo", actor="alice")
        self.client.force_login(self.bob)
        r = self.client.get(self.url, {"event": "session_pinned"}, headers={"HX-Request": "true", "HX-Target": "detail-timeline"})
        body = r.content.decode()
        self.assertTrue(body.lstrip().startswith('<section id="detail-timeline"'))
        self.assertIn('data-event="session_pinned"', body)
        self.assertNotIn('data-event="session_created"', body)
        self.assertIn('<option value="session_pinned" selected>', body)
        self.assertIn(f'hx-get="{self.url}?event=session_pinned"', body)  # the polling keeps the filter
        none = self.client.get(self.url, {"event": "mcp_tool_called"})
        self.assertContains(none, "No mcp_tool_called entries.")
        ignored = self.client.get(self.url, {"event": "x' OR 1=1"})
        self.assertContains(ignored, 'data-event="session_created"')

    def test_it_shows_an_ended_session_without_its_pin_and_with_its_end_reason(self) -> None:
        lifecycle.pin(session_id=self.session.id, until=NOW + timedelta(days=3), reason="keep", actor="alice")
        lifecycle.end(session_ids=[self.session.id], actor="alice", reason="customer left", enqueue=False)
        lifecycle.finish(session_ids=[self.session.id], actor="alice")
        self.client.force_login(self.bob)
        r = self.client.get(self.url)
        self.assertContains(r, '<span class="end-reason">customer left</span>')
        self.assertNotContains(r, "<dt>Pinned</dt>")
        listing = self.client.get(reverse("session_list"), {"status": "all"})
        self.assertNotContains(listing, "pinned until")

    def test_it_shows_the_variables_and_previews_the_composed_prompt(self) -> None:
        org = Org.objects.get(pk="acme")
        org.prompt = "Org {{ org_name }} for {{ ticket }} and {{ user_id }}; not {org_id}."
        org.save()
        session = self.manager().create_session("u-2", "acme", actor="alice", variables={"org_name": "<Acme>"})
        url = reverse("session_detail", args=[session.id])
        self.client.force_login(self.bob)
        page = self.client.get(url)
        self.assertContains(page, '<dt class="mono">org_name</dt><dd class="mono">&lt;Acme&gt;</dd>', html=False)
        self.assertContains(page, "{{ name }} is replaced by the session&#x27;s variable")
        self.assertNotContains(page, "Preview: composed now")
        PromptLayer.objects.filter(pk=self.layer.pk).update(body="Be very kind.")
        preview = self.client.get(url, {"preview": "1"}, headers={"HX-Request": "true", "HX-Target": "prompt-preview"})
        body = preview.content.decode()
        self.assertTrue(body.lstrip().startswith('<div id="prompt-preview"'))
        self.assertIn("Be very kind.", body)
        # The built-in variables are filled as at creation.
        self.assertIn("Org &lt;Acme&gt; for {{ ticket }} and u-2; not {org_id}.", body)
        self.assertIn("No variable for: <code>ticket</code>", body)
        self.assertIn("Single braces are plain text: <code>org_id</code>", body)
        self.assertIn("differs</span>", body)

    def test_it_allows_only_get(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.post(self.url).status_code, 405)


class WorkspacePanelTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u-1", "acme", actor="alice")
        self.url = reverse("session_workspace", args=[self.session.id])
        self.path = self.workspace_root / "u-1" / str(self.session.id)

    def test_it_shows_mode_size_and_file_count(self) -> None:
        (self.path / "a.txt").write_text("hello")
        (self.path / "sub").mkdir()
        (self.path / "sub" / "b.txt").write_text("abc")
        self.client.force_login(self.bob)
        info = workspaces.inspect_workspace(self.path)
        self.assertEqual(info, workspaces.WorkspaceInfo(exists=True, is_dir=True, mode=0o700, size=8, files=2))
        r = self.client.get(self.url, headers={"HX-Request": "true"})
        self.assertContains(r, "0700")
        self.assertContains(r, "<dt>Files</dt><dd>2</dd>", html=False)
        self.assertContains(r, "8 B")
        self.assertNotContains(r, "<html")

    def test_it_warns_about_a_wrong_mode_and_a_missing_directory(self) -> None:
        os.chmod(self.path, 0o755)
        self.client.force_login(self.bob)
        self.assertContains(self.client.get(self.url), "not 0700")
        os.rmdir(self.path)
        self.assertContains(self.client.get(self.url), "the directory does not exist")

    def test_it_stops_counting_huge_trees(self) -> None:
        for n in range(30):
            (self.path / f"f{n}").write_text("x")
        info = workspaces.inspect_workspace(self.path, max_entries=10)
        self.assertEqual((info.truncated, info.files), (True, 10))
        with mock.patch("sessionadmin.views.inspect_workspace", lambda p: workspaces.inspect_workspace(p, max_entries=10)):
            self.client.force_login(self.bob)
            self.assertContains(self.client.get(self.url), "more than 10")

    def test_it_does_not_follow_a_symlink(self) -> None:
        os.rmdir(self.path)
        os.symlink("/etc", self.path)
        info = workspaces.inspect_workspace(self.path)
        self.assertEqual((info.is_symlink, info.files), (True, 0))

    def test_it_is_404_for_strangers(self) -> None:
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.get(self.url).status_code, 404)


class KillTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u-1", "acme", actor="alice")
        self.url = reverse("session_kill", args=[self.session.id])
        self.detail = reverse("session_detail", args=[self.session.id])

    def test_it_kills_with_a_reason_and_the_worker_removes_the_workspace(self) -> None:
        probe = QueueProbe()
        self.addCleanup(probe.close)
        self.client.force_login(self.alice)
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(self.url, {"reason": "user left"})
        self.assertRedirects(r, self.detail, fetch_redirect_response=False)
        row = AgentSession.objects.get(pk=self.session.pk)
        self.assertEqual((row.status, row.ended_by, row.end_reason), ("terminating", "alice", "user left"))
        self.assertTrue(os.path.isdir(row.workspace_path))  # not removed inside the request
        self.assertEqual(probe.messages(), [("sessionadmin.tasks.remove_workspaces", [[str(row.id)]], {"actor": "alice"})])
        page = self.client.get(self.detail)
        self.assertContains(page, "1 session is terminating; the workers are removing the workspace.")
        self.assertContains(page, "a worker is closing its MCP clients and removing its workspace")
        self.assertContains(page, "every 1s")  # the facts refresh until the worker is done

    def test_it_requires_a_reason_inline(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"reason": ""})
        self.assertFormError(r.context["kill_form"], "reason", "A reason is required.")
        self.assertContains(r, "<html")
        r = self.client.post(self.url, {"reason": ""}, headers={"HX-Request": "true"})
        self.assertTrue(r.content.decode().lstrip().startswith('<form id="kill-form"'))
        self.assertEqual(AgentSession.objects.get(pk=self.session.pk).status, "active")

    def test_it_answers_htmx_with_a_client_redirect(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"reason": "x"}, headers={"HX-Request": "true"})
        self.assertEqual(r["HX-Redirect"], self.detail)

    def test_it_shows_a_failed_removal_and_queues_it_again_on_a_second_kill(self) -> None:
        probe = QueueProbe()
        self.addCleanup(probe.close)
        self.client.force_login(self.alice)
        with self.captureOnCommitCallbacks(execute=True):
            self.client.post(self.url, {"reason": "x"})
        # The worker's half fails (fault injected into the filesystem call).
        with mock.patch("sessionadmin.workspaces.remove_workspace", side_effect=workspaces.WorkspaceError("disk on fire")):
            result = lifecycle.finish(session_ids=[self.session.id], actor="system:workspace-removal")
        self.assertEqual(result.failed, {str(self.session.id): "disk on fire"})
        page = self.client.get(self.detail)
        self.assertContains(page, "Cleanup failed 1 time: disk on fire")
        self.assertContains(page, "Retry cleanup")
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(self.url, {"reason": "again"}, follow=True)
        self.assertContains(r, "This session is already terminating; its removal was queued again.")
        self.assertEqual(len(probe.messages()), 2)
        self.assertEqual(AgentSession.objects.get(pk=self.session.pk).status, "terminating")

    def test_it_says_when_the_session_has_ended_already(self) -> None:
        self.manager().cleanup_session(self.session.id, actor="bob", reason="x")
        self.client.force_login(self.alice)
        self.assertContains(self.client.post(self.url, {"reason": "x"}, follow=True), "This session has already ended.")

    def test_it_forbids_viewers_and_hides_from_strangers(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(self.url, {"reason": "x"}).status_code, 403)
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.post(self.url, {"reason": "x"}).status_code, 404)
        self.assertEqual(AgentSession.objects.get(pk=self.session.pk).status, "active")

    def test_it_is_404_for_unknown_sessions(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.post(reverse("session_kill", args=[MISSING]), {"reason": "x"}).status_code, 404)

    def test_it_allows_only_post(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(self.url).status_code, 405)


@time_machine.travel(NOW, tick=False)
class PinTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u-1", "acme", actor="alice")
        self.url = reverse("session_pin", args=[self.session.id])

    def test_it_pins_until_a_time_with_a_reason(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"until": "2026-03-05T09:30", "reason": "demo on Thursday"})
        self.assertRedirects(r, reverse("session_detail", args=[self.session.id]), fetch_redirect_response=False)
        row = AgentSession.objects.get(pk=self.session.pk)
        self.assertEqual(
            (row.pinned_until, row.pin_reason, row.pinned_by),
            (datetime(2026, 3, 5, 9, 30, tzinfo=UTC), "demo on Thursday", "alice"),
        )
        self.assertTrue(AuditEntry.objects.filter(event_type="session_pinned", actor="alice").exists())

    def test_it_rerenders_the_form_for_htmx_and_refreshes_the_page(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"until": "2026-03-05T09:30", "reason": "demo"}, headers={"HX-Request": "true"})
        self.assertTrue(r.content.decode().lstrip().startswith('<form id="pin-form"'))
        self.assertContains(r, "Pinned until 2026-03-05 09:30 UTC.")
        self.assertEqual(r["HX-Trigger"], '{"session-changed": {}}')

    def test_it_shows_errors_inline(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"until": "2026-03-01T09:30", "reason": ""})
        self.assertFormError(r.context["pin_form"], "until", "The pin must end in the future.")
        self.assertFormError(r.context["pin_form"], "reason", "A reason is required.")
        r = self.client.post(self.url, {"until": "2026-03-01T09:30", "reason": ""}, headers={"HX-Request": "true"})
        self.assertTrue(r.content.decode().lstrip().startswith('<form id="pin-form"'))
        self.assertContains(r, "The pin must end in the future.")
        self.assertIsNone(AgentSession.objects.get(pk=self.session.pk).pinned_until)

    def test_it_unpins(self) -> None:
        self.manager().pin_session(self.session.id, until=NOW + timedelta(days=1), reason="x", actor="alice")
        self.client.force_login(self.alice)
        self.client.post(self.url, {"unpin": "1"})
        self.assertIsNone(AgentSession.objects.get(pk=self.session.pk).pinned_until)
        self.assertTrue(AuditEntry.objects.filter(event_type="session_unpinned").exists())

    def test_it_refuses_ended_sessions(self) -> None:
        self.manager().cleanup_session(self.session.id, actor="alice", reason="x")
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"until": "2026-03-05T09:30", "reason": "x"})
        self.assertFormError(r.context["pin_form"], None, "Only active sessions can be pinned.")

    def test_it_forbids_viewers_and_allows_only_post(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(self.url, {"until": "2026-03-05T09:30", "reason": "x"}).status_code, 403)
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(self.url).status_code, 405)
        self.assertEqual(self.client.post(reverse("session_pin", args=[uuid.UUID(MISSING)]), {}).status_code, 404)


class PromptTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.session = self.manager().create_session("u-1", "acme", actor="alice")
        self.url = reverse("session_prompt", args=[self.session.id])

    def test_it_saves_the_prompt_and_audits_it(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"prompt": "You are helpful.\n"})
        self.assertRedirects(r, reverse("session_detail", args=[self.session.id]), fetch_redirect_response=False)
        self.assertEqual(AgentSession.objects.get(pk=self.session.pk).system_prompt, "You are helpful.\n")
        entry = AuditEntry.objects.get(event_type="system_prompt_updated")
        self.assertEqual((entry.actor, entry.details["new_length"]), ("alice", 17))

    def test_it_rerenders_the_form_for_htmx(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"prompt": "New"}, headers={"HX-Request": "true"})
        self.assertTrue(r.content.decode().lstrip().startswith('<form id="prompt-form"'))
        self.assertContains(r, "System prompt saved.")
        self.assertContains(r, "New</textarea>")

    @override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=None)
    def test_it_shows_a_too_long_prompt_inline(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"prompt": "x" * (256 * 1024 + 1)})
        self.assertEqual(r.status_code, 200)
        self.assertTrue(r.context["prompt_form"].errors["prompt"])

    def test_it_refuses_ended_sessions(self) -> None:
        self.manager().cleanup_session(self.session.id, actor="alice", reason="x")
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"prompt": "x"})
        self.assertFormError(r.context["prompt_form"], None, "Only active sessions can have their prompt edited.")

    def test_it_forbids_viewers_and_allows_only_post(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(self.url, {"prompt": "x"}).status_code, 403)
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.post(self.url, {"prompt": "x"}).status_code, 404)
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(self.url).status_code, 405)
